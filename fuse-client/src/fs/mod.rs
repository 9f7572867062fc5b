//! The filesystem in plain Rust: [`CudeleFs`] implements every operation the FUSE adapter
//! needs on top of one [`Metadata`] implementation and the chunk store, and returns plain
//! values or an `NsError` (whose `errno()` is the one errno mapping). Tests drive it
//! directly, without a mount.

pub mod handles;
pub mod policy;

use crate::data::file::WRITE_PIECE_CHUNKS_MAX;
use crate::data::ChunkStore;
use crate::metadata::{FsStats, InodeAttr, Metadata, SetAttrChanges};
use crate::sync::{lock, Arc};
use cudele_journal::{FileKind, Ino, RenameMode, Timestamp, XattrMode, NAME_LENGTH_MAX_BYTES};
use cudele_namespace::{NsError, NsResult};
pub use handles::DirListing;
use handles::{OpenDirectories, OpenFiles};
pub use policy::Caller;
use policy::{check_access, check_xattr_name, kind_of_mode, mode_after_write, new_inode_owner};

/// setxattr flags (linux/xattr.h).
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

/// How a file is being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMode {
    pub readable: bool,
    pub writable: bool,
    /// O_EXCL on create: an existing name is an error.
    pub exclusive: bool,
    /// O_TRUNC: truncate an existing file (only reaches us on the create path).
    pub truncate: bool,
}

impl OpenMode {
    /// From open(2) flags.
    pub fn from_flags(flags: i32) -> OpenMode {
        let access = flags & libc::O_ACCMODE;
        OpenMode {
            readable: access == libc::O_RDONLY || access == libc::O_RDWR,
            writable: access == libc::O_WRONLY || access == libc::O_RDWR,
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// renameat2 flags as a [`RenameMode`]; anything else (RENAME_WHITEOUT, combinations,
/// unknown bits) is EINVAL, as on a filesystem that does not support it.
pub fn rename_mode(flags: u32) -> NsResult<RenameMode> {
    match flags {
        0 => Ok(RenameMode::Replace),
        libc::RENAME_NOREPLACE => Ok(RenameMode::NoReplace),
        libc::RENAME_EXCHANGE => Ok(RenameMode::Exchange),
        _ => Err(NsError::InvalidArgument("unsupported rename flags")),
    }
}

/// The cudele filesystem. See the module documentation.
pub struct CudeleFs<M: Metadata + ?Sized = dyn Metadata> {
    metadata: Arc<M>,
    store: ChunkStore,
    files: OpenFiles,
    directories: OpenDirectories,
}

fn check_name(name: &[u8]) -> NsResult<()> {
    // The kernel lets FUSE names up to 1024 bytes through; Linux filesystems stop at 255.
    if name.len() > NAME_LENGTH_MAX_BYTES {
        return Err(NsError::NameTooLong);
    }
    Ok(())
}

impl<M: Metadata + ?Sized> CudeleFs<M> {
    pub fn new(metadata: Arc<M>, store: ChunkStore) -> Self {
        CudeleFs { metadata, store, files: OpenFiles::default(), directories: OpenDirectories::default() }
    }

    pub fn metadata(&self) -> &Arc<M> {
        &self.metadata
    }

    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Attributes as this mount sees them: unflushed writes count in size and mtime.
    fn with_local_data(&self, mut attr: InodeAttr) -> InodeAttr {
        if let Some(data) = self.files.data_of(attr.attr.ino) {
            let data = lock(&data);
            if data.is_dirty() {
                attr.attr.size = data.size();
                if let Some(mtime) = data.pending_mtime() {
                    attr.attr.mtime = mtime;
                    attr.attr.ctime = attr.attr.ctime.max(mtime);
                }
            }
        }
        attr
    }

    // ----- names -----

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr> {
        check_name(name)?;
        Ok(self.with_local_data(self.metadata.lookup(parent, name)?))
    }

    pub fn getattr(&self, ino: Ino) -> NsResult<InodeAttr> {
        Ok(self.with_local_data(self.metadata.getattr(ino)?))
    }

    /// chmod, chown, truncate, utimens. A size change flushes the data first; the metadata
    /// service then drops (or shortens) the published chunks past the new size, and no
    /// object changes, so a refused truncate changes nothing.
    pub fn setattr(&self, ino: Ino, changes: &SetAttrChanges, caller: Caller) -> NsResult<InodeAttr> {
        let data = self.files.data_of(ino);
        // Hold the file's data while its size changes, so no write interleaves.
        let mut data = data.as_ref().map(|data| lock(data));
        if let Some(data) = data.as_mut() {
            // Unflushed writes precede this change (their mtime and size come first).
            data.flush(&self.store, &*self.metadata)?;
        }
        let mut changes = changes.clone();
        if changes.size.is_some() {
            let attr = self.metadata.getattr(ino)?;
            match attr.attr.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(NsError::IsDirectory),
                _ => return Err(NsError::InvalidArgument("truncate of a special file")),
            }
            if changes.mode.is_none() {
                changes.mode = mode_after_write(&attr.attr, caller);
            }
        }
        let attr = self.metadata.setattr(ino, &changes)?;
        if let (Some(data), Some(_)) = (data.as_mut(), changes.size) {
            data.truncated(&attr);
        }
        Ok(attr)
    }

    fn parent_attr(&self, parent: Ino) -> NsResult<InodeAttr> {
        let attr = self.metadata.getattr(parent)?;
        if attr.attr.kind != FileKind::Directory {
            return Err(NsError::NotDirectory);
        }
        Ok(attr)
    }

    /// mknod(2): regular files, fifos, sockets and device nodes.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: Caller,
    ) -> NsResult<InodeAttr> {
        check_name(name)?;
        let kind = kind_of_mode(mode)?;
        let parent_attr = self.parent_attr(parent)?;
        let (owner, perm) = new_inode_owner(&parent_attr.attr, caller, kind, mode, umask);
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) { rdev } else { 0 };
        self.metadata.create(parent, name, kind, perm, owner, rdev)
    }

    /// create(2)/open(O_CREAT): a new regular file and a handle on it, and true. If the name
    /// exists (another mount raced us) and O_EXCL is not set, open the existing file instead
    /// (and say false).
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        open: OpenMode,
        caller: Caller,
    ) -> NsResult<(InodeAttr, u64, bool)> {
        check_name(name)?;
        let parent_attr = self.parent_attr(parent)?;
        let (owner, perm) = new_inode_owner(&parent_attr.attr, caller, FileKind::Regular, mode, umask);
        match self.metadata.create(parent, name, FileKind::Regular, perm, owner, 0) {
            Ok(attr) => {
                let handle = self.files.open(&attr, open.readable, open.writable);
                Ok((attr, handle, true))
            }
            Err(NsError::Exists) if !open.exclusive => {
                let attr = self.metadata.lookup(parent, name)?;
                match attr.attr.kind {
                    FileKind::Regular => {}
                    FileKind::Directory => return Err(NsError::IsDirectory),
                    _ => return Err(NsError::Exists),
                }
                // The kernel checked our right to create, not to open this file.
                let mut wanted = 0;
                if open.readable {
                    wanted |= libc::R_OK;
                }
                if open.writable {
                    wanted |= libc::W_OK;
                }
                check_access(&attr.attr, caller, wanted)?;
                let attr = if open.truncate && attr.attr.size > 0 {
                    self.setattr(attr.attr.ino, &SetAttrChanges { size: Some(0), ..Default::default() }, caller)?
                } else {
                    attr
                };
                let handle = self.files.open(&attr, open.readable, open.writable);
                Ok((self.with_local_data(attr), handle, false))
            }
            Err(error) => Err(error),
        }
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, umask: u32, caller: Caller) -> NsResult<InodeAttr> {
        check_name(name)?;
        let parent_attr = self.parent_attr(parent)?;
        let (owner, perm) = new_inode_owner(&parent_attr.attr, caller, FileKind::Directory, mode, umask);
        self.metadata.mkdir(parent, name, perm, owner)
    }

    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], caller: Caller) -> NsResult<InodeAttr> {
        check_name(name)?;
        let parent_attr = self.parent_attr(parent)?;
        let (owner, _) = new_inode_owner(&parent_attr.attr, caller, FileKind::Symlink, 0o777, 0);
        self.metadata.symlink(parent, name, target, owner)
    }

    pub fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        self.metadata.readlink(ino)
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr> {
        check_name(new_name)?;
        Ok(self.with_local_data(self.metadata.link(ino, new_parent, new_name)?))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        check_name(name)?;
        let victim = self.metadata.lookup(parent, name)?;
        if victim.attr.kind == FileKind::Directory {
            return Err(NsError::IsDirectory);
        }
        self.metadata.unlink(parent, name)?;
        self.drop_data_if_gone(&victim);
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        check_name(name)?;
        self.metadata.rmdir(parent, name)
    }

    /// rename(2)/renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE.
    pub fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        flags: u32,
    ) -> NsResult<()> {
        check_name(source_name)?;
        check_name(target_name)?;
        let mode = rename_mode(flags)?;
        let replaced = match mode {
            RenameMode::Replace => match self.metadata.lookup(target_parent, target_name) {
                Ok(attr) => Some(attr),
                Err(NsError::NotFound) => None,
                Err(error) => return Err(error),
            },
            RenameMode::NoReplace | RenameMode::Exchange => None,
        };
        self.metadata.rename(source_parent, source_name, target_parent, target_name, mode)?;
        if let Some(replaced) = replaced {
            let source = self.metadata.lookup(target_parent, target_name).map(|attr| attr.attr.ino);
            if source.ok() != Some(replaced.attr.ino) {
                self.drop_data_if_gone(&replaced);
            }
        }
        Ok(())
    }

    /// `victim` lost a name: if that was its last, delete its data now (or at its last
    /// release on this mount). Other mounts that still have it open lose its data, as on
    /// NFS without silly-renames; leftovers are `cudele gc`'s.
    fn drop_data_if_gone(&self, victim: &InodeAttr) {
        let attr = &victim.attr;
        if attr.kind != FileKind::Regular || (attr.size == 0 && victim.chunk_size_bytes == 0) {
            return; // never had data
        }
        let gone = attr.nlink <= 1 || matches!(self.metadata.getattr(attr.ino), Err(NsError::NotFound));
        if !gone || self.files.mark_unlinked(attr.ino) {
            return;
        }
        self.delete_data(attr.ino);
    }

    /// Delete every chunk object of `ino` (best effort).
    fn delete_data(&self, ino: Ino) {
        if let Err(error) = self.store.delete_all(ino) {
            tracing::warn!(ino, %error, "deleting a removed file's data failed; `cudele gc` will");
        }
    }

    // ----- open files -----

    /// open(2) of an existing file. Attributes are fetched afresh (close-to-open).
    pub fn open(&self, ino: Ino, open: OpenMode) -> NsResult<u64> {
        let attr = self.metadata.getattr(ino)?;
        match attr.attr.kind {
            FileKind::Regular => Ok(self.files.open(&attr, open.readable, open.writable)),
            FileKind::Directory => Err(NsError::IsDirectory),
            // Fifos and devices are opened by the kernel itself; symlinks are followed.
            _ => Err(NsError::InvalidArgument("open of a special file")),
        }
    }

    pub fn read(&self, handle: u64, offset: u64, size: u32) -> NsResult<Vec<u8>> {
        let handle = self.files.get(handle)?;
        let mut data = lock(&handle.data);
        data.read(&self.store, &*self.metadata, offset, size)
    }

    /// Buffer a write; returns the bytes written. Clears setuid/setgid first when a
    /// non-root caller writes (ext4's file_remove_privs).
    pub fn write(&self, handle: u64, offset: u64, bytes: &[u8], caller: Caller) -> NsResult<u32> {
        let handle = self.files.get(handle)?;
        if !handle.writable {
            return Err(NsError::InvalidArgument("write to a handle not open for writing"));
        }
        if !caller.is_root() {
            let attr = self.metadata.getattr(handle.ino)?;
            if let Some(mode) = mode_after_write(&attr.attr, caller) {
                self.metadata.setattr(handle.ino, &SetAttrChanges { mode: Some(mode), ..Default::default() })?;
            }
        }
        let written = u32::try_from(bytes.len()).map_err(|_| NsError::InvalidArgument("write too large"))?;
        let mut data = lock(&handle.data);
        // In pieces, so that one flush never publishes more chunks than a layout carries.
        let piece_bytes = usize::try_from(WRITE_PIECE_CHUNKS_MAX.saturating_sub(1) * data.chunk_size_bytes())
            .unwrap_or(usize::MAX)
            .max(1);
        let mut position = offset;
        for piece in bytes.chunks(piece_bytes) {
            data.write(position, piece, Timestamp::now());
            position += piece.len() as u64;
            if data.needs_flush() {
                data.flush(&self.store, &*self.metadata)?;
            }
        }
        Ok(written)
    }

    /// close(2) of one descriptor: upload what is buffered and record the size, so the
    /// next open anywhere sees it.
    pub fn flush(&self, handle: u64) -> NsResult<()> {
        let handle = self.files.get(handle)?;
        let mut data = lock(&handle.data);
        data.flush(&self.store, &*self.metadata).map(|_| ())
    }

    pub fn fsync(&self, handle: u64) -> NsResult<()> {
        let handle = self.files.get(handle)?;
        lock(&handle.data).flush(&self.store, &*self.metadata)?;
        self.metadata.fsync(handle.ino)
    }

    /// The last reference to a handle went away. Errors here cannot reach the application
    /// (close already returned), so a failed flush is logged.
    pub fn release(&self, handle: u64) -> NsResult<()> {
        let released = self.files.release(handle)?;
        let flushed = lock(&released.handle.data).flush(&self.store, &*self.metadata);
        if let Err(error) = &flushed {
            tracing::error!(ino = released.handle.ino, %error, "flushing file data at release failed; data lost");
        }
        let ino = released.handle.ino;
        if released.last && released.unlinked && matches!(self.metadata.getattr(ino), Err(NsError::NotFound)) {
            self.delete_data(ino);
        }
        flushed.map(|_| ())
    }

    // ----- directories -----

    pub fn opendir(&self, ino: Ino) -> NsResult<u64> {
        let attr = self.metadata.getattr(ino)?;
        if attr.attr.kind != FileKind::Directory {
            return Err(NsError::NotDirectory);
        }
        Ok(self.directories.open(ino))
    }

    /// Entries after `offset` (0: from the start); empty at the end.
    pub fn readdir(&self, handle: u64, offset: u64) -> NsResult<Vec<DirListing>> {
        self.directories.read(handle, &*self.metadata, offset)
    }

    pub fn releasedir(&self, handle: u64) {
        self.directories.release(handle);
    }

    pub fn fsyncdir(&self, ino: Ino) -> NsResult<()> {
        self.metadata.fsync(ino)
    }

    pub fn statfs(&self) -> NsResult<FsStats> {
        self.metadata.statfs()
    }

    // ----- xattrs -----

    /// The value of `name`; `size` 0 asks for any length (the caller then replies with
    /// the length), a value longer than a non-zero `size` is ERANGE.
    pub fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        check_xattr_name(name)?;
        self.metadata.getxattr(ino, name, size)
    }

    pub fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        self.metadata.listxattr(ino, size)
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32, position: u32) -> NsResult<()> {
        check_xattr_name(name)?;
        if position != 0 {
            return Err(NsError::InvalidArgument("xattr position is a macOS resource-fork feature"));
        }
        let mode = match flags {
            0 => XattrMode::Upsert,
            XATTR_CREATE => XattrMode::Create,
            XATTR_REPLACE => XattrMode::Replace,
            _ => return Err(NsError::InvalidArgument("unknown setxattr flags")),
        };
        self.metadata.setxattr(ino, name, value, mode)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()> {
        check_xattr_name(name)?;
        self.metadata.removexattr(ino, name)
    }

    /// access(2). With `default_permissions` the kernel answers it itself; this serves
    /// mounts without it and the create race above.
    pub fn access(&self, ino: Ino, mask: i32, caller: Caller) -> NsResult<()> {
        let attr = self.metadata.getattr(ino)?;
        check_access(&attr.attr, caller, mask)
    }

    /// The mount is ending: flush every open file, then close the metadata session.
    pub fn shutdown(&self) {
        for data in self.files.all_data() {
            let mut data = lock(&data);
            if let Err(error) = data.flush(&self.store, &*self.metadata) {
                tracing::error!(ino = data.ino(), %error, "flushing file data at unmount failed");
            }
        }
        self.metadata.close();
    }
}

#[cfg(test)]
mod tests;
