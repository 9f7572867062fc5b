//! File data: chunk objects in the object store, written and read by the client directly.
//!
//! - [`store`]: chunk keys (`data/{ino:016x}/{chunk_index:08x}.{writer:x}.{serial:x}`, one
//!   object per write, never overwritten) and [`store::ChunkStore`], the blocking handle the
//!   filesystem uses (get, put many, delete, list).
//! - [`file`]: [`file::FileData`], one inode's data as this mount sees it: the size, the
//!   published chunk map, a bounded write-back buffer of dirty chunks, a small read cache,
//!   and `flush`, which uploads fresh versions and then publishes them with the new size in
//!   one `set_layout`.
//! - [`gc`]: collecting chunk objects no layout publishes.
//!
//! The inode's chunk map (kept by the metadata service, `InodeRecord::chunks`) names, per
//! chunk index, the version to read and how many of its bytes are data. A chunk without an
//! entry, or the part past an entry's length, reads as zeros (sparse files), up to the size.

pub mod file;
pub mod gc;
pub mod store;

pub use file::FileData;
pub use store::{chunk_key, next_version, ChunkStore, CHUNK_SIZE_BYTES};
