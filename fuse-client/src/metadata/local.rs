//! [`LocalMetadata`]: an in-process [`Namespace`] behind a mutex, for tests and tools.
//!
//! It builds the same journal events the MDS builds (its own clock and inode counter) and
//! applies them through `Namespace::apply`, so it has exactly the namespace's semantics
//! with no server and no cache.

use super::{FsStats, InodeAttr, LayoutUpdate, Metadata, Owner, Published, ReaddirPage, SetAttrChanges};
use crate::sync::{lock, Mutex};
use cudele_journal::{
    ChunkUpdate, Event, FileKind, Ino, RenameMode, SessionId, Timestamp, XattrMode, NAME_LENGTH_MAX_BYTES,
};
use cudele_namespace::{validate_event, Namespace, NsResult};

/// Capacity statfs reports: there is no real limit, so a large one (as the MDS does).
pub const LOCAL_CAPACITY_BYTES: u64 = 1 << 50;
pub const LOCAL_CAPACITY_INODES: u64 = 1 << 40;
pub const LOCAL_BLOCK_SIZE_BYTES: u32 = 4096;

pub struct LocalMetadata {
    namespace: Mutex<Namespace>,
}

impl Default for LocalMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalMetadata {
    /// A namespace holding only the root directory.
    pub fn new() -> Self {
        LocalMetadata { namespace: Mutex::new(Namespace::new(Timestamp::now())) }
    }

    /// Run `read` against the namespace (tests compare it with what the filesystem shows).
    pub fn with_namespace<R>(&self, read: impl FnOnce(&Namespace) -> R) -> R {
        read(&lock(&self.namespace))
    }

    /// Build an event from the current state, validate and apply it, then read the result.
    fn mutate<R>(
        &self,
        build: impl FnOnce(&Namespace) -> Event,
        reply: impl FnOnce(&Namespace, &Event) -> NsResult<R>,
    ) -> NsResult<R> {
        let mut namespace = lock(&self.namespace);
        let event = build(&namespace);
        validate_event(&event)?;
        namespace.apply(&event)?;
        reply(&namespace, &event)
    }
}

fn inode_attr(namespace: &Namespace, ino: Ino) -> NsResult<InodeAttr> {
    let record = namespace.record(ino)?;
    Ok(InodeAttr {
        attr: record.attr.clone(),
        chunk_size_bytes: record.chunk_size_bytes,
        chunks: std::sync::Arc::new(record.chunks.clone()),
    })
}

/// The published chunks `updates` replace with other versions.
pub fn superseded_by(namespace: &Namespace, ino: Ino, updates: &[ChunkUpdate]) -> Vec<ChunkUpdate> {
    let Ok(record) = namespace.record(ino) else { return Vec::new() };
    updates
        .iter()
        .filter_map(|update| {
            let old = record.chunks.get(&update.index)?;
            (old.version != update.chunk.version).then_some(ChunkUpdate { index: update.index, chunk: *old })
        })
        .collect()
}

fn created(namespace: &Namespace, event: &Event) -> NsResult<InodeAttr> {
    match event {
        Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } | Event::Link { ino, .. } => {
            inode_attr(namespace, *ino)
        }
        _ => Err(cudele_namespace::NsError::Io("not a creating event".to_string())),
    }
}

impl Metadata for LocalMetadata {
    fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr> {
        let namespace = lock(&self.namespace);
        let ino = namespace.lookup(parent, name)?.ino;
        inode_attr(&namespace, ino)
    }

    fn getattr(&self, ino: Ino) -> NsResult<InodeAttr> {
        inode_attr(&lock(&self.namespace), ino)
    }

    fn setattr(&self, ino: Ino, changes: &SetAttrChanges) -> NsResult<InodeAttr> {
        let time = Timestamp::now();
        let changes = changes.resolve(time);
        self.mutate(|_| Event::SetAttr { ino, changes, time }, |namespace, _| inode_attr(namespace, ino))
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
        self.mutate(
            |namespace| Event::Create {
                parent,
                name: name.to_vec(),
                ino: namespace.next_ino(),
                kind,
                mode: mode & 0o7777,
                uid: owner.uid,
                gid: owner.gid,
                rdev,
                time: Timestamp::now(),
            },
            created,
        )
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, owner: Owner) -> NsResult<InodeAttr> {
        self.mutate(
            |namespace| Event::Mkdir {
                parent,
                name: name.to_vec(),
                ino: namespace.next_ino(),
                mode: mode & 0o7777,
                uid: owner.uid,
                gid: owner.gid,
                time: Timestamp::now(),
            },
            created,
        )
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> NsResult<InodeAttr> {
        self.mutate(
            |namespace| Event::Symlink {
                parent,
                name: name.to_vec(),
                ino: namespace.next_ino(),
                target: target.to_vec(),
                uid: owner.uid,
                gid: owner.gid,
                time: Timestamp::now(),
            },
            created,
        )
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr> {
        self.mutate(
            |_| Event::Link { ino, parent: new_parent, name: new_name.to_vec(), time: Timestamp::now() },
            created,
        )
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.mutate(|_| Event::Unlink { parent, name: name.to_vec(), time: Timestamp::now() }, |_, _| Ok(()))
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.mutate(|_| Event::Rmdir { parent, name: name.to_vec(), time: Timestamp::now() }, |_, _| Ok(()))
    }

    fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()> {
        self.mutate(
            |_| Event::Rename {
                source_parent,
                source_name: source_name.to_vec(),
                target_parent,
                target_name: target_name.to_vec(),
                mode,
                time: Timestamp::now(),
            },
            |_, _| Ok(()),
        )
    }

    fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        Ok(lock(&self.namespace).readlink(ino)?.to_vec())
    }

    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize, plus: bool) -> NsResult<ReaddirPage> {
        let namespace = lock(&self.namespace);
        // One more than asked tells whether the listing ends here.
        let mut entries = namespace.readdir(ino, after, limit.saturating_add(1))?;
        let end = entries.len() <= limit;
        entries.truncate(limit);
        let entries = entries
            .into_iter()
            .map(|entry| {
                let attr = if plus { inode_attr(&namespace, entry.ino).ok() } else { None };
                (entry, attr)
            })
            .collect();
        Ok(ReaddirPage { entries, end })
    }

    fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        Ok(lock(&self.namespace).getxattr(ino, name, size)?.to_vec())
    }

    fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        lock(&self.namespace).listxattr(ino, size)
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()> {
        self.mutate(
            |_| Event::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), mode, time: Timestamp::now() },
            |_, _| Ok(()),
        )
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()> {
        self.mutate(|_| Event::RemoveXattr { ino, name: name.to_vec(), time: Timestamp::now() }, |_, _| Ok(()))
    }

    fn statfs(&self) -> NsResult<FsStats> {
        let namespace = lock(&self.namespace);
        let inodes = namespace.inode_count();
        let bytes = namespace.file_bytes();
        Ok(FsStats {
            inodes,
            bytes,
            inodes_free: LOCAL_CAPACITY_INODES.saturating_sub(inodes),
            bytes_free: LOCAL_CAPACITY_BYTES.saturating_sub(bytes),
            block_size_bytes: LOCAL_BLOCK_SIZE_BYTES,
            name_length_max_bytes: NAME_LENGTH_MAX_BYTES as u32,
        })
    }

    fn set_layout(&self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Published> {
        let mut superseded = Vec::new();
        self.mutate(
            |namespace| {
                superseded = superseded_by(namespace, ino, &layout.chunks);
                Event::SetLayout {
                    ino,
                    size: layout.size,
                    chunk_size_bytes: layout.chunk_size_bytes,
                    mtime: layout.mtime,
                    chunks: layout.chunks.clone(),
                }
            },
            |namespace, _| inode_attr(namespace, ino),
        )
        .map(|attr| Published { attr, superseded })
    }

    /// One process: the process-wide serials of `data::store` keep names apart.
    fn data_writer(&self) -> SessionId {
        0
    }

    /// One process, one mount: nothing changes behind the kernel's back.
    fn attach_kernel_cache(&self, _kernel: std::sync::Arc<dyn super::KernelCache>) -> bool {
        true
    }

    fn kernel_may_cache(&self) -> bool {
        true
    }

    fn fsync(&self, ino: Ino) -> NsResult<()> {
        // Nothing is persisted in process; the inode must still exist, as on the MDS.
        lock(&self.namespace).getattr(ino).map(|_| ())
    }
}
