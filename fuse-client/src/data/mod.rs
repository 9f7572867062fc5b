//! File data: chunk objects in the object store, written and read by the client directly.
//!
//! - [`store`]: chunk keys (`data/{ino:016x}/{chunk_index:08x}`) and [`store::ChunkStore`],
//!   the blocking handle the filesystem uses (get, put many, delete, list, trim).
//! - [`file`]: [`file::FileData`], one inode's data as this mount sees it: the size, a
//!   bounded write-back buffer of dirty chunks, a small read cache, and `flush`, which
//!   uploads and then records the new size with the metadata service.
//! - [`gc`]: collecting chunk objects no inode references.
//!
//! Objects are only as long as the data in them; a missing object or the part past an
//! object's end reads as zeros (sparse files), up to the file's size.

pub mod file;
pub mod gc;
pub mod store;

pub use file::FileData;
pub use store::{chunk_key, ChunkStore, CHUNK_SIZE_BYTES};
