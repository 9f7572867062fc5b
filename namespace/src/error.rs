//! The domain error of namespace operations and its one mapping to errno.

use thiserror::Error;

/// Why a namespace operation failed. Each variant is one errno; [`NsError::errno`] is the
/// only place that mapping lives (the FUSE adapter and the gRPC status mapping both use it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("invalid cross-device link")]
    CrossDevice,
    #[error("no such attribute")]
    NoData,
    #[error("result does not fit the buffer")]
    Range,
    #[error("argument list too long")]
    TooBig,
    #[error("operation not permitted")]
    NotPermitted,
    /// A request the caller is not allowed to make (a trust rule of docs/SECURITY.md), with
    /// what was refused and why, e.g. the first offending event of a merge.
    #[error("refused: {0}")]
    Refused(String),
    #[error("permission denied")]
    AccessDenied,
    #[error("device or resource busy: {0}")]
    Busy(&'static str),
    #[error("no space left: {0}")]
    NoSpace(&'static str),
    #[error("stale file handle")]
    Stale,
    #[error("operation not supported")]
    NotSupported,
    #[error("too many links")]
    TooManyLinks,
    #[error("input/output error: {0}")]
    Io(String),
}

impl NsError {
    /// The errno Linux would return. Exhaustive on purpose: a new variant must choose.
    pub fn errno(&self) -> i32 {
        match self {
            NsError::NotFound => libc::ENOENT,
            NsError::Exists => libc::EEXIST,
            NsError::NotEmpty => libc::ENOTEMPTY,
            NsError::NotDirectory => libc::ENOTDIR,
            NsError::IsDirectory => libc::EISDIR,
            NsError::NameTooLong => libc::ENAMETOOLONG,
            NsError::InvalidArgument(_) => libc::EINVAL,
            NsError::CrossDevice => libc::EXDEV,
            NsError::NoData => libc::ENODATA,
            NsError::Range => libc::ERANGE,
            NsError::TooBig => libc::E2BIG,
            NsError::NotPermitted => libc::EPERM,
            // EPERM, not EACCES: no change of file modes would make it allowed.
            NsError::Refused(_) => libc::EPERM,
            NsError::AccessDenied => libc::EACCES,
            NsError::Busy(_) => libc::EBUSY,
            NsError::NoSpace(_) => libc::ENOSPC,
            NsError::Stale => libc::ESTALE,
            NsError::NotSupported => libc::EOPNOTSUPP,
            NsError::TooManyLinks => libc::EMLINK,
            // The server failed, not the request: the application sees EIO, as with a disk error.
            NsError::Io(_) => libc::EIO,
        }
    }

    /// The inverse of [`NsError::errno`], for errors that crossed a process boundary as a
    /// number. Details of InvalidArgument/Busy/Io travel separately as text.
    pub fn from_errno(errno: i32, detail: &str) -> NsError {
        match errno {
            libc::ENOENT => NsError::NotFound,
            libc::EEXIST => NsError::Exists,
            libc::ENOTEMPTY => NsError::NotEmpty,
            libc::ENOTDIR => NsError::NotDirectory,
            libc::EISDIR => NsError::IsDirectory,
            libc::ENAMETOOLONG => NsError::NameTooLong,
            libc::EINVAL => NsError::InvalidArgument("rejected by the server"),
            libc::EXDEV => NsError::CrossDevice,
            libc::ENODATA => NsError::NoData,
            libc::ERANGE => NsError::Range,
            libc::E2BIG => NsError::TooBig,
            libc::EPERM => NsError::NotPermitted,
            libc::EACCES => NsError::AccessDenied,
            libc::EBUSY => NsError::Busy("subtree is decoupled by another client"),
            libc::ENOSPC => NsError::NoSpace("rejected by the server"),
            libc::ESTALE => NsError::Stale,
            libc::EOPNOTSUPP => NsError::NotSupported,
            libc::EMLINK => NsError::TooManyLinks,
            _ => NsError::Io(detail.to_string()),
        }
    }
}

pub type NsResult<T> = Result<T, NsError>;
