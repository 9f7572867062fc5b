//! A regular file's published chunk map: `SetLayout` merges chunk updates into it, and every
//! size change (SetAttr or SetLayout) clips it, so bytes past the size never come back; an
//! inode record stored before records carried the map decodes with an empty one.

use cudele_journal::{
    AttrChanges, ChunkMap, ChunkRef, ChunkUpdate, ChunkVersion, Event, FileKind, Ino, Timestamp, ROOT_INO,
};
use cudele_namespace::{decode_entry, Namespace, NsError, StoreKey, StoreOp, StoreValue};
use std::collections::BTreeMap;

/// Small chunks keep the arithmetic readable.
const CHUNK_SIZE_BYTES: u32 = 10;

fn time(seconds: i64) -> Timestamp {
    Timestamp { seconds: 1_767_225_600 + seconds, nanoseconds: 0 }
}

fn version(serial: u64) -> ChunkVersion {
    ChunkVersion { writer: 7, serial }
}

fn update(index: u64, serial: u64, length_bytes: u32) -> ChunkUpdate {
    ChunkUpdate { index, chunk: ChunkRef { version: version(serial), length_bytes } }
}

/// (index, serial, length) of every published chunk of `ino`.
fn chunks_of(namespace: &Namespace, ino: Ino) -> Vec<(u64, u64, u32)> {
    let record = namespace.record(ino).expect("record");
    record.chunks.iter().map(|(index, chunk)| (*index, chunk.version.serial, chunk.length_bytes)).collect()
}

/// A namespace with one empty regular file.
fn namespace_with_file() -> (Namespace, Ino) {
    let mut namespace = Namespace::new(time(0));
    let ino = namespace.next_ino();
    let create = Event::Create {
        parent: ROOT_INO,
        name: b"f".to_vec(),
        ino,
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        time: time(1),
    };
    namespace.apply(&create).expect("create");
    (namespace, ino)
}

fn set_layout(ino: Ino, size: u64, chunks: Vec<ChunkUpdate>, seconds: i64) -> Event {
    Event::SetLayout { ino, size, chunk_size_bytes: CHUNK_SIZE_BYTES, mtime: time(seconds), chunks }
}

fn truncate(ino: Ino, size: u64, seconds: i64) -> Event {
    Event::SetAttr { ino, changes: AttrChanges { size: Some(size), ..Default::default() }, time: time(seconds) }
}

/// Apply `event` and check that the store changes it produces hold the same record (so the
/// clipped map is what persists, not only what memory holds).
fn apply_and_check_store(namespace: &mut Namespace, event: &Event, ino: Ino) {
    let touched = namespace.apply(event).unwrap_or_else(|error| panic!("{event:?}: {error}"));
    let stored = namespace.store_ops(&touched).into_iter().find_map(|op| match op {
        StoreOp::Put(StoreKey::Inode(put), value) if put == ino => Some(value),
        _ => None,
    });
    let stored = stored.expect("the event rewrites the inode record");
    let decoded = decode_entry(&StoreKey::Inode(ino).encode(), &stored).expect("decode");
    assert_eq!(decoded, StoreValue::Inode(Box::new(namespace.record(ino).expect("record").clone())));
}

/// SetLayout publishes its updates over the existing map (replacing versions, keeping other
/// chunks), then drops what lies at or past its size and shortens the chunk the size ends in.
#[test]
fn set_layout_merges_and_clips() {
    let (mut namespace, ino) = namespace_with_file();
    let first = set_layout(ino, 25, vec![update(0, 1, 10), update(1, 2, 10), update(2, 3, 5)], 2);
    apply_and_check_store(&mut namespace, &first, ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 2, 10), (2, 3, 5)]);
    assert_eq!(namespace.getattr(ino).expect("attr").size, 25);

    // Rewriting chunk 1 only: chunk 1 gets the new version, chunks 0 and 2 stay.
    apply_and_check_store(&mut namespace, &set_layout(ino, 25, vec![update(1, 4, 10)], 3), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 4, 10), (2, 3, 5)]);

    // A layout whose size ends inside chunk 1: its own update for chunk 2 is dropped too,
    // and chunk 1 is cut to the 2 bytes below the size.
    apply_and_check_store(&mut namespace, &set_layout(ino, 12, vec![update(2, 5, 10)], 4), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 4, 2)]);

    // Growing with a write far past the end: the chunks in between stay holes, the short
    // chunk 1 stays short (its old tail bytes are not data again).
    apply_and_check_store(&mut namespace, &set_layout(ino, 45, vec![update(4, 6, 5)], 5), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 4, 2), (4, 6, 5)]);
    assert_eq!(namespace.getattr(ino).expect("attr").size, 45);
}

/// A truncate (SetAttr size) clips the map: chunks starting at or past the new size go, the
/// chunk the size falls in is shortened, growing adds nothing, and size 0 empties it.
#[test]
fn truncate_clips_chunks() {
    let (mut namespace, ino) = namespace_with_file();
    let layout = set_layout(ino, 30, vec![update(0, 1, 10), update(1, 2, 10), update(2, 3, 10)], 2);
    apply_and_check_store(&mut namespace, &layout, ino);

    // Down to 15: chunk 2 dropped, chunk 1 keeps 5 bytes.
    apply_and_check_store(&mut namespace, &truncate(ino, 15, 3), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 2, 5)]);

    // Up to 40: nothing is added and nothing lengthened; the tail reads as zeros.
    apply_and_check_store(&mut namespace, &truncate(ino, 40, 4), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 2, 5)]);

    // Down to 18, still inside chunk 1 but past its 5 data bytes: unchanged.
    apply_and_check_store(&mut namespace, &truncate(ino, 18, 5), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10), (1, 2, 5)]);

    // Down to exactly a chunk boundary: the chunk starting there is dropped, the one
    // before it is whole.
    apply_and_check_store(&mut namespace, &truncate(ino, 10, 6), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10)]);

    apply_and_check_store(&mut namespace, &truncate(ino, 0, 7), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![]);
    assert_eq!(namespace.record(ino).expect("record").chunk_size_bytes, CHUNK_SIZE_BYTES);
}

/// Truncating through a hole keeps the chunks before it as they are.
#[test]
fn truncate_into_a_hole_keeps_earlier_chunks() {
    let (mut namespace, ino) = namespace_with_file();
    apply_and_check_store(&mut namespace, &set_layout(ino, 45, vec![update(0, 1, 10), update(4, 2, 5)], 2), ino);
    apply_and_check_store(&mut namespace, &truncate(ino, 25, 3), ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(0, 1, 10)]);
}

/// SetLayout refuses a chunk size change once the map has data, and chunk updates without a
/// chunk size; a refused layout changes neither the map nor the size.
#[test]
fn set_layout_refusals_change_nothing() {
    let (mut namespace, ino) = namespace_with_file();
    apply_and_check_store(&mut namespace, &set_layout(ino, 10, vec![update(0, 1, 10)], 2), ino);
    let before = namespace.record(ino).expect("record").clone();

    let resized = Event::SetLayout {
        ino,
        size: 40,
        chunk_size_bytes: CHUNK_SIZE_BYTES * 2,
        mtime: time(3),
        chunks: vec![update(1, 2, 20)],
    };
    assert!(matches!(namespace.apply(&resized), Err(NsError::InvalidArgument(_))));
    let without_chunk_size =
        Event::SetLayout { ino, size: 40, chunk_size_bytes: 0, mtime: time(3), chunks: vec![update(1, 2, 0)] };
    assert!(matches!(namespace.apply(&without_chunk_size), Err(NsError::InvalidArgument(_))));
    assert_eq!(namespace.record(ino).expect("record"), &before);

    // Once truncated to nothing, the map is empty and the chunk size may change.
    apply_and_check_store(&mut namespace, &truncate(ino, 0, 4), ino);
    apply_and_check_store(&mut namespace, &resized, ino);
    assert_eq!(chunks_of(&namespace, ino), vec![(1, 2, 20)]);
}

/// The fields of an inode record in the order they were stored before records carried a
/// chunk map (bincode encodes a struct as its fields in order, like this tuple).
type RecordWithoutChunks = (
    cudele_namespace::Attr,
    Ino,
    Vec<u8>,
    BTreeMap<Vec<u8>, Vec<u8>>,
    u32,
    Option<Vec<u8>>,
    Option<cudele_namespace::Decoupling>,
);

/// An inode record stored before records carried `chunks` decodes with every old field
/// intact and an empty map; undecodable bytes are still an error.
#[test]
fn record_without_chunks_decodes_with_empty_map() {
    let (mut namespace, ino) = namespace_with_file();
    namespace.apply(&set_layout(ino, 5, vec![update(0, 1, 5)], 2)).expect("layout");
    let xattr = Event::SetXattr {
        ino,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode: cudele_journal::XattrMode::Upsert,
        time: time(3),
    };
    namespace.apply(&xattr).expect("setxattr");
    let record = namespace.record(ino).expect("record").clone();
    assert!(!record.chunks.is_empty() && !record.xattrs.is_empty() && record.chunk_size_bytes != 0);

    let old: RecordWithoutChunks = (
        record.attr.clone(),
        record.parent,
        record.symlink_target.clone(),
        record.xattrs.clone(),
        record.chunk_size_bytes,
        record.policy.clone(),
        record.decoupling.clone(),
    );
    let old_bytes = bincode::encode_to_vec(&old, bincode::config::standard()).expect("encode");
    let key = StoreKey::Inode(ino).encode();
    let decoded = decode_entry(&key, &old_bytes).expect("an old record decodes");
    let mut expected = record.clone();
    expected.chunks = ChunkMap::new();
    assert_eq!(decoded, StoreValue::Inode(Box::new(expected)));

    // The current form still decodes as itself, map included.
    let current = namespace.store_ops_all().into_iter().find_map(|op| match op {
        StoreOp::Put(StoreKey::Inode(put), value) if put == ino => Some(value),
        _ => None,
    });
    let current = current.expect("the file's record");
    assert_eq!(decode_entry(&key, &current).expect("current record"), StoreValue::Inode(Box::new(record)));

    // Neither form: an old record cut short, or one with bytes after it, is refused.
    assert!(decode_entry(&key, &old_bytes[..old_bytes.len() - 1]).is_err());
    let mut trailing = current.clone();
    trailing.extend_from_slice(&[0, 0]);
    assert!(decode_entry(&key, &trailing).is_err());
}
