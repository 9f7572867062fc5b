//! cudele-proto: the gRPC contract (generated from proto/cudele.proto), conversions between
//! wire and domain types, and the one mapping between `tonic::Status` and [`NsError`].
//!
//! Layout:
//! - [`pb`]: the generated messages, client and server.
//! - [`convert`]: wire <-> domain conversions (attributes, kinds, timestamps).
//! - [`status`]: NsError <-> tonic::Status (errno travels in `cudele-errno` metadata).
//! - [`auth`]: the metadata header names and the token check.

pub mod pb {
    tonic::include_proto!("cudele.v1");
}

pub mod auth;
pub mod convert;
pub mod status;

pub use status::{error_from_status, status_from_error};
