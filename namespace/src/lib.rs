//! cudele-namespace: POSIX namespace semantics in plain Rust.
//!
//! Layout:
//! - [`namespace`]: the in-memory [`Namespace`]; [`Namespace::apply`] validates and applies a
//!   journal event (the only way it changes), reads (lookup, getattr, readdir with a name
//!   cursor, xattrs), invariant checking and a canonical dump.
//! - [`merge`]: merging a decoupled subtree's client journal (decoupled-wins rules).
//! - [`inode`]: the persisted inode record and attribute types.
//! - [`subtree`]: extracting a subtree (decouple) and a client's local view of it.
//! - [`store_key`]: the key/value form of the namespace (RocksDB and snapshots).
//! - [`error`]: [`NsError`] and its one mapping to errno.

pub mod error;
pub mod inode;
pub mod merge;
pub mod namespace;
pub mod store_key;
pub mod subtree;

pub use error::{NsError, NsResult};
pub use inode::{Attr, Decoupling, DirEntry, InodeRecord, SessionRecord};
pub use merge::MergeStep;
pub use namespace::{validate_event, validate_name, Namespace, Touched};
pub use store_key::{decode_entry, StoreKey, StoreOp, StoreValue};
