//! Chunk objects: their keys, and [`ChunkStore`], the blocking handle to them.
//!
//! Every write of a chunk makes a new object, `data/<ino>/<index>.<writer>.<serial>`
//! ([`ChunkVersion`]); objects are never overwritten. Only a `SetLayout` the metadata service
//! accepts makes a version the one readers use (the inode's chunk map), so a flush that is
//! refused (or crashes) leaves behind an unpublished object and never changes what anyone reads.
//!
//! Puts go through `cudele_journal::store::JournalStore`, so a chunk written to a local
//! directory is on stable storage when the put returns (fsync promises that) and S3 puts
//! are durable when acknowledged.

use crate::runtime::Blocking;
use bytes::Bytes;
use cudele_journal::store::JournalStore;
use cudele_journal::{ChunkVersion, Ino, JournalError, SessionId};
use cudele_namespace::{NsError, NsResult};
use futures::{StreamExt, TryStreamExt};
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of one chunk of file data, in bytes (as JuiceFS and CephFS use: big enough that
/// object-store latency amortises, small enough for read-modify-write).
pub const CHUNK_SIZE_BYTES: u32 = 4 * 1024 * 1024;
/// Chunk uploads (and downloads for read-modify-write) in flight at once per flush.
pub const TRANSFER_CONCURRENCY_MAX: usize = 8;
/// Folder of all chunk objects in the store.
pub const DATA_PREFIX: &str = "data";

/// Serials of chunk versions this process writes; with the writer's session id (never
/// reused by the MDS) they name every object once. Shared by all mounts of the process, so
/// in-process test mounts that share a writer id still never collide.
static NEXT_CHUNK_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A fresh version for a chunk object written by `writer` (see [`ChunkVersion`]).
pub fn next_version(writer: SessionId) -> ChunkVersion {
    ChunkVersion { writer, serial: NEXT_CHUNK_SERIAL.fetch_add(1, Ordering::Relaxed) }
}

/// The object key of version `version` of chunk `index` of inode `ino`.
pub fn chunk_key(ino: Ino, index: u64, version: ChunkVersion) -> String {
    format!("{DATA_PREFIX}/{ino:016x}/{index:08x}.{:x}.{:x}", version.writer, version.serial)
}

/// The folder holding every chunk of `ino`.
pub fn inode_prefix(ino: Ino) -> String {
    format!("{DATA_PREFIX}/{ino:016x}")
}

/// The inode, chunk index and version a key names, if it is a chunk key. Keys written
/// before chunks were versioned (`data/<ino>/<index>`) parse with version None: no layout
/// publishes them, so they are garbage.
pub fn parse_chunk_key(key: &str) -> Option<(Ino, u64, Option<ChunkVersion>)> {
    let rest = key.strip_prefix(DATA_PREFIX)?.strip_prefix('/')?;
    let (ino, name) = rest.split_once('/')?;
    if ino.len() != 16 {
        return None;
    }
    let ino = u64::from_str_radix(ino, 16).ok()?;
    let mut parts = name.split('.');
    let index = parts.next().filter(|index| index.len() >= 8)?;
    let index = u64::from_str_radix(index, 16).ok()?;
    let version = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(writer), Some(serial), None) => Some(ChunkVersion {
            writer: u64::from_str_radix(writer, 16).ok()?,
            serial: u64::from_str_radix(serial, 16).ok()?,
        }),
        _ => return None,
    };
    Some((ino, index, version))
}

/// One stored chunk object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredChunk {
    pub index: u64,
    /// None for an unversioned object (see [`parse_chunk_key`]).
    pub version: Option<ChunkVersion>,
    pub size_bytes: u64,
}

/// An object-store failure as the application sees it: EIO, with the cause in the log.
fn store_error(error: JournalError) -> NsError {
    NsError::Io(format!("object store: {error}"))
}

/// Blocking access to chunk objects; cheap to clone.
#[derive(Clone)]
pub struct ChunkStore {
    objects: JournalStore,
    runtime: Blocking,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ChunkStore({})", self.objects)
    }
}

impl ChunkStore {
    pub fn new(objects: JournalStore, runtime: Blocking) -> Self {
        ChunkStore { objects, runtime }
    }

    /// The object store itself (for listing with modification times in `gc`).
    pub fn objects(&self) -> &JournalStore {
        &self.objects
    }

    pub fn runtime(&self) -> &Blocking {
        &self.runtime
    }

    /// The whole object of version `version` of chunk `index`, or None if there is none.
    pub fn get(&self, ino: Ino, index: u64, version: ChunkVersion) -> NsResult<Option<Bytes>> {
        let objects = &self.objects;
        self.runtime.block_on(async move { get_chunk(objects, &chunk_key(ino, index, version)).await })
    }

    /// Several chunk objects at once (for read-modify-write before an upload).
    pub fn get_many(
        &self,
        ino: Ino,
        chunks: &[(u64, ChunkVersion)],
    ) -> NsResult<Vec<(u64, ChunkVersion, Option<Bytes>)>> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(chunks.iter().copied())
                .map(|(index, version)| async move {
                    get_chunk(objects, &chunk_key(ino, index, version)).await.map(|bytes| (index, version, bytes))
                })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect()
                .await
        })
    }

    /// Write chunk objects, several at a time. Versions are fresh, so no put replaces an
    /// object anyone reads.
    pub fn put_many(&self, ino: Ino, chunks: Vec<(u64, ChunkVersion, Bytes)>) -> NsResult<()> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(chunks)
                .map(|(index, version, bytes)| async move { objects.put(&chunk_key(ino, index, version), bytes).await })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect::<Vec<()>>()
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    /// Every chunk object of `ino`, by index and version.
    pub fn list(&self, ino: Ino) -> NsResult<Vec<StoredChunk>> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            let listed = objects.list(&inode_prefix(ino)).await.map_err(store_error)?;
            let mut chunks: Vec<StoredChunk> = listed
                .into_iter()
                .filter_map(|object| {
                    let (owner, index, version) = parse_chunk_key(&object.path)?;
                    (owner == ino).then_some(StoredChunk { index, version, size_bytes: object.size_bytes })
                })
                .collect();
            chunks.sort_unstable();
            Ok(chunks)
        })
    }

    /// Delete chunk objects (None: an unversioned one); deleting a missing one succeeds.
    pub fn delete_many(&self, ino: Ino, chunks: &[(u64, Option<ChunkVersion>)]) -> NsResult<()> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(chunks.iter().copied())
                .map(|(index, version)| async move {
                    let key = match version {
                        Some(version) => chunk_key(ino, index, version),
                        None => format!("{}/{index:08x}", inode_prefix(ino)),
                    };
                    objects.delete(&key).await
                })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect::<Vec<()>>()
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    /// Delete every chunk object of `ino` (a removed file).
    pub fn delete_all(&self, ino: Ino) -> NsResult<()> {
        let doomed: Vec<(u64, Option<ChunkVersion>)> =
            self.list(ino)?.into_iter().map(|chunk| (chunk.index, chunk.version)).collect();
        self.delete_many(ino, &doomed)
    }
}

async fn get_chunk(objects: &JournalStore, key: &str) -> NsResult<Option<Bytes>> {
    match objects.get(key).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(JournalError::NotFound { .. }) => Ok(None),
        Err(error) => Err(store_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort by inode then chunk, carry the version, and parse back; old unversioned
    /// keys parse without a version.
    #[test]
    fn keys_round_trip() {
        let version = ChunkVersion { writer: 3, serial: 0x1f };
        assert_eq!(chunk_key(0x2a, 3, version), "data/000000000000002a/00000003.3.1f");
        assert_eq!(parse_chunk_key(&chunk_key(0x2a, 3, version)), Some((0x2a, 3, Some(version))));
        assert_eq!(parse_chunk_key(&chunk_key(7, 1 << 40, version)), Some((7, 1 << 40, Some(version))));
        assert_eq!(parse_chunk_key("data/000000000000002a/00000003"), Some((0x2a, 3, None)));
        assert_eq!(parse_chunk_key("data/000000000000002a/00000003.1"), None);
        assert_eq!(parse_chunk_key("data/000000000000002a/00000003.1.2.3"), None);
        assert_eq!(parse_chunk_key("data/xyz/00000001"), None);
        assert_eq!(parse_chunk_key("journal/00000001"), None);
    }

    /// Two versions of one chunk are two objects; deleting one leaves the other, and
    /// delete_all removes unversioned leftovers too.
    #[test]
    fn versions_are_separate_objects() {
        let store = ChunkStore::new(JournalStore::memory(), Blocking::new("test").expect("runtime"));
        let (first, second) = (next_version(5), next_version(5));
        assert_ne!(first, second);
        store
            .put_many(9, vec![(0, first, Bytes::from_static(b"one")), (0, second, Bytes::from_static(b"two!"))])
            .expect("put");
        assert_eq!(store.get(9, 0, first).expect("get").as_deref(), Some(&b"one"[..]));
        store.delete_many(9, &[(0, Some(first))]).expect("delete");
        assert_eq!(store.get(9, 0, first).expect("get"), None);
        assert_eq!(store.list(9).expect("list"), vec![StoredChunk { index: 0, version: Some(second), size_bytes: 4 }]);
        let objects = store.objects().clone();
        store
            .runtime()
            .block_on(async move {
                objects.put("data/0000000000000009/00000001", Bytes::from_static(b"old")).await.map_err(store_error)
            })
            .expect("put unversioned");
        store.delete_all(9).expect("delete all");
        assert_eq!(store.list(9).expect("list"), vec![]);
    }
}
