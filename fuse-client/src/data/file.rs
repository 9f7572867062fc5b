//! [`FileData`]: one inode's data as this mount sees it — shared by every open handle of
//! the inode on this mount, so two descriptors see each other's writes at once.
//!
//! Writes go to a bounded write-back buffer of dirty chunks. `flush` (close, fsync, a full
//! buffer) uploads them — read-modify-write for chunks partly written over existing data —
//! as fresh object versions, then publishes them with the new size in one `set_layout`:
//! data first, publication second, so what readers see changes only when the metadata
//! service accepts the layout. A refused layout (EBUSY under a decoupled subtree's `block`
//! policy) leaves every published chunk as it was; the flush deletes its new objects. A
//! crash between upload and publication leaves unpublished objects for `cudele gc`.
//!
//! Reads use the chunk map the file's attributes carry ([`InodeAttr::chunks`]): the version
//! each chunk reads from and how many of its bytes are data. A published object that is
//! gone (its writer replaced and deleted it since this mount read the map) makes the read
//! fetch the map afresh and try once more.

use super::store::{next_version, ChunkStore, CHUNK_SIZE_BYTES};
use crate::metadata::{InodeAttr, LayoutUpdate, Metadata};
use bytes::Bytes;
use cudele_journal::codec::LAYOUT_CHUNK_UPDATES_MAX;
use cudele_journal::{ChunkMap, ChunkRef, ChunkUpdate, ChunkVersion, Ino, Timestamp};
use cudele_namespace::{NsError, NsResult};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// Dirty bytes one file may buffer before a write flushes them.
pub const WRITE_BACK_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Dirty chunks one file may buffer before a write flushes them (with small chunk sizes),
/// so one flush stays within [`LAYOUT_CHUNK_UPDATES_MAX`] chunk updates.
pub const WRITE_BACK_CHUNKS_MAX: usize = 1024;
/// Chunks one call of [`FileData::write`] may dirty; the caller splits longer writes and
/// flushes in between when [`FileData::needs_flush`].
pub const WRITE_PIECE_CHUNKS_MAX: u64 = 512;
/// Clean chunks kept per open file to serve sequential reads without refetching.
pub const READ_CACHE_CHUNKS_MAX: usize = 2;

/// Sorted, disjoint, non-adjacent byte ranges within one chunk.
#[derive(Debug, Default, Clone)]
struct RangeSet {
    ranges: Vec<Range<usize>>,
}

impl RangeSet {
    fn insert(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let mut merged = range;
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for existing in self.ranges.drain(..) {
            if existing.end < merged.start || existing.start > merged.end {
                kept.push(existing);
            } else {
                merged = merged.start.min(existing.start)..merged.end.max(existing.end);
            }
        }
        kept.push(merged);
        kept.sort_by_key(|range| range.start);
        self.ranges = kept;
    }

    fn covers(&self, range: Range<usize>) -> bool {
        range.is_empty() || self.ranges.iter().any(|held| held.start <= range.start && range.end <= held.end)
    }
}

/// One chunk with unflushed writes.
#[derive(Debug, Default)]
struct DirtyChunk {
    /// Content from the chunk's first byte. Until `complete`, only `written` positions are
    /// known; others are zero here and may hold older data in the store.
    bytes: Vec<u8>,
    written: RangeSet,
    /// `bytes` is the chunk's whole content (the stored part was merged in).
    complete: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FileData {
    ino: Ino,
    chunk_size_bytes: u64,
    /// The size as this mount sees it (including unflushed writes).
    size: u64,
    /// The size the metadata service holds; published bytes at or past it are not data.
    remote_size: u64,
    /// The published chunks as this mount last saw them.
    chunks: Arc<ChunkMap>,
    /// Modification time of unflushed writes.
    pending_mtime: Option<Timestamp>,
    /// The modification time the data was last known at (to notice other mounts' writes).
    known_mtime: Timestamp,
    dirty: BTreeMap<u64, DirtyChunk>,
    dirty_bytes: u64,
    read_cache: VecDeque<(u64, Bytes)>,
}

impl FileData {
    /// The data of a file with attributes `attr`.
    pub fn new(attr: &InodeAttr) -> Self {
        let chunk_size_bytes = if attr.chunk_size_bytes == 0 { CHUNK_SIZE_BYTES } else { attr.chunk_size_bytes } as u64;
        FileData {
            ino: attr.attr.ino,
            chunk_size_bytes,
            size: attr.attr.size,
            remote_size: attr.attr.size,
            chunks: attr.chunks.clone(),
            pending_mtime: None,
            known_mtime: attr.attr.mtime,
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            read_cache: VecDeque::new(),
        }
    }

    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// The size including unflushed writes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size_bytes(&self) -> u64 {
        self.chunk_size_bytes
    }

    /// The modification time of unflushed writes, if any.
    pub fn pending_mtime(&self) -> Option<Timestamp> {
        self.pending_mtime
    }

    /// Anything to flush?
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.pending_mtime.is_some() || self.size != self.remote_size
    }

    /// The write-back buffer is over its bound.
    pub fn needs_flush(&self) -> bool {
        self.dirty_bytes > WRITE_BACK_BYTES_MAX || self.dirty.len() >= WRITE_BACK_CHUNKS_MAX
    }

    /// Another handle opened the file with fresh attributes (close-to-open): if the file
    /// changed elsewhere and we hold nothing unflushed, forget what we knew.
    pub fn refresh(&mut self, attr: &InodeAttr) {
        if self.is_dirty() {
            return;
        }
        if attr.attr.size != self.remote_size || attr.attr.mtime != self.known_mtime || attr.chunks != self.chunks {
            self.size = attr.attr.size;
            self.remote_size = attr.attr.size;
            self.known_mtime = attr.attr.mtime;
            self.set_chunks(attr);
        }
    }

    /// The file was truncated (after a flush) to the attributes `attr`.
    pub fn truncated(&mut self, attr: &InodeAttr) {
        debug_assert!(self.dirty.is_empty(), "truncate flushes first");
        self.size = attr.attr.size;
        self.remote_size = attr.attr.size;
        self.known_mtime = attr.attr.mtime;
        self.set_chunks(attr);
    }

    /// Take the chunk map of `attr` (if it is in this file's chunk size).
    fn set_chunks(&mut self, attr: &InodeAttr) {
        if u64::from(attr.chunk_size_bytes) == self.chunk_size_bytes || attr.chunks.is_empty() {
            self.chunks = attr.chunks.clone();
        }
        self.read_cache.clear();
    }

    /// Fetch the published chunk map afresh (and, with nothing unflushed, the size too).
    fn reload_chunks<M: Metadata + ?Sized>(&mut self, metadata: &M) -> NsResult<()> {
        let attr = metadata.getattr(self.ino)?;
        if self.is_dirty() {
            self.set_chunks(&attr);
        } else {
            self.refresh(&attr);
        }
        Ok(())
    }

    fn chunk_range(&self, index: u64) -> (u64, u64) {
        let start = index.saturating_mul(self.chunk_size_bytes);
        (start, start.saturating_add(self.chunk_size_bytes))
    }

    /// How many leading bytes of chunk `index` its published object contributes.
    fn published_extent(&self, index: u64) -> usize {
        let Some(chunk) = self.chunks.get(&index) else { return 0 };
        let (start, _) = self.chunk_range(index);
        self.remote_size.saturating_sub(start).min(self.chunk_size_bytes).min(u64::from(chunk.length_bytes)) as usize
    }

    fn needs_base(&self, index: u64, chunk: &DirtyChunk) -> bool {
        let extent = self.published_extent(index);
        !chunk.complete && extent > 0 && !chunk.written.covers(0..extent)
    }

    /// The published object of chunk `index` (None: a hole). A published object that is
    /// missing means our map is stale: fetch it afresh once; still missing is EIO.
    fn fetch_published<M: Metadata + ?Sized>(
        &mut self,
        store: &ChunkStore,
        metadata: &M,
        index: u64,
    ) -> NsResult<Option<Bytes>> {
        for attempt in 0..2 {
            let Some(chunk) = self.chunks.get(&index).copied() else { return Ok(None) };
            if let Some(bytes) = store.get(self.ino, index, chunk.version)? {
                return Ok(Some(bytes));
            }
            if attempt == 0 {
                self.reload_chunks(metadata)?;
            }
        }
        Err(NsError::Io(format!("chunk {index} of inode {}: its published object is missing", self.ino)))
    }

    /// Merge the published content `base` under the writes of a dirty chunk.
    fn merge_base(&mut self, index: u64, base: Option<Bytes>) {
        let extent = self.published_extent(index);
        let Some(chunk) = self.dirty.get_mut(&index) else { return };
        let base = base.unwrap_or_default();
        let base = &base[..base.len().min(extent)];
        let mut content = vec![0u8; chunk.bytes.len().max(base.len())];
        content[..base.len()].copy_from_slice(base);
        for range in &chunk.written.ranges {
            content[range.clone()].copy_from_slice(&chunk.bytes[range.clone()]);
        }
        self.dirty_bytes = self.dirty_bytes + content.len() as u64 - chunk.bytes.len() as u64;
        chunk.bytes = content;
        chunk.written = RangeSet::default();
        chunk.complete = true;
    }

    /// A clean chunk's published content, cut at the recorded size.
    fn clean_chunk<M: Metadata + ?Sized>(&mut self, store: &ChunkStore, metadata: &M, index: u64) -> NsResult<Bytes> {
        if let Some((_, bytes)) = self.read_cache.iter().find(|(cached, _)| *cached == index) {
            return Ok(bytes.clone());
        }
        let bytes = if self.published_extent(index) == 0 {
            Bytes::new()
        } else {
            let stored = self.fetch_published(store, metadata, index)?.unwrap_or_default();
            // The map may have been fetched afresh: cut with the extent it gives now.
            stored.slice(..stored.len().min(self.published_extent(index)))
        };
        if self.read_cache.len() >= READ_CACHE_CHUNKS_MAX {
            self.read_cache.pop_front();
        }
        self.read_cache.push_back((index, bytes.clone()));
        Ok(bytes)
    }

    /// Up to `length` bytes at `offset` (fewer at the end of the file), including this
    /// mount's unflushed writes.
    pub fn read<M: Metadata + ?Sized>(
        &mut self,
        store: &ChunkStore,
        metadata: &M,
        offset: u64,
        length: u32,
    ) -> NsResult<Vec<u8>> {
        let end = offset.saturating_add(u64::from(length)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut position = offset;
        while position < end {
            let index = position / self.chunk_size_bytes;
            let (chunk_start, chunk_end) = self.chunk_range(index);
            let piece_end = end.min(chunk_end);
            let within = (position - chunk_start) as usize..(piece_end - chunk_start) as usize;
            if let Some(chunk) = self.dirty.get(&index) {
                if self.needs_base(index, chunk) && !chunk.written.covers(within.clone()) {
                    let base = self.fetch_published(store, metadata, index)?;
                    self.merge_base(index, base);
                }
                let bytes = self.dirty.get(&index).map(|chunk| chunk.bytes.as_slice()).unwrap_or_default();
                append_zero_filled(&mut out, bytes, within);
            } else {
                let bytes = self.clean_chunk(store, metadata, index)?;
                append_zero_filled(&mut out, &bytes, within);
            }
            position = piece_end;
        }
        Ok(out)
    }

    /// Buffer `data` at `offset`; the caller flushes when [`FileData::needs_flush`]. At
    /// most [`WRITE_PIECE_CHUNKS_MAX`] chunks per call.
    pub fn write(&mut self, offset: u64, data: &[u8], now: Timestamp) {
        debug_assert!(data.len() as u64 <= WRITE_PIECE_CHUNKS_MAX.saturating_sub(1) * self.chunk_size_bytes + 1);
        let end = offset.saturating_add(data.len() as u64);
        let mut position = offset;
        while position < end {
            let index = position / self.chunk_size_bytes;
            let (chunk_start, chunk_end) = self.chunk_range(index);
            let piece_end = end.min(chunk_end);
            let source = &data[(position - offset) as usize..(piece_end - offset) as usize];
            let within = (position - chunk_start) as usize..(piece_end - chunk_start) as usize;
            let chunk = self.dirty.entry(index).or_default();
            if chunk.bytes.len() < within.end {
                self.dirty_bytes += (within.end - chunk.bytes.len()) as u64;
                chunk.bytes.resize(within.end, 0);
            }
            chunk.bytes[within.clone()].copy_from_slice(source);
            if !chunk.complete {
                chunk.written.insert(within);
            }
            self.read_cache.retain(|(cached, _)| *cached != index);
            position = piece_end;
        }
        if !data.is_empty() {
            self.size = self.size.max(end);
            self.pending_mtime = Some(now);
        }
    }

    /// Merge the published content under every dirty chunk that is partly written over
    /// data. Uses the map as the metadata service holds it now, not as this mount last saw
    /// it, so a read-modify-write keeps what other mounts published since.
    fn merge_bases<M: Metadata + ?Sized>(&mut self, store: &ChunkStore, metadata: &M) -> NsResult<()> {
        let partial = |file: &FileData| -> Vec<u64> {
            file.dirty
                .iter()
                .filter(|(index, chunk)| file.needs_base(**index, chunk))
                .map(|(index, _)| *index)
                .collect()
        };
        if self.dirty.values().all(|chunk| chunk.complete) {
            return Ok(());
        }
        self.reload_chunks(metadata)?;
        let wanted: Vec<(u64, ChunkVersion)> = partial(self)
            .into_iter()
            .filter_map(|index| self.chunks.get(&index).map(|chunk| (index, chunk.version)))
            .collect();
        for (index, _, base) in store.get_many(self.ino, &wanted)? {
            let base = match base {
                Some(base) => Some(base),
                None => self.fetch_published(store, metadata, index)?,
            };
            self.merge_base(index, base);
        }
        Ok(())
    }

    /// Upload the dirty chunks as fresh versions, then publish them with size and mtime
    /// through `metadata`. Returns the new attributes, or None if there was nothing to
    /// flush. On failure everything stays buffered for the next attempt.
    pub fn flush<M: Metadata + ?Sized>(&mut self, store: &ChunkStore, metadata: &M) -> NsResult<Option<InodeAttr>> {
        if !self.is_dirty() {
            return Ok(None);
        }
        self.merge_bases(store, metadata)?;
        if self.dirty.len() > LAYOUT_CHUNK_UPDATES_MAX {
            return Err(NsError::Io(format!("{} dirty chunks exceed one layout", self.dirty.len())));
        }
        let writer = metadata.data_writer();
        let uploads: Vec<(u64, ChunkVersion, Bytes)> = self
            .dirty
            .iter()
            .map(|(index, chunk)| (*index, next_version(writer), Bytes::copy_from_slice(&chunk.bytes)))
            .collect();
        let updates: Vec<ChunkUpdate> = uploads
            .iter()
            .map(|(index, version, bytes)| ChunkUpdate {
                index: *index,
                chunk: ChunkRef { version: *version, length_bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX) },
            })
            .collect();
        if let Err(error) = store.put_many(self.ino, uploads) {
            self.discard(store, &updates);
            return Err(error);
        }
        let layout = LayoutUpdate {
            size: self.size,
            chunk_size_bytes: u32::try_from(self.chunk_size_bytes).unwrap_or(CHUNK_SIZE_BYTES),
            mtime: self.pending_mtime.unwrap_or_else(Timestamp::now),
            chunks: updates,
        };
        let published = match metadata.set_layout(self.ino, &layout) {
            Ok(published) => published,
            Err(error) => {
                // Any answer but a transport failure means nothing was published; after a
                // transport failure the layout may be in, so its objects stay (gc's).
                if !matches!(error, NsError::Io(_) | NsError::Stale) {
                    self.discard(store, &layout.chunks);
                }
                return Err(error);
            }
        };
        self.discard(store, &published.superseded);
        self.dirty.clear();
        self.dirty_bytes = 0;
        self.pending_mtime = None;
        self.remote_size = self.size;
        self.known_mtime = published.attr.attr.mtime;
        self.set_chunks(&published.attr);
        Ok(Some(published.attr))
    }

    /// Delete chunk objects nobody reads (best effort: leftovers are `cudele gc`'s).
    fn discard(&self, store: &ChunkStore, chunks: &[ChunkUpdate]) {
        if chunks.is_empty() {
            return;
        }
        let doomed: Vec<(u64, Option<ChunkVersion>)> =
            chunks.iter().map(|update| (update.index, Some(update.chunk.version))).collect();
        if let Err(error) = store.delete_many(self.ino, &doomed) {
            tracing::warn!(ino = self.ino, %error, "deleting unpublished or superseded chunks failed; `cudele gc` will");
        }
    }
}

/// Append `bytes[within]`, with zeros where `bytes` is shorter.
fn append_zero_filled(out: &mut Vec<u8>, bytes: &[u8], within: Range<usize>) {
    let available = within.start.min(bytes.len())..within.end.min(bytes.len());
    out.extend_from_slice(&bytes[available.clone()]);
    out.resize(out.len() + (within.len() - available.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges merge when they overlap or touch, and coverage needs one range to hold it all.
    #[test]
    fn range_set() {
        let mut set = RangeSet::default();
        set.insert(10..20);
        set.insert(30..40);
        assert!(set.covers(12..18));
        assert!(!set.covers(15..35));
        set.insert(20..30);
        assert!(set.covers(10..40));
        assert_eq!(set.ranges.len(), 1);
        set.insert(0..5);
        assert_eq!(set.ranges, vec![0..5, 10..40]);
    }

    #[test]
    fn zero_fill() {
        let mut out = Vec::new();
        append_zero_filled(&mut out, b"abc", 1..6);
        assert_eq!(out, b"bc\0\0\0");
    }
}
