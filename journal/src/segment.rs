//! The journal segment format: a fixed header, then one frame per record.
//!
//! ```text
//! header (SEGMENT_HEADER_BYTES = 44, little endian)
//!   0  [u8; 8]  magic "CDLJSEG1"
//!   8  u16      segment format version (SEGMENT_FORMAT_VERSION)
//!  10  u16      flags, must be 0 (a reader refuses flags it does not know)
//!  12  u64      first_seq
//!  20  u64      last_seq (first_seq - 1 when the segment is empty)
//!  28  u32      record count (= last_seq - first_seq + 1)
//!  32  u64      body length in bytes (all frames, header excluded)
//!  40  u32      CRC32C of bytes 0..40
//! frame (FRAME_HEADER_BYTES = 8 + payload)
//!   0  u32      payload length in bytes
//!   4  u32      CRC32C of the payload
//!   8  payload  a record encoded by crate::codec
//! ```
//!
//! Because the header states the body length, a reader tells a torn tail (the buffer is
//! shorter than announced: keep the complete frames before the tear) from corruption (a frame
//! that is complete but fails its checksum, does not decode, or runs past the end of a
//! full-length segment: reject the whole segment). [`read_segment`] returns all records or
//! an error, so a caller never half-applies a corrupt segment.

use crate::codec::{decode_record, encode_record, validate_record, RECORD_PAYLOAD_LENGTH_MAX_BYTES};
use crate::error::{FrameCorruption, JournalError};
use crate::event::{Record, Seq};

/// First eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CDLJSEG1";
/// Version of the header and framing layout; the payload has its own version.
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
/// Size of the fixed segment header, in bytes.
pub const SEGMENT_HEADER_BYTES: usize = 44;
/// Size of a frame's length and checksum fields, in bytes.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Folder of segment objects in the object store.
pub const SEGMENT_OBJECT_PREFIX: &str = "journal/";
const SEGMENT_OBJECT_SUFFIX: &str = ".seg";
/// Digits of the zero-padded first sequence number in a segment object name (u64::MAX has 20).
const SEGMENT_OBJECT_SEQ_DIGITS: usize = 20;
const HEADER_CHECKSUMMED_BYTES: usize = SEGMENT_HEADER_BYTES - 4;

/// The decoded, validated header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: Seq,
    /// `first_seq - 1` for an empty segment.
    pub last_seq: Seq,
    pub record_count: u32,
    /// Bytes of all frames after the header.
    pub body_length_bytes: u64,
}

impl SegmentHeader {
    /// The header as stored, checksum included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..10].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        bytes[10..12].copy_from_slice(&0u16.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        bytes[20..28].copy_from_slice(&self.last_seq.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.record_count.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.body_length_bytes.to_le_bytes());
        let checksum = crc32c::crc32c(&bytes[..HEADER_CHECKSUMMED_BYTES]);
        bytes[HEADER_CHECKSUMMED_BYTES..].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Reads and validates the header at the start of `bytes` (which may hold more).
    /// A foreign, future-version or corrupt header is an error.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, JournalError> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(JournalError::TruncatedHeader {
                length_bytes: bytes.len(),
                header_bytes: SEGMENT_HEADER_BYTES,
            });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&header[0..8]);
        if magic != SEGMENT_MAGIC {
            return Err(JournalError::BadMagic { found: magic });
        }
        // The version decides the layout of the rest, so it is checked before the checksum.
        let version = read_u16(header, 8);
        if version != SEGMENT_FORMAT_VERSION {
            return Err(JournalError::UnsupportedSegmentVersion { found: version, supported: SEGMENT_FORMAT_VERSION });
        }
        let stored = read_u32(header, HEADER_CHECKSUMMED_BYTES);
        let computed = crc32c::crc32c(&header[..HEADER_CHECKSUMMED_BYTES]);
        if stored != computed {
            return Err(JournalError::HeaderChecksum { stored, computed });
        }
        let flags = read_u16(header, 10);
        if flags != 0 {
            return Err(invalid_header(format!("unknown flags {flags:#06x}")));
        }
        let decoded = SegmentHeader {
            first_seq: read_u64(header, 12),
            last_seq: read_u64(header, 20),
            record_count: read_u32(header, 28),
            body_length_bytes: read_u64(header, 32),
        };
        decoded.validate()?;
        Ok(decoded)
    }

    fn validate(&self) -> Result<(), JournalError> {
        if self.first_seq == 0 {
            return Err(invalid_header("first_seq is 0 (sequences start at 1)".into()));
        }
        // last_seq - first_seq + 1, written so that no header value can overflow it.
        let expected_count = self.last_seq.checked_sub(self.first_seq - 1);
        if expected_count != Some(u64::from(self.record_count)) {
            return Err(invalid_header(format!(
                "record count {} does not match the range {}..={}",
                self.record_count, self.first_seq, self.last_seq
            )));
        }
        Ok(())
    }
}

fn invalid_header(reason: String) -> JournalError {
    JournalError::InvalidHeader { reason }
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut buffer = [0u8; 4];
    buffer.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buffer)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buffer)
}

/// Appends one frame (length, CRC32C, payload) to `out`. Shared with other framed files
/// (snapshots), which read them back with [`FrameReader`].
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("frame payloads are bounded far below 4 GiB");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A complete, checksum-verified frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Offset of the frame's length field, counted from the reader's base offset.
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Iterates over the frames of a buffer, verifying each checksum.
///
/// Iteration ends when the buffer is used up, or at a torn tail (fewer bytes left than the
/// next frame needs: see [`FrameReader::torn_tail`]). A complete frame whose checksum does not
/// match, or a length above the limit, yields one `Err` and ends the iteration.
#[derive(Debug)]
pub struct FrameReader<'a> {
    bytes: &'a [u8],
    position: usize,
    base_offset: u64,
    payload_length_max_bytes: usize,
    failed: bool,
}

impl<'a> FrameReader<'a> {
    pub fn new(bytes: &'a [u8], payload_length_max_bytes: usize) -> Self {
        FrameReader { bytes, position: 0, base_offset: 0, payload_length_max_bytes, failed: false }
    }

    /// Reports offsets as if `bytes` started at `base_offset` in its file (e.g. after a header).
    pub fn with_base_offset(mut self, base_offset: u64) -> Self {
        self.base_offset = base_offset;
        self
    }

    /// Offset of the first byte not yet consumed.
    pub fn offset(&self) -> u64 {
        self.base_offset + self.position as u64
    }

    /// The bytes not consumed: after iteration ends without error, a torn tail if not empty.
    pub fn remainder(&self) -> &'a [u8] {
        &self.bytes[self.position..]
    }

    /// Whether iteration stopped (without error) before the end of the buffer because the
    /// last frame is incomplete.
    pub fn torn_tail(&self) -> bool {
        !self.failed && !self.remainder().is_empty()
    }

    fn fail(&mut self, reason: FrameCorruption) -> Option<Result<Frame<'a>, JournalError>> {
        self.failed = true;
        Some(Err(JournalError::Corrupt { offset: self.offset(), reason }))
    }
}

impl<'a> Iterator for FrameReader<'a> {
    type Item = Result<Frame<'a>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let remainder = self.remainder();
        if remainder.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let length_bytes = read_u32(remainder, 0) as usize;
        // Truncation never changes a length field, so one above the limit is corruption.
        if length_bytes > self.payload_length_max_bytes {
            return self.fail(FrameCorruption::LengthOverLimit {
                length_bytes: length_bytes as u64,
                limit_bytes: self.payload_length_max_bytes as u64,
            });
        }
        // Fewer bytes than the frame needs: a torn tail, which ends the iteration cleanly.
        let payload = remainder.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length_bytes)?;
        let stored = read_u32(remainder, 4);
        let computed = crc32c::crc32c(payload);
        if stored != computed {
            return self.fail(FrameCorruption::ChecksumMismatch { stored, computed });
        }
        let frame = Frame { offset: self.offset(), payload };
        self.position += FRAME_HEADER_BYTES + length_bytes;
        Some(Ok(frame))
    }
}

/// Builds one segment in memory; [`SegmentBuilder::finish`] returns the bytes to upload.
#[derive(Debug)]
pub struct SegmentBuilder {
    first_seq: Seq,
    next_seq: Seq,
    record_count: u32,
    /// Header space (filled by `finish`) followed by the frames.
    bytes: Vec<u8>,
}

impl SegmentBuilder {
    /// A segment whose first record will be `first_seq` (at least 1).
    pub fn new(first_seq: Seq) -> Self {
        assert!(first_seq >= 1, "journal sequences start at 1");
        SegmentBuilder { first_seq, next_seq: first_seq, record_count: 0, bytes: vec![0u8; SEGMENT_HEADER_BYTES] }
    }

    /// Appends `record`, which must be the next sequence number (a mismatch is a bug in the
    /// caller and panics). An invalid event (see [`crate::codec::validate_event`]) is refused
    /// and leaves the builder unchanged.
    pub fn push(&mut self, record: &Record) -> Result<(), JournalError> {
        assert_eq!(record.seq, self.next_seq, "journal records must be appended in sequence order");
        assert!(self.record_count < u32::MAX, "segment record count overflows u32");
        validate_record(record)?;
        let frame_start = self.bytes.len();
        self.bytes.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        encode_record(record, &mut self.bytes);
        let payload_start = frame_start + FRAME_HEADER_BYTES;
        let payload_length = self.bytes.len() - payload_start;
        if payload_length > RECORD_PAYLOAD_LENGTH_MAX_BYTES {
            self.bytes.truncate(frame_start);
            return Err(JournalError::InvalidEvent {
                kind: record.event.kind_name(),
                reason: format!(
                    "encoded record is {payload_length} bytes, the limit is {RECORD_PAYLOAD_LENGTH_MAX_BYTES}"
                ),
            });
        }
        // Read-back check in debug builds: what we wrote decodes to what we were given.
        debug_assert_eq!(decode_record(&self.bytes[payload_start..]).ok().as_ref(), Some(record));
        let checksum = crc32c::crc32c(&self.bytes[payload_start..]);
        self.bytes[frame_start..frame_start + 4].copy_from_slice(&(payload_length as u32).to_le_bytes());
        self.bytes[frame_start + 4..payload_start].copy_from_slice(&checksum.to_le_bytes());
        self.next_seq = self.next_seq.checked_add(1).expect("journal sequence numbers exhausted");
        self.record_count += 1;
        Ok(())
    }

    pub fn first_seq(&self) -> Seq {
        self.first_seq
    }

    /// The sequence number the next pushed record must have.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Size the finished segment will have, header included, in bytes.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The finished segment: header, then the frames.
    pub fn finish(mut self) -> Vec<u8> {
        let header = SegmentHeader {
            first_seq: self.first_seq,
            last_seq: self.next_seq - 1,
            record_count: self.record_count,
            body_length_bytes: (self.bytes.len() - SEGMENT_HEADER_BYTES) as u64,
        };
        self.bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        self.bytes
    }
}

/// Everything read from one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentContents {
    pub header: SegmentHeader,
    /// Consecutive records from `header.first_seq`; all of them unless `torn_tail`.
    pub records: Vec<Record>,
    /// The buffer is shorter than the header announces; `records` holds the complete frames
    /// before the tear. Only the newest segment of a journal written in place can be torn:
    /// anywhere else it is lost data.
    pub torn_tail: bool,
}

/// Reads a whole segment: all of its records, or the complete records before a torn tail, or
/// an error for a foreign, corrupt or inconsistent segment. Never panics.
pub fn read_segment(bytes: &[u8]) -> Result<SegmentContents, JournalError> {
    let header = SegmentHeader::decode(bytes)?;
    let body = &bytes[SEGMENT_HEADER_BYTES..];
    let body_offset = SEGMENT_HEADER_BYTES as u64;
    let available_bytes = body.len() as u64;
    if available_bytes > header.body_length_bytes {
        return Err(JournalError::Corrupt {
            offset: body_offset + header.body_length_bytes,
            reason: FrameCorruption::TrailingBytes { extra_bytes: available_bytes - header.body_length_bytes },
        });
    }
    let complete = available_bytes == header.body_length_bytes;
    let announced_records = header.record_count as usize;
    // The count comes from the file; do not let it size an allocation beyond what the bytes hold.
    let mut records = Vec::with_capacity(announced_records.min(body.len() / (FRAME_HEADER_BYTES + 1)));
    let mut frames = FrameReader::new(body, RECORD_PAYLOAD_LENGTH_MAX_BYTES).with_base_offset(body_offset);
    for frame in &mut frames {
        let frame = frame?;
        let corrupt = |reason| JournalError::Corrupt { offset: frame.offset, reason };
        if records.len() == announced_records {
            return Err(corrupt(FrameCorruption::TrailingBytes {
                extra_bytes: (body_offset + available_bytes) - frame.offset,
            }));
        }
        let record = decode_record(frame.payload)
            .map_err(|error| corrupt(FrameCorruption::Undecodable { error: Box::new(error) }))?;
        let expected = header.first_seq + records.len() as u64;
        if record.seq != expected {
            if record.seq < header.first_seq || record.seq > header.last_seq {
                return Err(corrupt(FrameCorruption::OutsideHeaderRange {
                    seq: record.seq,
                    first_seq: header.first_seq,
                    last_seq: header.last_seq,
                }));
            }
            return Err(JournalError::SequenceGap { offset: frame.offset, expected, found: record.seq });
        }
        records.push(record);
    }
    if complete {
        if frames.torn_tail() {
            return Err(JournalError::Corrupt {
                offset: frames.offset(),
                reason: FrameCorruption::LengthPastEnd { available_bytes: frames.remainder().len() as u64 },
            });
        }
        if records.len() != announced_records {
            return Err(invalid_header(format!(
                "the body holds {} records, the header announces {announced_records}",
                records.len()
            )));
        }
    }
    Ok(SegmentContents { header, records, torn_tail: !complete })
}

/// Object name of the segment starting at `first_seq`; names sort in sequence order.
pub fn segment_object_name(first_seq: Seq) -> String {
    format!("{SEGMENT_OBJECT_PREFIX}{first_seq:0width$}{SEGMENT_OBJECT_SUFFIX}", width = SEGMENT_OBJECT_SEQ_DIGITS)
}

/// The first sequence number in a name made by [`segment_object_name`]; `None` for any other
/// name (including non-canonical spellings of a number).
pub fn parse_segment_object_name(name: &str) -> Option<Seq> {
    let digits = name.strip_prefix(SEGMENT_OBJECT_PREFIX)?.strip_suffix(SEGMENT_OBJECT_SUFFIX)?;
    if digits.len() != SEGMENT_OBJECT_SEQ_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Timestamp};

    fn record(seq: Seq) -> Record {
        let time = Timestamp { seconds: 1_767_225_600 + seq as i64, nanoseconds: 7 };
        Record { seq, event: Event::Unlink { parent: 1, name: format!("file-{seq}").into_bytes(), time } }
    }

    fn segment(first_seq: Seq, count: u64) -> Vec<u8> {
        let mut builder = SegmentBuilder::new(first_seq);
        for seq in first_seq..first_seq + count {
            builder.push(&record(seq)).expect("valid record");
        }
        builder.finish()
    }

    /// Rewrites the header fields through `change` and re-seals the header checksum.
    fn with_header(mut bytes: Vec<u8>, change: impl FnOnce(&mut [u8])) -> Vec<u8> {
        change(&mut bytes[..SEGMENT_HEADER_BYTES]);
        let checksum = crc32c::crc32c(&bytes[..HEADER_CHECKSUMMED_BYTES]);
        bytes[HEADER_CHECKSUMMED_BYTES..SEGMENT_HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// A finished segment reads back with the same records and a matching header.
    #[test]
    fn round_trip() {
        let bytes = segment(10, 5);
        let contents = read_segment(&bytes).expect("valid segment");
        assert_eq!(contents.records, (10..15).map(record).collect::<Vec<_>>());
        assert!(!contents.torn_tail);
        assert_eq!(contents.header.first_seq, 10);
        assert_eq!(contents.header.last_seq, 14);
        assert_eq!(contents.header.record_count, 5);
        assert_eq!(contents.header.body_length_bytes as usize, bytes.len() - SEGMENT_HEADER_BYTES);
    }

    /// An empty segment is valid: last_seq is first_seq - 1.
    #[test]
    fn empty_segment() {
        let contents = read_segment(&segment(7, 0)).expect("valid empty segment");
        assert!(contents.records.is_empty());
        assert_eq!(contents.header.last_seq, 6);
    }

    /// A file that does not start with the magic is named as foreign.
    #[test]
    fn foreign_magic_rejected() {
        let mut bytes = segment(1, 2);
        bytes[..8].copy_from_slice(b"PK\x03\x04zip!");
        let error = read_segment(&bytes).expect_err("foreign file").in_segment(segment_object_name(12));
        assert_eq!(
            error.to_string(),
            "segment journal/00000000000000000012.seg: bad magic (not a cudele journal segment): \
             it starts with \"PK\\x03\\x04zip!\""
        );
        assert!(matches!(error.root(), JournalError::BadMagic { .. }));
    }

    /// A segment from a newer format version is refused, not misread.
    #[test]
    fn wrong_version_rejected() {
        let bytes = with_header(segment(1, 2), |header| header[8..10].copy_from_slice(&2u16.to_le_bytes()));
        let error = read_segment(&bytes).expect_err("future version");
        assert!(matches!(error, JournalError::UnsupportedSegmentVersion { found: 2, supported: 1 }), "{error}");
    }

    /// A header whose bytes changed after sealing fails its checksum.
    #[test]
    fn bad_header_checksum_rejected() {
        let mut bytes = segment(1, 2);
        bytes[20] ^= 0x01;
        assert!(matches!(read_segment(&bytes), Err(JournalError::HeaderChecksum { .. })));
    }

    /// Unknown flags and inconsistent counts are refused even with a valid checksum.
    #[test]
    fn inconsistent_header_rejected() {
        let flagged = with_header(segment(1, 2), |header| header[10] = 1);
        assert!(matches!(read_segment(&flagged), Err(JournalError::InvalidHeader { .. })));
        let miscounted = with_header(segment(1, 2), |header| header[28..32].copy_from_slice(&3u32.to_le_bytes()));
        assert!(matches!(read_segment(&miscounted), Err(JournalError::InvalidHeader { .. })));
        let zero_start = with_header(segment(1, 0), |header| {
            header[12..20].copy_from_slice(&0u64.to_le_bytes());
            header[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        });
        assert!(matches!(read_segment(&zero_start), Err(JournalError::InvalidHeader { .. })));
        let huge_range = with_header(segment(1, 0), |header| header[20..28].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert!(matches!(read_segment(&huge_range), Err(JournalError::InvalidHeader { .. })));
        assert!(matches!(read_segment(&segment(1, 1)[..10]), Err(JournalError::TruncatedHeader { .. })));
    }

    /// Cutting a segment inside a frame or at a frame boundary keeps the complete records before the cut.
    #[test]
    fn torn_tail_keeps_complete_records() {
        let bytes = segment(100, 3);
        let frame_bytes = (bytes.len() - SEGMENT_HEADER_BYTES) / 3; // equal-length names
        let at_boundary = read_segment(&bytes[..SEGMENT_HEADER_BYTES + 2 * frame_bytes]).expect("torn tail");
        assert!(at_boundary.torn_tail);
        assert_eq!(at_boundary.records, vec![record(100), record(101)]);
        let inside_frame = read_segment(&bytes[..bytes.len() - 1]).expect("torn tail");
        assert!(inside_frame.torn_tail);
        assert_eq!(inside_frame.records.len(), 2);
        let header_only = read_segment(&bytes[..SEGMENT_HEADER_BYTES + 3]).expect("torn tail");
        assert!(header_only.torn_tail && header_only.records.is_empty());
    }

    /// A complete frame whose payload changed is corruption: the whole segment is rejected.
    #[test]
    fn corrupt_frame_rejected() {
        let mut bytes = segment(1, 3);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let error = read_segment(&bytes).expect_err("corrupt frame");
        let JournalError::Corrupt { offset, reason: FrameCorruption::ChecksumMismatch { .. } } = error else {
            panic!("expected a checksum mismatch, got {error}");
        };
        assert!(offset > SEGMENT_HEADER_BYTES as u64);
    }

    /// A length field that points past the end of a full-length segment is corruption, not a torn tail.
    #[test]
    fn length_past_end_of_complete_segment_rejected() {
        let mut bytes = segment(1, 2);
        bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4].copy_from_slice(&1000u32.to_le_bytes());
        let error = read_segment(&bytes).expect_err("length past end");
        assert!(
            matches!(error, JournalError::Corrupt { reason: FrameCorruption::LengthPastEnd { .. }, .. }),
            "{error}"
        );
        bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = read_segment(&bytes).expect_err("length over limit");
        assert!(matches!(error, JournalError::Corrupt { reason: FrameCorruption::LengthOverLimit { .. }, .. }));
    }

    /// Bytes after the announced body are refused.
    #[test]
    fn trailing_bytes_rejected() {
        let mut bytes = segment(1, 2);
        bytes.extend_from_slice(&segment(3, 1)[SEGMENT_HEADER_BYTES..]);
        let error = read_segment(&bytes).expect_err("trailing frame");
        assert!(matches!(error, JournalError::Corrupt { reason: FrameCorruption::TrailingBytes { .. }, .. }));
    }

    /// Records must follow each other without a gap, inside the header's range.
    #[test]
    fn sequence_gap_rejected() {
        let mut body = Vec::new();
        for seq in [5, 7, 6] {
            let mut payload = Vec::new();
            encode_record(&record(seq), &mut payload);
            encode_frame(&payload, &mut body);
        }
        let header = SegmentHeader { first_seq: 5, last_seq: 7, record_count: 3, body_length_bytes: body.len() as u64 };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&body);
        let error = read_segment(&bytes).expect_err("gap");
        assert!(matches!(error, JournalError::SequenceGap { expected: 6, found: 7, .. }), "{error}");

        let header = SegmentHeader { first_seq: 5, last_seq: 5, record_count: 1, body_length_bytes: 0 };
        let mut bytes = header.encode().to_vec();
        let mut payload = Vec::new();
        encode_record(&record(9), &mut payload);
        encode_frame(&payload, &mut bytes);
        let bytes = with_header(bytes, |header| {
            header[32..40].copy_from_slice(&((payload.len() + FRAME_HEADER_BYTES) as u64).to_le_bytes())
        });
        let error = read_segment(&bytes).expect_err("outside range");
        assert!(matches!(
            error,
            JournalError::Corrupt { reason: FrameCorruption::OutsideHeaderRange { seq: 9, .. }, .. }
        ));
    }

    /// Pushing out of order is a caller bug and panics.
    #[test]
    #[should_panic(expected = "sequence order")]
    fn push_out_of_order_panics() {
        let mut builder = SegmentBuilder::new(1);
        let _ = builder.push(&record(2));
    }

    /// An invalid event is refused and leaves the builder as it was.
    #[test]
    fn push_invalid_event_refused() {
        let mut builder = SegmentBuilder::new(1);
        let invalid =
            Record { seq: 1, event: Event::Rmdir { parent: 1, name: b"a/b".to_vec(), time: Timestamp::default() } };
        assert!(matches!(builder.push(&invalid), Err(JournalError::InvalidEvent { .. })));
        assert_eq!((builder.next_seq(), builder.encoded_bytes()), (1, SEGMENT_HEADER_BYTES));
        builder.push(&record(1)).expect("valid record");
        assert_eq!(read_segment(&builder.finish()).expect("valid").records, vec![record(1)]);
    }

    /// The frame reader yields each payload with its offset and reports a torn tail.
    #[test]
    fn frame_reader_streams_payloads() {
        let mut bytes = Vec::new();
        encode_frame(b"alpha", &mut bytes);
        encode_frame(b"", &mut bytes);
        encode_frame(b"gamma", &mut bytes);
        let mut reader = FrameReader::new(&bytes[..bytes.len() - 2], 16).with_base_offset(100);
        let frames: Vec<_> = (&mut reader).collect::<Result<_, _>>().expect("valid frames");
        assert_eq!(frames, vec![Frame { offset: 100, payload: b"alpha" }, Frame { offset: 113, payload: b"" }]);
        assert!(reader.torn_tail());
        assert_eq!(reader.offset(), 121);
    }

    /// Segment object names sort by sequence and parse back; other names do not parse.
    #[test]
    fn object_names() {
        assert_eq!(segment_object_name(12), "journal/00000000000000000012.seg");
        assert_eq!(parse_segment_object_name("journal/00000000000000000012.seg"), Some(12));
        assert_eq!(parse_segment_object_name(&segment_object_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_object_name(9) < segment_object_name(10));
        for name in [
            "journal/12.seg",
            "journal/0000000000000000001x.seg",
            "journal/99999999999999999999.seg",
            "snapshots/00000000000000000012.seg",
            "journal/00000000000000000012.seg.tmp",
            "journal/+0000000000000000012.seg",
        ] {
            assert_eq!(parse_segment_object_name(name), None, "{name}");
        }
    }
}
