//! Chunk objects: their keys, and [`ChunkStore`], the blocking handle to them.
//!
//! Puts go through `cudele_journal::store::JournalStore`, so a chunk written to a local
//! directory is on stable storage when the put returns (fsync promises that) and S3 puts
//! are durable when acknowledged.

use crate::runtime::Blocking;
use bytes::Bytes;
use cudele_journal::store::JournalStore;
use cudele_journal::{Ino, JournalError};
use cudele_namespace::{NsError, NsResult};
use futures::{StreamExt, TryStreamExt};

/// Size of one chunk of file data, in bytes (as JuiceFS and CephFS use: big enough that
/// object-store latency amortises, small enough for read-modify-write).
pub const CHUNK_SIZE_BYTES: u32 = 4 * 1024 * 1024;
/// Chunk uploads (and downloads for read-modify-write) in flight at once per flush.
pub const TRANSFER_CONCURRENCY_MAX: usize = 8;
/// Folder of all chunk objects in the store.
pub const DATA_PREFIX: &str = "data";

/// The object key of chunk `index` of inode `ino`.
pub fn chunk_key(ino: Ino, index: u64) -> String {
    format!("{DATA_PREFIX}/{ino:016x}/{index:08x}")
}

/// The folder holding every chunk of `ino`.
pub fn inode_prefix(ino: Ino) -> String {
    format!("{DATA_PREFIX}/{ino:016x}")
}

/// The inode and chunk index a key names, if it is a chunk key.
pub fn parse_chunk_key(key: &str) -> Option<(Ino, u64)> {
    let rest = key.strip_prefix(DATA_PREFIX)?.strip_prefix('/')?;
    let (ino, index) = rest.split_once('/')?;
    if ino.len() != 16 || index.len() < 8 {
        return None;
    }
    Some((u64::from_str_radix(ino, 16).ok()?, u64::from_str_radix(index, 16).ok()?))
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

    /// The whole chunk object, or None if there is none (a hole).
    pub fn get(&self, ino: Ino, index: u64) -> NsResult<Option<Bytes>> {
        let objects = &self.objects;
        self.runtime.block_on(async move { get_chunk(objects, ino, index).await })
    }

    /// Several chunks at once (for read-modify-write before an upload).
    pub fn get_many(&self, ino: Ino, indexes: &[u64]) -> NsResult<Vec<(u64, Option<Bytes>)>> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(indexes.iter().copied())
                .map(|index| async move { get_chunk(objects, ino, index).await.map(|bytes| (index, bytes)) })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect()
                .await
        })
    }

    /// Write chunks (each replacing any object at its key), several at a time.
    pub fn put_many(&self, ino: Ino, chunks: Vec<(u64, Bytes)>) -> NsResult<()> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(chunks)
                .map(|(index, bytes)| async move { objects.put(&chunk_key(ino, index), bytes).await })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect::<Vec<()>>()
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    /// Every chunk of `ino`: (index, object length in bytes), by index.
    pub fn list(&self, ino: Ino) -> NsResult<Vec<(u64, u64)>> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            let listed = objects.list(&inode_prefix(ino)).await.map_err(store_error)?;
            let mut chunks: Vec<(u64, u64)> = listed
                .into_iter()
                .filter_map(|object| {
                    let (owner, index) = parse_chunk_key(&object.path)?;
                    (owner == ino).then_some((index, object.size_bytes))
                })
                .collect();
            chunks.sort_unstable();
            Ok(chunks)
        })
    }

    /// Delete chunks; deleting a missing one succeeds.
    pub fn delete_many(&self, ino: Ino, indexes: &[u64]) -> NsResult<()> {
        let objects = &self.objects;
        self.runtime.block_on(async move {
            futures::stream::iter(indexes.iter().copied())
                .map(|index| async move { objects.delete(&chunk_key(ino, index)).await })
                .buffer_unordered(TRANSFER_CONCURRENCY_MAX)
                .try_collect::<Vec<()>>()
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    /// Make the objects of `ino` hold nothing at or past byte `keep_bytes`: delete whole
    /// chunks past it and cut the chunk it falls in. Chunks for which `rewritten(index)`
    /// is true are about to be overwritten whole, so their cut is skipped.
    pub fn trim(
        &self,
        ino: Ino,
        keep_bytes: u64,
        chunk_size_bytes: u64,
        rewritten: impl Fn(u64) -> bool,
    ) -> NsResult<()> {
        let mut doomed = Vec::new();
        let mut cut = None;
        for (index, length_bytes) in self.list(ino)? {
            let start = index.saturating_mul(chunk_size_bytes);
            if start >= keep_bytes {
                doomed.push(index);
            } else if start.saturating_add(length_bytes) > keep_bytes && !rewritten(index) {
                cut = Some((index, keep_bytes - start));
            }
        }
        if let Some((index, keep_in_chunk)) = cut {
            if let Some(bytes) = self.get(ino, index)? {
                let keep_in_chunk = usize::try_from(keep_in_chunk).unwrap_or(usize::MAX).min(bytes.len());
                self.put_many(ino, vec![(index, bytes.slice(..keep_in_chunk))])?;
            }
        }
        self.delete_many(ino, &doomed)
    }
}

async fn get_chunk(objects: &JournalStore, ino: Ino, index: u64) -> NsResult<Option<Bytes>> {
    match objects.get(&chunk_key(ino, index)).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(JournalError::NotFound { .. }) => Ok(None),
        Err(error) => Err(store_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort by inode then chunk, and parse back.
    #[test]
    fn keys_round_trip() {
        assert_eq!(chunk_key(0x2a, 3), "data/000000000000002a/00000003");
        assert_eq!(parse_chunk_key(&chunk_key(0x2a, 3)), Some((0x2a, 3)));
        assert_eq!(parse_chunk_key(&chunk_key(7, 1 << 40)), Some((7, 1 << 40)));
        assert_eq!(parse_chunk_key("data/xyz/00000001"), None);
        assert_eq!(parse_chunk_key("journal/00000001"), None);
    }

    /// Trim deletes chunks past the size and cuts the one the size falls in.
    #[test]
    fn trim_cuts_and_deletes() {
        let store = ChunkStore::new(JournalStore::memory(), Blocking::new("test").expect("runtime"));
        let chunk = 10u64;
        store
            .put_many(
                9,
                vec![(0, Bytes::from(vec![1u8; 10])), (1, Bytes::from(vec![2u8; 10])), (2, Bytes::from(vec![3u8; 4]))],
            )
            .expect("put");
        store.trim(9, 13, chunk, |_| false).expect("trim");
        assert_eq!(store.list(9).expect("list"), vec![(0, 10), (1, 3)]);
        store.trim(9, 0, chunk, |_| false).expect("trim to zero");
        assert_eq!(store.list(9).expect("list"), vec![]);
    }
}
