//! The compact, versioned binary encoding of one [`Record`] (the payload of a frame).
//!
//! Payload = 1 byte [`EVENT_FORMAT_VERSION`] + the record in bincode 2's standard
//! configuration (little endian, variable-length integers). A typical create record is 44
//! bytes, 52 with framing (see the `create_record_is_small` test).
//!
//! Version 1 payloads (before set-layout events carried chunk versions) still decode: they
//! differ from version 2 only in `SetLayout`, which had no `chunks` field; such an event
//! decodes with no chunk updates.
//!
//! Events are validated before they are encoded by the segment builder and again after they
//! are decoded, so a record that is accepted on write is exactly the set accepted on read.

use bincode::config::{Configuration, LittleEndian, Varint};

use crate::error::JournalError;
use crate::event::{
    ChunkUpdate, Event, FileKind, Ino, Record, Timestamp, NAME_LENGTH_MAX_BYTES, SYMLINK_TARGET_LENGTH_MAX_BYTES,
    XATTR_VALUE_LENGTH_MAX_BYTES,
};

/// Version of the payload encoding; bump it (and keep a decoder for the old one) whenever the
/// encoding of [`Event`] changes, including adding a variant.
pub const EVENT_FORMAT_VERSION: u8 = 3;

/// The payload encoding before `SessionOpenVerified` existed. Variants are only ever
/// appended, so a version 2 payload decodes exactly as version 3 does.
pub const EVENT_FORMAT_VERSION_WITHOUT_VERIFIED_SESSIONS: u8 = 2;

/// The payload encoding before `SetLayout` carried `chunks` (decoded, never written).
pub const EVENT_FORMAT_VERSION_WITHOUT_CHUNKS: u8 = 1;

/// Position of `Event::SetLayout` among the variants (bincode encodes a variant as its
/// index); the only variant whose encoding differs between versions 1 and 2.
const SET_LAYOUT_VARIANT_INDEX: u32 = 10;

/// Most chunk updates one set-layout event carries (about 20 bytes each encoded, so an
/// event stays far below [`RECORD_PAYLOAD_LENGTH_MAX_BYTES`]).
pub const LAYOUT_CHUNK_UPDATES_MAX: usize = 4096;

/// Largest encoded record payload (version byte included), in bytes. The largest valid event
/// is a setxattr with a 64 KiB value; this leaves room without letting a hostile length
/// prefix allocate more.
pub const RECORD_PAYLOAD_LENGTH_MAX_BYTES: usize = 256 * 1024;

/// Longest policies.yml text carried by a decouple or setpolicy event, in bytes.
pub const POLICY_TEXT_LENGTH_MAX_BYTES: usize = 64 * 1024;

/// Longest client description carried by a session-open event, in bytes.
pub const CLIENT_DESCRIPTION_LENGTH_MAX_BYTES: usize = 4096;

/// Longest xattr name, in bytes (XATTR_NAME_MAX on Linux).
pub const XATTR_NAME_LENGTH_MAX_BYTES: usize = 255;

const NANOSECONDS_PER_SECOND: u32 = 1_000_000_000;
const PERMISSION_BITS_MASK: u32 = 0o7777;

type DecodeConfiguration = Configuration<LittleEndian, Varint, bincode::config::Limit<RECORD_PAYLOAD_LENGTH_MAX_BYTES>>;

/// Decoding claims at most the payload limit, so a corrupt length prefix inside a record
/// fails instead of allocating gigabytes.
const DECODE_CONFIGURATION: DecodeConfiguration =
    bincode::config::standard().with_limit::<RECORD_PAYLOAD_LENGTH_MAX_BYTES>();

/// Appends the payload of `record` (version byte + encoded record) to `out`.
///
/// Does not validate: callers that persist records go through
/// [`crate::segment::SegmentBuilder::push`], which does.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    out.push(EVENT_FORMAT_VERSION);
    // Writing into a Vec cannot fail, and the derived encoders have no failure of their own.
    bincode::encode_into_std_write(record, out, bincode::config::standard())
        .expect("encoding a record into a Vec cannot fail");
}

/// Decodes and validates one payload produced by [`encode_record`]. Rejects an unknown
/// version, trailing bytes, undecodable bytes and invalid events; never panics.
pub fn decode_record(payload: &[u8]) -> Result<Record, JournalError> {
    let (&version, encoded) = payload.split_first().ok_or(JournalError::EmptyPayload)?;
    let record = match version {
        EVENT_FORMAT_VERSION => decode_whole::<Record>(encoded)?,
        EVENT_FORMAT_VERSION_WITHOUT_VERIFIED_SESSIONS => {
            let record = decode_whole::<Record>(encoded)?;
            if matches!(record.event, Event::SessionOpenVerified { .. }) {
                // Version 2 had no such variant: a payload claiming one is corrupt.
                return Err(JournalError::InvalidEvent {
                    kind: record.event.kind_name(),
                    reason: "a verified session open in a version 2 payload".into(),
                });
            }
            record
        }
        EVENT_FORMAT_VERSION_WITHOUT_CHUNKS => decode_version_without_chunks(encoded)?,
        _ => return Err(JournalError::UnsupportedEventFormat { found: version, supported: EVENT_FORMAT_VERSION }),
    };
    validate_record(&record)?;
    Ok(record)
}

/// Decodes `T` from all of `encoded` (trailing bytes are an error).
fn decode_whole<T: bincode::Decode<()>>(encoded: &[u8]) -> Result<T, JournalError> {
    let (value, read_bytes): (T, usize) = bincode::decode_from_slice(encoded, DECODE_CONFIGURATION)
        .map_err(|cause| JournalError::Undecodable { cause })?;
    if read_bytes != encoded.len() {
        return Err(JournalError::TrailingBytes { trailing_bytes: encoded.len() - read_bytes });
    }
    Ok(value)
}

/// A version 1 record: every variant but `SetLayout` encodes as in version 2; a version 1
/// `SetLayout` is its four fields without `chunks`.
fn decode_version_without_chunks(encoded: &[u8]) -> Result<Record, JournalError> {
    let undecodable = |cause| JournalError::Undecodable { cause };
    let (seq, seq_bytes): (u64, usize) =
        bincode::decode_from_slice(encoded, DECODE_CONFIGURATION).map_err(undecodable)?;
    let (variant, variant_bytes): (u32, usize) =
        bincode::decode_from_slice(&encoded[seq_bytes..], DECODE_CONFIGURATION).map_err(undecodable)?;
    if variant != SET_LAYOUT_VARIANT_INDEX {
        return decode_whole::<Record>(encoded);
    }
    let (ino, size, chunk_size_bytes, mtime) =
        decode_whole::<(Ino, u64, u32, Timestamp)>(&encoded[seq_bytes + variant_bytes..])?;
    Ok(Record { seq, event: Event::SetLayout { ino, size, chunk_size_bytes, mtime, chunks: Vec::new() } })
}

/// Checks what every journal writer and reader must agree on: sequence numbers start at 1,
/// and the event is valid (see [`validate_event`]).
pub fn validate_record(record: &Record) -> Result<(), JournalError> {
    if record.seq == 0 {
        return Err(invalid(&record.event, "sequence number 0 (sequences start at 1)".into()));
    }
    validate_event(&record.event)
}

/// Checks the limits and shapes the event documentation promises: names are 1..=255 bytes
/// without '/' or NUL and are not "." or "..", inode numbers are non-zero, modes are
/// permission bits only, nanoseconds are below one second, inode ranges are not reversed,
/// and variable-length fields are within their `*_LENGTH_MAX_BYTES`.
pub fn validate_event(event: &Event) -> Result<(), JournalError> {
    let check = |result: Result<(), String>| result.map_err(|reason| invalid(event, reason));
    match event {
        Event::Create { parent, name, ino, kind, mode, uid: _, gid: _, rdev: _, time } => {
            check(inode_number("parent", *parent))?;
            check(entry_name("name", name))?;
            check(inode_number("ino", *ino))?;
            if matches!(kind, FileKind::Directory | FileKind::Symlink) {
                return check(Err(format!("kind {kind:?} is created by its own event")));
            }
            check(permission_bits("mode", *mode))?;
            check(timestamp("time", time))
        }
        Event::Mkdir { parent, name, ino, mode, uid: _, gid: _, time } => {
            check(inode_number("parent", *parent))?;
            check(entry_name("name", name))?;
            check(inode_number("ino", *ino))?;
            check(permission_bits("mode", *mode))?;
            check(timestamp("time", time))
        }
        Event::Symlink { parent, name, ino, target, uid: _, gid: _, time } => {
            check(inode_number("parent", *parent))?;
            check(entry_name("name", name))?;
            check(inode_number("ino", *ino))?;
            check(bytes_without_nul("target", target, 1, SYMLINK_TARGET_LENGTH_MAX_BYTES))?;
            check(timestamp("time", time))
        }
        Event::Link { ino, parent, name, time } => {
            check(inode_number("ino", *ino))?;
            check(inode_number("parent", *parent))?;
            check(entry_name("name", name))?;
            check(timestamp("time", time))
        }
        Event::Unlink { parent, name, time } | Event::Rmdir { parent, name, time } => {
            check(inode_number("parent", *parent))?;
            check(entry_name("name", name))?;
            check(timestamp("time", time))
        }
        Event::Rename { source_parent, source_name, target_parent, target_name, mode: _, time } => {
            check(inode_number("source_parent", *source_parent))?;
            check(entry_name("source_name", source_name))?;
            check(inode_number("target_parent", *target_parent))?;
            check(entry_name("target_name", target_name))?;
            check(timestamp("time", time))
        }
        Event::SetAttr { ino, changes, time } => {
            check(inode_number("ino", *ino))?;
            if let Some(mode) = changes.mode {
                check(permission_bits("changes.mode", mode))?;
            }
            if let Some(atime) = &changes.atime {
                check(timestamp("changes.atime", atime))?;
            }
            if let Some(mtime) = &changes.mtime {
                check(timestamp("changes.mtime", mtime))?;
            }
            check(timestamp("time", time))
        }
        Event::SetXattr { ino, name, value, mode: _, time } => {
            check(inode_number("ino", *ino))?;
            check(bytes_without_nul("name", name, 1, XATTR_NAME_LENGTH_MAX_BYTES))?;
            check(length_at_most("value", value, XATTR_VALUE_LENGTH_MAX_BYTES))?;
            check(timestamp("time", time))
        }
        Event::RemoveXattr { ino, name, time } => {
            check(inode_number("ino", *ino))?;
            check(bytes_without_nul("name", name, 1, XATTR_NAME_LENGTH_MAX_BYTES))?;
            check(timestamp("time", time))
        }
        Event::SetLayout { ino, size: _, chunk_size_bytes, mtime, chunks } => {
            check(inode_number("ino", *ino))?;
            check(timestamp("mtime", mtime))?;
            check(chunk_updates(*chunk_size_bytes, chunks))
        }
        Event::Decouple { ino, owner: _, range, policy } => {
            check(inode_number("ino", *ino))?;
            check(inode_range("range", range.start, range.end))?;
            check(length_at_most("policy", policy, POLICY_TEXT_LENGTH_MAX_BYTES))
        }
        Event::Recouple { ino } => check(inode_number("ino", *ino)),
        Event::SetPolicy { ino, policy } => {
            check(inode_number("ino", *ino))?;
            match policy {
                Some(policy) => check(length_at_most("policy", policy, POLICY_TEXT_LENGTH_MAX_BYTES)),
                None => Ok(()),
            }
        }
        Event::AllocateInodes { owner: _, range } => check(inode_range("range", range.start, range.end)),
        Event::SessionOpen { session: _, client, time } => {
            check(length_at_most("client", client, CLIENT_DESCRIPTION_LENGTH_MAX_BYTES))?;
            check(timestamp("time", time))
        }
        Event::SessionOpenVerified { session: _, client, time, verifier: _ } => {
            check(length_at_most("client", client, CLIENT_DESCRIPTION_LENGTH_MAX_BYTES))?;
            check(timestamp("time", time))
        }
        Event::SessionClose { session: _ } => Ok(()),
        Event::Merged { ino, owner: _, through_seq: _ } => check(inode_number("ino", *ino)),
    }
}

fn invalid(event: &Event, reason: String) -> JournalError {
    JournalError::InvalidEvent { kind: event.kind_name(), reason }
}

fn inode_number(field: &str, ino: Ino) -> Result<(), String> {
    if ino == 0 {
        return Err(format!("{field} is inode 0"));
    }
    Ok(())
}

fn entry_name(field: &str, name: &[u8]) -> Result<(), String> {
    bytes_without_nul(field, name, 1, NAME_LENGTH_MAX_BYTES)?;
    if name.contains(&b'/') {
        return Err(format!("{field} contains '/'"));
    }
    if name == b"." || name == b".." {
        return Err(format!("{field} is {:?}", String::from_utf8_lossy(name)));
    }
    Ok(())
}

fn bytes_without_nul(field: &str, bytes: &[u8], min_bytes: usize, max_bytes: usize) -> Result<(), String> {
    if bytes.len() < min_bytes {
        return Err(format!("{field} is empty"));
    }
    length_at_most(field, bytes, max_bytes)?;
    if bytes.contains(&0) {
        return Err(format!("{field} contains a NUL byte"));
    }
    Ok(())
}

fn length_at_most(field: &str, bytes: &[u8], max_bytes: usize) -> Result<(), String> {
    if bytes.len() > max_bytes {
        return Err(format!("{field} is {} bytes, the limit is {max_bytes}", bytes.len()));
    }
    Ok(())
}

fn permission_bits(field: &str, mode: u32) -> Result<(), String> {
    if mode & !PERMISSION_BITS_MASK != 0 {
        return Err(format!("{field} {mode:#o} has bits outside the permission bits 0o7777"));
    }
    Ok(())
}

fn timestamp(field: &str, time: &Timestamp) -> Result<(), String> {
    if time.nanoseconds >= NANOSECONDS_PER_SECOND {
        return Err(format!("{field} has {} nanoseconds (one second or more)", time.nanoseconds));
    }
    Ok(())
}

/// At most [`LAYOUT_CHUNK_UPDATES_MAX`], strictly increasing indexes, each no longer than a
/// chunk (so a chunk size is given when there are any).
fn chunk_updates(chunk_size_bytes: u32, chunks: &[ChunkUpdate]) -> Result<(), String> {
    if chunks.len() > LAYOUT_CHUNK_UPDATES_MAX {
        return Err(format!("chunks has {} updates, the limit is {LAYOUT_CHUNK_UPDATES_MAX}", chunks.len()));
    }
    if !chunks.is_empty() && chunk_size_bytes == 0 {
        return Err("chunks given with chunk size 0".to_string());
    }
    for pair in chunks.windows(2) {
        if pair[0].index >= pair[1].index {
            return Err(format!("chunks index {} does not increase", pair[1].index));
        }
    }
    if let Some(update) = chunks.iter().find(|update| update.chunk.length_bytes > chunk_size_bytes) {
        return Err(format!(
            "chunks index {} is {} bytes, longer than the chunk size {chunk_size_bytes}",
            update.index, update.chunk.length_bytes
        ));
    }
    Ok(())
}

fn inode_range(field: &str, start: Ino, end: Ino) -> Result<(), String> {
    if start == 0 {
        return Err(format!("{field} starts at inode 0"));
    }
    if start > end {
        return Err(format!("{field} is reversed ({start}..{end})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrChanges, ChunkRef, ChunkVersion, InodeRange};
    use crate::segment::FRAME_HEADER_BYTES;

    fn typical_create_record() -> Record {
        Record {
            seq: 1_000_123,
            event: Event::Create {
                parent: 1000,
                name: b"file-000123".to_vec(),
                ino: 100_123,
                kind: FileKind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                time: Timestamp { seconds: 1_767_225_600, nanoseconds: 123_456_789 },
            },
        }
    }

    /// A typical create record stays far below DESIGN.md §4's 100-byte budget, framing included.
    #[test]
    fn create_record_is_small() {
        let mut payload = Vec::new();
        encode_record(&typical_create_record(), &mut payload);
        let framed_bytes = payload.len() + FRAME_HEADER_BYTES;
        println!("create record: payload {} bytes, framed {framed_bytes} bytes", payload.len());
        assert!(framed_bytes < 100, "framed create record is {framed_bytes} bytes");
    }

    /// Encoding then decoding gives the same record, and encoding appends to the buffer.
    #[test]
    fn round_trip_appends() {
        let record = typical_create_record();
        let mut out = b"prefix".to_vec();
        encode_record(&record, &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(decode_record(&out[6..]).expect("valid payload"), record);
    }

    /// A payload written by a future format version is refused, not misread.
    #[test]
    fn unknown_version_rejected() {
        let mut payload = Vec::new();
        encode_record(&typical_create_record(), &mut payload);
        payload[0] = EVENT_FORMAT_VERSION + 1;
        let error = decode_record(&payload).expect_err("future version");
        assert!(matches!(error, JournalError::UnsupportedEventFormat { found: 4, supported: 3 }));
        assert!(matches!(decode_record(&[]), Err(JournalError::EmptyPayload)));
    }

    fn layout_event(chunks: Vec<ChunkUpdate>) -> Event {
        Event::SetLayout {
            ino: 42,
            size: 5 << 20,
            chunk_size_bytes: 4 << 20,
            mtime: Timestamp { seconds: 1_767_225_600, nanoseconds: 5 },
            chunks,
        }
    }

    fn chunk_update(index: u64, serial: u64, length_bytes: u32) -> ChunkUpdate {
        ChunkUpdate { index, chunk: ChunkRef { version: ChunkVersion { writer: 7, serial }, length_bytes } }
    }

    /// A set-layout event with its chunk updates survives a round trip.
    #[test]
    fn layout_round_trip() {
        let record =
            Record { seq: 9, event: layout_event(vec![chunk_update(0, 1, 4 << 20), chunk_update(1, 2, 1 << 20)]) };
        let mut payload = Vec::new();
        encode_record(&record, &mut payload);
        assert_eq!(payload[0], EVENT_FORMAT_VERSION);
        assert_eq!(decode_record(&payload).expect("valid payload"), record);
    }

    /// Version 1 payloads still decode: a set-layout event without chunk updates, and every
    /// other event as it was.
    #[test]
    fn version_without_chunks_decodes() {
        let mtime = Timestamp { seconds: 1_767_225_600, nanoseconds: 5 };
        // Version 1 SetLayout: seq, variant index, ino, size, chunk size, mtime.
        let mut payload = vec![EVENT_FORMAT_VERSION_WITHOUT_CHUNKS];
        let fields = (9u64, SET_LAYOUT_VARIANT_INDEX, 42u64, 5u64 << 20, 4u32 << 20, mtime);
        bincode::encode_into_std_write(fields, &mut payload, bincode::config::standard()).expect("encode");
        let record = decode_record(&payload).expect("version 1 set-layout");
        assert_eq!(record, Record { seq: 9, event: layout_event(Vec::new()) });
        // The variant index constant is right: version 2 puts SetLayout at that index.
        let mut current = Vec::new();
        encode_record(&record, &mut current);
        let (_, seq_bytes): (u64, usize) =
            bincode::decode_from_slice(&current[1..], DECODE_CONFIGURATION).expect("seq");
        let (variant, _): (u32, usize) =
            bincode::decode_from_slice(&current[1 + seq_bytes..], DECODE_CONFIGURATION).expect("variant");
        assert_eq!(variant, SET_LAYOUT_VARIANT_INDEX);
        // Other events encode identically in both versions.
        let mut old = Vec::new();
        encode_record(&typical_create_record(), &mut old);
        old[0] = EVENT_FORMAT_VERSION_WITHOUT_CHUNKS;
        assert_eq!(decode_record(&old).expect("version 1 create"), typical_create_record());
        // A version 1 set-layout with bytes after its fields is refused.
        payload.push(0);
        assert!(matches!(decode_record(&payload), Err(JournalError::TrailingBytes { trailing_bytes: 1 })));
    }

    /// Version 2 payloads decode as version 3 (variants are only appended), and a version 2
    /// payload claiming the version 3 variant is refused.
    #[test]
    fn version_without_verified_sessions_decodes() {
        let mut old = Vec::new();
        encode_record(&typical_create_record(), &mut old);
        old[0] = EVENT_FORMAT_VERSION_WITHOUT_VERIFIED_SESSIONS;
        assert_eq!(decode_record(&old).expect("version 2 create"), typical_create_record());
        let verified = Record {
            seq: 3,
            event: Event::SessionOpenVerified {
                session: 2,
                client: b"host".to_vec(),
                time: Timestamp { seconds: 1, nanoseconds: 0 },
                verifier: [7; 32],
            },
        };
        let mut payload = Vec::new();
        encode_record(&verified, &mut payload);
        assert_eq!(decode_record(&payload).expect("version 3"), verified);
        payload[0] = EVENT_FORMAT_VERSION_WITHOUT_VERIFIED_SESSIONS;
        assert!(matches!(decode_record(&payload), Err(JournalError::InvalidEvent { .. })));
    }

    /// Bytes after the encoded record are an error, not ignored.
    #[test]
    fn trailing_bytes_rejected() {
        let mut payload = Vec::new();
        encode_record(&typical_create_record(), &mut payload);
        payload.push(0);
        assert!(matches!(decode_record(&payload), Err(JournalError::TrailingBytes { trailing_bytes: 1 })));
    }

    /// A name whose length prefix claims 2^62 bytes fails on the decode limit without allocating.
    #[test]
    fn hostile_length_prefix_rejected() {
        // version, seq = 1, variant 0 (Create), parent = 1, name length = 0xff + u64 2^62.
        let mut payload = vec![EVENT_FORMAT_VERSION, 1, 0, 1, 0xfd];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        payload.extend_from_slice(b"short");
        let error = decode_record(&payload).expect_err("hostile length");
        assert!(matches!(error, JournalError::Undecodable { .. }), "{error}");
    }

    /// Events outside the documented limits are rejected with a message naming the field.
    #[test]
    fn invalid_events_rejected() {
        let time = Timestamp::default();
        let cases = [
            (Event::Unlink { parent: 1, name: b"a/b".to_vec(), time }, "name contains '/'"),
            (Event::Unlink { parent: 1, name: Vec::new(), time }, "name is empty"),
            (Event::Unlink { parent: 1, name: b"..".to_vec(), time }, "name is \"..\""),
            (Event::Unlink { parent: 1, name: vec![b'x'; 256], time }, "name is 256 bytes"),
            (Event::Unlink { parent: 0, name: b"a".to_vec(), time }, "parent is inode 0"),
            (
                Event::SetAttr { ino: 2, changes: AttrChanges { mode: Some(0o100644), ..Default::default() }, time },
                "changes.mode",
            ),
            (
                Event::RemoveXattr {
                    ino: 2,
                    name: b"user.a".to_vec(),
                    time: Timestamp { seconds: 0, nanoseconds: NANOSECONDS_PER_SECOND },
                },
                "time has 1000000000 nanoseconds",
            ),
            (Event::AllocateInodes { owner: 1, range: InodeRange { start: 10, end: 5 } }, "reversed"),
            (layout_event(vec![chunk_update(1, 1, 1), chunk_update(1, 2, 1)]), "index 1 does not increase"),
            (layout_event(vec![chunk_update(0, 1, (4 << 20) + 1)]), "longer than the chunk size"),
            (
                Event::SetLayout {
                    ino: 2,
                    size: 1,
                    chunk_size_bytes: 0,
                    mtime: time,
                    chunks: vec![chunk_update(0, 1, 0)],
                },
                "chunk size 0",
            ),
            (
                layout_event(
                    (0..=LAYOUT_CHUNK_UPDATES_MAX as u64).map(|index| chunk_update(index, index, 1)).collect(),
                ),
                "the limit is 4096",
            ),
        ];
        for (event, expected) in cases {
            let error = validate_event(&event).expect_err("invalid event");
            assert!(error.to_string().contains(expected), "{error} should mention {expected:?}");
        }
        let record = Record { seq: 0, event: Event::Recouple { ino: 5 } };
        assert!(validate_record(&record).is_err());
    }
}
