//! The gRPC plumbing of the MDS client: the channel, the interceptor that adds the token
//! and session headers to every request, and the classification of a failed call into a
//! domain error, a lost session, or a transport failure worth retrying.

use crate::error::ClientError;
use crate::sync::Arc;
use cudele_namespace::NsError;
use cudele_proto::auth::{SessionSlot, AUTHORIZATION_HEADER, SESSION_HEADER};
use cudele_proto::pb::mds_client::MdsClient;
use cudele_proto::status::ERRNO_METADATA_KEY;
use cudele_proto::transport::ClientTls;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long establishing a connection (TCP and, with TLS, the handshake) to the MDS may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// HTTP/2 pings detect a dead MDS on an idle connection (the push channel is idle most of
/// the time) within interval + timeout.
pub const KEEPALIVE_INTERVAL_MS: u64 = 2_000;
pub const KEEPALIVE_TIMEOUT_MS: u64 = 3_000;

/// A client of the MDS carrying the token and the current session on every request.
pub type MdsConnection = MdsClient<InterceptedService<Channel, Headers>>;

/// Adds `authorization: Bearer <token>` and `cudele-session: <credential>` (when a session
/// is open).
#[derive(Clone)]
pub struct Headers {
    authorization: Option<AsciiMetadataValue>,
    /// Empty until OpenSession; shared so a reopened session applies to every clone.
    session: Arc<SessionSlot>,
    /// Ask for early replies (we keep unsafe records and replay them; see `unsafe_log`).
    early_reply: bool,
}

impl Headers {
    pub fn new(token: Option<&str>, session: Arc<SessionSlot>) -> Result<Headers, ClientError> {
        let authorization = match token {
            Some(token) => {
                Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| ClientError::MountOption {
                    option: "token".to_string(),
                    reason: "the token must be printable ASCII".to_string(),
                })?)
            }
            None => None,
        };
        Ok(Headers { authorization, session, early_reply: false })
    }

    /// Ask the MDS for early replies to creates.
    pub fn with_early_reply(mut self, early_reply: bool) -> Self {
        self.early_reply = early_reply;
        self
    }
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, authorization.clone());
        }
        if let Some(credential) = self.session.header() {
            request.metadata_mut().insert(SESSION_HEADER, credential);
        }
        if self.early_reply {
            request.metadata_mut().insert(cudele_proto::early::EARLY_REPLY_HEADER, AsciiMetadataValue::from(1u64));
        }
        Ok(request)
    }
}

/// A client over `channel` that sends `headers` and accepts our largest messages.
pub fn connection(channel: Channel, headers: &Headers) -> MdsConnection {
    MdsClient::with_interceptor(channel, headers.clone())
        .max_decoding_message_size(cudele_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(cudele_proto::MESSAGE_BYTES_MAX)
}

/// A channel that connects on first use and reconnects by itself after the MDS restarts;
/// over TLS verified against `tls`'s CA when given (`cudele_proto::transport::endpoint`).
/// Must be called inside the runtime (tonic spawns the channel's worker there).
pub fn lazy_channel(address: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let endpoint = endpoint(address, tls)?
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// Like [`lazy_channel`], without HTTP/2 pings: for a connection only driven while a call
/// waits on it (`thread_runtime`), where a ping left unanswered between calls would look
/// like a dead MDS. A dead MDS shows there as a failed or timed-out call instead.
pub fn lazy_channel_without_pings(address: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    Ok(endpoint(address, tls)?.connect_lazy())
}

fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    Ok(cudele_proto::transport::endpoint(address, tls)
        .map_err(|error| ClientError::InvalidAddress { address: address.to_string(), reason: error.to_string() })?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS)))
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The MDS answered with an error the namespace chose: return it to the application.
    Domain(NsError),
    /// The MDS does not know our session (expired, or a restart forgot it), or the token
    /// was refused: open a new session and try again.
    SessionLost(String),
    /// The MDS could not be reached or the call broke off: retry with backoff.
    Transport(String),
}

/// The one classification of a failed call (errno mapping itself is in cudele-proto).
pub fn classify(status: &Status) -> Failure {
    if status.metadata().get(ERRNO_METADATA_KEY).is_some() {
        return Failure::Domain(cudele_proto::error_from_status(status));
    }
    match status.code() {
        Code::Unauthenticated => Failure::SessionLost(status.message().to_string()),
        // No errno: the MDS never produced an answer (connection refused or reset, server
        // gone mid-call, our own timeout). The request may or may not have been applied.
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
            Failure::Transport(format!("{:?}: {}", status.code(), status.message()))
        }
        // The server failed without an errno (a bug or a version mismatch): an I/O error.
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => Failure::Domain(cudele_proto::error_from_status(status)),
    }
}

/// Jittered exponential backoff: `current` doubles up to `max`; the wait is 50–100 % of it.
pub fn next_backoff(current: Duration, max: Duration) -> (Duration, Duration) {
    let jitter = rand::random_range(0.5..=1.0);
    let wait = current.mul_f64(jitter);
    (wait, (current * 2).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_proto::status_from_error;

    /// Domain errors keep their errno; missing-errno transport codes are retryable.
    #[test]
    fn classification() {
        assert_eq!(classify(&status_from_error(NsError::NotFound)), Failure::Domain(NsError::NotFound));
        // Busy travels as UNAVAILABLE *with* an errno: a domain error, not a retry.
        assert_eq!(
            classify(&status_from_error(NsError::Busy("x"))).clone(),
            Failure::Domain(NsError::from_errno(libc::EBUSY, ""))
        );
        assert!(matches!(classify(&Status::unavailable("tcp connect error")), Failure::Transport(_)));
        assert!(matches!(classify(&Status::unauthenticated("session 3 is not live")), Failure::SessionLost(_)));
        assert!(matches!(classify(&Status::internal("boom")), Failure::Domain(NsError::Io(_))));
    }

    #[test]
    fn backoff_is_bounded() {
        let max = Duration::from_millis(800);
        let mut current = Duration::from_millis(100);
        for _ in 0..10 {
            let (wait, next) = next_backoff(current, max);
            assert!(wait <= current && wait >= current / 2);
            current = next;
        }
        assert_eq!(current, max);
    }
}
