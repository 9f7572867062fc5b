//! cudele-mds: the metadata server.
//!
//! Layout:
//! - [`server`]: the core — namespace lock, mutation and read pipelines, sessions' lifecycle.
//! - [`service`]: the gRPC service (decode, call the core, encode).
//! - [`sessions`]: leases and the invalidate-then-acknowledge push channel.
//! - [`journal_writer`]: group commit of events into segments in the object store.
//! - [`persist`]: flushing durable events into the metadata store, snapshots, trimming.
//! - [`metastore`]: the metadata store trait, RocksDB and in-memory backends.
//! - [`snapshot`]: the snapshot format.
//! - [`recovery`]: startup from the metadata store and/or the object store.
//! - [`run`]: configuration and wiring of all of the above into a running server.
//! - [`metrics_names`]: every exported metric name.
//! - [`replica`]: elastic metadata cache replicas — registry, coherence, autoscaler, launcher,
//!   and the replica process itself (`cudele-mds replica`).

pub mod journal_writer;
pub mod metastore;
pub mod metrics_names;
pub mod persist;
pub mod reconnect;
pub mod recovery;
pub mod replica;
pub mod run;
pub mod server;
pub mod service;
pub mod sessions;
pub mod snapshot;
