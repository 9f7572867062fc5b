//! The fuser adapter: translate each kernel request into a [`CudeleFs`] call and the result
//! into a reply. No filesystem logic lives here; errors become errno in [`errno`] only.

use crate::fs::{Caller, CudeleFs, DirListing, OpenMode};
use crate::kernel_cache::{KernelState, Ttls};
use crate::metadata::{InodeAttr, Metadata, SetAttrChanges, TimeChange};
use cudele_journal::{FileKind, Timestamp};
use cudele_namespace::NsError;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// st_blksize: the I/O size we prefer (the kernel's largest FUSE write is 128 KiB by
/// default; bigger application buffers just become several requests).
pub const PREFERRED_IO_SIZE_BYTES: u32 = 128 * 1024;
/// Inode numbers are never reused (the MDS's allocator only grows), so one generation.
const GENERATION: Generation = Generation(0);
const STAT_BLOCK_BYTES: u64 = 512;

/// The one mapping from the domain error to the errno the kernel returns.
pub fn errno(error: &NsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn system_time(time: Timestamp) -> SystemTime {
    if time.seconds >= 0 {
        UNIX_EPOCH + Duration::new(time.seconds as u64, time.nanoseconds)
    } else {
        UNIX_EPOCH - Duration::from_secs(time.seconds.unsigned_abs())
            + Duration::from_nanos(u64::from(time.nanoseconds))
    }
}

fn timestamp(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => Timestamp { seconds: since.as_secs() as i64, nanoseconds: since.subsec_nanos() },
        Err(before) => {
            let before = before.duration();
            let mut seconds = -(before.as_secs() as i64);
            let mut nanoseconds = before.subsec_nanos();
            if nanoseconds > 0 {
                seconds -= 1;
                nanoseconds = 1_000_000_000 - nanoseconds;
            }
            Timestamp { seconds, nanoseconds }
        }
    }
}

fn time_change(time: TimeOrNow) -> TimeChange {
    match time {
        TimeOrNow::Now => TimeChange::Now,
        TimeOrNow::SpecificTime(time) => TimeChange::At(timestamp(time)),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Our attributes as stat(2) shows them.
pub fn file_attr(attr: &InodeAttr) -> FileAttr {
    let attr = &attr.attr;
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(STAT_BLOCK_BYTES),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: (attr.perm & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: PREFERRED_IO_SIZE_BYTES,
        flags: 0,
    }
}

fn caller(request: &Request) -> Caller {
    Caller { uid: request.uid(), gid: request.gid() }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// A [`CudeleFs`] served to the kernel.
pub struct FuseAdapter<M: Metadata + ?Sized + 'static> {
    fs: Arc<CudeleFs<M>>,
    /// What the kernel may cache and holds (see `crate::kernel_cache`).
    kernel: Arc<KernelState>,
}

impl<M: Metadata + ?Sized + 'static> FuseAdapter<M> {
    pub fn new(fs: Arc<CudeleFs<M>>) -> Self {
        FuseAdapter { fs, kernel: Arc::new(KernelState::new()) }
    }

    /// Shared with the notifier that invalidates the kernel's caches.
    pub fn kernel_state(&self) -> Arc<KernelState> {
        self.kernel.clone()
    }

    /// TTLs for a lookup or getattr answer (the replies the kernel guards against racing
    /// invalidations).
    fn cache_ttls(&self) -> Ttls {
        self.kernel.ttls(self.fs.metadata().kernel_may_cache())
    }

    /// Reply with an entry; the kernel takes a lookup reference on it. `since` is the
    /// kernel invalidation count from before the request, for replies the kernel does not
    /// version-check (create-like): they get long TTLs only if nothing was invalidated
    /// meanwhile (see `crate::kernel_cache`). None: TTL 0 regardless.
    fn reply_entry(&self, reply: ReplyEntry, result: Result<InodeAttr, NsError>, since: Option<u64>) {
        match result {
            Ok(attr) => {
                let ttls = self.handed_out(attr.attr.ino, since);
                reply.entry_with_ttls(&ttls.attr, &ttls.entry, &file_attr(&attr), GENERATION)
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// Count the lookup a reply hands the kernel and choose its TTLs (see `reply_entry`).
    fn handed_out(&self, ino: u64, since: Option<u64>) -> Ttls {
        let undisturbed = self.kernel.looked_up(ino, since.unwrap_or(u64::MAX));
        if since.is_some() && undisturbed {
            self.cache_ttls()
        } else {
            Ttls::NONE
        }
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), NsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(errno(&error)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, NsError>) {
    match result {
        Ok(value) if size == 0 => match u32::try_from(value.len()) {
            Ok(length) => reply.size(length),
            Err(_) => reply.error(Errno::E2BIG),
        },
        Ok(value) => reply.data(&value),
        Err(error) => reply.error(errno(&error)),
    }
}

impl<M: Metadata + ?Sized + 'static> Filesystem for FuseAdapter<M> {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Readdirplus fills our attribute cache for `ls -l`; parallel dirops lets lookups
        // and creates in one directory run concurrently (we have no per-directory state).
        let wanted =
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        self.kernel.set_protocol_minor(config.kernel_abi().1);
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.shutdown();
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let since = self.kernel.invalidation_count();
        let result = self.fs.lookup(parent.0, name_bytes(name));
        self.reply_entry(reply, result, Some(since));
    }

    /// (fuser's default batch_forget calls this for each inode.)
    fn forget(&self, _request: &Request, ino: INodeNo, nlookup: u64) {
        self.kernel.forget(ino.0, nlookup);
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _handle: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.cache_ttls().attr, &file_attr(&attr)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn setattr(
        &self,
        request: &Request,
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
        let changes = SetAttrChanges {
            // The kernel sends the whole st_mode; the file type is not ours to change.
            mode: mode.map(|mode| mode & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_change),
            mtime: mtime.map(time_change),
        };
        // TTL 0: the kernel does not guard a setattr reply against a racing invalidation.
        match self.fs.setattr(ino.0, &changes, caller(request)) {
            Ok(attr) => reply.attr(&Ttls::NONE.attr, &file_attr(&attr)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let since = self.kernel.invalidation_count();
        let result = self.fs.mknod(parent.0, name_bytes(name), mode, umask, rdev, caller(request));
        self.reply_entry(reply, result, Some(since));
    }

    fn mkdir(&self, request: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let since = self.kernel.invalidation_count();
        self.reply_entry(reply, self.fs.mkdir(parent.0, name_bytes(name), mode, umask, caller(request)), Some(since));
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.unlink(parent.0, name_bytes(name)));
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(parent.0, name_bytes(name)));
    }

    fn symlink(&self, request: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        let since = self.kernel.invalidation_count();
        let result = self.fs.symlink(parent.0, name_bytes(link_name), target, caller(request));
        self.reply_entry(reply, result, Some(since));
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.rename(parent.0, name_bytes(name), new_parent.0, name_bytes(new_name), flags.bits());
        reply_empty(reply, result);
    }

    fn link(&self, _request: &Request, ino: INodeNo, new_parent: INodeNo, new_name: &OsStr, reply: ReplyEntry) {
        // TTL 0: link updates an inode the kernel may hold, and does not version-check.
        self.reply_entry(reply, self.fs.link(ino.0, new_parent.0, name_bytes(new_name)), None);
    }

    fn open(&self, _request: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE: the kernel drops its page cache of the file at every open,
        // which with the fresh attributes of open gives close-to-open consistency.
        match self.fs.open(ino.0, OpenMode::from_flags(flags.0)) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn read(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(handle.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn write(
        &self,
        request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(handle.0, offset, data, caller(request)) {
            Ok(written) => reply.written(written),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn flush(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.flush(handle.0));
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.release(handle.0));
    }

    fn fsync(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.fsync(handle.0));
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdir(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(handle.0, offset) {
            Ok(listing) => {
                for entry in listing {
                    let name = OsStr::from_bytes(&entry.name);
                    if reply.add(INodeNo(entry.ino), entry.cookie, file_type(entry.kind), name) {
                        break; // the buffer is full; the kernel asks again from the last cookie
                    }
                }
                reply.ok();
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdirplus(
        &self,
        _request: &Request,
        ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.fs.readdir(handle.0, offset) {
            Ok(listing) => listing,
            Err(error) => return reply.error(errno(&error)),
        };
        let mut directory_attr = None;
        for DirListing { cookie, ino: entry_ino, name, attr, .. } in listing {
            let attr = match attr {
                Some(attr) => attr,
                // "." and ".." (whose attributes the kernel ignores) get the directory's.
                None if name == b"." || name == b".." => {
                    if directory_attr.is_none() {
                        match self.fs.getattr(ino.0) {
                            Ok(attr) => directory_attr = Some(attr),
                            Err(error) => return reply.error(errno(&error)),
                        }
                    }
                    match &directory_attr {
                        Some(attr) => attr.clone(),
                        None => continue,
                    }
                }
                // The entry vanished between listing and reading its attributes.
                None => continue,
            };
            let attr = file_attr(&attr);
            // TTL 0: the kernel does not guard readdirplus entries against a racing
            // invalidation. It takes a lookup reference on every entry but "." and "..".
            if reply.add(INodeNo(entry_ino), cookie, OsStr::from_bytes(&name), &Ttls::NONE.entry, &attr, GENERATION) {
                break;
            }
            if name != b"." && name != b".." {
                self.handed_out(entry_ino, None);
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(handle.0);
        reply.ok();
    }

    fn fsyncdir(&self, _request: &Request, ino: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.fsyncdir(ino.0));
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(stats) => {
                let block_size = u64::from(stats.block_size_bytes.max(1));
                let total_blocks = stats.bytes.saturating_add(stats.bytes_free) / block_size;
                let free_blocks = stats.bytes_free / block_size;
                reply.statfs(
                    total_blocks,
                    free_blocks,
                    free_blocks,
                    stats.inodes.saturating_add(stats.inodes_free),
                    stats.inodes_free,
                    stats.block_size_bytes,
                    stats.name_length_max_bytes,
                    stats.block_size_bytes,
                );
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn setxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.setxattr(ino.0, name_bytes(name), value, flags, position));
    }

    fn getxattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.fs.getxattr(ino.0, name_bytes(name), size));
    }

    fn listxattr(&self, _request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.fs.listxattr(ino.0, size));
    }

    fn removexattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.removexattr(ino.0, name_bytes(name)));
    }

    /// No ioctls: ENOTTY, what Linux gives for an ioctl a file does not support (isatty()
    /// probes every file Python opens; fuser's default would log each one).
    fn ioctl(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _handle: FileHandle,
        _flags: fuser::IoctlFlags,
        _command: u32,
        _input: &[u8],
        _output_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, request: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.access(ino.0, mask.bits(), caller(request)));
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let since = self.kernel.invalidation_count();
        match self.fs.create(parent.0, name_bytes(name), mode, umask, OpenMode::from_flags(flags), caller(request)) {
            Ok((attr, handle, created)) => {
                // An existing file's attributes (another mount created the name first) are
                // not version-checked either, and the kernel may hold that inode: TTL 0.
                // One TTL for entry and attributes; without the epoch, entries must not be cached.
                let ttls = self.handed_out(attr.attr.ino, created.then_some(since));
                let ttl = ttls.entry.min(ttls.attr);
                reply.created(&ttl, &file_attr(&attr), GENERATION, FileHandle(handle), FopenFlags::empty())
            }
            Err(error) => reply.error(errno(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times before and after the epoch survive the trip through SystemTime.
    #[test]
    fn time_round_trip() {
        for time in [
            Timestamp { seconds: 0, nanoseconds: 0 },
            Timestamp { seconds: 1_700_000_000, nanoseconds: 123_456_789 },
            Timestamp { seconds: -5, nanoseconds: 250_000_000 },
        ] {
            assert_eq!(timestamp(system_time(time)), time);
        }
    }
}
