//! cudele-journal: the contract every cudele crate shares.
//!
//! Layout:
//! - [`event`]: the [`Event`] type — one per namespace mutation — and [`Record`] (event + sequence).
//! - [`codec`]: the compact, versioned binary encoding of a record, and event validation.
//! - [`segment`]: the segment format (header + frames of length, CRC32C, payload), a segment
//!   builder and a reader that stops at a torn tail and rejects corrupt or foreign segments.
//! - [`inspect`]: the journal tool's logic (inspect, export to / import from JSON lines).
//! - [`store`]: opening the object store (local directory, memory, S3) from a URL, and
//!   [`store::JournalStore`], whose puts are durable when they return.
//! - [`error`]: [`JournalError`], the crate's one error type.

pub mod codec;
pub mod error;
pub mod event;
pub mod inspect;
pub mod segment;
pub mod store;

pub use error::JournalError;
pub use event::*;
