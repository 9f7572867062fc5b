//! `RemoteMetadata` against a real cudele-mds process: two clients stay coherent through
//! the invalidation channel, an MDS crash and restart is ridden out, an outage longer than
//! the retry budget is EIO, and a lost session is reopened.
//!
//! Needs the `cudele-mds` binary (`cargo build -p cudele-mds`); it is looked up next to
//! this test's target directory or in `CUDELE_MDS_BIN`, and the tests skip without it.

use cudele_client::metadata::{Metadata, Owner, RemoteMetadata, RemoteOptions, SetAttrChanges};
use cudele_client::runtime::Blocking;
use cudele_journal::{FileKind, RenameMode, Timestamp, XattrMode, ROOT_INO};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OWNER: Owner = Owner { uid: 0, gid: 0 };
/// How long a cluster may take to start or a client to subscribe.
const WAIT_MS: u64 = 15_000;

fn mds_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CUDELE_MDS_BIN") {
        return Some(PathBuf::from(path));
    }
    // target/debug/deps/remote_metadata-<hash> -> target/debug/cudele-mds
    let candidate = std::env::current_exe().ok()?.parent()?.parent()?.join("cudele-mds");
    candidate.exists().then_some(candidate)
}

/// A cudele-mds child process, killed on drop.
struct Mds {
    binary: PathBuf,
    data_dir: PathBuf,
    address: String,
    extra: Vec<String>,
    child: Option<Child>,
    _directory: tempfile::TempDir,
}

impl Mds {
    fn start(extra: &[&str]) -> Option<Mds> {
        let Some(binary) = mds_binary() else {
            eprintln!("skipping: no cudele-mds binary (cargo build -p cudele-mds, or set CUDELE_MDS_BIN)");
            return None;
        };
        let directory = tempfile::tempdir().expect("tempdir");
        let mut mds = Mds {
            binary,
            data_dir: directory.path().join("mds"),
            address: "127.0.0.1:0".to_string(),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            child: None,
            _directory: directory,
        };
        mds.spawn();
        Some(mds)
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("mds.addr"));
        let child = Command::new(&self.binary)
            .args(["--listen", &self.address, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cudele-mds");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        loop {
            if let Ok(address) = std::fs::read_to_string(self.data_dir.join("mds.addr")) {
                if !address.trim().is_empty() {
                    // Restarts reuse the port, as a real MDS restart would.
                    self.address = address.trim().to_string();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cudele-mds did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mds {
    fn drop(&mut self) {
        self.kill();
    }
}

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
    a.set_layout(ino, 1234, 4096, Timestamp::now()).expect("layout");
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
    // Close A's session as the MDS's reaper would.
    let runtime = Blocking::new("raw").expect("runtime");
    let address = format!("http://{}", mds.address);
    runtime
        .block_on(async move {
            let mut raw = cudele_proto::pb::mds_client::MdsClient::connect(address).await.expect("connect");
            let mut request = tonic::Request::new(cudele_proto::pb::Empty {});
            request.metadata_mut().insert("cudele-session", first.to_string().parse().expect("digits"));
            raw.close_session(request).await.expect("close");
            Ok(())
        })
        .expect("closed");
    a.mkdir(ROOT_INO, b"after-reopen", 0o755, OWNER).expect("mkdir with a reopened session");
    assert_ne!(a.session(), first);
    wait_until("the cache is back", || a.cache().is_enabled());
}
