//! [`FileData`]: one inode's data as this mount sees it — shared by every open handle of
//! the inode on this mount, so two descriptors see each other's writes at once.
//!
//! Writes go to a bounded write-back buffer of dirty chunks. `flush` (close, fsync, a full
//! buffer) uploads them — read-modify-write for chunks partly written over existing data —
//! and then records the new size with the metadata service (`set_layout`): data first,
//! size second, so a crash in between never exposes a size whose data is missing.
//!
//! Objects may hold bytes past the recorded size after a crash between an upload and its
//! `set_layout`. Before a flush grows the file it trims them (`ChunkStore::trim`), so a
//! hole always reads as zeros and never as someone's lost write.

use super::store::{ChunkStore, CHUNK_SIZE_BYTES};
use crate::metadata::{InodeAttr, Metadata};
use bytes::Bytes;
use cudele_journal::{Ino, Timestamp};
use cudele_namespace::NsResult;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// Dirty bytes one file may buffer before a write flushes them.
pub const WRITE_BACK_BYTES_MAX: u64 = 64 * 1024 * 1024;
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
    /// The size the metadata service holds; store bytes at or past it are not data.
    remote_size: u64,
    /// No object holds bytes at or past `remote_size` (a file this mount created, or one
    /// it trimmed); otherwise growing the file trims first.
    tail_clean: bool,
    /// Modification time of unflushed writes.
    pending_mtime: Option<Timestamp>,
    /// The modification time the data was last known at (to notice other mounts' writes).
    known_mtime: Timestamp,
    dirty: BTreeMap<u64, DirtyChunk>,
    dirty_bytes: u64,
    read_cache: VecDeque<(u64, Bytes)>,
}

impl FileData {
    /// The data of a file with attributes `attr`. `created` says this mount just created
    /// it, so no objects can exist for it yet.
    pub fn new(attr: &InodeAttr, created: bool) -> Self {
        let chunk_size_bytes = if attr.chunk_size_bytes == 0 { CHUNK_SIZE_BYTES } else { attr.chunk_size_bytes } as u64;
        FileData {
            ino: attr.attr.ino,
            chunk_size_bytes,
            size: attr.attr.size,
            remote_size: attr.attr.size,
            tail_clean: created,
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
        self.dirty_bytes > WRITE_BACK_BYTES_MAX
    }

    /// Another handle opened the file with fresh attributes (close-to-open): if the file
    /// changed elsewhere and we hold nothing unflushed, forget what we knew.
    pub fn refresh(&mut self, attr: &InodeAttr) {
        if self.is_dirty() {
            return;
        }
        if attr.attr.size != self.remote_size || attr.attr.mtime != self.known_mtime {
            self.size = attr.attr.size;
            self.remote_size = attr.attr.size;
            self.known_mtime = attr.attr.mtime;
            self.read_cache.clear();
            self.tail_clean = false;
        }
    }

    /// The file was truncated (after a flush) to the attributes `attr`.
    pub fn truncated(&mut self, attr: &InodeAttr) {
        debug_assert!(self.dirty.is_empty(), "truncate flushes first");
        self.size = attr.attr.size;
        self.remote_size = attr.attr.size;
        self.known_mtime = attr.attr.mtime;
        self.read_cache.clear();
        self.tail_clean = true;
    }

    fn chunk_range(&self, index: u64) -> (u64, u64) {
        let start = index.saturating_mul(self.chunk_size_bytes);
        (start, start.saturating_add(self.chunk_size_bytes))
    }

    /// How many leading bytes of chunk `index` the stored object may contribute.
    fn base_extent(&self, index: u64) -> usize {
        let (start, _) = self.chunk_range(index);
        self.remote_size.saturating_sub(start).min(self.chunk_size_bytes) as usize
    }

    fn needs_base(&self, index: u64, chunk: &DirtyChunk) -> bool {
        let extent = self.base_extent(index);
        !chunk.complete && extent > 0 && !chunk.written.covers(0..extent)
    }

    /// Merge the stored content `base` under the writes of a dirty chunk.
    fn merge_base(&mut self, index: u64, base: Option<Bytes>) {
        let extent = self.base_extent(index);
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

    /// A clean chunk's stored content, cut at the recorded size.
    fn clean_chunk(&mut self, store: &ChunkStore, index: u64) -> NsResult<Bytes> {
        if let Some((_, bytes)) = self.read_cache.iter().find(|(cached, _)| *cached == index) {
            return Ok(bytes.clone());
        }
        let extent = self.base_extent(index);
        let bytes = if extent == 0 {
            Bytes::new()
        } else {
            let stored = store.get(self.ino, index)?.unwrap_or_default();
            stored.slice(..stored.len().min(extent))
        };
        if self.read_cache.len() >= READ_CACHE_CHUNKS_MAX {
            self.read_cache.pop_front();
        }
        self.read_cache.push_back((index, bytes.clone()));
        Ok(bytes)
    }

    /// Up to `length` bytes at `offset` (fewer at the end of the file), including this
    /// mount's unflushed writes.
    pub fn read(&mut self, store: &ChunkStore, offset: u64, length: u32) -> NsResult<Vec<u8>> {
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
                    let base = store.get(self.ino, index)?;
                    self.merge_base(index, base);
                }
                let bytes = self.dirty.get(&index).map(|chunk| chunk.bytes.as_slice()).unwrap_or_default();
                append_zero_filled(&mut out, bytes, within);
            } else {
                let bytes = self.clean_chunk(store, index)?;
                append_zero_filled(&mut out, &bytes, within);
            }
            position = piece_end;
        }
        Ok(out)
    }

    /// Buffer `data` at `offset`; the caller flushes when [`FileData::needs_flush`].
    pub fn write(&mut self, offset: u64, data: &[u8], now: Timestamp) {
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

    /// Upload the dirty chunks, then record size and mtime with `metadata`. Returns the
    /// new attributes, or None if there was nothing to flush. On failure everything stays
    /// buffered for the next attempt.
    pub fn flush<M: Metadata + ?Sized>(&mut self, store: &ChunkStore, metadata: &M) -> NsResult<Option<InodeAttr>> {
        if !self.is_dirty() {
            return Ok(None);
        }
        let need_base: Vec<u64> = self
            .dirty
            .iter()
            .filter(|(index, chunk)| self.needs_base(**index, chunk))
            .map(|(index, _)| *index)
            .collect();
        if !need_base.is_empty() {
            for (index, base) in store.get_many(self.ino, &need_base)? {
                self.merge_base(index, base);
            }
        }
        if self.size > self.remote_size && !self.tail_clean {
            let dirty = &self.dirty;
            store.trim(self.ino, self.remote_size, self.chunk_size_bytes, |index| dirty.contains_key(&index))?;
            self.tail_clean = true;
        }
        let uploads: Vec<(u64, Bytes)> =
            self.dirty.iter().map(|(index, chunk)| (*index, Bytes::copy_from_slice(&chunk.bytes))).collect();
        store.put_many(self.ino, uploads)?;
        let mtime = self.pending_mtime.unwrap_or_else(Timestamp::now);
        let chunk_size_bytes = u32::try_from(self.chunk_size_bytes).unwrap_or(CHUNK_SIZE_BYTES);
        let attr = metadata.set_layout(self.ino, self.size, chunk_size_bytes, mtime)?;
        self.dirty.clear();
        self.dirty_bytes = 0;
        self.pending_mtime = None;
        self.remote_size = self.size;
        self.known_mtime = attr.attr.mtime;
        Ok(Some(attr))
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
