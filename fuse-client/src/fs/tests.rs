//! Tests of the filesystem semantics, driven directly against `LocalMetadata` and an
//! in-memory object store (no mount): every operation, the errno Linux gives for misuse,
//! and data integrity against a reference model.

use super::*;
use crate::data::store::{chunk_key, StoredChunk};
use crate::data::CHUNK_SIZE_BYTES;
use crate::metadata::{LayoutUpdate, LocalMetadata, Owner, Published, ReaddirPage};
use crate::runtime::Blocking;
use crate::sync::{AtomicU64, Mutex, Ordering};
use cudele_journal::store::JournalStore;
use cudele_journal::{ChunkVersion, SessionId, ROOT_INO};
use proptest::prelude::*;

const USER: Caller = Caller { uid: 1000, gid: 1000 };
const RW: OpenMode = OpenMode { readable: true, writable: true, exclusive: false, truncate: false };
const RO: OpenMode = OpenMode { readable: true, writable: false, exclusive: false, truncate: false };

struct Fixture {
    fs: CudeleFs<LocalMetadata>,
    metadata: Arc<LocalMetadata>,
    objects: JournalStore,
    runtime: Blocking,
}

fn fixture() -> Fixture {
    let runtime = Blocking::new("fs-test").expect("runtime");
    let objects = JournalStore::memory();
    let metadata = Arc::new(LocalMetadata::new());
    let fs = CudeleFs::new(metadata.clone(), ChunkStore::new(objects.clone(), runtime.clone()));
    Fixture { fs, metadata, objects, runtime }
}

impl Fixture {
    /// A second mount of the same namespace and object store.
    fn second_mount(&self) -> CudeleFs<LocalMetadata> {
        CudeleFs::new(self.metadata.clone(), ChunkStore::new(self.objects.clone(), self.runtime.clone()))
    }

    /// Every chunk object of `ino` (published or not): (index, length in bytes).
    fn chunk_objects(&self, ino: Ino) -> Vec<(u64, u64)> {
        self.fs.store().list(ino).expect("list").into_iter().map(|chunk| (chunk.index, chunk.size_bytes)).collect()
    }

    /// The published chunks of `ino`: (index, length of data in bytes).
    fn published(&self, ino: Ino) -> Vec<(u64, u32)> {
        let attr = self.metadata.getattr(ino).expect("getattr");
        attr.chunks.iter().map(|(index, chunk)| (*index, chunk.length_bytes)).collect()
    }

    fn file(&self, parent: Ino, name: &str, content: &[u8]) -> Ino {
        let (attr, handle, _) =
            self.fs.create(parent, name.as_bytes(), 0o644, 0o022, RW, Caller::ROOT).expect("create");
        if !content.is_empty() {
            self.fs.write(handle, 0, content, Caller::ROOT).expect("write");
        }
        self.fs.release(handle).expect("release");
        attr.attr.ino
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let handle = self.fs.open(ino, RO).expect("open");
        let size = self.fs.getattr(ino).expect("getattr").attr.size;
        let bytes = self.fs.read(handle, 0, u32::try_from(size).expect("small")).expect("read");
        self.fs.release(handle).expect("release");
        bytes
    }

    fn names(&self, ino: Ino) -> Vec<String> {
        let handle = self.fs.opendir(ino).expect("opendir");
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let listing = self.fs.readdir(handle, offset).expect("readdir");
            let Some(last) = listing.last() else { break };
            offset = last.cookie;
            names.extend(listing.into_iter().map(|entry| String::from_utf8_lossy(&entry.name).into_owned()));
        }
        self.fs.releasedir(handle);
        names
    }
}

fn errno_of<T: std::fmt::Debug>(result: NsResult<T>) -> i32 {
    result.expect_err("expected an error").errno()
}

/// Lookups fail as Linux does: missing name, over-long name, a file as the directory.
#[test]
fn lookup_errors() {
    let fixture = fixture();
    let fs = &fixture.fs;
    assert_eq!(errno_of(fs.lookup(ROOT_INO, b"missing")), libc::ENOENT);
    assert_eq!(errno_of(fs.lookup(ROOT_INO, &[b'a'; 256])), libc::ENAMETOOLONG);
    let file = fixture.file(ROOT_INO, "f", b"");
    assert_eq!(errno_of(fs.lookup(file, b"x")), libc::ENOTDIR);
    assert_eq!(fs.lookup(ROOT_INO, &[b'a'; 255]).map_err(|e| e.errno()), Err(libc::ENOENT));
}

/// mkdir applies the umask, counts links, and refuses existing names and missing parents.
#[test]
fn mkdir_semantics() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let dir = fs.mkdir(ROOT_INO, b"d", 0o777, 0o022, USER).expect("mkdir");
    assert_eq!(dir.attr.perm, 0o755);
    assert_eq!((dir.attr.uid, dir.attr.gid), (1000, 1000));
    assert_eq!(dir.attr.nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).expect("root").attr.nlink, 3);
    assert_eq!(errno_of(fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER)), libc::EEXIST);
    assert_eq!(errno_of(fs.mkdir(999, b"x", 0o755, 0, USER)), libc::ENOENT);
    assert_eq!(errno_of(fs.mkdir(ROOT_INO, &[b'n'; 256], 0o755, 0, USER)), libc::ENAMETOOLONG);
    let file = fixture.file(ROOT_INO, "f", b"");
    assert_eq!(errno_of(fs.mkdir(file, b"x", 0o755, 0, USER)), libc::ENOTDIR);
}

/// A setgid directory passes its group on, and setgid to new subdirectories.
#[test]
fn setgid_directories() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let shared = fs.mkdir(ROOT_INO, b"shared", 0o2775, 0, Caller { uid: 0, gid: 50 }).expect("mkdir");
    assert_eq!(shared.attr.perm, 0o2775);
    let sub = fs.mkdir(shared.attr.ino, b"sub", 0o755, 0, USER).expect("sub");
    assert_eq!((sub.attr.gid, sub.attr.perm), (50, 0o2755));
    let (file, handle, _) = fs.create(shared.attr.ino, b"f", 0o644, 0, RW, USER).expect("create");
    fs.release(handle).expect("release");
    assert_eq!((file.attr.uid, file.attr.gid, file.attr.perm), (1000, 50, 0o644));
    let link = fs.symlink(shared.attr.ino, b"l", b"f", USER).expect("symlink");
    assert_eq!(link.attr.gid, 50);
}

/// Written data is visible before the flush (size included) and after a reopen.
#[test]
fn write_read_reopen() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let (attr, handle, _) = fs.create(ROOT_INO, b"f", 0o644, 0, RW, USER).expect("create");
    let ino = attr.attr.ino;
    assert_eq!(fs.write(handle, 0, b"hello world", USER).expect("write"), 11);
    assert_eq!(fs.getattr(ino).expect("getattr").attr.size, 11, "unflushed size shows");
    assert_eq!(fs.read(handle, 6, 100).expect("read"), b"world");
    assert!(fixture.chunk_objects(ino).is_empty(), "nothing uploaded before flush");
    fs.flush(handle).expect("flush");
    assert_eq!(fixture.chunk_objects(ino), vec![(0, 11)]);
    fs.release(handle).expect("release");
    assert_eq!(fixture.metadata.getattr(ino).expect("getattr").attr.size, 11);
    assert_eq!(fixture.read_all(ino), b"hello world");
    let handle = fs.open(ino, RW).expect("open");
    fs.write(handle, 6, b"there", USER).expect("overwrite");
    fs.write(handle, 20, b"!", USER).expect("past the end");
    fs.release(handle).expect("release");
    assert_eq!(fixture.read_all(ino), b"hello there\0\0\0\0\0\0\0\0\0!");
}

/// Data closed on one mount reads back exactly on another (close-to-open).
#[test]
fn close_to_open_across_mounts() {
    let fixture = fixture();
    let other = fixture.second_mount();
    let ino = fixture.file(ROOT_INO, "f", b"first version");
    let handle = other.open(ino, RO).expect("open on B");
    assert_eq!(other.read(handle, 0, 100).expect("read"), b"first version");
    other.release(handle).expect("release");
    let writer = fixture.fs.open(ino, RW).expect("open on A");
    fixture.fs.write(writer, 0, b"second", USER).expect("write");
    fixture.fs.release(writer).expect("close on A");
    let handle = other.open(ino, RO).expect("reopen on B");
    assert_eq!(other.getattr(ino).expect("getattr").attr.size, 13);
    assert_eq!(other.read(handle, 0, 100).expect("read"), b"secondversion");
    other.release(handle).expect("release");
}

/// create(2) semantics: O_EXCL on an existing name is EEXIST; without it the file opens.
#[test]
fn create_existing() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"data");
    let exclusive = OpenMode { exclusive: true, ..RW };
    assert_eq!(errno_of(fs.create(ROOT_INO, b"f", 0o644, 0, exclusive, USER)), libc::EEXIST);
    let (attr, handle, created) = fs.create(ROOT_INO, b"f", 0o644, 0, RO, Caller::ROOT).expect("open existing");
    assert_eq!(attr.attr.ino, ino);
    assert!(!created, "an existing file is opened, not created");
    fs.release(handle).expect("release");
    fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).expect("mkdir");
    assert_eq!(errno_of(fs.create(ROOT_INO, b"d", 0o644, 0, RW, USER)), libc::EISDIR);
    // A user who may not write the existing file does not get it opened for writing.
    assert_eq!(errno_of(fs.create(ROOT_INO, b"f", 0o644, 0, RW, USER)), libc::EACCES);
}

/// unlink and rmdir fail as Linux does and free the data of the last name.
#[test]
fn unlink_and_rmdir() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"some data");
    assert_eq!(fixture.chunk_objects(ino).len(), 1);
    assert_eq!(errno_of(fs.unlink(ROOT_INO, b"missing")), libc::ENOENT);
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).expect("mkdir").attr.ino;
    assert_eq!(errno_of(fs.unlink(ROOT_INO, b"d")), libc::EISDIR);
    assert_eq!(errno_of(fs.rmdir(ROOT_INO, b"f")), libc::ENOTDIR);
    fixture.file(dir, "inner", b"");
    assert_eq!(errno_of(fs.rmdir(ROOT_INO, b"d")), libc::ENOTEMPTY);
    fs.unlink(dir, b"inner").expect("unlink inner");
    fs.rmdir(ROOT_INO, b"d").expect("rmdir");
    assert_eq!(errno_of(fs.rmdir(ROOT_INO, b"d")), libc::ENOENT);
    fs.unlink(ROOT_INO, b"f").expect("unlink");
    assert!(fixture.chunk_objects(ino).is_empty(), "the last name's data is deleted");
}

/// A hard link keeps the data alive; the data goes with the last link.
#[test]
fn links_keep_data() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"shared");
    let linked = fs.link(ino, ROOT_INO, b"g").expect("link");
    assert_eq!(linked.attr.nlink, 2);
    assert_eq!(errno_of(fs.link(ino, ROOT_INO, b"g")), libc::EEXIST);
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).expect("mkdir").attr.ino;
    assert_eq!(errno_of(fs.link(dir, ROOT_INO, b"dl")), libc::EPERM);
    fs.unlink(ROOT_INO, b"f").expect("unlink one");
    assert_eq!(fixture.read_all(ino), b"shared");
    fs.unlink(ROOT_INO, b"g").expect("unlink last");
    assert!(fixture.chunk_objects(ino).is_empty());
}

/// A file unlinked while open stays readable until its last release.
#[test]
fn unlinked_while_open() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"still here");
    let handle = fs.open(ino, RO).expect("open");
    fs.unlink(ROOT_INO, b"f").expect("unlink");
    assert_eq!(fs.read(handle, 0, 100).expect("read"), b"still here");
    assert_eq!(fixture.chunk_objects(ino).len(), 1);
    fs.release(handle).expect("release");
    assert!(fixture.chunk_objects(ino).is_empty());
}

/// rename in all its forms, with the errno of each misuse.
#[test]
fn rename_semantics() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let a = fixture.file(ROOT_INO, "a", b"aaa");
    let b = fixture.file(ROOT_INO, "b", b"bbb");
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_NOREPLACE)), libc::EEXIST);
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"a", ROOT_INO, b"zz", libc::RENAME_EXCHANGE)), libc::ENOENT);
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_WHITEOUT)), libc::EINVAL);
    let both = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", both)), libc::EINVAL);
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_EXCHANGE).expect("exchange");
    assert_eq!(fs.lookup(ROOT_INO, b"a").expect("a").attr.ino, b);
    assert_eq!(fs.lookup(ROOT_INO, b"b").expect("b").attr.ino, a);
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).expect("replace");
    assert_eq!(errno_of(fs.lookup(ROOT_INO, b"a")), libc::ENOENT);
    assert_eq!(fixture.read_all(b), b"bbb");
    assert!(fixture.chunk_objects(a).is_empty(), "the replaced file's data is deleted");
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).expect("mkdir").attr.ino;
    let e = fs.mkdir(d, b"e", 0o755, 0, USER).expect("mkdir").attr.ino;
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"d", e, b"x", 0)), libc::EINVAL, "into its own subtree");
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"b", ROOT_INO, b"d", 0)), libc::EISDIR);
    assert_eq!(errno_of(fs.rename(d, b"e", ROOT_INO, b"b", 0)), libc::ENOTDIR);
    fs.mkdir(ROOT_INO, b"f", 0o755, 0, USER).expect("mkdir f");
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"f", ROOT_INO, b"d", 0)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs.rename(ROOT_INO, b"missing", ROOT_INO, b"x", 0)), libc::ENOENT);
    fs.rename(ROOT_INO, b"d", ROOT_INO, b"moved", 0).expect("rename dir");
    assert_eq!(fs.lookup(ROOT_INO, b"moved").expect("moved").attr.ino, d);
}

/// Symlinks store their target; readlink of anything else is EINVAL.
#[test]
fn symlinks() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let link = fs.symlink(ROOT_INO, b"l", b"../target", USER).expect("symlink");
    assert_eq!(link.attr.kind, FileKind::Symlink);
    assert_eq!(link.attr.size, 9);
    assert_eq!(fs.readlink(link.attr.ino).expect("readlink"), b"../target");
    assert_eq!(errno_of(fs.readlink(ROOT_INO)), libc::EINVAL);
    assert_eq!(errno_of(fs.symlink(ROOT_INO, b"l", b"x", USER)), libc::EEXIST);
    assert_eq!(errno_of(fs.symlink(ROOT_INO, b"long", &vec![b'x'; 4097], USER)), libc::ENAMETOOLONG);
}

/// mknod makes fifos, sockets and devices; directories are EPERM as on Linux.
#[test]
fn mknod_kinds() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let fifo = fs.mknod(ROOT_INO, b"p", libc::S_IFIFO | 0o644, 0, 0, USER).expect("fifo");
    assert_eq!(fifo.attr.kind, FileKind::Fifo);
    let device = fs.mknod(ROOT_INO, b"c", libc::S_IFCHR | 0o600, 0, 0x0501, Caller::ROOT).expect("char device");
    assert_eq!((device.attr.kind, device.attr.rdev), (FileKind::CharDevice, 0x0501));
    let socket = fs.mknod(ROOT_INO, b"s", libc::S_IFSOCK | 0o600, 0, 0, USER).expect("socket");
    assert_eq!(socket.attr.kind, FileKind::Socket);
    let regular = fs.mknod(ROOT_INO, b"r", libc::S_IFREG | 0o666, 0o027, 0, USER).expect("regular");
    assert_eq!((regular.attr.kind, regular.attr.perm), (FileKind::Regular, 0o640));
    assert_eq!(errno_of(fs.mknod(ROOT_INO, b"d", libc::S_IFDIR | 0o755, 0, 0, USER)), libc::EPERM);
    assert_eq!(errno_of(fs.mknod(ROOT_INO, b"p", libc::S_IFIFO | 0o644, 0, 0, USER)), libc::EEXIST);
    assert_eq!(errno_of(fs.open(fifo.attr.ino, RO)), libc::EINVAL);
    assert_eq!(
        errno_of(fs.setattr(fifo.attr.ino, &SetAttrChanges { size: Some(0), ..Default::default() }, USER)),
        libc::EINVAL
    );
}

/// chmod, chown (which clears setuid), utimens, and truncate of a directory.
#[test]
fn setattr_semantics() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"x");
    let attr =
        fs.setattr(ino, &SetAttrChanges { mode: Some(0o4755), ..Default::default() }, Caller::ROOT).expect("chmod");
    assert_eq!(attr.attr.perm, 0o4755);
    let attr = fs
        .setattr(ino, &SetAttrChanges { uid: Some(7), gid: Some(8), ..Default::default() }, Caller::ROOT)
        .expect("chown");
    assert_eq!((attr.attr.uid, attr.attr.gid, attr.attr.perm), (7, 8, 0o755), "chown clears setuid");
    let time = Timestamp { seconds: 1_000_000, nanoseconds: 5 };
    let changes = SetAttrChanges {
        atime: Some(crate::metadata::TimeChange::At(time)),
        mtime: Some(crate::metadata::TimeChange::Now),
        ..Default::default()
    };
    let attr = fs.setattr(ino, &changes, Caller::ROOT).expect("utimens");
    assert_eq!(attr.attr.atime, time);
    assert!(attr.attr.mtime > time);
    let truncate = SetAttrChanges { size: Some(0), ..Default::default() };
    assert_eq!(errno_of(fs.setattr(ROOT_INO, &truncate, Caller::ROOT)), libc::EISDIR);
    assert_eq!(errno_of(fs.getattr(12345)), libc::ENOENT);
}

/// Truncate down drops and shortens published chunks without touching objects; truncate up
/// reads as zeros past the old size, and an unpublished object (as a crash between upload
/// and set_layout leaves) is never read.
#[test]
fn truncate_down_and_up() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let chunk = CHUNK_SIZE_BYTES as usize;
    let content: Vec<u8> = (0..chunk + 100).map(|i| (i % 251) as u8).collect();
    let ino = fixture.file(ROOT_INO, "f", &content);
    assert_eq!(fixture.chunk_objects(ino), vec![(0, chunk as u64), (1, 100)]);
    assert_eq!(fixture.published(ino), vec![(0, chunk as u32), (1, 100)]);
    let truncate = |size| SetAttrChanges { size: Some(size), ..Default::default() };
    fs.setattr(ino, &truncate(10), Caller::ROOT).expect("truncate down");
    assert_eq!(fixture.published(ino), vec![(0, 10)]);
    // An unpublished version of chunk 0 (a crashed flush's upload).
    let leftover = crate::data::next_version(99);
    fixture.fs.store().put_many(ino, vec![(0, leftover, bytes::Bytes::from(vec![9u8; 50]))]).expect("leftover");
    fs.setattr(ino, &truncate(40), Caller::ROOT).expect("truncate up");
    let mut expected = content[..10].to_vec();
    expected.resize(40, 0);
    assert_eq!(fixture.read_all(ino), expected);
    // Truncating an open file with unflushed writes keeps the writes before the cut.
    let handle = fs.open(ino, RW).expect("open");
    fs.write(handle, 100, b"tail", USER).expect("write");
    fs.setattr(ino, &truncate(102), Caller::ROOT).expect("truncate open file");
    assert_eq!(fs.getattr(ino).expect("getattr").attr.size, 102);
    assert_eq!(fs.read(handle, 98, 10).expect("read"), b"\0\0ta");
    fs.release(handle).expect("release");
}

/// A write by a non-root user clears setuid (and setgid with group execute).
#[test]
fn write_clears_setuid() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"");
    fs.setattr(ino, &SetAttrChanges { mode: Some(0o6777), ..Default::default() }, Caller::ROOT).expect("chmod");
    let handle = fs.open(ino, RW).expect("open");
    fs.write(handle, 0, b"root keeps", Caller::ROOT).expect("root write");
    assert_eq!(fs.getattr(ino).expect("getattr").attr.perm, 0o6777);
    fs.write(handle, 0, b"user kills", USER).expect("user write");
    assert_eq!(fs.getattr(ino).expect("getattr").attr.perm, 0o0777);
    fs.release(handle).expect("release");
}

/// xattrs with getxattr's size probe, flags, namespaces and missing names.
#[test]
fn xattrs() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"");
    fs.setxattr(ino, b"user.color", b"blue", 0, 0).expect("set");
    assert_eq!(fs.getxattr(ino, b"user.color", 0).expect("probe").len(), 4);
    assert_eq!(fs.getxattr(ino, b"user.color", 4).expect("get"), b"blue");
    assert_eq!(errno_of(fs.getxattr(ino, b"user.color", 3)), libc::ERANGE);
    assert_eq!(errno_of(fs.getxattr(ino, b"user.other", 0)), libc::ENODATA);
    assert_eq!(errno_of(fs.setxattr(ino, b"user.color", b"red", XATTR_CREATE, 0)), libc::EEXIST);
    assert_eq!(errno_of(fs.setxattr(ino, b"user.new", b"x", XATTR_REPLACE, 0)), libc::ENODATA);
    assert_eq!(errno_of(fs.setxattr(ino, b"user.x", b"x", XATTR_CREATE | XATTR_REPLACE, 0)), libc::EINVAL);
    assert_eq!(errno_of(fs.setxattr(ino, b"plain", b"x", 0, 0)), libc::EOPNOTSUPP);
    assert_eq!(errno_of(fs.setxattr(ino, b"system.posix_acl_access", b"x", 0, 0)), libc::EOPNOTSUPP);
    assert_eq!(errno_of(fs.setxattr(ino, b"user.big", &vec![0; 65537], 0, 0)), libc::E2BIG);
    fs.setxattr(ino, b"trusted.t", b"", 0, 0).expect("empty value");
    assert_eq!(fs.listxattr(ino, 0).expect("list"), b"trusted.t\0user.color\0");
    assert_eq!(errno_of(fs.listxattr(ino, 5)), libc::ERANGE);
    fs.removexattr(ino, b"user.color").expect("remove");
    assert_eq!(errno_of(fs.removexattr(ino, b"user.color")), libc::ENODATA);
    assert_eq!(errno_of(fs.getxattr(999, b"user.color", 0)), libc::ENOENT);
}

/// access(2) by mode bits; open and opendir refuse the wrong kind.
#[test]
fn access_and_kinds() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let ino = fixture.file(ROOT_INO, "f", b"");
    assert!(fs.access(ino, libc::R_OK, USER).is_ok());
    assert_eq!(errno_of(fs.access(ino, libc::W_OK, USER)), libc::EACCES);
    assert!(fs.access(ino, libc::W_OK, Caller::ROOT).is_ok());
    assert_eq!(errno_of(fs.open(ROOT_INO, RO)), libc::EISDIR);
    assert_eq!(errno_of(fs.opendir(ino)), libc::ENOTDIR);
    let stats = fs.statfs().expect("statfs");
    assert_eq!(stats.name_length_max_bytes, 255);
    assert_eq!(stats.inodes, 2);
}

/// A listing resumed by cookie neither skips nor repeats entries that stayed, while
/// other entries are created and deleted during the listing.
#[test]
fn readdir_stable_under_changes() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).expect("mkdir").attr.ino;
    let count = handles::READDIR_PAGE_ENTRIES * 3 + 17;
    for index in 0..count {
        fs.mknod(dir, format!("f{index:05}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, USER).expect("create");
    }
    let handle = fs.opendir(dir).expect("opendir");
    let mut seen: Vec<String> = Vec::new();
    let mut offset = 0;
    let mut round = 0;
    loop {
        let listing = fs.readdir(handle, offset).expect("readdir");
        // Consume part of what came back, as a kernel buffer would.
        let taken: Vec<_> = listing.into_iter().take(100).collect();
        let Some(last) = taken.last() else { break };
        offset = last.cookie;
        seen.extend(taken.iter().map(|entry| String::from_utf8_lossy(&entry.name).into_owned()));
        // Meanwhile: delete an entry already listed and one not yet listed, create two.
        round += 1;
        let _ = fs.unlink(dir, format!("f{:05}", round * 7).as_bytes());
        let _ = fs.unlink(dir, format!("f{:05}", count - round).as_bytes());
        fs.mknod(dir, format!("g{round:05}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, USER).expect("create");
        fs.mknod(dir, format!("a{round:05}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, USER).expect("create");
    }
    fs.releasedir(handle);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no entry repeated");
    assert_eq!(&seen[..2], &[".".to_string(), "..".to_string()]);
    // Every entry that existed from start to end was listed.
    let now: std::collections::BTreeSet<String> = fixture.names(dir).into_iter().collect();
    for index in 0..count {
        let name = format!("f{index:05}");
        if now.contains(&name) {
            assert!(seen.contains(&name), "{name} stayed but was skipped");
        }
    }
}

/// readdir reports kinds and attributes (readdirplus), and ends with an empty batch.
#[test]
fn readdir_kinds_and_attributes() {
    let fixture = fixture();
    let fs = &fixture.fs;
    fixture.file(ROOT_INO, "file", b"12345");
    fs.mkdir(ROOT_INO, b"dir", 0o755, 0, USER).expect("mkdir");
    fs.symlink(ROOT_INO, b"link", b"file", USER).expect("symlink");
    let handle = fs.opendir(ROOT_INO).expect("opendir");
    let listing = fs.readdir(handle, 0).expect("readdir");
    let summary: Vec<(String, FileKind, Option<u64>)> = listing
        .iter()
        .map(|entry| {
            (String::from_utf8_lossy(&entry.name).into_owned(), entry.kind, entry.attr.as_ref().map(|a| a.attr.size))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (".".into(), FileKind::Directory, None),
            ("..".into(), FileKind::Directory, None),
            ("dir".into(), FileKind::Directory, Some(0)),
            ("file".into(), FileKind::Regular, Some(5)),
            ("link".into(), FileKind::Symlink, Some(4)),
        ]
    );
    let last = listing.last().expect("entries").cookie;
    assert!(fs.readdir(handle, last).expect("end").is_empty());
    fs.releasedir(handle);
}

/// gc deletes objects of deleted inodes and past a file's size, and spares recent ones.
#[test]
fn gc_collects_garbage() {
    let fixture = fixture();
    let fs = &fixture.fs;
    let kept = fixture.file(ROOT_INO, "kept", b"kept data");
    let doomed = fixture.file(ROOT_INO, "doomed", b"doomed data");
    // Remove the inode behind the filesystem's back, so its data stays behind.
    fixture.metadata.unlink(ROOT_INO, b"doomed").expect("unlink");
    let leftover = crate::data::next_version(99);
    fs.store().put_many(kept, vec![(5, leftover, bytes::Bytes::from_static(b"never published"))]).expect("leftover");
    let metadata: &dyn Metadata = &*fixture.metadata;
    let report = crate::data::gc::collect_garbage(metadata, fs.store(), std::time::Duration::from_secs(3600), false)
        .expect("gc");
    assert_eq!(report.objects_too_recent, 2);
    assert_eq!(fixture.chunk_objects(doomed).len(), 1);
    let report = crate::data::gc::collect_garbage(metadata, fs.store(), std::time::Duration::ZERO, false).expect("gc");
    assert_eq!((report.objects_of_deleted_inodes, report.objects_unpublished), (1, 1));
    assert!(fixture.chunk_objects(doomed).is_empty());
    assert_eq!(fixture.chunk_objects(kept), vec![(0, 9)]);
    assert_eq!(fixture.read_all(kept), b"kept data");
    let objects = fs.store().objects().clone();
    let version = fixture.metadata.getattr(kept).expect("getattr").chunks[&0].version;
    let key = chunk_key(kept, 0, version);
    let found =
        fixture.runtime.block_on(async move { objects.get(&key).await.map_err(|e| NsError::Io(e.to_string())) });
    assert_eq!(found.expect("object").as_ref(), b"kept data");
}

/// One operation of the data-integrity model test.
#[derive(Debug, Clone)]
enum DataOp {
    Write {
        offset: u64,
        length: usize,
        seed: u8,
    },
    Read {
        offset: u64,
        length: u32,
    },
    Truncate {
        size: u64,
    },
    Flush,
    Reopen,
    /// Read through a second mount after closing (close-to-open).
    ReadElsewhere,
}

fn data_op(extent: u64, length_max: usize) -> impl Strategy<Value = DataOp> {
    prop_oneof![
        4 => (0..extent, 1..length_max, any::<u8>()).prop_map(|(offset, length, seed)| DataOp::Write { offset, length, seed }),
        3 => (0..extent, 1..length_max as u32).prop_map(|(offset, length)| DataOp::Read { offset, length }),
        1 => (0..extent).prop_map(|size| DataOp::Truncate { size }),
        1 => Just(DataOp::Flush),
        1 => Just(DataOp::Reopen),
        1 => Just(DataOp::ReadElsewhere),
    ]
}

/// Run `ops` against the filesystem and a Vec<u8> model; every read must match.
fn check_against_model(ops: &[DataOp], chunk_size_bytes: u32) {
    let fixture = fixture();
    let fs = &fixture.fs;
    let other = fixture.second_mount();
    let (attr, mut handle, _) = fs.create(ROOT_INO, b"model", 0o644, 0, RW, Caller::ROOT).expect("create");
    let ino = attr.attr.ino;
    if chunk_size_bytes != CHUNK_SIZE_BYTES {
        // Small chunks put many chunk boundaries within reach of small offsets.
        fs.release(handle).expect("release");
        let layout = LayoutUpdate { size: 0, chunk_size_bytes, mtime: Timestamp::now(), chunks: Vec::new() };
        fixture.metadata.set_layout(ino, &layout).expect("layout");
        handle = fs.open(ino, RW).expect("open");
    }
    let mut model: Vec<u8> = Vec::new();
    for op in ops {
        match op {
            DataOp::Write { offset, length, seed } => {
                let bytes: Vec<u8> = (0..*length).map(|i| seed.wrapping_add(i as u8) | 1).collect();
                fs.write(handle, *offset, &bytes, Caller::ROOT).expect("write");
                let end = *offset as usize + length;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*offset as usize..end].copy_from_slice(&bytes);
            }
            DataOp::Read { offset, length } => {
                let got = fs.read(handle, *offset, *length).expect("read");
                let start = (*offset as usize).min(model.len());
                let end = (start + *length as usize).min(model.len());
                assert_eq!(got, &model[start..end], "read at {offset} len {length} after {ops:?}");
            }
            DataOp::Truncate { size } => {
                fs.setattr(ino, &SetAttrChanges { size: Some(*size), ..Default::default() }, Caller::ROOT)
                    .expect("truncate");
                model.resize(*size as usize, 0);
            }
            DataOp::Flush => fs.flush(handle).expect("flush"),
            DataOp::Reopen => {
                fs.release(handle).expect("release");
                handle = fs.open(ino, RW).expect("open");
            }
            DataOp::ReadElsewhere => {
                fs.release(handle).expect("release");
                let elsewhere = other.open(ino, RO).expect("open elsewhere");
                let got = other.read(elsewhere, 0, model.len() as u32 + 10).expect("read elsewhere");
                assert_eq!(got, model, "other mount after close");
                other.release(elsewhere).expect("release elsewhere");
                handle = fs.open(ino, RW).expect("open");
            }
        }
        assert_eq!(fs.getattr(ino).expect("getattr").attr.size, model.len() as u64);
    }
    fs.release(handle).expect("release");
    assert_eq!(fixture.read_all(ino), model, "final content");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random writes, reads, truncates, flushes and reopens with 4 KiB chunks.
    #[test]
    fn data_matches_model_small_chunks(ops in proptest::collection::vec(data_op(40_000, 9_000), 1..40)) {
        check_against_model(&ops, 4096);
    }

    /// The same with the real chunk size and offsets spanning a few chunks.
    #[test]
    fn data_matches_model_real_chunks(
        ops in proptest::collection::vec(data_op(3 * u64::from(CHUNK_SIZE_BYTES), 300_000), 1..12)
    ) {
        check_against_model(&ops, CHUNK_SIZE_BYTES);
    }
}

// ----- publication fencing: refused flushes and stale chunk maps -----

/// `LocalMetadata` with failures on purpose: set_layout answers a chosen error (as an MDS
/// refuses a layout under a decoupled subtree's `block` policy, or a transport fails), and
/// getattr calls are counted (how often a reader fetched the chunk map afresh).
struct FaultyMetadata {
    inner: Arc<LocalMetadata>,
    layout_error: Mutex<Option<NsError>>,
    getattr_calls: AtomicU64,
}

impl FaultyMetadata {
    fn new(inner: Arc<LocalMetadata>) -> Self {
        FaultyMetadata { inner, layout_error: Mutex::new(None), getattr_calls: AtomicU64::new(0) }
    }

    /// Answer every set_layout with `error` (None: publish again).
    fn fail_layouts(&self, error: Option<NsError>) {
        *lock(&self.layout_error) = error;
    }

    fn getattr_calls(&self) -> u64 {
        self.getattr_calls.load(Ordering::SeqCst)
    }
}

impl Metadata for FaultyMetadata {
    fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr> {
        self.inner.lookup(parent, name)
    }
    fn getattr(&self, ino: Ino) -> NsResult<InodeAttr> {
        self.getattr_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.getattr(ino)
    }
    fn setattr(&self, ino: Ino, changes: &SetAttrChanges) -> NsResult<InodeAttr> {
        self.inner.setattr(ino, changes)
    }
    fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        owner: Owner,
        rdev: u32,
    ) -> NsResult<InodeAttr> {
        self.inner.create(parent, name, kind, mode, owner, rdev)
    }
    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, owner: Owner) -> NsResult<InodeAttr> {
        self.inner.mkdir(parent, name, mode, owner)
    }
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> NsResult<InodeAttr> {
        self.inner.symlink(parent, name, target, owner)
    }
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr> {
        self.inner.link(ino, new_parent, new_name)
    }
    fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.inner.unlink(parent, name)
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.inner.rmdir(parent, name)
    }
    fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()> {
        self.inner.rename(source_parent, source_name, target_parent, target_name, mode)
    }
    fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        self.inner.readlink(ino)
    }
    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize, plus: bool) -> NsResult<ReaddirPage> {
        self.inner.readdir(ino, after, limit, plus)
    }
    fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        self.inner.getxattr(ino, name, size)
    }
    fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        self.inner.listxattr(ino, size)
    }
    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()> {
        self.inner.setxattr(ino, name, value, mode)
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()> {
        self.inner.removexattr(ino, name)
    }
    fn statfs(&self) -> NsResult<FsStats> {
        self.inner.statfs()
    }
    fn set_layout(&self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Published> {
        if let Some(error) = lock(&self.layout_error).clone() {
            return Err(error);
        }
        self.inner.set_layout(ino, layout)
    }
    fn data_writer(&self) -> SessionId {
        self.inner.data_writer()
    }
    fn fsync(&self, ino: Ino) -> NsResult<()> {
        self.inner.fsync(ino)
    }
}

/// Chunk size of the fencing tests: small, so a few bytes span several chunks.
const FENCING_CHUNK_SIZE_BYTES: u32 = 8;

impl Fixture {
    /// Another mount of the same namespace and objects whose metadata fails on purpose.
    fn faulty_mount(&self) -> (CudeleFs<FaultyMetadata>, Arc<FaultyMetadata>) {
        let metadata = Arc::new(FaultyMetadata::new(self.metadata.clone()));
        let fs = CudeleFs::new(metadata.clone(), ChunkStore::new(self.objects.clone(), self.runtime.clone()));
        (fs, metadata)
    }

    /// A mount that wrote `bytes` at the start of `ino` (unflushed) and whose layouts now
    /// fail with `error`; returns it, its metadata and the open handle.
    fn unpublishable_write(
        &self,
        ino: Ino,
        bytes: &[u8],
        error: NsError,
    ) -> (CudeleFs<FaultyMetadata>, Arc<FaultyMetadata>, u64) {
        let (writer, faulty) = self.faulty_mount();
        let handle = writer.open(ino, RW).expect("open");
        writer.write(handle, 0, bytes, Caller::ROOT).expect("write");
        faulty.fail_layouts(Some(error));
        (writer, faulty, handle)
    }

    /// A file of [`FENCING_CHUNK_SIZE_BYTES`] chunks holding `content`, published.
    fn small_chunk_file(&self, name: &str, content: &[u8]) -> Ino {
        let ino = self.file(ROOT_INO, name, b"");
        let layout = LayoutUpdate {
            size: 0,
            chunk_size_bytes: FENCING_CHUNK_SIZE_BYTES,
            mtime: Timestamp::now(),
            chunks: Vec::new(),
        };
        self.metadata.set_layout(ino, &layout).expect("layout");
        let handle = self.fs.open(ino, RW).expect("open");
        self.fs.write(handle, 0, content, Caller::ROOT).expect("write");
        self.fs.release(handle).expect("release");
        ino
    }

    /// Every chunk object of `ino`, versions included.
    fn stored(&self, ino: Ino) -> Vec<StoredChunk> {
        self.fs.store().list(ino).expect("list")
    }

    /// The published (index, version) pairs of `ino`, as the objects should hold them.
    fn published_versions(&self, ino: Ino) -> Vec<(u64, Option<ChunkVersion>)> {
        let attr = self.metadata.getattr(ino).expect("getattr");
        attr.chunks.iter().map(|(index, chunk)| (*index, Some(chunk.version))).collect()
    }
}

/// A flush whose layout is refused (EBUSY) changes nothing readers see: the old bytes, size
/// and chunk map stay published, the objects it uploaded are deleted again, the error
/// reaches close and fsync, and the writes stay buffered for a later flush that succeeds
/// (which then deletes the chunks it superseded).
#[test]
fn refused_flush_changes_nothing_readers_see() {
    let fixture = fixture();
    let old: &[u8] = b"0123456789abcdefghij";
    let ino = fixture.small_chunk_file("f", old);
    let published_before = fixture.metadata.getattr(ino).expect("getattr");
    assert_eq!(published_before.chunks.len(), 3);
    let stored_before = fixture.stored(ino);
    assert_eq!(
        stored_before.iter().map(|chunk| (chunk.index, chunk.version)).collect::<Vec<_>>(),
        fixture.published_versions(ino)
    );

    let (writer, faulty) = fixture.faulty_mount();
    let handle = writer.open(ino, RW).expect("open");
    // Partly over chunks 0 and 1 (read-modify-write), and growing the file past chunk 2.
    writer.write(handle, 4, b"WXYZWXYZ", Caller::ROOT).expect("write");
    writer.write(handle, 18, b"tail!!!!!!", Caller::ROOT).expect("write past the end");
    let mut expected_new = old.to_vec();
    expected_new[4..12].copy_from_slice(b"WXYZWXYZ");
    expected_new.truncate(18);
    expected_new.extend_from_slice(b"tail!!!!!!");

    faulty.fail_layouts(Some(NsError::Busy("subtree is decoupled by another client")));
    assert_eq!(errno_of(writer.flush(handle)), libc::EBUSY, "close sees the refusal");
    assert_eq!(errno_of(writer.fsync(handle)), libc::EBUSY, "fsync sees the refusal");

    // (a) Readers elsewhere see exactly what was published before.
    assert_eq!(fixture.read_all(ino), old);
    let published_after = fixture.metadata.getattr(ino).expect("getattr");
    assert_eq!(published_after.attr.size, old.len() as u64);
    assert_eq!(published_after.chunks, published_before.chunks);
    // (b) The refused flushes deleted what they uploaded: the store holds what it held.
    assert_eq!(fixture.stored(ino), stored_before);
    // The writer still has its writes.
    assert_eq!(writer.read(handle, 0, 64).expect("read own writes"), expected_new);

    faulty.fail_layouts(None);
    writer.flush(handle).expect("flush once layouts are accepted");
    assert_eq!(fixture.read_all(ino), expected_new);
    // Chunks 0, 1 and 2 were superseded and deleted; chunk 3 is new; nothing else is left.
    let published = fixture.published_versions(ino);
    assert_eq!(published.len(), 4);
    assert_eq!(fixture.stored(ino).iter().map(|chunk| (chunk.index, chunk.version)).collect::<Vec<_>>(), published);
    assert!(published
        .iter()
        .all(|(index, version)| published_before.chunks.get(index).map(|chunk| chunk.version) != *version));
    writer.release(handle).expect("release");
}

/// A refusal at release reaches the caller too, and leaves the store as it was.
#[test]
fn refused_release_reports_and_cleans_up() {
    let fixture = fixture();
    let ino = fixture.small_chunk_file("f", b"published");
    let stored_before = fixture.stored(ino);
    let (writer, _, handle) =
        fixture.unpublishable_write(ino, b"unpublished data", NsError::Busy("subtree is decoupled by another client"));
    assert_eq!(errno_of(writer.release(handle)), libc::EBUSY);
    assert_eq!(fixture.stored(ino), stored_before);
    assert_eq!(fixture.read_all(ino), b"published");
}

/// After a transport failure the layout may have been applied, so the uploads stay (for
/// `cudele gc` if it was not): readers still see the old bytes, and the error is EIO.
#[test]
fn flush_after_transport_failure_keeps_uploads() {
    let fixture = fixture();
    let ino = fixture.small_chunk_file("f", b"published");
    let stored_before = fixture.stored(ino);
    let (writer, faulty, handle) =
        fixture.unpublishable_write(ino, b"maybe", NsError::Io("MDS unreachable".to_string()));
    assert_eq!(errno_of(writer.flush(handle)), libc::EIO);
    assert_eq!(fixture.read_all(ino), b"published");
    let stored_after = fixture.stored(ino);
    assert_eq!(stored_after.len(), stored_before.len() + 1, "the upload of chunk 0 stays: {stored_after:?}");
    assert!(stored_before.iter().all(|chunk| stored_after.contains(chunk)));
    faulty.fail_layouts(None);
    writer.release(handle).expect("release");
}

/// A reader holding a chunk map whose published object another mount replaced and deleted
/// fetches the map once more and reads the new bytes; if the published object is still
/// missing after that one re-read, the read fails with EIO instead of returning zeros.
#[test]
fn stale_chunk_map_is_read_again_once() {
    let fixture = fixture();
    let old: &[u8] = b"old old old old!";
    let ino = fixture.small_chunk_file("f", old);
    let (reader, counting) = fixture.faulty_mount();
    let reading = reader.open(ino, RO).expect("open");

    // Another mount rewrites the whole file (same size); its flush deletes the old objects.
    let old_versions = fixture.published_versions(ino);
    let new: &[u8] = b"NEW NEW NEW NEW!";
    let writing = fixture.fs.open(ino, RW).expect("open");
    fixture.fs.write(writing, 0, new, Caller::ROOT).expect("write");
    fixture.fs.release(writing).expect("release");
    let stored = fixture.stored(ino);
    assert!(old_versions
        .iter()
        .all(|(index, version)| !stored.iter().any(|chunk| chunk.index == *index && chunk.version == *version)));

    let calls_before = counting.getattr_calls();
    assert_eq!(reader.read(reading, 0, 64).expect("read with a stale map"), new);
    assert_eq!(counting.getattr_calls() - calls_before, 1, "one re-read serves every chunk");
    reader.release(reading).expect("release");

    // The published object of chunk 1 vanishes (nobody may delete it: a bug or lost data).
    let (_, lost) = fixture.published_versions(ino)[1];
    fixture.fs.store().delete_many(ino, &[(1, lost)]).expect("delete");
    let reading = reader.open(ino, RO).expect("open");
    let calls_before = counting.getattr_calls();
    assert_eq!(reader.read(reading, 0, 8).expect("chunk 0 is intact"), &new[..8]);
    assert_eq!(errno_of(reader.read(reading, 8, 8)), libc::EIO);
    assert_eq!(counting.getattr_calls() - calls_before, 1, "exactly one re-read before EIO");
    reader.release(reading).expect("release");
}
