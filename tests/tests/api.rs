//! API-level tests against a real `cudele-mds` process: every RPC, every errno a POSIX client
//! can get, authentication, session leases and the invalidation push channel.
//!
//! Each test starts its own MDS on a fresh data dir (port 0) and ends by checking, through
//! `Dump`, that the namespace invariants still hold.

use cudele_e2e::{connect, errno_of, wait_until, Api, Headers, MdsProcess};
use cudele_proto::pb;
use cudele_proto::pb::{FileKind, RenameMode, XattrMode};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::{Code, Status};

const ROOT: u64 = 1;
/// Generous bound for anything asynchronous (noisy 2-core machines).
const PATIENCE: Duration = Duration::from_secs(30);
/// How long the subscriber in the invalidation test holds each acknowledgement back.
const ACK_DELAY: Duration = Duration::from_millis(300);

struct Server {
    mds: MdsProcess,
    _directory: tempfile::TempDir,
}

fn server(args: &[&str]) -> Server {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = MdsProcess::start(directory.path(), args).expect("start cudele-mds");
    Server { mds, _directory: directory }
}

async fn client(server: &Server, name: &str) -> Api {
    Api::open(server.mds.address, None, name).await.expect("open session")
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(result: Result<T, Status>, errno: i32) {
    match result {
        Ok(value) => panic!("expected errno {errno} ({}), got success: {value:?}", errno_name(errno)),
        Err(status) => assert_eq!(
            errno_of(&status),
            errno,
            "expected errno {errno} ({}), got status {status:?}",
            errno_name(errno)
        ),
    }
}

#[track_caller]
fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<T, Status>) {
    match result {
        Ok(value) => panic!("expected UNAUTHENTICATED, got success: {value:?}"),
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EPERM => "EPERM",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        _ => "?",
    }
}

fn nanos(time: &Option<pb::Timestamp>) -> i128 {
    let time = time.as_ref().expect("timestamp present");
    time.seconds as i128 * 1_000_000_000 + time.nanoseconds as i128
}

fn wall_clock_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as i128
}

/// Let the server clock move past the last timestamp it handed out.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn kind(attr: &pb::Attr) -> FileKind {
    FileKind::try_from(attr.kind).expect("known kind")
}

fn setattr(ino: u64) -> pb::SetAttrRequest {
    pb::SetAttrRequest { ino, ..Default::default() }
}

fn names(entries: &[pb::DirEntry]) -> Vec<String> {
    entries.iter().map(|entry| String::from_utf8_lossy(&entry.name).into_owned()).collect()
}

// ----- lookup and getattr -----

/// Lookup and getattr return what create made, and report ENOENT, ENOTDIR and ENAMETOOLONG.
#[tokio::test]
async fn lookup_and_getattr_find_entries_and_report_errors() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let root = api.getattr(ROOT).await.unwrap();
    assert_eq!((kind(&root), root.perm, root.nlink, root.size), (FileKind::Directory, 0o755, 2, 0));

    let file = api.create(ROOT, "file", 0o640).await.unwrap();
    let found = api.lookup(ROOT, "file").await.unwrap();
    assert_eq!(found, file);
    assert_eq!(api.getattr(file.ino).await.unwrap(), file);

    assert_errno(api.lookup(ROOT, "missing").await, libc::ENOENT);
    assert_errno(api.getattr(999_999).await, libc::ENOENT);
    assert_errno(api.lookup(999_999, "x").await, libc::ENOENT);
    assert_errno(api.lookup(file.ino, "x").await, libc::ENOTDIR);
    assert_errno(api.lookup(ROOT, "n".repeat(256)).await, libc::ENAMETOOLONG);
    api.checked_dump().await;
}

// ----- setattr -----

/// Setattr changes the mode (refusing bits beyond 07777) and advances ctime.
#[tokio::test]
async fn setattr_changes_mode_and_advances_ctime() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    tick().await;
    let changed = api.setattr(pb::SetAttrRequest { mode: Some(0o4751), ..setattr(file.ino) }).await.unwrap();
    assert_eq!(changed.perm, 0o4751);
    assert!(nanos(&changed.ctime) > nanos(&file.ctime), "ctime advances on chmod");
    assert_eq!(nanos(&changed.mtime), nanos(&file.mtime), "chmod leaves mtime alone");
    assert_eq!(api.getattr(file.ino).await.unwrap(), changed);
    assert_errno(api.setattr(pb::SetAttrRequest { mode: Some(0o10644), ..setattr(file.ino) }).await, libc::EINVAL);
    assert_errno(api.setattr(pb::SetAttrRequest { mode: Some(0o644), ..setattr(424_242) }).await, libc::ENOENT);
    api.checked_dump().await;
}

/// Chown of a non-directory drops setuid, and setgid when group-executable, as ext4 does;
/// directories keep both bits.
#[tokio::test]
async fn chown_clears_setuid_and_setgid_of_non_directories() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;

    let executable = api.create(ROOT, "exec", 0o6755).await.unwrap();
    assert_eq!(executable.perm, 0o6755);
    tick().await;
    let owned =
        api.setattr(pb::SetAttrRequest { uid: Some(1000), gid: Some(100), ..setattr(executable.ino) }).await.unwrap();
    assert_eq!((owned.uid, owned.gid, owned.perm), (1000, 100, 0o0755));
    assert!(nanos(&owned.ctime) > nanos(&executable.ctime), "ctime advances on chown");

    // setgid without group-execute marks mandatory locking: it stays; setuid goes.
    let locked = api.create(ROOT, "locked", 0o6645).await.unwrap();
    let owned = api.setattr(pb::SetAttrRequest { uid: Some(1000), ..setattr(locked.ino) }).await.unwrap();
    assert_eq!(owned.perm, 0o2645);

    // A group change alone clears them too.
    let group_only = api.create(ROOT, "group-only", 0o6755).await.unwrap();
    let owned = api.setattr(pb::SetAttrRequest { gid: Some(7), ..setattr(group_only.ino) }).await.unwrap();
    assert_eq!((owned.uid, owned.gid, owned.perm), (0, 7, 0o0755));

    let directory = api.mkdir(ROOT, "dir", 0o6755).await.unwrap();
    let owned =
        api.setattr(pb::SetAttrRequest { uid: Some(1000), gid: Some(100), ..setattr(directory.ino) }).await.unwrap();
    assert_eq!((owned.uid, owned.gid, owned.perm), (1000, 100, 0o6755));
    api.checked_dump().await;
}

/// Truncating a file sets its size and mtime; a directory gives EISDIR, other kinds EINVAL.
#[tokio::test]
async fn setattr_size_truncates_files_only() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    tick().await;
    let grown = api.setattr(pb::SetAttrRequest { size: Some(1 << 20), ..setattr(file.ino) }).await.unwrap();
    assert_eq!(grown.size, 1 << 20);
    assert!(nanos(&grown.mtime) > nanos(&file.mtime), "truncate sets mtime");
    assert!(nanos(&grown.ctime) > nanos(&file.ctime), "truncate sets ctime");
    let shrunk = api.setattr(pb::SetAttrRequest { size: Some(10), ..setattr(file.ino) }).await.unwrap();
    assert_eq!(shrunk.size, 10);

    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    assert_errno(api.setattr(pb::SetAttrRequest { size: Some(0), ..setattr(directory.ino) }).await, libc::EISDIR);
    let fifo = api.mknod(ROOT, "fifo", FileKind::Fifo, 0o644, 0).await.unwrap();
    assert_errno(api.setattr(pb::SetAttrRequest { size: Some(0), ..setattr(fifo.ino) }).await, libc::EINVAL);
    let link = api.symlink(ROOT, "link", "f").await.unwrap();
    assert_errno(api.setattr(pb::SetAttrRequest { size: Some(0), ..setattr(link.ino) }).await, libc::EINVAL);
    assert_eq!(api.getattr(directory.ino).await.unwrap().size, 0, "a refused truncate changed nothing");
    api.checked_dump().await;
}

/// Explicit atime/mtime are stored exactly; UTIME_NOW takes the server clock; ctime advances.
#[tokio::test]
async fn setattr_sets_times_explicitly_and_to_now() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    tick().await;
    let atime = pb::Timestamp { seconds: 1_000_000, nanoseconds: 5 };
    let mtime = pb::Timestamp { seconds: 2_000_000, nanoseconds: 999_999_999 };
    let changed =
        api.setattr(pb::SetAttrRequest { atime: Some(atime), mtime: Some(mtime), ..setattr(file.ino) }).await.unwrap();
    assert_eq!(changed.atime, Some(atime));
    assert_eq!(changed.mtime, Some(mtime));
    assert!(nanos(&changed.ctime) > nanos(&file.ctime), "ctime advances on utimens");

    // Only mtime: atime stays.
    let only_mtime = pb::Timestamp { seconds: 3_000_000, nanoseconds: 0 };
    let changed = api.setattr(pb::SetAttrRequest { mtime: Some(only_mtime), ..setattr(file.ino) }).await.unwrap();
    assert_eq!((changed.atime, changed.mtime), (Some(atime), Some(only_mtime)));

    let before = wall_clock_nanos();
    tick().await;
    let now = api.setattr(pb::SetAttrRequest { atime_now: true, mtime_now: true, ..setattr(file.ino) }).await.unwrap();
    assert!(nanos(&now.mtime) >= before, "UTIME_NOW is the current time");
    assert_eq!(nanos(&now.atime), nanos(&now.mtime));
    assert_eq!(nanos(&now.ctime), nanos(&now.mtime), "ctime is the time of the change");
    assert_eq!(api.getattr(file.ino).await.unwrap(), now);
    api.checked_dump().await;
}

// ----- create, mkdir -----

/// Create makes regular files, FIFOs, sockets and devices (kind + rdev); the parent's size and
/// mtime follow; directory/symlink/unknown kinds and taken names are refused.
#[tokio::test]
async fn create_makes_every_non_directory_kind() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let root_before = api.getattr(ROOT).await.unwrap();
    tick().await;
    let char_rdev = libc::makedev(1, 3) as u32;
    let block_rdev = libc::makedev(8, 1) as u32;
    let cases = [
        ("regular", FileKind::Regular, 0o644, 0),
        ("fifo", FileKind::Fifo, 0o600, 0),
        ("socket", FileKind::Socket, 0o755, 0),
        ("char", FileKind::CharDevice, 0o666, char_rdev),
        ("block", FileKind::BlockDevice, 0o660, block_rdev),
    ];
    for (name, file_kind, mode, rdev) in cases {
        let attr = api.mknod(ROOT, name, file_kind, mode, rdev).await.unwrap();
        assert_eq!((kind(&attr), attr.perm, attr.rdev, attr.nlink, attr.size), (file_kind, mode, rdev, 1, 0), "{name}");
        assert_eq!(api.lookup(ROOT, name).await.unwrap(), attr);
    }
    let root = api.getattr(ROOT).await.unwrap();
    assert_eq!(root.size, 5, "a directory's size is its entry count");
    assert_eq!(root.nlink, 2, "files do not add to the parent's link count");
    assert!(nanos(&root.mtime) > nanos(&root_before.mtime), "create updates the parent's mtime");

    // The server keeps only permission bits of the mode (S_IFREG etc. come from the kind).
    let masked = api.create(ROOT, "masked", 0o100644).await.unwrap();
    assert_eq!(masked.perm, 0o644);

    assert_errno(api.create(ROOT, "regular", 0o644).await, libc::EEXIST);
    assert_errno(api.mknod(ROOT, "dir", FileKind::Directory, 0o755, 0).await, libc::EINVAL);
    assert_errno(api.mknod(ROOT, "sym", FileKind::Symlink, 0o777, 0).await, libc::EINVAL);
    assert_errno(api.mknod(ROOT, "unspecified", FileKind::Unspecified, 0o644, 0).await, libc::EINVAL);
    assert_errno(api.create(777_777, "orphan", 0o644).await, libc::ENOENT);
    api.checked_dump().await;
}

/// Mkdir makes an empty directory (nlink 2) and adds one link to its parent.
#[tokio::test]
async fn mkdir_adds_a_link_to_the_parent() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let directory = api.mkdir(ROOT, "d", 0o750).await.unwrap();
    assert_eq!((kind(&directory), directory.perm, directory.nlink, directory.size), (FileKind::Directory, 0o750, 2, 0));
    assert_eq!(api.getattr(ROOT).await.unwrap().nlink, 3);
    let nested = api.mkdir(directory.ino, "e", 0o700).await.unwrap();
    assert_eq!(nested.nlink, 2);
    let parent = api.getattr(directory.ino).await.unwrap();
    assert_eq!((parent.nlink, parent.size), (3, 1));
    assert_eq!(api.getattr(ROOT).await.unwrap().nlink, 3, "grandchildren do not count");
    assert_errno(api.mkdir(ROOT, "d", 0o755).await, libc::EEXIST);
    api.create(ROOT, "f", 0o644).await.unwrap();
    assert_errno(api.mkdir(ROOT, "f", 0o755).await, libc::EEXIST);
    assert_errno(api.mkdir(777_777, "x", 0o755).await, libc::ENOENT);
    api.checked_dump().await;
}

// ----- unlink, rmdir -----

/// Unlink removes a name; the inode lives while other hard links remain; directories get
/// EISDIR and missing names ENOENT.
#[tokio::test]
async fn unlink_removes_names() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "a", 0o644).await.unwrap();
    api.link(file.ino, ROOT, "b").await.unwrap();
    tick().await;
    api.unlink(ROOT, "a").await.unwrap();
    assert_errno(api.lookup(ROOT, "a").await, libc::ENOENT);
    let survivor = api.getattr(file.ino).await.unwrap();
    assert_eq!(survivor.nlink, 1);
    assert!(nanos(&survivor.ctime) > nanos(&file.ctime), "unlink changes the inode's ctime");
    api.unlink(ROOT, "b").await.unwrap();
    assert_errno(api.getattr(file.ino).await, libc::ENOENT);

    api.mkdir(ROOT, "d", 0o755).await.unwrap();
    assert_errno(api.unlink(ROOT, "d").await, libc::EISDIR);
    assert_errno(api.unlink(ROOT, "a").await, libc::ENOENT);
    assert_errno(api.unlink(777_777, "a").await, libc::ENOENT);
    assert_eq!(api.getattr(ROOT).await.unwrap().size, 1);
    api.checked_dump().await;
}

/// Rmdir removes empty directories only: ENOTEMPTY, ENOTDIR and ENOENT otherwise.
#[tokio::test]
async fn rmdir_removes_empty_directories_only() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    api.create(directory.ino, "f", 0o644).await.unwrap();
    assert_errno(api.rmdir(ROOT, "d").await, libc::ENOTEMPTY);
    api.mkdir(directory.ino, "sub", 0o755).await.unwrap();
    api.unlink(directory.ino, "f").await.unwrap();
    assert_errno(api.rmdir(ROOT, "d").await, libc::ENOTEMPTY);
    api.rmdir(directory.ino, "sub").await.unwrap();
    assert_eq!(api.getattr(directory.ino).await.unwrap().nlink, 2);
    api.create(ROOT, "file", 0o644).await.unwrap();
    assert_errno(api.rmdir(ROOT, "file").await, libc::ENOTDIR);
    assert_errno(api.rmdir(ROOT, "missing").await, libc::ENOENT);
    assert_eq!(api.getattr(ROOT).await.unwrap().nlink, 3);
    api.rmdir(ROOT, "d").await.unwrap();
    assert_eq!(api.getattr(ROOT).await.unwrap().nlink, 2);
    assert_errno(api.getattr(directory.ino).await, libc::ENOENT);
    api.checked_dump().await;
}

// ----- rename -----

/// Rename moves names, replaces a file or an empty directory, and keeps link counts right.
#[tokio::test]
async fn rename_moves_and_replaces() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let source = api.create(ROOT, "source", 0o644).await.unwrap();
    tick().await;
    api.rename(ROOT, "source", ROOT, "moved", RenameMode::RenameReplace).await.unwrap();
    assert_errno(api.lookup(ROOT, "source").await, libc::ENOENT);
    let moved = api.lookup(ROOT, "moved").await.unwrap();
    assert_eq!(moved.ino, source.ino);
    assert!(nanos(&moved.ctime) > nanos(&source.ctime), "rename changes the moved inode's ctime");

    // Replace a file: the old target's inode goes.
    let victim = api.create(ROOT, "victim", 0o600).await.unwrap();
    api.rename(ROOT, "moved", ROOT, "victim", RenameMode::RenameReplace).await.unwrap();
    assert_eq!(api.lookup(ROOT, "victim").await.unwrap().ino, source.ino);
    assert_errno(api.getattr(victim.ino).await, libc::ENOENT);
    assert_errno(api.lookup(ROOT, "moved").await, libc::ENOENT);

    // Replace an empty directory in another parent: link counts of both parents.
    let left = api.mkdir(ROOT, "left", 0o755).await.unwrap();
    let right = api.mkdir(ROOT, "right", 0o755).await.unwrap();
    let mover = api.mkdir(left.ino, "mover", 0o755).await.unwrap();
    api.create(mover.ino, "content", 0o644).await.unwrap();
    let empty = api.mkdir(right.ino, "empty", 0o755).await.unwrap();
    assert_eq!((api.getattr(left.ino).await.unwrap().nlink, api.getattr(right.ino).await.unwrap().nlink), (3, 3));
    api.rename(left.ino, "mover", right.ino, "empty", RenameMode::RenameReplace).await.unwrap();
    assert_errno(api.getattr(empty.ino).await, libc::ENOENT);
    assert_eq!(api.lookup(right.ino, "empty").await.unwrap().ino, mover.ino);
    assert_eq!(api.lookup(mover.ino, "content").await.unwrap().size, 0, "the moved directory keeps its entries");
    let (left_after, right_after) = (api.getattr(left.ino).await.unwrap(), api.getattr(right.ino).await.unwrap());
    assert_eq!((left_after.nlink, left_after.size), (2, 0));
    assert_eq!((right_after.nlink, right_after.size), (3, 1));

    // Move a directory to another parent without replacing.
    api.rename(right.ino, "empty", left.ino, "back", RenameMode::RenameReplace).await.unwrap();
    assert_eq!((api.getattr(left.ino).await.unwrap().nlink, api.getattr(right.ino).await.unwrap().nlink), (3, 2));
    // ... and onto itself: nothing happens.
    api.rename(left.ino, "back", left.ino, "back", RenameMode::RenameReplace).await.unwrap();
    assert_eq!(api.lookup(left.ino, "back").await.unwrap().ino, mover.ino);
    api.checked_dump().await;
}

/// Rename refuses with the errno Linux gives: ENOTEMPTY, EISDIR, ENOTDIR, EINVAL (own
/// subtree), EEXIST (RENAME_NOREPLACE), ENOENT; a refused rename changes nothing.
#[tokio::test]
async fn rename_refusals_carry_linux_errnos() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "file", 0o644).await.unwrap();
    let other = api.create(ROOT, "other", 0o644).await.unwrap();
    let a = api.mkdir(ROOT, "a", 0o755).await.unwrap();
    let b = api.mkdir(a.ino, "b", 0o755).await.unwrap();
    let c = api.mkdir(b.ino, "c", 0o755).await.unwrap();
    let full = api.mkdir(ROOT, "full", 0o755).await.unwrap();
    api.create(full.ino, "x", 0o644).await.unwrap();
    api.mkdir(ROOT, "empty", 0o755).await.unwrap();
    let before = api.checked_dump().await;

    assert_errno(api.rename(ROOT, "a", ROOT, "full", RenameMode::RenameReplace).await, libc::ENOTEMPTY);
    assert_errno(api.rename(ROOT, "file", ROOT, "empty", RenameMode::RenameReplace).await, libc::EISDIR);
    assert_errno(api.rename(ROOT, "empty", ROOT, "file", RenameMode::RenameReplace).await, libc::ENOTDIR);
    assert_errno(api.rename(ROOT, "a", c.ino, "a", RenameMode::RenameReplace).await, libc::EINVAL);
    assert_errno(api.rename(ROOT, "a", a.ino, "inside", RenameMode::RenameReplace).await, libc::EINVAL);
    assert_errno(api.rename(ROOT, "a", b.ino, "x", RenameMode::RenameNoreplace).await, libc::EINVAL);
    assert_errno(api.rename(ROOT, "file", ROOT, "other", RenameMode::RenameNoreplace).await, libc::EEXIST);
    assert_errno(api.rename(ROOT, "empty", ROOT, "full", RenameMode::RenameNoreplace).await, libc::EEXIST);
    assert_errno(api.rename(ROOT, "missing", ROOT, "new", RenameMode::RenameReplace).await, libc::ENOENT);
    assert_errno(api.rename(777_777, "file", ROOT, "new", RenameMode::RenameReplace).await, libc::ENOENT);
    assert_errno(api.rename(ROOT, "file", 777_777, "new", RenameMode::RenameReplace).await, libc::ENOENT);
    assert_errno(api.rename(ROOT, "file", file.ino, "new", RenameMode::RenameReplace).await, libc::ENOTDIR);
    assert_eq!(api.checked_dump().await, before, "refused renames changed the namespace");

    api.rename(ROOT, "file", ROOT, "fresh", RenameMode::RenameNoreplace).await.unwrap();
    assert_eq!(api.lookup(ROOT, "fresh").await.unwrap().ino, file.ino);
    assert_eq!(api.lookup(ROOT, "other").await.unwrap().ino, other.ino);
    api.checked_dump().await;
}

/// RENAME_EXCHANGE swaps two names atomically, also a directory with a file across parents
/// (moving a link count from one parent to the other); a missing target is ENOENT.
#[tokio::test]
async fn rename_exchange_swaps_entries() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let one = api.create(ROOT, "one", 0o644).await.unwrap();
    let two = api.create(ROOT, "two", 0o600).await.unwrap();
    api.rename(ROOT, "one", ROOT, "two", RenameMode::RenameExchange).await.unwrap();
    assert_eq!(api.lookup(ROOT, "one").await.unwrap().ino, two.ino);
    assert_eq!(api.lookup(ROOT, "two").await.unwrap().ino, one.ino);
    assert_eq!(api.getattr(ROOT).await.unwrap().size, 2);

    let left = api.mkdir(ROOT, "left", 0o755).await.unwrap();
    let right = api.mkdir(ROOT, "right", 0o755).await.unwrap();
    let directory = api.mkdir(left.ino, "dir", 0o755).await.unwrap();
    api.create(directory.ino, "inner", 0o644).await.unwrap();
    let file = api.create(right.ino, "file", 0o644).await.unwrap();
    assert_eq!((api.getattr(left.ino).await.unwrap().nlink, api.getattr(right.ino).await.unwrap().nlink), (3, 2));
    tick().await;
    api.rename(left.ino, "dir", right.ino, "file", RenameMode::RenameExchange).await.unwrap();
    assert_eq!(api.lookup(left.ino, "dir").await.unwrap().ino, file.ino);
    assert_eq!(api.lookup(right.ino, "file").await.unwrap().ino, directory.ino);
    let (left_after, right_after) = (api.getattr(left.ino).await.unwrap(), api.getattr(right.ino).await.unwrap());
    assert_eq!((left_after.nlink, left_after.size), (2, 1), "left lost a subdirectory");
    assert_eq!((right_after.nlink, right_after.size), (3, 1), "right gained a subdirectory");
    assert!(nanos(&api.getattr(file.ino).await.unwrap().ctime) > nanos(&file.ctime));
    assert_eq!(api.lookup(directory.ino, "inner").await.unwrap().nlink, 1);
    // The directory now lives under right: moving right into it is refused.
    assert_errno(api.rename(ROOT, "right", directory.ino, "loop", RenameMode::RenameReplace).await, libc::EINVAL);
    // Exchanging a directory with a name inside its own subtree is refused too.
    let deep = api.create(directory.ino, "deep", 0o644).await.unwrap();
    assert_errno(api.rename(ROOT, "right", directory.ino, "deep", RenameMode::RenameExchange).await, libc::EINVAL);
    assert_eq!(api.lookup(directory.ino, "deep").await.unwrap().ino, deep.ino);

    assert_errno(api.rename(ROOT, "one", ROOT, "missing", RenameMode::RenameExchange).await, libc::ENOENT);
    assert_errno(api.rename(ROOT, "missing", ROOT, "one", RenameMode::RenameExchange).await, libc::ENOENT);
    api.checked_dump().await;
}

/// Renaming a name onto another hard link of the same inode does nothing: both names stay.
#[tokio::test]
async fn rename_onto_another_link_of_the_same_inode_is_a_no_op() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "a", 0o644).await.unwrap();
    api.link(file.ino, ROOT, "b").await.unwrap();
    let before = api.checked_dump().await;
    api.rename(ROOT, "a", ROOT, "b", RenameMode::RenameReplace).await.unwrap();
    assert_eq!(api.lookup(ROOT, "a").await.unwrap().ino, file.ino);
    assert_eq!(api.lookup(ROOT, "b").await.unwrap().ino, file.ino);
    assert_eq!(api.getattr(file.ino).await.unwrap().nlink, 2);
    assert_eq!(api.checked_dump().await, before);
}

// ----- link, symlink, readlink -----

/// Link adds a name and a link count (ctime advances); directories are EPERM, taken names
/// EEXIST, missing inodes ENOENT.
#[tokio::test]
async fn link_adds_names_to_non_directories() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    tick().await;
    let linked = api.link(file.ino, directory.ino, "g").await.unwrap();
    assert_eq!((linked.ino, linked.nlink), (file.ino, 2));
    assert!(nanos(&linked.ctime) > nanos(&file.ctime));
    assert_eq!(api.lookup(directory.ino, "g").await.unwrap().ino, file.ino);
    assert_eq!(api.link(file.ino, ROOT, "h").await.unwrap().nlink, 3);
    assert_eq!(api.getattr(directory.ino).await.unwrap().nlink, 2, "file links do not count for the directory");
    let symlink = api.symlink(ROOT, "s", "f").await.unwrap();
    assert_eq!(api.link(symlink.ino, ROOT, "s2").await.unwrap().nlink, 2, "symlinks can be hard-linked");

    assert_errno(api.link(directory.ino, ROOT, "dlink").await, libc::EPERM);
    assert_errno(api.link(file.ino, ROOT, "d").await, libc::EEXIST);
    assert_errno(api.link(file.ino, directory.ino, "g").await, libc::EEXIST);
    assert_errno(api.link(777_777, ROOT, "nothing").await, libc::ENOENT);
    assert_errno(api.link(file.ino, 777_777, "nowhere").await, libc::ENOENT);
    assert_eq!(api.getattr(file.ino).await.unwrap().nlink, 3);
    api.checked_dump().await;
}

/// Symlink stores its target (size = target length, mode 0777); readlink returns it and gives
/// EINVAL for other kinds; bad targets are refused.
#[tokio::test]
async fn symlink_and_readlink() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let target = "../some/where/else";
    let link = api.symlink(ROOT, "link", target).await.unwrap();
    assert_eq!((kind(&link), link.perm, link.size, link.nlink), (FileKind::Symlink, 0o777, target.len() as u64, 1));
    assert_eq!(api.readlink(link.ino).await.unwrap(), target.as_bytes());
    let long_target = "t".repeat(4096);
    let long = api.symlink(ROOT, "long", &long_target).await.unwrap();
    assert_eq!(api.readlink(long.ino).await.unwrap(), long_target.as_bytes());

    let file = api.create(ROOT, "file", 0o644).await.unwrap();
    assert_errno(api.readlink(file.ino).await, libc::EINVAL);
    assert_errno(api.readlink(ROOT).await, libc::EINVAL);
    assert_errno(api.readlink(777_777).await, libc::ENOENT);
    assert_errno(api.symlink(ROOT, "link", "x").await, libc::EEXIST);
    assert_errno(api.symlink(ROOT, "empty", "").await, libc::EINVAL);
    assert_errno(api.symlink(ROOT, "nul", "a\0b").await, libc::EINVAL);
    assert_errno(api.symlink(ROOT, "too-long", "t".repeat(4097)).await, libc::ENAMETOOLONG);
    api.checked_dump().await;
}

// ----- readdir -----

/// Readdir pages through a directory in name order from a name cursor (also one that was
/// deleted meanwhile), with attributes for readdirplus; non-directories give ENOTDIR.
#[tokio::test]
async fn readdir_pages_by_name_cursor() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    let mut expected = Vec::new();
    for index in 0..50 {
        let name = format!("entry-{index:02}");
        if index % 10 == 0 {
            api.mkdir(directory.ino, &name, 0o755).await.unwrap();
        } else {
            api.create(directory.ino, &name, 0o644).await.unwrap();
        }
        expected.push(name);
    }
    let all = api.readdir_all(directory.ino, 7).await.unwrap();
    assert_eq!(names(&all), expected);
    for entry in &all {
        let attr = api.lookup(directory.ino, &entry.name).await.unwrap();
        assert_eq!((entry.ino, entry.kind), (attr.ino, attr.kind));
    }

    let first = api.readdir_page(directory.ino, b"", 10, true).await.unwrap();
    assert_eq!(names(&first.entries), expected[..10]);
    assert!(!first.end);
    for entry in &first.entries {
        assert_eq!(entry.attr.as_ref().expect("readdirplus attributes").ino, entry.ino);
    }
    // The cursor name itself may disappear: the listing resumes after it.
    api.unlink(directory.ino, "entry-09").await.unwrap();
    let next = api.readdir_page(directory.ino, b"entry-09", 3, false).await.unwrap();
    assert_eq!(names(&next.entries), ["entry-10", "entry-11", "entry-12"]);
    let last = api.readdir_page(directory.ino, b"entry-47", 10, false).await.unwrap();
    assert_eq!((names(&last.entries), last.end), (vec!["entry-48".to_string(), "entry-49".to_string()], true));
    let past = api.readdir_page(directory.ino, b"zzz", 10, false).await.unwrap();
    assert!(past.entries.is_empty() && past.end);

    let empty = api.mkdir(ROOT, "empty", 0o755).await.unwrap();
    let listing = api.readdir_page(empty.ino, b"", 10, false).await.unwrap();
    assert!(listing.entries.is_empty() && listing.end);
    let file = api.create(ROOT, "file", 0o644).await.unwrap();
    assert_errno(api.readdir_page(file.ino, b"", 10, false).await, libc::ENOTDIR);
    assert_errno(api.readdir_page(777_777, b"", 10, false).await, libc::ENOENT);
    api.checked_dump().await;
}

/// While another client keeps creating and deleting other names in the directory, a reader
/// paging with a small limit sees every name that stays exactly once, and no name twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_is_stable_under_concurrent_changes() {
    const STABLE_NAMES: usize = 200;
    const PASSES: usize = 6;
    let server = server(&[]);
    let mut reader = client(&server, "reader").await;
    let directory = reader.mkdir(ROOT, "d", 0o755).await.unwrap().ino;
    let stable: BTreeSet<String> = (0..STABLE_NAMES).map(|index| format!("n{index:03}")).collect();
    for name in &stable {
        reader.create(directory, name, 0o644).await.unwrap();
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churner = client(&server, "churner").await;
    let churn = tokio::spawn({
        let stop = stop.clone();
        async move {
            // Names sort between the stable ones ("n042x7" after "n042"), so every page boundary
            // sees creations and deletions around it.
            let mut counter = 0u64;
            let mut live = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                counter += 1;
                let name = format!("n{:03}x{counter}", (counter * 37) % STABLE_NAMES as u64);
                churner.create(directory, &name, 0o644).await.expect("churn create");
                live.push_back(name);
                if live.len() > 20 {
                    let victim = live.pop_front().expect("non-empty");
                    churner.unlink(directory, &victim).await.expect("churn unlink");
                }
            }
            counter
        }
    });

    for pass in 0..PASSES {
        let mut seen = BTreeSet::new();
        let mut after = Vec::new();
        let limit = [3, 5, 7][pass % 3];
        loop {
            let page = reader.readdir_page(directory, &after, limit, false).await.unwrap();
            for entry in &page.entries {
                let name = String::from_utf8(entry.name.clone()).unwrap();
                assert!(name > String::from_utf8_lossy(&after).into_owned(), "pages go forward in name order");
                assert!(seen.insert(name.clone()), "pass {pass}: {name} returned twice");
            }
            match page.entries.last() {
                Some(last) if !page.end => after = last.name.clone(),
                _ => break,
            }
        }
        let missing: Vec<&String> = stable.difference(&seen).collect();
        assert!(missing.is_empty(), "pass {pass}: stable names skipped: {missing:?}");
        assert!(seen.iter().all(|name| stable.contains(name) || name.contains('x')), "unknown names: {seen:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.await.expect("churner");
    assert!(churned > 0, "the churner ran");
    reader.checked_dump().await;
}

// ----- xattrs -----

/// Xattrs: set/get/list/remove with XATTR_CREATE/XATTR_REPLACE, and ENODATA, EEXIST, ERANGE
/// (get and list into a small buffer) and E2BIG (value over 64 KiB).
#[tokio::test]
async fn xattrs_follow_linux_semantics() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    tick().await;
    api.set_xattr(file.ino, "user.b", "two", XattrMode::XattrUpsert).await.unwrap();
    assert!(nanos(&api.getattr(file.ino).await.unwrap().ctime) > nanos(&file.ctime), "setxattr changes ctime");
    api.set_xattr(file.ino, "user.a", "one", XattrMode::XattrCreate).await.unwrap();
    assert_eq!(api.get_xattr(file.ino, "user.a", 0).await.unwrap(), b"one");
    assert_eq!(api.get_xattr(file.ino, "user.a", 3).await.unwrap(), b"one");
    assert_errno(api.get_xattr(file.ino, "user.a", 2).await, libc::ERANGE);
    assert_errno(api.get_xattr(file.ino, "user.missing", 0).await, libc::ENODATA);

    assert_errno(api.set_xattr(file.ino, "user.a", "again", XattrMode::XattrCreate).await, libc::EEXIST);
    assert_errno(api.set_xattr(file.ino, "user.c", "x", XattrMode::XattrReplace).await, libc::ENODATA);
    assert_eq!(api.get_xattr(file.ino, "user.a", 0).await.unwrap(), b"one", "a refused set changed nothing");
    api.set_xattr(file.ino, "user.a", "uno", XattrMode::XattrReplace).await.unwrap();
    api.set_xattr(file.ino, "user.b", "dos", XattrMode::XattrUpsert).await.unwrap();
    assert_eq!(api.get_xattr(file.ino, "user.a", 0).await.unwrap(), b"uno");
    assert_eq!(api.get_xattr(file.ino, "user.b", 0).await.unwrap(), b"dos");

    let list = b"user.a\0user.b\0";
    assert_eq!(api.list_xattr(file.ino, 0).await.unwrap(), list);
    assert_eq!(api.list_xattr(file.ino, list.len() as u32).await.unwrap(), list);
    assert_errno(api.list_xattr(file.ino, list.len() as u32 - 1).await, libc::ERANGE);

    let largest = vec![0xa5u8; 64 * 1024];
    api.set_xattr(file.ino, "user.big", &largest, XattrMode::XattrUpsert).await.unwrap();
    assert_eq!(api.get_xattr(file.ino, "user.big", 0).await.unwrap(), largest);
    assert_errno(
        api.set_xattr(file.ino, "user.huge", vec![1u8; 64 * 1024 + 1], XattrMode::XattrUpsert).await,
        libc::E2BIG,
    );
    api.set_xattr(file.ino, "user.empty", "", XattrMode::XattrUpsert).await.unwrap();
    assert_eq!(api.get_xattr(file.ino, "user.empty", 0).await.unwrap(), b"");

    api.remove_xattr(file.ino, "user.a").await.unwrap();
    assert_errno(api.get_xattr(file.ino, "user.a", 0).await, libc::ENODATA);
    assert_errno(api.remove_xattr(file.ino, "user.a").await, libc::ENODATA);
    assert_eq!(api.list_xattr(file.ino, 0).await.unwrap(), b"user.b\0user.big\0user.empty\0");

    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    api.set_xattr(directory.ino, "trusted.x", "dir", XattrMode::XattrCreate).await.unwrap();
    assert_eq!(api.get_xattr(directory.ino, "trusted.x", 0).await.unwrap(), b"dir");
    assert_eq!(api.list_xattr(ROOT, 0).await.unwrap(), b"");
    assert_errno(api.get_xattr(777_777, "user.a", 0).await, libc::ENOENT);
    assert_errno(api.list_xattr(777_777, 0).await, libc::ENOENT);
    assert_errno(api.set_xattr(777_777, "user.a", "x", XattrMode::XattrUpsert).await, libc::ENOENT);
    assert_errno(api.remove_xattr(777_777, "user.a").await, libc::ENOENT);
    api.checked_dump().await;
}

// ----- statfs, set_layout, fsync, allocate_inodes -----

/// Statfs reports the inode count, file bytes, a block size and NAME_MAX 255.
#[tokio::test]
async fn statfs_reports_usage_and_limits() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    api.mkdir(ROOT, "d", 0o755).await.unwrap();
    api.setattr(pb::SetAttrRequest { size: Some(12_345), ..setattr(file.ino) }).await.unwrap();
    let statfs = api.client.statfs(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(statfs.inodes, 3);
    assert_eq!(statfs.bytes, 12_345);
    assert_eq!(statfs.name_max, 255);
    assert!(statfs.block_size > 0);
    assert!(statfs.inodes_free > 0 && statfs.bytes_free > 0);
    api.checked_dump().await;
}

/// SetLayout records a file's size, chunk size and mtime; only regular files have a layout.
#[tokio::test]
async fn set_layout_records_size_and_chunk_size() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    assert_eq!(file.chunk_size_bytes, 0);
    let mtime = pb::Timestamp { seconds: 1_700_000_000, nanoseconds: 42 };
    let request = pb::SetLayoutRequest {
        ino: file.ino,
        size: 10 << 20,
        chunk_size_bytes: 4 << 20,
        mtime: Some(mtime),
        chunks: Vec::new(),
    };
    let attr = api.client.set_layout(request).await.unwrap().into_inner().attr.unwrap();
    assert_eq!((attr.size, attr.chunk_size_bytes, attr.mtime), (10 << 20, 4 << 20, Some(mtime)));
    assert_eq!(api.getattr(file.ino).await.unwrap(), attr);
    // Without an mtime the server's clock is used.
    let before = wall_clock_nanos();
    let request =
        pb::SetLayoutRequest { ino: file.ino, size: 5, chunk_size_bytes: 4 << 20, mtime: None, chunks: Vec::new() };
    let attr = api.client.set_layout(request).await.unwrap().into_inner().attr.unwrap();
    assert_eq!(attr.size, 5);
    assert!(nanos(&attr.mtime) >= before);

    let directory = api.mkdir(ROOT, "d", 0o755).await.unwrap();
    let request =
        pb::SetLayoutRequest { ino: directory.ino, size: 1, chunk_size_bytes: 1, mtime: None, chunks: Vec::new() };
    assert_errno(api.client.set_layout(request).await, libc::EINVAL);
    let request = pb::SetLayoutRequest { ino: 777_777, size: 1, chunk_size_bytes: 1, mtime: None, chunks: Vec::new() };
    assert_errno(api.client.set_layout(request).await, libc::ENOENT);
    api.checked_dump().await;
}

/// Fsync returns for existing inodes once everything acknowledged is durable; ENOENT otherwise.
#[tokio::test]
async fn fsync_waits_for_durability() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "f", 0o644).await.unwrap();
    api.client.fsync(pb::InoRequest { ino: file.ino }).await.unwrap();
    api.client.fsync(pb::InoRequest { ino: ROOT }).await.unwrap();
    let status = api.status().await.unwrap();
    assert!(status.journal_durable_seq >= 2, "the session open and the create are durable: {status:?}");
    assert_errno(api.client.fsync(pb::InoRequest { ino: 777_777 }).await, libc::ENOENT);
    api.checked_dump().await;
}

/// Inode ranges never overlap each other or inodes the MDS assigns later, also after a
/// restart; a count of 0 is EINVAL.
#[tokio::test]
async fn allocated_inode_ranges_never_overlap() {
    let mut server = server(&[]);
    let mut api = client(&server, "api").await;
    let mut taken: Vec<(u64, u64)> = Vec::new();
    let mut assigned = vec![api.create(ROOT, "before", 0o644).await.unwrap().ino];
    for count in [100, 1, 1000, 7] {
        let range = api.client.allocate_inodes(pb::AllocateInodesRequest { count }).await.unwrap().into_inner();
        assert_eq!(range.end - range.start, count, "{range:?}");
        taken.push((range.start, range.end));
        assigned.push(api.create(ROOT, format!("after-{count}"), 0o644).await.unwrap().ino);
        assigned.push(api.mkdir(ROOT, format!("dir-{count}"), 0o755).await.unwrap().ino);
    }
    assert_errno(api.client.allocate_inodes(pb::AllocateInodesRequest { count: 0 }).await, libc::EINVAL);

    // Killed and restarted: the allocator is durable too. The old session reports that it
    // reconnected (an empty Replay: nothing to replay), which ends the reconnect phase that
    // holds namespace operations until every session known before the restart has.
    server.mds.restart().unwrap();
    let reconnected = wait_until(PATIENCE, || {
        let mut old = api.client.clone();
        // The first call on the old connection may find it broken by the restart.
        async move { old.replay(pb::ReplayRequest { records: vec![] }).await.is_ok() }
    })
    .await;
    assert!(reconnected, "the old session could not report its reconnection");
    let mut api = client(&server, "api").await;
    assigned.push(api.create(ROOT, "after-restart", 0o644).await.unwrap().ino);
    let range = api.client.allocate_inodes(pb::AllocateInodesRequest { count: 10 }).await.unwrap().into_inner();
    taken.push((range.start, range.end));
    assigned.push(api.symlink(ROOT, "last", "x").await.unwrap().ino);

    taken.sort();
    for pair in taken.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "ranges overlap: {taken:?}");
    }
    for ino in &assigned {
        assert!(
            taken.iter().all(|(start, end)| ino < start || ino >= end),
            "inode {ino} assigned inside an allocated range: {taken:?}"
        );
    }
    api.checked_dump().await;
}

// ----- names and parents -----

/// Names over 255 bytes are ENAMETOOLONG, names with '/' or NUL are EINVAL, for every
/// operation that takes a new or existing name; 255 bytes is fine.
#[tokio::test]
async fn names_are_validated() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "file", 0o644).await.unwrap();
    let longest = "l".repeat(255);
    api.create(ROOT, &longest, 0o644).await.unwrap();
    assert_eq!(api.lookup(ROOT, &longest).await.unwrap().nlink, 1);
    let too_long = "l".repeat(256);
    let mode = RenameMode::RenameReplace;
    for (bad, errno) in [(too_long.as_str(), libc::ENAMETOOLONG), ("a/b", libc::EINVAL), ("a\0b", libc::EINVAL)] {
        assert_errno(api.create(ROOT, bad, 0o644).await, errno);
        assert_errno(api.mknod(ROOT, bad, FileKind::Fifo, 0o644, 0).await, errno);
        assert_errno(api.mkdir(ROOT, bad, 0o755).await, errno);
        assert_errno(api.symlink(ROOT, bad, "target").await, errno);
        assert_errno(api.link(file.ino, ROOT, bad).await, errno);
        assert_errno(api.rename(ROOT, "file", ROOT, bad, mode).await, errno);
        assert_errno(api.rename(ROOT, bad, ROOT, "new", mode).await, errno);
        assert_errno(api.unlink(ROOT, bad).await, errno);
        assert_errno(api.rmdir(ROOT, bad).await, errno);
    }
    assert_errno(api.lookup(ROOT, &too_long).await, libc::ENAMETOOLONG);
    assert_eq!(names(&api.readdir_all(ROOT, 100).await.unwrap()), ["file".to_string(), longest]);
    api.checked_dump().await;
}

/// Every operation given a regular file where a directory belongs reports ENOTDIR.
#[tokio::test]
async fn a_file_as_parent_is_enotdir() {
    let server = server(&[]);
    let mut api = client(&server, "api").await;
    let file = api.create(ROOT, "file", 0o644).await.unwrap().ino;
    let other = api.create(ROOT, "other", 0o644).await.unwrap().ino;
    let mode = RenameMode::RenameReplace;
    assert_errno(api.lookup(file, "x").await, libc::ENOTDIR);
    assert_errno(api.create(file, "x", 0o644).await, libc::ENOTDIR);
    assert_errno(api.mkdir(file, "x", 0o755).await, libc::ENOTDIR);
    assert_errno(api.symlink(file, "x", "t").await, libc::ENOTDIR);
    assert_errno(api.link(other, file, "x").await, libc::ENOTDIR);
    assert_errno(api.unlink(file, "x").await, libc::ENOTDIR);
    assert_errno(api.rmdir(file, "x").await, libc::ENOTDIR);
    assert_errno(api.rename(file, "x", ROOT, "y", mode).await, libc::ENOTDIR);
    assert_errno(api.rename(ROOT, "other", file, "y", mode).await, libc::ENOTDIR);
    assert_errno(api.readdir_page(file, b"", 10, false).await, libc::ENOTDIR);
    api.checked_dump().await;
}

// ----- status and dump -----

/// Status reports version, sessions, inode count, journal progress and per-operation counts;
/// dump lists every path and reports no invariant violation.
#[tokio::test]
async fn status_and_dump_describe_the_server() {
    let server = server(&["--flush-interval-ms", "20", "--snapshot-interval-ms", "100"]);
    let mut api = client(&server, "status-client").await;
    let directory = api.mkdir(ROOT, "dir", 0o755).await.unwrap();
    let file = api.create(directory.ino, "file", 0o644).await.unwrap();
    api.link(file.ino, ROOT, "hard").await.unwrap();
    api.symlink(ROOT, "sym", "dir/file").await.unwrap();
    api.set_xattr(file.ino, "user.k", "v", XattrMode::XattrUpsert).await.unwrap();
    api.getattr(file.ino).await.unwrap();

    let status = api.status().await.unwrap();
    assert!(!status.version.is_empty());
    assert_eq!(status.inodes, 4);
    let session = status.sessions.iter().find(|session| session.session == api.session).expect("our session listed");
    assert_eq!(session.client_name, "status-client");
    assert!(session.lease_remaining_ms > 0);
    assert!(status.journal_durable_seq >= 6, "{status:?}");
    assert!(status.journal_events >= 6 && status.journal_bytes > 0, "{status:?}");
    assert!(status.object_store_url.starts_with("file://"), "{status:?}");
    assert_eq!(status.operations.get("create"), Some(&1));
    assert_eq!(status.operations.get("getattr"), Some(&1));
    // The background pipeline catches up: store flushed, snapshot taken.
    let durable = status.journal_durable_seq;
    let caught_up = wait_until(PATIENCE, || {
        let mut api = api.clone();
        async move {
            let status = api.status().await.unwrap();
            status.store_applied_seq >= durable && status.snapshot_seq >= durable
        }
    })
    .await;
    assert!(caught_up, "flush and snapshot did not catch up: {:?}", api.status().await);

    let dump = api.checked_dump().await;
    for path in ["/ ", "/dir ", "/dir/file ", "/hard ", "/sym "] {
        assert!(dump.contains(path), "dump lacks {path:?}:\n{dump}");
    }
    assert!(dump.contains(&format!("/hard ino={}", file.ino)), "{dump}");
    assert!(dump.contains("user.k"), "{dump}");
}

// ----- authentication and sessions -----

/// With --token-file, clients without the token or with a wrong one are UNAUTHENTICATED on
/// every call; the right token is accepted.
#[tokio::test]
async fn token_file_gates_every_client() {
    let directory = tempfile::tempdir().unwrap();
    let token_path = directory.path().join("token");
    cudele_e2e::write_secret_file(&token_path, "s3cret-token\n").unwrap();
    let data_dir = directory.path().join("data");
    let mds = MdsProcess::start(&data_dir, &["--token-file", token_path.to_str().unwrap()]).unwrap();
    let open = pb::OpenSessionRequest { client_name: "x".into() };

    let mut anonymous = connect(mds.address, Headers::default()).await.unwrap();
    assert_unauthenticated(anonymous.open_session(open.clone()).await);
    assert_unauthenticated(anonymous.get_attr(pb::InoRequest { ino: ROOT }).await);
    assert_unauthenticated(anonymous.status(pb::StatusRequest::default()).await);

    let wrong = Headers { token: Some("s3cret-tokem".into()), session: None };
    let mut impostor = connect(mds.address, wrong).await.unwrap();
    assert_unauthenticated(impostor.open_session(open.clone()).await);
    assert_unauthenticated(impostor.dump(pb::Empty {}).await);
    let prefix = Headers { token: Some("s3cret".into()), session: None };
    assert_unauthenticated(connect(mds.address, prefix).await.unwrap().open_session(open.clone()).await);

    let mut api = Api::open(mds.address, Some("s3cret-token".into()), "trusted").await.unwrap();
    api.create(ROOT, "f", 0o644).await.unwrap();
    // A valid session credential does not stand in for the token.
    let stolen = Headers { token: None, session: Some(api.credential.clone()) };
    assert_unauthenticated(connect(mds.address, stolen).await.unwrap().get_attr(pb::InoRequest { ino: ROOT }).await);
    // Dump is an operator's view: the client token does not admit it.
    assert_eq!(api.dump().await.expect_err("dump needs the admin token").code(), tonic::Code::PermissionDenied);
    api.lookup(ROOT, "f").await.unwrap();
}

/// Sessions open, heartbeat and close; a closed or unknown session is UNAUTHENTICATED.
#[tokio::test]
async fn sessions_open_heartbeat_and_close() {
    let server = server(&[]);
    let mut first = client(&server, "first").await;
    let mut second = client(&server, "second").await;
    assert_ne!(first.session, second.session);
    let status = first.status().await.unwrap();
    let listed: Vec<(u64, String)> =
        status.sessions.iter().map(|session| (session.session, session.client_name.clone())).collect();
    assert!(listed.contains(&(first.session, "first".to_string())), "{listed:?}");
    assert!(listed.contains(&(second.session, "second".to_string())), "{listed:?}");

    first.client.heartbeat(pb::Empty {}).await.unwrap();
    second.client.close_session(pb::Empty {}).await.unwrap();
    assert_unauthenticated(second.client.heartbeat(pb::Empty {}).await);
    assert_unauthenticated(second.create(ROOT, "late", 0o644).await);
    assert_unauthenticated(second.client.subscribe(pb::Empty {}).await);
    let status = first.status().await.unwrap();
    assert!(status.sessions.iter().all(|session| session.session != second.session), "{status:?}");
    first.create(ROOT, "still-fine", 0o644).await.unwrap();

    let unknown = Headers { token: None, session: Some("987654.00112233445566778899aabbccddeeff".into()) };
    let mut stranger = connect(server.mds.address, unknown).await.unwrap();
    assert_unauthenticated(stranger.heartbeat(pb::Empty {}).await);
    assert_unauthenticated(
        stranger.create(pb::CreateRequest { parent: ROOT, name: b"x".to_vec(), kind: 1, ..Default::default() }).await,
    );
    first.checked_dump().await;
}

/// Session ids are never reused: a session opened after the newest one closed gets a fresh
/// id, so a client still holding the closed id (say, back from a network partition) stays
/// UNAUTHENTICATED instead of silently sharing another mount's session and missing the
/// invalidations sent while it was away.
#[tokio::test]
async fn session_ids_are_never_reused() {
    let mut server = server(&[]);
    let mut first = client(&server, "first").await;
    let mut second = client(&server, "second").await;
    second.client.close_session(pb::Empty {}).await.unwrap();
    let third = client(&server, "third").await;
    assert_ne!(third.session, second.session, "a closed session's id was handed out again");
    assert_unauthenticated(second.client.heartbeat(pb::Empty {}).await);

    // Also across a restart (the id must be remembered durably).
    first.client.close_session(pb::Empty {}).await.unwrap();
    server.mds.restart().unwrap();
    let fourth = client(&server, "fourth").await;
    assert!(![first.session, second.session, third.session].contains(&fourth.session), "ids reused after restart");
    assert_unauthenticated(first.client.heartbeat(pb::Empty {}).await);
    let mut fourth = fourth;
    fourth.checked_dump().await;
}

/// A session that stops heartbeating expires after its lease (--lease-ms 500); then every
/// request it makes, read or write, is UNAUTHENTICATED.
#[tokio::test]
async fn a_silent_session_expires() {
    let server = server(&["--lease-ms", "500"]);
    let mut silent = client(&server, "silent").await;
    let file = silent.create(ROOT, "f", 0o644).await.unwrap();
    let mut observer = connect(server.mds.address, Headers::default()).await.unwrap();
    let session = silent.session;
    let expired = wait_until(PATIENCE, || {
        let mut observer = observer.clone();
        async move {
            let status = observer.status(pb::StatusRequest::default()).await.unwrap().into_inner();
            status.sessions.iter().all(|live| live.session != session)
        }
    })
    .await;
    assert!(expired, "session {session} never expired");
    assert_unauthenticated(silent.client.heartbeat(pb::Empty {}).await);
    assert_unauthenticated(silent.create(ROOT, "g", 0o644).await);
    assert_unauthenticated(silent.setattr(pb::SetAttrRequest { mode: Some(0o600), ..setattr(file.ino) }).await);
    assert_unauthenticated(silent.getattr(file.ino).await);
    assert_unauthenticated(silent.lookup(ROOT, "f").await);
    assert_unauthenticated(silent.readdir_page(ROOT, b"", 10, false).await);
    // A new session works.
    let mut fresh = client(&server, "fresh").await;
    fresh.create(ROOT, "g", 0o644).await.unwrap();
    let dump = observer.dump(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(dump.invariant_violation, "");
}

/// Heartbeats well within the lease keep a session alive across several lease periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_session_alive() {
    let server = server(&["--lease-ms", "1500"]);
    let mut api = client(&server, "steady").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4_000) {
        api.client.heartbeat(pb::Empty {}).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.create(ROOT, "alive", 0o644).await.unwrap();
    let status = api.status().await.unwrap();
    assert!(status.sessions.iter().any(|session| session.session == api.session));
    api.checked_dump().await;
}

// ----- invalidation push channel -----

/// Keeps a session's lease fresh in the background.
fn keep_alive(api: &Api) -> tokio::task::JoinHandle<()> {
    let mut client = api.client.clone();
    tokio::spawn(async move {
        loop {
            let _ = client.heartbeat(pb::Empty {}).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn next_invalidation(received: &mut tokio::sync::mpsc::UnboundedReceiver<pb::Invalidation>) -> pb::Invalidation {
    tokio::time::timeout(PATIENCE, received.recv()).await.expect("an invalidation in time").expect("subscriber alive")
}

fn names_entry(invalidation: &pb::Invalidation, parent: u64, name: &str) -> bool {
    invalidation.entries.iter().any(|entry| entry.parent == parent && entry.name == name.as_bytes())
}

/// A subscriber receives an invalidation naming the parent and name (or the inode) of each
/// create, chmod, rename and unlink by another client in what it read, and the writer's call
/// returns only after the subscriber acknowledged (it holds each ack back ~300 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_invalidation_acknowledgements() {
    let server = server(&["--invalidation-ack-timeout-ms", "20000"]);
    let mut writer = client(&server, "writer").await;
    let mut watcher = client(&server, "watcher").await;
    let heartbeat = keep_alive(&watcher);
    let mut stream = watcher.client.clone().subscribe(pb::Empty {}).await.unwrap().into_inner();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut acknowledger = watcher.client.clone();
    let subscriber = tokio::spawn(async move {
        while let Ok(Some(invalidation)) = stream.message().await {
            let id = invalidation.id;
            let _ = sender.send(invalidation);
            tokio::time::sleep(ACK_DELAY).await;
            acknowledger.ack_invalidation(pb::AckInvalidationRequest { id }).await.expect("ack");
        }
    });

    // Invalidations go to sessions that may cache what a write changes: what they read.
    assert_eq!(errno_of(&watcher.lookup(ROOT, "left").await.unwrap_err()), libc::ENOENT);
    let left = writer.mkdir(ROOT, "left", 0o755).await.unwrap().ino;
    let invalidation = next_invalidation(&mut received).await;
    assert!(names_entry(&invalidation, ROOT, "left"), "{invalidation:?}");
    let right = writer.mkdir(ROOT, "right", 0o755).await.unwrap().ino;
    next_invalidation(&mut received).await;
    watcher.readdir_all(left, 100).await.unwrap();
    watcher.readdir_all(right, 100).await.unwrap();

    let started = Instant::now();
    let file = writer.create(left, "f", 0o644).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= ACK_DELAY, "create returned after {elapsed:?}, before the acknowledgement");
    let invalidation = next_invalidation(&mut received).await;
    assert!(names_entry(&invalidation, left, "f"), "create: {invalidation:?}");
    assert!(invalidation.inodes.contains(&left), "create changes the parent: {invalidation:?}");
    assert_eq!(watcher.lookup(left, "f").await.unwrap().ino, file.ino);

    let started = Instant::now();
    writer.setattr(pb::SetAttrRequest { mode: Some(0o600), ..setattr(file.ino) }).await.unwrap();
    assert!(started.elapsed() >= ACK_DELAY, "chmod returned before the acknowledgement");
    let invalidation = next_invalidation(&mut received).await;
    assert!(invalidation.inodes.contains(&file.ino), "chmod: {invalidation:?}");

    let started = Instant::now();
    writer.rename(left, "f", right, "g", RenameMode::RenameReplace).await.unwrap();
    assert!(started.elapsed() >= ACK_DELAY, "rename returned before the acknowledgement");
    let invalidation = next_invalidation(&mut received).await;
    assert!(
        names_entry(&invalidation, left, "f") && names_entry(&invalidation, right, "g"),
        "rename: {invalidation:?}"
    );

    let started = Instant::now();
    writer.unlink(right, "g").await.unwrap();
    assert!(started.elapsed() >= ACK_DELAY, "unlink returned before the acknowledgement");
    let invalidation = next_invalidation(&mut received).await;
    assert!(names_entry(&invalidation, right, "g"), "unlink: {invalidation:?}");
    assert!(invalidation.inodes.contains(&file.ino), "unlink drops the inode: {invalidation:?}");

    // Reads do not invalidate, and the watcher's session stayed live throughout.
    writer.getattr(ROOT).await.unwrap();
    assert!(received.try_recv().is_err(), "no invalidation for a read");
    let status = writer.status().await.unwrap();
    assert!(status.sessions.iter().any(|session| session.session == watcher.session));
    subscriber.abort();
    heartbeat.abort();
    writer.checked_dump().await;
}

/// A write in a directory another session never read sends it nothing, so the writer does
/// not wait for it (as CephFS revokes capabilities only from clients that hold them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_invalidated_only_for_what_they_read() {
    let server = server(&["--invalidation-ack-timeout-ms", "20000"]);
    let mut writer = client(&server, "writer").await;
    let mut reader = client(&server, "reader").await;
    let heartbeat = keep_alive(&reader);
    let mut stream = reader.client.clone().subscribe(pb::Empty {}).await.unwrap().into_inner();
    let private = writer.mkdir(ROOT, "private", 0o755).await.unwrap().ino;
    let shared = writer.mkdir(ROOT, "shared", 0o755).await.unwrap().ino;
    reader.readdir_all(shared, 100).await.unwrap();
    // Never acknowledging: a write that waited for this session would take 20 s.
    let started = Instant::now();
    writer.create(private, "mine", 0o644).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "the create waited for an uninterested session");
    // A write in what it read reaches it.
    let invalidate_shared = tokio::spawn(async move { writer.create(shared, "ours", 0o644).await.map(|_| ()) });
    let invalidation = tokio::time::timeout(PATIENCE, stream.message()).await.expect("in time").unwrap().unwrap();
    assert!(names_entry(&invalidation, shared, "ours"), "{invalidation:?}");
    assert!(!invalidation.entries.iter().any(|entry| entry.parent == private), "{invalidation:?}");
    reader.client.ack_invalidation(pb::AckInvalidationRequest { id: invalidation.id }).await.unwrap();
    invalidate_shared.await.unwrap().unwrap();
    heartbeat.abort();
}

/// A subscriber that never acknowledges is expired after --invalidation-ack-timeout-ms; the
/// write still succeeds, and the expired session is UNAUTHENTICATED afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_acknowledges_is_expired() {
    let server = server(&["--invalidation-ack-timeout-ms", "1000"]);
    let mut writer = client(&server, "writer").await;
    let mut deaf = client(&server, "deaf").await;
    let heartbeat = keep_alive(&deaf);
    let mut stream = deaf.client.subscribe(pb::Empty {}).await.unwrap().into_inner();
    deaf.readdir_all(ROOT, 100).await.unwrap(); // it may cache the root's entries now

    let started = Instant::now();
    let file = writer.create(ROOT, "f", 0o644).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1000), "the write waited for the acknowledgement timeout");
    assert_eq!(writer.lookup(ROOT, "f").await.unwrap().ino, file.ino);
    let invalidation = tokio::time::timeout(PATIENCE, stream.message()).await.expect("message in time");
    assert!(names_entry(&invalidation.unwrap().expect("an invalidation"), ROOT, "f"));

    heartbeat.abort();
    let status = writer.status().await.unwrap();
    assert!(status.sessions.iter().all(|session| session.session != deaf.session), "{status:?}");
    assert_unauthenticated(deaf.client.heartbeat(pb::Empty {}).await);
    assert_unauthenticated(deaf.create(ROOT, "g", 0o644).await);
    // The push channel of the expired session ends.
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the expired session's stream stayed open");
    // Later writes no longer wait for it.
    writer.create(ROOT, "h", 0o644).await.unwrap();
    writer.checked_dump().await;
}
