//! noop-fuse: the FUSE floor for `fs-bench` — the cheapest fuser 0.18 filesystem that still
//! answers the requests a metadata benchmark makes (lookup, create, mknod, mkdir, getattr,
//! setattr, readdir(plus), unlink, rmdir, open, release, flush, write, fsync), from one
//! in-memory map and nothing else. Whatever cudele costs above this is cudele's; whatever
//! this costs is the kernel's FUSE round trip and fuser's dispatch.
//!
//! It is configured like a cudele mount so the comparison is like for like: the same worker
//! thread count with cloned `/dev/fuse` descriptors, `default_permissions`, `allow_other`,
//! readdirplus (auto) and parallel directory operations. Entry and attribute TTLs are
//! `--ttl-ms` (0 = what cudele replies with; the kernel then asks again on every access).
//!
//! ```text
//! noop-fuse MOUNTPOINT [--ttl-ms 0] [--threads 4]
//! ```
//!
//! Prints `noop-fuse ready` once the kernel handshake is done and serves until the mount is
//! unmounted (`umount MOUNTPOINT`).

use clap::Parser;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const ROOT_INO: u64 = 1;
/// Inode numbers are never reused here, so one generation.
const GENERATION: Generation = Generation(0);
const BLOCK_SIZE_BYTES: u32 = 4096;
/// What the parent process waits for on stdout before it uses the mount.
const READY_LINE: &str = "noop-fuse ready";

#[derive(Parser, Debug)]
#[command(name = "noop-fuse", about = "A no-op in-memory fuser filesystem: the FUSE floor for fs-bench")]
struct Options {
    /// Where to mount.
    mountpoint: PathBuf,
    /// Entry and attribute TTL given to the kernel, in milliseconds (cudele replies with 0).
    #[arg(long, default_value_t = 0)]
    ttl_ms: u64,
    /// FUSE worker threads, each with its own /dev/fuse descriptor (cudele's default).
    #[arg(long, default_value_t = cudele_client::mount::FUSE_THREADS_DEFAULT)]
    threads: usize,
}

struct Node {
    attr: FileAttr,
    /// Entries of a directory, by name; empty for other kinds.
    children: BTreeMap<OsString, u64>,
    parent: u64,
}

struct Namespace {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

struct NoopFs {
    ttl: Duration,
    namespace: Mutex<Namespace>,
}

fn new_attr(ino: u64, kind: FileType, perm: u32, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm: (perm & 0o7777) as u16,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: BLOCK_SIZE_BYTES,
        flags: 0,
    }
}

impl NoopFs {
    fn new(ttl: Duration) -> NoopFs {
        let mut nodes = HashMap::new();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        nodes.insert(
            ROOT_INO,
            Node {
                attr: new_attr(ROOT_INO, FileType::Directory, 0o755, uid, gid),
                children: BTreeMap::new(),
                parent: ROOT_INO,
            },
        );
        NoopFs { ttl, namespace: Mutex::new(Namespace { nodes, next_ino: ROOT_INO + 1 }) }
    }

    fn namespace(&self) -> MutexGuard<'_, Namespace> {
        // A panic while holding the lock leaves a map that is still a valid map.
        self.namespace.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Insert a new child of `parent`; the attributes of the new node, or the errno.
    fn insert(
        &self,
        request: &Request,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        perm: u32,
    ) -> Result<FileAttr, Errno> {
        let mut namespace = self.namespace();
        let ino = namespace.next_ino;
        let parent_node = namespace.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if parent_node.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if parent_node.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        parent_node.children.insert(name.to_os_string(), ino);
        if kind == FileType::Directory {
            parent_node.attr.nlink += 1;
        }
        let attr = new_attr(ino, kind, perm, request.uid(), request.gid());
        namespace.nodes.insert(ino, Node { attr, children: BTreeMap::new(), parent });
        namespace.next_ino += 1;
        Ok(attr)
    }

    /// Remove `name` from `parent`: a directory (empty) with `directory`, anything else without.
    fn remove(&self, parent: u64, name: &OsStr, directory: bool) -> Result<(), Errno> {
        let mut namespace = self.namespace();
        let ino = *namespace.nodes.get(&parent).and_then(|node| node.children.get(name)).ok_or(Errno::ENOENT)?;
        let node = namespace.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (directory, node.attr.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        namespace.nodes.remove(&ino);
        if let Some(parent_node) = namespace.nodes.get_mut(&parent) {
            parent_node.children.remove(name);
            if directory {
                parent_node.attr.nlink -= 1;
            }
        }
        Ok(())
    }

    /// The listing of `ino` from `offset` on: (ino, next offset, kind, name, attributes).
    fn listing(&self, ino: u64, offset: u64) -> Result<Vec<(u64, u64, FileAttr, OsString)>, Errno> {
        let namespace = self.namespace();
        let node = namespace.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let parent_attr = namespace.nodes.get(&node.parent).map_or(node.attr, |parent| parent.attr);
        let dots = [(ino, node.attr, OsString::from(".")), (node.parent, parent_attr, OsString::from(".."))];
        let children = node.children.iter().filter_map(|(name, child)| {
            namespace.nodes.get(child).map(|child_node| (*child, child_node.attr, name.clone()))
        });
        Ok(dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
            .map(|(index, (entry_ino, attr, name))| (entry_ino, index as u64 + 1, attr, name))
            .collect())
    }
}

fn file_kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(time) => time,
    }
}

impl Filesystem for NoopFs {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The capabilities a cudele mount asks for, so the kernel behaves the same way.
        let wanted =
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let namespace = self.namespace();
        let found = namespace
            .nodes
            .get(&parent.0)
            .and_then(|node| node.children.get(name))
            .and_then(|ino| namespace.nodes.get(ino));
        match found {
            Some(node) => reply.entry(&self.ttl, &node.attr, GENERATION),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _handle: Option<FileHandle>, reply: ReplyAttr) {
        match self.namespace().nodes.get(&ino.0) {
            Some(node) => reply.attr(&self.ttl, &node.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _handle: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut namespace = self.namespace();
        let Some(node) = namespace.nodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        let attr = &mut node.attr;
        if let Some(mode) = mode {
            attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            attr.uid = uid;
        }
        if let Some(gid) = gid {
            attr.gid = gid;
        }
        if let Some(size) = size {
            attr.size = size;
        }
        if let Some(atime) = atime {
            attr.atime = system_time(atime);
        }
        if let Some(mtime) = mtime {
            attr.mtime = system_time(mtime);
        }
        attr.ctime = SystemTime::now();
        reply.attr(&self.ttl, attr);
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.insert(request, parent.0, name, file_kind(mode), mode & !umask) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GENERATION),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(&self, request: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.insert(request, parent.0, name, FileType::Directory, mode & !umask) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GENERATION),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The bytes go nowhere; only the size is kept, so stat after a write looks right.
        let mut namespace = self.namespace();
        let Some(node) = namespace.nodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        node.attr.size = node.attr.size.max(offset + data.len() as u64);
        node.attr.mtime = SystemTime::now();
        reply.written(data.len() as u32);
    }

    fn flush(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _request: &Request, ino: INodeNo, _handle: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.listing(ino.0, offset) {
            Ok(entries) => {
                for (entry_ino, next, attr, name) in entries {
                    if reply.add(INodeNo(entry_ino), next, attr.kind, &name) {
                        break; // the buffer is full; the kernel asks again from `next`
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn readdirplus(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.listing(ino.0, offset) {
            Ok(entries) => {
                for (entry_ino, next, attr, name) in entries {
                    if reply.add(INodeNo(entry_ino), next, &name, &self.ttl, &attr, GENERATION) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn fsyncdir(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn access(&self, _request: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks permissions itself.
        reply.ok();
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.insert(request, parent.0, name, FileType::RegularFile, mode & !umask) {
            Ok(attr) => reply.created(&self.ttl, &attr, GENERATION, FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("noop-fuse".to_string()),
        MountOption::CUSTOM("subtype=noop".to_string()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let filesystem = NoopFs::new(Duration::from_millis(options.ttl_ms));
    // Session::new returns after the kernel's INIT handshake: the mount is live.
    let session = fuser::Session::new(filesystem, &options.mountpoint, &config)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_LINE}")?;
    stdout.flush()?;
    drop(stdout);
    session.run()
}
