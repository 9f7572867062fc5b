//! `RemoteMetadata` against a real cudele-mds process: two clients stay coherent through
//! the invalidation channel, an MDS crash and restart is ridden out, an outage longer than
//! the retry budget is EIO, and a lost session is reopened.
//!
//! Needs the `cudele-mds` binary (`cargo build -p cudele-mds`); it is looked up next to
//! this test's target directory or in `CUDELE_MDS_BIN`, and the tests skip without it.

mod common;

use common::{Mds, WAIT_MS};
use cudele_client::data::ChunkStore;
use cudele_client::fs::CudeleFs;
use cudele_client::metadata::{LayoutUpdate, Metadata, Owner, RemoteMetadata, RemoteOptions, SetAttrChanges};
use cudele_client::runtime::Blocking;
use cudele_journal::store::{JournalStore, StoreOptions};
use cudele_journal::{FileKind, RenameMode, Timestamp, XattrMode, ROOT_INO};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OWNER: Owner = Owner { uid: 0, gid: 0 };

fn client(mds: &Mds, outage: Duration) -> RemoteMetadata {
    let mut options = RemoteOptions::new(mds.address.clone(), None);
    options.outage_timeout = outage;
    let client = RemoteMetadata::connect(options, Blocking::new("remote-test").expect("runtime")).expect("connect");
    wait_until("the cache is enabled", || client.cache().is_enabled());
    client
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn errno<T: std::fmt::Debug>(result: cudele_namespace::NsResult<T>) -> i32 {
    result.expect_err("expected an error").errno()
}

/// Every kind of change by client A is seen by client B's very next call, although B
/// serves repeated reads from its cache.
#[test]
fn invalidations_keep_two_clients_coherent() {
    let Some(mds) = Mds::start(&[]) else { return };
    let a = client(&mds, Duration::from_secs(10));
    let b = client(&mds, Duration::from_secs(10));

    assert_eq!(errno(b.lookup(ROOT_INO, b"x")), libc::ENOENT);
    assert_eq!(errno(b.lookup(ROOT_INO, b"x")), libc::ENOENT, "negative entry cached");
    let created = a.create(ROOT_INO, b"x", FileKind::Regular, 0o644, OWNER, 0).expect("create");
    let ino = created.attr.ino;
    assert_eq!(b.lookup(ROOT_INO, b"x").expect("B sees the create").attr.ino, ino);

    let hits = b.cache().counters.hits.load(std::sync::atomic::Ordering::Relaxed);
    b.getattr(ino).expect("getattr");
    b.getattr(ino).expect("getattr");
    assert!(b.cache().counters.hits.load(std::sync::atomic::Ordering::Relaxed) >= hits + 2, "served from cache");

    a.setattr(ino, &SetAttrChanges { mode: Some(0o600), ..Default::default() }).expect("chmod");
    assert_eq!(b.getattr(ino).expect("getattr").attr.perm, 0o600);
    let layout = LayoutUpdate { size: 1234, chunk_size_bytes: 4096, mtime: Timestamp::now(), chunks: Vec::new() };
    a.set_layout(ino, &layout).expect("layout");
    assert_eq!(b.getattr(ino).expect("getattr").attr.size, 1234);

    assert_eq!(errno(b.getxattr(ino, b"user.k", 0)), libc::ENODATA);
    a.setxattr(ino, b"user.k", b"value", XattrMode::Upsert).expect("setxattr");
    assert_eq!(b.getxattr(ino, b"user.k", 0).expect("getxattr"), b"value");
    assert_eq!(errno(b.getxattr(ino, b"user.k", 2)), libc::ERANGE, "size probe semantics from the cache");

    a.rename(ROOT_INO, b"x", ROOT_INO, b"y", RenameMode::Replace).expect("rename");
    assert_eq!(errno(b.lookup(ROOT_INO, b"x")), libc::ENOENT);
    assert_eq!(b.lookup(ROOT_INO, b"y").expect("renamed").attr.ino, ino);

    let directory = a.mkdir(ROOT_INO, b"d", 0o755, OWNER).expect("mkdir");
    let listing = b.readdir(ROOT_INO, None, 100, true).expect("readdir");
    assert!(listing.entries.iter().any(|(entry, _)| entry.name == b"d" && entry.ino == directory.attr.ino));
    assert_eq!(b.lookup(ROOT_INO, b"d").expect("lookup").attr.nlink, 2);

    a.unlink(ROOT_INO, b"y").expect("unlink");
    assert_eq!(errno(b.lookup(ROOT_INO, b"y")), libc::ENOENT);
    assert_eq!(errno(b.getattr(ino)), libc::ENOENT);
    a.close();
    b.close();
}

/// A client's own creates update its cached view of the directory exactly as the MDS
/// does, and a directory it created answers negative lookups itself until another client
/// adds to it.
#[test]
fn own_changes_keep_the_cache_exact() {
    let Some(mds) = Mds::start(&[]) else { return };
    let a = client(&mds, Duration::from_secs(10));
    let b = client(&mds, Duration::from_secs(10));
    let directory = a.mkdir(ROOT_INO, b"d", 0o755, OWNER).expect("mkdir").attr.ino;
    a.getattr(directory).expect("cache the directory");
    for index in 0..5 {
        let name = format!("f{index}");
        assert_eq!(errno(a.lookup(directory, name.as_bytes())), libc::ENOENT);
        a.create(directory, name.as_bytes(), FileKind::Regular, 0o644, OWNER, 0).expect("create");
    }
    a.mkdir(directory, b"sub", 0o755, OWNER).expect("mkdir sub");
    let fresh = client(&mds, Duration::from_secs(10));
    assert_eq!(a.getattr(directory).expect("cached"), fresh.getattr(directory).expect("from the MDS"));
    let misses = a.cache().counters.misses.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errno(a.lookup(directory, b"nope")), libc::ENOENT);
    assert_eq!(a.cache().counters.misses.load(std::sync::atomic::Ordering::Relaxed), misses, "answered locally");
    b.create(directory, b"nope", FileKind::Regular, 0o644, OWNER, 0).expect("B creates it");
    assert!(a.lookup(directory, b"nope").is_ok(), "completeness ended by B's create");

    // Renames as seen by their author, against the MDS's truth.
    let f0 = a.lookup(directory, b"f0").expect("f0").attr.ino;
    let f1 = a.lookup(directory, b"f1").expect("f1").attr.ino;
    a.rename(directory, b"f0", directory, b"f0", RenameMode::Replace).expect("onto itself");
    assert_eq!(a.lookup(directory, b"f0").expect("still there").attr.ino, f0);
    a.link(f0, directory, b"f0-link").expect("link");
    a.rename(directory, b"f0", directory, b"f0-link", RenameMode::Replace).expect("onto its own link");
    assert_eq!(a.lookup(directory, b"f0").expect("both names stay").attr.ino, f0);
    a.rename(directory, b"f0", directory, b"f1", RenameMode::Exchange).expect("exchange");
    assert_eq!(a.lookup(directory, b"f0").expect("f0").attr.ino, f1);
    assert_eq!(a.lookup(directory, b"f1").expect("f1").attr.ino, f0);
    a.rename(directory, b"f1", directory, b"f2", RenameMode::Replace).expect("replace");
    assert_eq!(errno(a.lookup(directory, b"f1")), libc::ENOENT);
    assert_eq!(a.lookup(directory, b"f2").expect("f2").attr.ino, f0);
    for name in [&b"f0"[..], b"f1", b"f2", b"f0-link", b"nope", b"sub"] {
        let mine = a.lookup(directory, name).map(|attr| attr.attr.ino).map_err(|error| error.errno());
        let truth = fresh.lookup(directory, name).map(|attr| attr.attr.ino).map_err(|error| error.errno());
        assert_eq!(mine, truth, "{}", String::from_utf8_lossy(name));
    }
    assert_eq!(a.getattr(f0).expect("cached"), fresh.getattr(f0).expect("truth"));
}

/// An MDS killed and restarted on the same address: a call during the outage waits and
/// then succeeds, and both clients are coherent again afterwards.
#[test]
fn mds_restart_is_ridden_out() {
    let Some(mut mds) = Mds::start(&[]) else { return };
    let a = client(&mds, Duration::from_secs(20));
    let b = client(&mds, Duration::from_secs(20));
    a.mkdir(ROOT_INO, b"before", 0o755, OWNER).expect("mkdir");
    assert!(b.lookup(ROOT_INO, b"before").is_ok());

    mds.kill();
    let restarted = std::thread::scope(|scope| {
        let restart = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            mds.spawn();
        });
        let during = a.mkdir(ROOT_INO, b"during", 0o755, OWNER);
        restart.join().expect("restart thread");
        during
    });
    restarted.expect("mkdir during the outage succeeds after the restart");
    wait_until("both caches are back", || a.cache().is_enabled() && b.cache().is_enabled());
    assert!(b.lookup(ROOT_INO, b"during").is_ok(), "B sees what A did during the outage");
    assert_eq!(errno(b.lookup(ROOT_INO, b"after")), libc::ENOENT);
    a.mkdir(ROOT_INO, b"after", 0o755, OWNER).expect("mkdir after");
    assert!(b.lookup(ROOT_INO, b"after").is_ok(), "invalidations flow again");
}

/// With the MDS gone for longer than the retry budget, an operation fails with EIO.
#[test]
fn outage_past_budget_is_eio() {
    let Some(mut mds) = Mds::start(&[]) else { return };
    let a = client(&mds, Duration::from_millis(800));
    mds.kill();
    let started = Instant::now();
    assert_eq!(errno(a.lookup(ROOT_INO, b"anything")), libc::EIO);
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
}

/// A session the MDS forgot (closed behind our back) is reopened and the call retried.
#[test]
fn lost_session_is_reopened() {
    let Some(mds) = Mds::start(&[]) else { return };
    let a = client(&mds, Duration::from_secs(10));
    // A second session keeps the MDS from handing A's number out again (it derives the
    // next id from the highest live one; reported to the MDS owner).
    let _b = client(&mds, Duration::from_secs(10));
    let first = a.session();
    let credential = a.session_credential();
    // Close A's session as the MDS's reaper would.
    let runtime = Blocking::new("raw").expect("runtime");
    let address = format!("http://{}", mds.address);
    runtime
        .block_on(async move {
            let mut raw = cudele_proto::pb::mds_client::MdsClient::connect(address).await.expect("connect");
            let mut request = tonic::Request::new(cudele_proto::pb::Empty {});
            request.metadata_mut().insert("cudele-session", credential.parse().expect("header value"));
            raw.close_session(request).await.expect("close");
            Ok(())
        })
        .expect("closed");
    a.mkdir(ROOT_INO, b"after-reopen", 0o755, OWNER).expect("mkdir with a reopened session");
    assert_ne!(a.session(), first);
    wait_until("the cache is back", || a.cache().is_enabled());
}

/// Two real FUSE mounts of one MDS: every kind of change made through one is seen by the
/// next syscall through the other, and file data closed on one reads back on the other.
#[test]
fn two_mounts_see_each_other() {
    let Some(mds) = Mds::start(&[]) else { return };
    let mount = |name: &str| {
        let runtime = Blocking::new(name).expect("runtime");
        let metadata = Arc::new(client(&mds, Duration::from_secs(10)));
        let objects = JournalStore::open(&metadata.object_store_url(), &StoreOptions::default()).expect("store");
        common::mount(Arc::new(CudeleFs::new(metadata, ChunkStore::new(objects, runtime))))
    };
    let Some(first) = mount("first") else { return };
    let Some(second) = mount("second") else { return };
    let (a, b) = (first.path.clone(), second.path.clone());

    assert!(std::fs::metadata(b.join("d")).is_err());
    std::fs::create_dir(a.join("d")).expect("mkdir on A");
    assert!(std::fs::metadata(b.join("d")).expect("B sees the directory").is_dir());
    std::fs::write(a.join("d/f"), b"written on A").expect("write on A");
    assert_eq!(std::fs::read(b.join("d/f")).expect("read on B"), b"written on A");
    std::fs::write(b.join("d/f"), b"rewritten on B, longer").expect("write on B");
    assert_eq!(std::fs::metadata(a.join("d/f")).expect("stat on A").len(), 22);
    assert_eq!(std::fs::read(a.join("d/f")).expect("read on A"), b"rewritten on B, longer");
    std::fs::set_permissions(a.join("d/f"), std::fs::Permissions::from_mode(0o640)).expect("chmod on A");
    assert_eq!(std::fs::metadata(b.join("d/f")).expect("stat on B").permissions().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(b.join("d/f"), Some(77), Some(88)).expect("chown on B");
    assert_eq!(std::fs::metadata(a.join("d/f")).expect("stat on A").uid(), 77);
    std::fs::rename(a.join("d/f"), a.join("d/g")).expect("rename on A");
    assert!(std::fs::metadata(b.join("d/f")).is_err());
    assert_eq!(std::fs::read(b.join("d/g")).expect("read renamed on B"), b"rewritten on B, longer");
    assert_eq!(std::fs::remove_dir(b.join("d")).expect_err("not empty").raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::remove_file(b.join("d/g")).expect("unlink on B");
    assert!(std::fs::metadata(a.join("d/g")).is_err());
    // Create-like replies are cached by A's kernel too: a change on B right after must
    // still reach A's next stat.
    for round in 0..20u32 {
        let (file, dir) = (format!("d/new{round}"), format!("d/sub{round}"));
        std::fs::File::create(a.join(&file)).expect("create on A");
        std::fs::create_dir(a.join(&dir)).expect("mkdir on A");
        let mode = 0o600 + round;
        std::fs::set_permissions(b.join(&file), std::fs::Permissions::from_mode(mode)).expect("chmod on B");
        std::os::unix::fs::chown(b.join(&dir), Some(round), None).expect("chown on B");
        assert_eq!(std::fs::metadata(a.join(&file)).expect("stat on A").permissions().mode() & 0o7777, mode);
        assert_eq!(std::fs::metadata(a.join(&dir)).expect("stat on A").uid(), round);
        std::fs::remove_file(b.join(&file)).expect("unlink on B");
        std::fs::remove_dir(b.join(&dir)).expect("rmdir on B");
        assert!(std::fs::metadata(a.join(&file)).is_err(), "A still sees a file B removed");
    }
    let names: Vec<_> = std::fs::read_dir(a.join("d")).expect("readdir on A").collect();
    assert!(names.is_empty());
    std::fs::remove_dir(a.join("d")).expect("rmdir on A");
    assert!(std::fs::metadata(b.join("d")).is_err());
    drop(first);
    drop(second);
}
