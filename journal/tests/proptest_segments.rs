//! Property tests of the record encoding and the segment format: every valid event survives
//! encoding and segments; corrupted or truncated segments never panic and never yield records
//! that were not written (DESIGN.md §4: stop cleanly at a torn tail, reject corruption).
//!
//! Cases per property: `CUDELE_PROPTEST_CASES`, else `PROPTEST_CASES`, else
//! [`DEFAULT_CASES_PER_PROPERTY`]. Replay a failure with the seed proptest prints (or the
//! saved `proptest-regressions` file), or pin one with `PROPTEST_RNG_SEED`.

use cudele_journal::codec::{
    decode_record, encode_record, validate_event, CLIENT_DESCRIPTION_LENGTH_MAX_BYTES, POLICY_TEXT_LENGTH_MAX_BYTES,
    XATTR_NAME_LENGTH_MAX_BYTES,
};
use cudele_journal::segment::{read_segment, FrameReader, SegmentBuilder, SegmentHeader, SEGMENT_HEADER_BYTES};
use cudele_journal::{
    AttrChanges, ChunkRef, ChunkUpdate, ChunkVersion, Event, FileKind, Ino, InodeRange, Record, RenameMode, Timestamp,
    XattrMode, NAME_LENGTH_MAX_BYTES, SYMLINK_TARGET_LENGTH_MAX_BYTES, XATTR_VALUE_LENGTH_MAX_BYTES,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Six properties at this default make 150,000 cases per run.
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

/// Chunk updates with strictly increasing indexes (lengths are cut to the chunk size later).
fn chunk_updates() -> impl Strategy<Value = Vec<ChunkUpdate>> {
    proptest::collection::btree_map(any::<u64>(), (any::<u64>(), any::<u64>(), any::<u32>()), 0..8).prop_map(|map| {
        map.into_iter()
            .map(|(index, (writer, serial, length_bytes))| ChunkUpdate {
                index,
                chunk: ChunkRef { version: ChunkVersion { writer, serial }, length_bytes },
            })
            .collect()
    })
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
        (ino(), any::<u64>(), 1..=u32::MAX, timestamp(), chunk_updates()).prop_map(
            |(ino, size, chunk_size_bytes, mtime, chunks)| {
                let chunks = chunks
                    .into_iter()
                    .map(|mut update| {
                        update.chunk.length_bytes = update.chunk.length_bytes.min(chunk_size_bytes);
                        update
                    })
                    .collect();
                Event::SetLayout { ino, size, chunk_size_bytes, mtime, chunks }
            }
        ),
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
}
