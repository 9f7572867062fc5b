//! The one trait between the filesystem and the namespace: [`Metadata`].
//!
//! Every handler in `fs` talks to metadata through this trait and never asks which
//! implementation it has (DESIGN.md §6): [`LocalMetadata`] is an in-process namespace for
//! tests, [`RemoteMetadata`] the gRPC client of cudele-mds with a coherent cache. A
//! replica-routed reader and a decoupled subtree's local view are further implementations.
//!
//! Methods block; they are called from FUSE worker threads and tests, never from async code.

pub mod cache;
pub mod local;
pub mod remote;
pub mod replica_reads;
pub mod rpc;
pub mod thread_runtime;
pub mod unsafe_log;

use cudele_journal::{ChunkMap, ChunkUpdate, FileKind, Ino, RenameMode, SessionId, Timestamp, XattrMode};
use cudele_namespace::{Attr, DirEntry, NsResult};
use std::sync::Arc;

pub use local::LocalMetadata;
pub use remote::{RemoteMetadata, RemoteOptions};

/// An inode's attributes, the chunk size of its data objects (0: no data written yet) and
/// its published chunks (shared: attributes are cloned often, maps rarely change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeAttr {
    pub attr: Attr,
    pub chunk_size_bytes: u32,
    pub chunks: Arc<ChunkMap>,
}

impl InodeAttr {
    /// Attributes of an inode without published chunks.
    pub fn new(attr: Attr, chunk_size_bytes: u32) -> Self {
        InodeAttr { attr, chunk_size_bytes, chunks: Arc::default() }
    }
}

/// What a flush asks the metadata service to publish (see `Event::SetLayout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutUpdate {
    pub size: u64,
    pub chunk_size_bytes: u32,
    pub mtime: Timestamp,
    /// Chunks uploaded under fresh versions, sorted by index.
    pub chunks: Vec<ChunkUpdate>,
}

/// A published layout: the new attributes, and the chunks it replaced that the writer may
/// delete now (an implementation returns none while others may still read them, e.g. a
/// decoupled subtree before its merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub attr: InodeAttr,
    pub superseded: Vec<ChunkUpdate>,
}

/// A time a setattr sets: a given time, or the server's clock (UTIME_NOW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeChange {
    Now,
    At(Timestamp),
}

/// The attribute changes of one setattr; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttrChanges {
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeChange>,
    pub mtime: Option<TimeChange>,
}

impl SetAttrChanges {
    pub fn is_empty(&self) -> bool {
        self == &SetAttrChanges::default()
    }

    /// The journal form, with UTIME_NOW resolved to `now` (events carry concrete times so
    /// replay is exact).
    pub fn resolve(&self, now: Timestamp) -> cudele_journal::AttrChanges {
        let resolve = |change: Option<TimeChange>| {
            change.map(|change| match change {
                TimeChange::Now => now,
                TimeChange::At(time) => time,
            })
        };
        cudele_journal::AttrChanges {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: resolve(self.atime),
            mtime: resolve(self.mtime),
        }
    }
}

/// Who owns a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// One page of a directory listing: entries sorted by name, after the requested cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaddirPage {
    /// Each entry with its attributes when they were asked for (and still exist).
    pub entries: Vec<(DirEntry, Option<InodeAttr>)>,
    /// No entries follow the last one returned.
    pub end: bool,
}

/// Capacity and usage, as statfs(2) reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub inodes: u64,
    pub bytes: u64,
    pub inodes_free: u64,
    pub bytes_free: u64,
    pub block_size_bytes: u32,
    pub name_length_max_bytes: u32,
}

/// The namespace as the filesystem sees it. Errors carry the errno Linux would give
/// (`NsError::errno`); transport failures that outlast the retry budget are `NsError::Io`.
pub trait Metadata: Send + Sync {
    fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr>;
    fn getattr(&self, ino: Ino) -> NsResult<InodeAttr>;
    fn setattr(&self, ino: Ino, changes: &SetAttrChanges) -> NsResult<InodeAttr>;
    /// A regular file, fifo, socket or device node. `mode` holds permission bits only.
    fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        owner: Owner,
        rdev: u32,
    ) -> NsResult<InodeAttr>;
    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, owner: Owner) -> NsResult<InodeAttr>;
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> NsResult<InodeAttr>;
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr>;
    fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()>;
    fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()>;
    fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()>;
    fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>>;
    /// Up to `limit` entries whose names sort after `after`; `plus` asks for attributes.
    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize, plus: bool) -> NsResult<ReaddirPage>;
    /// `size` 0 means any length; a longer value than a non-zero `size` is ERANGE.
    fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>>;
    /// NUL-terminated names; `size` as for getxattr.
    fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>>;
    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()>;
    fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()>;
    fn statfs(&self) -> NsResult<FsStats>;
    /// Publish the file's new size and the chunk objects a flush uploaded. An error other
    /// than `NsError::Io` means nothing was published.
    fn set_layout(&self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Published>;
    /// The writer id chunk objects this mount writes are named with (see
    /// `data::store::next_version`): distinct for every mount process of a namespace.
    fn data_writer(&self) -> SessionId;
    /// Return once every metadata change acknowledged so far is durable.
    fn fsync(&self, ino: Ino) -> NsResult<()>;
    /// The mount ends: release server-side state (sessions). Idempotent.
    fn close(&self) {}
    /// The kernel may cache what this implementation answers (entries and attributes with
    /// long TTLs) if it tells `kernel` whenever cached metadata changes behind the
    /// kernel's back (another mount's write, a lost push channel, a merge), before that
    /// change is acknowledged. Returns false if it cannot: then the kernel must ask every
    /// time. Called once, when the mount starts.
    fn attach_kernel_cache(&self, _kernel: Arc<dyn KernelCache>) -> bool {
        false
    }
    /// Whether answers given now may be cached by the kernel (false while the push
    /// channel that would invalidate them is down).
    fn kernel_may_cache(&self) -> bool {
        false
    }
}

/// The kernel's caches of entries and attributes, as far as we can reach them (fuser's
/// notifier). Implementations must not block on kernel locks a request in flight may hold
/// (see `crate::kernel_cache`): they are called before an invalidation is acknowledged.
pub trait KernelCache: Send + Sync {
    /// Another mount changed these inodes and directory entries.
    fn invalidate(&self, inodes: &[Ino], entries: &[(Ino, Vec<u8>)]);
    /// Anything the kernel cached may be stale.
    fn invalidate_all(&self);
}
