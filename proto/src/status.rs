//! The one mapping between the domain error and `tonic::Status`.
//!
//! The errno travels in the `cudele-errno` metadata entry so the client reproduces exactly
//! the error the namespace chose; the gRPC code is a readable approximation for other tools.

use cudele_namespace::NsError;
use tonic::{Code, Status};

pub const ERRNO_METADATA_KEY: &str = "cudele-errno";

pub fn status_from_error(error: NsError) -> Status {
    let code = match &error {
        NsError::NotFound | NsError::NoData | NsError::Stale => Code::NotFound,
        NsError::Exists => Code::AlreadyExists,
        NsError::NotPermitted | NsError::AccessDenied | NsError::Refused(_) => Code::PermissionDenied,
        NsError::Busy(_) => Code::Unavailable,
        NsError::NoSpace(_) => Code::ResourceExhausted,
        NsError::NotSupported => Code::Unimplemented,
        NsError::Io(_) => Code::Internal,
        NsError::NotEmpty
        | NsError::NotDirectory
        | NsError::IsDirectory
        | NsError::CrossDevice
        | NsError::TooManyLinks => Code::FailedPrecondition,
        NsError::NameTooLong | NsError::InvalidArgument(_) | NsError::Range | NsError::TooBig => Code::InvalidArgument,
    };
    let mut status = Status::new(code, error.to_string());
    if let Ok(value) = error.errno().to_string().parse() {
        status.metadata_mut().insert(ERRNO_METADATA_KEY, value);
    }
    status
}

/// The domain error a status stands for. A status without errno (transport failure,
/// authentication, a server that crashed mid-call) is an I/O error.
pub fn error_from_status(status: &Status) -> NsError {
    let errno = status
        .metadata()
        .get(ERRNO_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok());
    match errno {
        Some(errno) => NsError::from_errno(errno, status.message()),
        None => NsError::Io(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every errno survives the trip through a Status.
    #[test]
    fn errno_round_trips() {
        for error in [
            NsError::NotFound,
            NsError::Exists,
            NsError::NotEmpty,
            NsError::NotDirectory,
            NsError::IsDirectory,
            NsError::NameTooLong,
            NsError::InvalidArgument("x"),
            NsError::CrossDevice,
            NsError::NoData,
            NsError::Range,
            NsError::TooBig,
            NsError::NotPermitted,
            NsError::AccessDenied,
            NsError::Busy("x"),
            NsError::NoSpace("x"),
            NsError::Stale,
            NsError::NotSupported,
            NsError::TooManyLinks,
            NsError::Io("x".into()),
        ] {
            let back = error_from_status(&status_from_error(error.clone()));
            assert_eq!(back.errno(), error.errno(), "{error:?}");
        }
    }
}
