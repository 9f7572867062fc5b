//! The one error type of the journal crate: decoding records, reading segments and talking to
//! the object store. Every message names what was wrong in words an operator can act on.
//!
//! Inner errors (bincode, object_store, I/O) are rendered into the message rather than exposed
//! as `source()`, so that `{:#}` in anyhow prints each cause once.

use std::path::PathBuf;

use crate::event::Seq;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    // --- records (codec) ---
    #[error("empty record payload (no format version byte)")]
    EmptyPayload,

    #[error("unsupported event format version {found} (this build reads version {supported})")]
    UnsupportedEventFormat { found: u8, supported: u8 },

    #[error("undecodable record: {cause}")]
    Undecodable { cause: bincode::error::DecodeError },

    #[error("record has {trailing_bytes} trailing bytes after the event")]
    TrailingBytes { trailing_bytes: usize },

    #[error("invalid {kind} event: {reason}")]
    InvalidEvent { kind: &'static str, reason: String },

    // --- segments ---
    #[error("truncated segment header: {length_bytes} bytes, a header is {header_bytes} bytes")]
    TruncatedHeader { length_bytes: usize, header_bytes: usize },

    #[error("bad magic (not a cudele journal segment): it starts with \"{}\"", found.escape_ascii())]
    BadMagic { found: [u8; 8] },

    #[error("unsupported segment format version {found} (this build reads version {supported})")]
    UnsupportedSegmentVersion { found: u16, supported: u16 },

    #[error("segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },

    #[error("invalid segment header: {reason}")]
    InvalidHeader { reason: String },

    #[error("corrupt frame at byte offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: FrameCorruption },

    #[error("sequence gap at byte offset {offset}: expected record {expected}, found record {found}")]
    SequenceGap { offset: u64, expected: Seq, found: Seq },

    /// Any of the above, with the object it was read from.
    #[error("segment {object}: {error}")]
    InSegment { object: String, error: Box<JournalError> },

    // --- object store ---
    #[error("unsupported object store URL {url:?}: {reason}")]
    InvalidStoreUrl { url: String, reason: String },

    #[error("invalid object path {path:?}: {reason}")]
    InvalidObjectPath { path: String, reason: String },

    #[error("object {path} not found")]
    NotFound { path: String },

    #[error("object {path} already exists")]
    AlreadyExists { path: String },

    #[error("object store {operation} {path}: {cause}")]
    ObjectStore { operation: &'static str, path: String, cause: object_store::Error },

    #[error("{operation} {}: {cause}", path.display())]
    Io { operation: &'static str, path: PathBuf, cause: std::io::Error },
}

impl JournalError {
    /// Attach the name of the segment object the error was found in.
    pub fn in_segment(self, object: impl Into<String>) -> JournalError {
        JournalError::InSegment { object: object.into(), error: Box::new(self) }
    }

    /// The error without the [`JournalError::InSegment`] context, for matching on the cause.
    pub fn root(&self) -> &JournalError {
        match self {
            JournalError::InSegment { error, .. } => error.root(),
            other => other,
        }
    }
}

/// Why a complete frame (one that fits in the buffer) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameCorruption {
    #[error("payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { stored: u32, computed: u32 },

    #[error("payload length {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    LengthOverLimit { length_bytes: u64, limit_bytes: u64 },

    /// The segment is complete (its length matches the header) but the frame runs past its end.
    #[error("frame runs past the end of the segment (only {available_bytes} bytes left)")]
    LengthPastEnd { available_bytes: u64 },

    #[error("{error}")]
    Undecodable { error: Box<JournalError> },

    #[error("record {seq} lies outside the header's range {first_seq}..={last_seq}")]
    OutsideHeaderRange { seq: Seq, first_seq: Seq, last_seq: Seq },

    #[error("{extra_bytes} bytes after the last record the header announces")]
    TrailingBytes { extra_bytes: u64 },
}
