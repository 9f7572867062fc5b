//! cudele-client: the cudele FUSE filesystem, its MDS client and the `cudele` command line.
//!
//! Layout:
//! - [`metadata`]: the [`metadata::Metadata`] trait between the filesystem and the namespace,
//!   with [`metadata::LocalMetadata`] (in-process, for tests) and [`metadata::RemoteMetadata`]
//!   (gRPC to cudele-mds, with a cache kept coherent by the MDS's invalidations).
//! - [`data`]: file data as chunk objects in the object store: keys, the per-file
//!   write-back buffer, and garbage collection.
//! - [`fs`]: the filesystem semantics in plain Rust ([`fs::CudeleFs`]); tests drive it
//!   without a mount.
//! - [`fuse`]: the thin fuser adapter: translate, call `fs`, reply.
//! - [`mount`]: mount options, mounting (foreground or daemonised), unmounting.
//! - [`subtree`]: decoupled subtrees — local view, client journal, and the router that
//!   makes them one more `Metadata` (control through `cudele.*` xattrs on directories).
//! - [`subtree_cli`]: `cudele decouple|merge|recouple|status DIR` and `cudele journal ...`.
//! - [`commands`]: `cudele status` and `cudele gc`.
//! - [`runtime`], [`sync`], [`error`]: the client's tokio runtime, locks, setup errors.

pub mod commands;
pub mod data;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod kernel_cache;
pub mod metadata;
pub mod mount;
pub mod runtime;
pub mod subtree;
pub mod subtree_cli;
pub mod sync;
