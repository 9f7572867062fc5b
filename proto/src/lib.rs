//! cudele-proto: the gRPC contract (generated from proto/cudele.proto), conversions between
//! wire and domain types, and the one mapping between `tonic::Status` and [`NsError`].
//!
//! Layout:
//! - [`pb`]: the generated messages, client and server.
//! - [`convert`]: wire <-> domain conversions (attributes, kinds, timestamps).
//! - [`status`]: NsError <-> tonic::Status (errno travels in `cudele-errno` metadata).
//! - [`auth`]: the metadata header names and the token check.
//! - [`replica_pb`]: the replica contract (proto/replica.proto): `Replica` and `Coordinator`.
//! - [`partition`]: the one partition function of the replica layer (directory -> deployment).
//! - [`routing`]: routing reads to replica instances with retry, backoff and MDS fallback.
//! - [`transport`]: the one channel builder (plaintext or TLS) and the servers' TLS identity.

pub mod pb {
    tonic::include_proto!("cudele.v1");
}

pub mod replica_pb {
    include!(concat!(env!("OUT_DIR"), "/replica/cudele.replica.v1.rs"));
}

pub mod auth;
pub mod convert;
pub mod early;
pub mod partition;
pub mod routing;
pub mod status;
pub mod transport;

pub use status::{error_from_status, status_from_error};

/// Largest gRPC message either side accepts: a merge carries a whole client journal (about
/// 50 bytes per create, so 100,000 creates are ~5 MB, over tonic's 4 MiB default) and a
/// decouple reply a whole subtree snapshot.
pub const MESSAGE_BYTES_MAX: usize = 512 << 20;

/// Largest client journal a Merge carries inline; a longer one is sent in chunks of whole
/// records, each merged atomically (merges are positioned, so chunks land in order once).
/// Bounds what one Merge costs the MDS (it decodes the message, then the journal).
pub const MERGE_INLINE_BYTES_MAX: usize = 32 << 20;
