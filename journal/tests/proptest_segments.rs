//! Property tests of the record encoding and the segment format: every valid event survives
//! encoding and segments; corrupted or truncated segments never panic and never yield records
//! that were not written (DESIGN.md §4: stop cleanly at a torn tail, reject corruption).
//!
//! Cases per property: `CUDELE_PROPTEST_CASES`, else `PROPTEST_CASES`, else
//! [`DEFAULT_CASES_PER_PROPERTY`]. Replay a failure with the seed proptest prints (or the
//! saved `proptest-regressions` file), or pin one with `PROPTEST_RNG_SEED`.

use cudele_journal::codec::{
    decode_record, encode_record, validate_event, CLIENT_DESCRIPTION_LENGTH_MAX_BYTES, EVENT_FORMAT_VERSION,
    EVENT_FORMAT_VERSION_WITHOUT_CHUNKS, LAYOUT_CHUNK_UPDATES_MAX, POLICY_TEXT_LENGTH_MAX_BYTES,
    XATTR_NAME_LENGTH_MAX_BYTES,
};
use cudele_journal::segment::{read_segment, FrameReader, SegmentBuilder, SegmentHeader, SEGMENT_HEADER_BYTES};
use cudele_journal::{
    AttrChanges, ChunkRef, ChunkUpdate, ChunkVersion, Event, FileKind, Ino, InodeRange, JournalError, Record,
    RenameMode, Timestamp, XattrMode, NAME_LENGTH_MAX_BYTES, SYMLINK_TARGET_LENGTH_MAX_BYTES,
    XATTR_VALUE_LENGTH_MAX_BYTES,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Eight properties at this default make 200,000 cases per run.
const DEFAULT_CASES_PER_PROPERTY: u32 = 25_000;
/// Records per generated segment; enough for several frames, small enough to keep cases fast.
const SEGMENT_RECORDS_MAX: usize = 12;

fn config() -> ProptestConfig {
    let cases = ["CUDELE_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|variable| std::env::var(variable).ok()?.parse().ok())
        .unwrap_or(DEFAULT_CASES_PER_PROPERTY);
    ProptestConfig::with_cases(cases)
}

// ---- strategies: every generated event is valid ----

fn ino() -> impl Strategy<Value = Ino> {
    prop_oneof![1u64..=1_000, 1u64..=u64::MAX]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(seconds, nanoseconds)| Timestamp { seconds, nanoseconds })
}

/// Bytes of length `1..=max_bytes` (mostly short) without the bytes in `forbidden`.
fn bytes_without(forbidden: &'static [u8], min_bytes: usize, max_bytes: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_map(move |byte| if forbidden.contains(&byte) { b'_' } else { byte });
    let short_max = max_bytes.min(16);
    prop_oneof![
        20 => vec(byte.clone(), min_bytes..=short_max),
        1 => vec(byte, min_bytes..=max_bytes),
    ]
}

fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    bytes_without(b"\0/", 1, NAME_LENGTH_MAX_BYTES).prop_map(|mut name| {
        if name == b"." || name == b".." {
            name.push(b'x');
        }
        name
    })
}

fn permission_bits() -> impl Strategy<Value = u32> {
    0u32..=0o7777
}

fn inode_range() -> impl Strategy<Value = InodeRange> {
    (ino(), 0u64..=1_000_000).prop_map(|(start, length)| InodeRange { start, end: start.saturating_add(length) })
}

fn policy_text() -> impl Strategy<Value = Vec<u8>> {
    bytes_without(b"", 0, POLICY_TEXT_LENGTH_MAX_BYTES)
}

/// One chunk update with any index and version and a length cut to `chunk_size_bytes`.
fn chunk_update(index: u64, (writer, serial, length_bytes): (u64, u64, u32), chunk_size_bytes: u32) -> ChunkUpdate {
    ChunkUpdate {
        index,
        chunk: ChunkRef { version: ChunkVersion { writer, serial }, length_bytes: length_bytes.min(chunk_size_bytes) },
    }
}

fn chunk_version_and_length() -> impl Strategy<Value = (u64, u64, u32)> {
    (any::<u64>(), any::<u64>(), any::<u32>())
}

/// Chunk updates valid for `chunk_size_bytes` (non-zero): strictly increasing indexes, each
/// no longer than a chunk. Mostly a few, sometimes up to [`LAYOUT_CHUNK_UPDATES_MAX`] at
/// consecutive indexes (a large flush), where the encoded size is largest.
fn chunk_updates(chunk_size_bytes: u32) -> impl Strategy<Value = Vec<ChunkUpdate>> {
    let few = proptest::collection::btree_map(prop_oneof![0u64..64, any::<u64>()], chunk_version_and_length(), 0..8)
        .prop_map(move |map| {
            map.into_iter().map(|(index, chunk)| chunk_update(index, chunk, chunk_size_bytes)).collect::<Vec<_>>()
        });
    let many = (
        LAYOUT_CHUNK_UPDATES_MAX - 8..=LAYOUT_CHUNK_UPDATES_MAX,
        prop_oneof![Just(0u64), Just(u64::MAX - LAYOUT_CHUNK_UPDATES_MAX as u64), any::<u64>()],
        chunk_version_and_length(),
    )
        .prop_map(move |(count, first_index, (writer, serial, length_bytes))| {
            let first_index = first_index.min(u64::MAX - count as u64);
            (0..count as u64)
                .map(|offset| {
                    let chunk = (writer.wrapping_add(offset), serial.wrapping_sub(offset), length_bytes);
                    chunk_update(first_index + offset, chunk, chunk_size_bytes)
                })
                .collect::<Vec<_>>()
        });
    prop_oneof![50 => few, 1 => many]
}

/// A valid set-layout event: chunk updates with a non-zero chunk size, or none (with any
/// chunk size, 0 included: a file with no data written yet).
fn set_layout_event() -> impl Strategy<Value = Event> {
    let with_chunks =
        (1..=u32::MAX).prop_flat_map(|chunk_size_bytes| (Just(chunk_size_bytes), chunk_updates(chunk_size_bytes)));
    let without_chunks =
        prop_oneof![Just(0u32), any::<u32>()].prop_map(|chunk_size_bytes| (chunk_size_bytes, Vec::new()));
    (ino(), any::<u64>(), prop_oneof![4 => with_chunks, 1 => without_chunks], timestamp()).prop_map(
        |(ino, size, (chunk_size_bytes, chunks), mtime)| Event::SetLayout {
            ino,
            size,
            chunk_size_bytes,
            mtime,
            chunks,
        },
    )
}

/// How a set-layout event can break the chunk rules the codec enforces.
#[derive(Debug, Clone, Copy)]
enum ChunkRuleBreak {
    /// One index equal to or below the one before it.
    IndexNotIncreasing,
    /// One chunk longer than the chunk size.
    LongerThanChunk,
    /// Chunk updates with chunk size 0.
    NoChunkSize,
    /// One update more than the limit.
    TooMany,
}

/// A set-layout event that is valid except for one broken chunk rule.
fn invalid_set_layout_event() -> impl Strategy<Value = (Event, ChunkRuleBreak)> {
    let rule = prop::sample::select(vec![
        ChunkRuleBreak::IndexNotIncreasing,
        ChunkRuleBreak::LongerThanChunk,
        ChunkRuleBreak::NoChunkSize,
        ChunkRuleBreak::TooMany,
    ]);
    (set_layout_event(), rule, any::<prop::sample::Index>(), 1..u32::MAX).prop_map(
        |(mut event, rule, position, chunk_size_bytes)| {
            let Event::SetLayout { chunk_size_bytes: event_chunk_size_bytes, chunks, .. } = &mut event else {
                unreachable!("set_layout_event makes set-layout events")
            };
            if chunks.len() < 2 {
                // Every rule is breakable with two updates at a known chunk size.
                *event_chunk_size_bytes = chunk_size_bytes;
                *chunks =
                    vec![chunk_update(3, (1, 1, 0), chunk_size_bytes), chunk_update(9, (1, 2, 0), chunk_size_bytes)];
            }
            match rule {
                ChunkRuleBreak::IndexNotIncreasing => {
                    let at = position.index(chunks.len() - 1) + 1;
                    let before = chunks[at - 1].index;
                    // Equal to the index before it, or (when there is room) below it.
                    chunks[at].index = if before > 0 && at % 2 == 0 { before - 1 } else { before };
                }
                ChunkRuleBreak::LongerThanChunk => {
                    // u32::MAX is not a chunk size `1..u32::MAX` gives.
                    if *event_chunk_size_bytes == u32::MAX {
                        *event_chunk_size_bytes = chunk_size_bytes;
                    }
                    let at = position.index(chunks.len());
                    chunks[at].chunk.length_bytes = *event_chunk_size_bytes + 1;
                }
                ChunkRuleBreak::NoChunkSize => {
                    for update in chunks.iter_mut() {
                        update.chunk.length_bytes = 0;
                    }
                    *event_chunk_size_bytes = 0;
                }
                ChunkRuleBreak::TooMany => {
                    let first_index = chunks[0].index.min(u64::MAX - LAYOUT_CHUNK_UPDATES_MAX as u64 - 1);
                    let template = chunks[0].chunk;
                    *chunks = (0..=LAYOUT_CHUNK_UPDATES_MAX as u64)
                        .map(|offset| ChunkUpdate { index: first_index + offset, chunk: template })
                        .collect();
                }
            }
            (event, rule)
        },
    )
}

fn event() -> impl Strategy<Value = Event> {
    let non_directory_kind = prop::sample::select(vec![
        FileKind::Regular,
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::CharDevice,
        FileKind::BlockDevice,
    ]);
    let rename_mode = prop::sample::select(vec![RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange]);
    let xattr_mode = prop::sample::select(vec![XattrMode::Upsert, XattrMode::Create, XattrMode::Replace]);
    let attr_changes = (
        proptest::option::of(permission_bits()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
    )
        .prop_map(|(mode, uid, gid, size, atime, mtime)| AttrChanges { mode, uid, gid, size, atime, mtime });
    prop_oneof![
        (
            ino(),
            entry_name(),
            ino(),
            non_directory_kind,
            permission_bits(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            timestamp()
        )
            .prop_map(|(parent, name, ino, kind, mode, uid, gid, rdev, time)| Event::Create {
                parent,
                name,
                ino,
                kind,
                mode,
                uid,
                gid,
                rdev,
                time
            }),
        (ino(), entry_name(), ino(), permission_bits(), any::<u32>(), any::<u32>(), timestamp()).prop_map(
            |(parent, name, ino, mode, uid, gid, time)| Event::Mkdir { parent, name, ino, mode, uid, gid, time }
        ),
        (
            ino(),
            entry_name(),
            ino(),
            bytes_without(b"\0", 1, SYMLINK_TARGET_LENGTH_MAX_BYTES),
            any::<u32>(),
            any::<u32>(),
            timestamp()
        )
            .prop_map(|(parent, name, ino, target, uid, gid, time)| Event::Symlink {
                parent,
                name,
                ino,
                target,
                uid,
                gid,
                time
            }),
        (ino(), ino(), entry_name(), timestamp()).prop_map(|(ino, parent, name, time)| Event::Link {
            ino,
            parent,
            name,
            time
        }),
        (ino(), entry_name(), timestamp()).prop_map(|(parent, name, time)| Event::Unlink { parent, name, time }),
        (ino(), entry_name(), timestamp()).prop_map(|(parent, name, time)| Event::Rmdir { parent, name, time }),
        (ino(), entry_name(), ino(), entry_name(), rename_mode, timestamp()).prop_map(
            |(source_parent, source_name, target_parent, target_name, mode, time)| Event::Rename {
                source_parent,
                source_name,
                target_parent,
                target_name,
                mode,
                time
            }
        ),
        (ino(), attr_changes, timestamp()).prop_map(|(ino, changes, time)| Event::SetAttr { ino, changes, time }),
        (
            ino(),
            bytes_without(b"\0", 1, XATTR_NAME_LENGTH_MAX_BYTES),
            bytes_without(b"", 0, XATTR_VALUE_LENGTH_MAX_BYTES),
            xattr_mode,
            timestamp()
        )
            .prop_map(|(ino, name, value, mode, time)| Event::SetXattr { ino, name, value, mode, time }),
        (ino(), bytes_without(b"\0", 1, XATTR_NAME_LENGTH_MAX_BYTES), timestamp())
            .prop_map(|(ino, name, time)| Event::RemoveXattr { ino, name, time }),
        set_layout_event(),
        (ino(), any::<u64>(), inode_range(), policy_text()).prop_map(|(ino, owner, range, policy)| Event::Decouple {
            ino,
            owner,
            range,
            policy
        }),
        ino().prop_map(|ino| Event::Recouple { ino }),
        (ino(), proptest::option::of(policy_text())).prop_map(|(ino, policy)| Event::SetPolicy { ino, policy }),
        (any::<u64>(), inode_range()).prop_map(|(owner, range)| Event::AllocateInodes { owner, range }),
        (any::<u64>(), bytes_without(b"", 0, CLIENT_DESCRIPTION_LENGTH_MAX_BYTES), timestamp())
            .prop_map(|(session, client, time)| Event::SessionOpen { session, client, time }),
        any::<u64>().prop_map(|session| Event::SessionClose { session }),
        (any::<u64>(), bytes_without(b"", 0, 64), timestamp(), any::<[u8; 32]>()).prop_map(
            |(session, client, time, verifier)| { Event::SessionOpenVerified { session, client, time, verifier } }
        ),
        (ino(), any::<u64>(), any::<u64>()).prop_map(|(ino, owner, through_seq)| Event::Merged {
            ino,
            owner,
            through_seq
        }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (1u64..=u64::MAX, event()).prop_map(|(seq, event)| Record { seq, event })
}

/// Consecutive records from a first sequence number chosen so the range cannot overflow.
fn records() -> impl Strategy<Value = Vec<Record>> {
    (prop_oneof![1u64..=1_000, 1u64..=u64::MAX - SEGMENT_RECORDS_MAX as u64], vec(event(), 0..=SEGMENT_RECORDS_MAX))
        .prop_map(|(first_seq, events)| {
            events.into_iter().zip(first_seq..).map(|(event, seq)| Record { seq, event }).collect()
        })
}

fn build_segment(first_seq: u64, records: &[Record]) -> Vec<u8> {
    let mut builder = SegmentBuilder::new(first_seq);
    for record in records {
        builder.push(record).expect("generated events are valid");
    }
    builder.finish()
}

fn first_seq_of(records: &[Record]) -> u64 {
    records.first().map_or(1, |record| record.seq)
}

/// Position of `Event::SetLayout` among the variants: bincode encodes a variant as its index,
/// and version 1 payloads have it there too (checked against version 2 in the property).
const SET_LAYOUT_VARIANT_INDEX: u32 = 10;

/// Byte offsets (from the segment start) at which each record's frame ends.
fn frame_ends(segment: &[u8]) -> Vec<usize> {
    FrameReader::new(&segment[SEGMENT_HEADER_BYTES..], usize::MAX)
        .with_base_offset(SEGMENT_HEADER_BYTES as u64)
        .map(|frame| {
            let frame = frame.expect("valid frame");
            frame.offset as usize + 8 + frame.payload.len()
        })
        .collect()
}

/// XORs each chosen byte with a non-zero mask, so every chosen byte really changes.
fn corrupt(bytes: &mut [u8], flips: &[(prop::sample::Index, u8)]) {
    for (position, mask) in flips {
        let index = position.index(bytes.len());
        bytes[index] ^= mask;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every valid record decodes to itself, and its payload stays within the limit.
    #[test]
    fn record_round_trips_through_codec(record in record()) {
        prop_assert!(validate_event(&record.event).is_ok());
        let mut payload = Vec::new();
        encode_record(&record, &mut payload);
        prop_assert!(payload.len() <= cudele_journal::codec::RECORD_PAYLOAD_LENGTH_MAX_BYTES);
        prop_assert_eq!(decode_record(&payload).expect("valid payload"), record);
    }

    /// Records read back from a segment are exactly the records pushed into it.
    #[test]
    fn records_round_trip_through_segment(records in records()) {
        let segment = build_segment(first_seq_of(&records), &records);
        let contents = read_segment(&segment).expect("valid segment");
        prop_assert!(!contents.torn_tail);
        prop_assert_eq!(contents.header.record_count as usize, records.len());
        prop_assert_eq!(contents.records, records);
    }

    /// Changing bytes of a segment never panics and never passes unnoticed: the reader errs
    /// (a complete segment has no torn tail to hide behind).
    #[test]
    fn corrupted_segment_is_rejected(
        records in records(),
        flips in vec((any::<prop::sample::Index>(), 1u8..=255), 1..=4),
    ) {
        let mut segment = build_segment(first_seq_of(&records), &records);
        corrupt(&mut segment, &flips);
        match read_segment(&segment) {
            Err(_) => {}
            // Only a CRC32C collision (about 2^-32) could get here; then nothing may be lost.
            Ok(contents) => {
                prop_assert!(!contents.torn_tail);
                prop_assert_eq!(contents.records, records);
            }
        }
    }

    /// Cutting a segment anywhere after its header keeps exactly the complete records before
    /// the cut, flagged as a torn tail; cutting inside the header is an error.
    #[test]
    fn truncated_segment_keeps_complete_prefix(records in records(), cut in any::<prop::sample::Index>()) {
        let segment = build_segment(first_seq_of(&records), &records);
        let cut = cut.index(segment.len() + 1);
        let result = read_segment(&segment[..cut]);
        if cut < SEGMENT_HEADER_BYTES {
            prop_assert!(result.is_err());
        } else {
            let contents = result.expect("truncation after the header is a torn tail");
            let complete = frame_ends(&segment).iter().filter(|&&end| end <= cut).count();
            prop_assert_eq!(contents.torn_tail, cut < segment.len());
            prop_assert_eq!(&contents.records[..], &records[..complete]);
        }
    }

    /// Corruption and truncation together never panic, and at most yield a prefix of what was written.
    #[test]
    fn corrupted_and_truncated_segment_yields_a_prefix_or_error(
        records in records(),
        flips in vec((any::<prop::sample::Index>(), 1u8..=255), 0..=3),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut segment = build_segment(first_seq_of(&records), &records);
        corrupt(&mut segment, &flips);
        let cut = cut.index(segment.len() + 1);
        if let Ok(contents) = read_segment(&segment[..cut]) {
            prop_assert!(contents.records.len() <= records.len());
            prop_assert_eq!(&contents.records[..], &records[..contents.records.len()]);
            prop_assert!(contents.torn_tail || cut == segment.len());
        }
    }

    /// Arbitrary bytes, alone or after a valid header announcing them, never panic the
    /// decoders, and any record they do decode is a valid one.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        behind_valid_header in any::<bool>(),
        announced_records in 0u32..=4,
    ) {
        if let Ok(record) = decode_record(&bytes) {
            prop_assert!(validate_event(&record.event).is_ok());
        }
        let mut with_version = vec![cudele_journal::codec::EVENT_FORMAT_VERSION];
        with_version.extend_from_slice(&bytes);
        if let Ok(record) = decode_record(&with_version) {
            prop_assert!(validate_event(&record.event).is_ok());
        }
        let segment = if behind_valid_header {
            let header = SegmentHeader {
                first_seq: 1,
                last_seq: u64::from(announced_records),
                record_count: announced_records,
                body_length_bytes: bytes.len() as u64,
            };
            let mut segment = header.encode().to_vec();
            segment.extend_from_slice(&bytes);
            segment
        } else {
            bytes
        };
        let _ = read_segment(&segment);
    }

    /// A set-layout event that breaks one chunk rule is refused by validation, by the
    /// segment builder (before anything is appended), and on read-back when its bytes were
    /// written without validation: what is refused on write is refused on read.
    #[test]
    fn invalid_chunk_updates_are_refused_on_write_and_read(
        (event, rule) in invalid_set_layout_event(),
        seq in 1u64..=u64::MAX,
    ) {
        let expected = match rule {
            ChunkRuleBreak::IndexNotIncreasing => "does not increase",
            ChunkRuleBreak::LongerThanChunk => "longer than the chunk size",
            ChunkRuleBreak::NoChunkSize => "chunk size 0",
            ChunkRuleBreak::TooMany => "the limit is",
        };
        let reason_of = |error: JournalError| match error {
            JournalError::InvalidEvent { reason, .. } => reason,
            other => panic!("expected an invalid event, got {other:?}"),
        };
        let refused = reason_of(validate_event(&event).expect_err("a broken chunk rule"));
        prop_assert!(refused.contains(expected), "{:?}: {}", rule, refused);
        let record = Record { seq, event };
        let mut builder = SegmentBuilder::new(seq);
        prop_assert!(builder.push(&record).is_err());
        prop_assert_eq!(builder.finish(), SegmentBuilder::new(seq).finish());
        let mut payload = Vec::new();
        encode_record(&record, &mut payload);
        let refused = reason_of(decode_record(&payload).expect_err("refused on read-back"));
        prop_assert!(refused.contains(expected), "{:?}: {}", rule, refused);
    }

    /// A version 1 set-layout payload (no chunk updates) decodes to the event with no chunk
    /// updates; version 2 encodes the same fields followed by an empty update list.
    #[test]
    fn version_without_chunks_set_layout_decodes(
        seq in 1u64..=u64::MAX,
        ino in ino(),
        size in any::<u64>(),
        chunk_size_bytes in any::<u32>(),
        mtime in timestamp(),
    ) {
        let mut version_one = vec![EVENT_FORMAT_VERSION_WITHOUT_CHUNKS];
        let fields = (seq, SET_LAYOUT_VARIANT_INDEX, ino, size, chunk_size_bytes, mtime);
        bincode::encode_into_std_write(fields, &mut version_one, bincode::config::standard()).expect("encode");
        let record = Record { seq, event: Event::SetLayout { ino, size, chunk_size_bytes, mtime, chunks: Vec::new() } };
        prop_assert_eq!(decode_record(&version_one).expect("a version 1 set-layout"), record.clone());
        let mut version_two = Vec::new();
        encode_record(&record, &mut version_two);
        prop_assert_eq!(version_two[0], EVENT_FORMAT_VERSION);
        // An empty update list is one length byte (0) after the version 1 fields.
        prop_assert_eq!(&version_two[1..version_two.len() - 1], &version_one[1..]);
        prop_assert_eq!(version_two.last(), Some(&0u8));
    }
}
