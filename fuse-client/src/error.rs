//! [`ClientError`]: why the client could not start, mount or run a command. Errors of
//! filesystem operations are `cudele_namespace::NsError` (with its one errno mapping).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid MDS address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("cannot reach the MDS at {address}: {reason}")]
    Unreachable { address: String, reason: String },

    #[error("the MDS at {address} rejected the request: {reason}")]
    Rejected { address: String, reason: String },

    #[error("reading token file {path}: {cause}")]
    TokenFile { path: String, cause: std::io::Error },

    #[error("{0}")]
    Transport(#[from] cudele_proto::transport::TransportError),

    #[error("object store {url}: {reason}")]
    ObjectStore { url: String, reason: String },

    #[error("invalid mount option {option:?}: {reason}")]
    MountOption { option: String, reason: String },

    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
}

impl ClientError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let context = context.into();
        move |cause| ClientError::Io { context, cause }
    }
}
