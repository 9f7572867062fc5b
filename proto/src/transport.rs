//! The one place gRPC connections are built: [`endpoint`] for every client (mount, CLI,
//! replica → MDS, MDS → replica, client → replica), [`ServerTls`] for both servers (the MDS
//! and a replica instance), and the permission check of secret files.
//!
//! With a CA ([`ClientTls`]) a client dials `https://` and verifies the server's certificate
//! against that CA only (no system roots), for the host of the address — a DNS name or an IP
//! address, which must appear among the certificate's subject alternative names. Without one
//! it dials plaintext `http://`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a connection attempt (TCP and, with TLS, the handshake) may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why a connection could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("reading {what} {path}: {cause}")]
    File { what: &'static str, path: String, cause: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// What a client needs to dial TLS: the CA that issued the servers' certificates.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    /// Where the CA came from (for messages and for processes we hand it to).
    pub ca_path: PathBuf,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ClientTls").field("ca_path", &self.ca_path).finish()
    }
}

impl ClientTls {
    /// Load the CA certificate(s) from a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, TransportError> {
        let pem = read_pem(path, "TLS CA file")?;
        if !pem.windows(b"-----BEGIN CERTIFICATE-----".len()).any(|window| window == b"-----BEGIN CERTIFICATE-----") {
            return Err(TransportError::Tls(format!("{} holds no PEM certificate", path.display())));
        }
        Ok(ClientTls { ca: Certificate::from_pem(pem), ca_path: path.to_path_buf() })
    }

    /// [`ClientTls::from_ca_file`] when a path is given.
    pub fn from_optional_file(path: Option<&Path>) -> Result<Option<ClientTls>, TransportError> {
        path.map(ClientTls::from_ca_file).transpose()
    }
}

/// What a server needs to serve TLS: its certificate chain and private key.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServerTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

impl ServerTls {
    /// Load a PEM certificate chain and its PEM private key. A key file readable by group or
    /// others is refused, as ssh refuses such private keys.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<ServerTls, TransportError> {
        let cert = read_pem(cert_path, "TLS certificate file")?;
        refuse_shared_secret_file(key_path, "TLS key file").map_err(|cause| TransportError::File {
            what: "TLS key file",
            path: key_path.display().to_string(),
            cause,
        })?;
        let key = read_pem(key_path, "TLS key file")?;
        Ok(ServerTls {
            identity: Identity::from_pem(cert, key),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        })
    }

    /// `--tls-cert` and `--tls-key` together, or neither.
    pub fn from_optional_files(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, TransportError> {
        match (cert, key) {
            (Some(cert), Some(key)) => ServerTls::from_files(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err(TransportError::Tls("--tls-cert and --tls-key go together".to_string())),
        }
    }

    /// The tonic server configuration (a bad certificate or key shows when it is applied:
    /// `Server::builder().tls_config(...)`).
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone())
    }
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TransportError> {
    let file_error = |cause| TransportError::File { what, path: path.display().to_string(), cause };
    let length = std::fs::metadata(path).map_err(file_error)?.len();
    if length > PEM_FILE_BYTES_MAX {
        return Err(TransportError::Tls(format!(
            "{what} {} is {length} bytes, more than {PEM_FILE_BYTES_MAX}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(file_error)
}

/// `host:port`, `http://host:port` or `https://host:port` split into the scheme given (if
/// any) and `host:port`.
fn split_scheme(address: &str) -> (Option<&str>, &str) {
    match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, address),
    }
}

/// The URI a client dials: `https://` with TLS, `http://` without.
pub fn endpoint_uri(address: &str, tls: bool) -> String {
    let (_, host_port) = split_scheme(address);
    format!("{}://{host_port}", if tls { "https" } else { "http" })
}

/// An endpoint for `address` (`host:port`, or with an `http://`/`https://` scheme), with the
/// default connect timeout and TCP_NODELAY; with `tls`, dialled over TLS verified against its
/// CA for the address's host. Callers add keep-alives or a different timeout on top.
pub fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TransportError> {
    let invalid = |reason: String| TransportError::Address { address: address.to_string(), reason };
    match (split_scheme(address).0, tls) {
        (None | Some("http"), _) | (Some("https"), Some(_)) => {}
        (Some("https"), None) => {
            return Err(invalid("an https:// address needs a CA (--tls-ca / tls_ca=)".to_string()))
        }
        (Some(other), _) => return Err(invalid(format!("unknown scheme {other}://"))),
    }
    let endpoint = Endpoint::from_shared(endpoint_uri(address, tls.is_some()))
        .map_err(|error| invalid(error.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let Some(tls) = tls else { return Ok(endpoint) };
    let host = endpoint.uri().host().ok_or_else(|| invalid("no host".to_string()))?;
    // The certificate is checked for this name: a DNS name or an IP address SAN.
    let host = host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host).to_string();
    let config = ClientTlsConfig::new().ca_certificate(tls.ca.clone()).domain_name(host).timeout(CONNECT_TIMEOUT);
    endpoint.tls_config(config).map_err(|error| TransportError::Tls(format!("{address}: {error}")))
}

/// Refuse a secret file (token, private key) that group or others may read, write or
/// search, naming the file and its mode, as ssh does for private keys.
pub fn refuse_shared_secret_file(path: &Path, what: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "permissions {mode:04o} for {what} {} are too open: it must not be accessible by group or others \
                 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn uris() {
        assert_eq!(endpoint_uri("127.0.0.1:7070", false), "http://127.0.0.1:7070");
        assert_eq!(endpoint_uri("http://mds:7070", true), "https://mds:7070");
        assert_eq!(endpoint_uri("https://mds:7070", false), "http://mds:7070");
        assert!(endpoint("https://mds:7070", None).is_err());
        assert!(endpoint("ftp://mds:7070", None).is_err());
        assert!(endpoint("mds:7070", None).is_ok());
    }

    /// A secret file with any group or other permission bit is refused, naming the mode.
    #[test]
    fn shared_secret_files_are_refused() {
        let directory = std::env::temp_dir().join(format!("cudele-proto-secret-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("dir");
        let path = directory.join("token");
        std::fs::write(&path, "secret").expect("write");
        for (mode, refused) in [(0o600, false), (0o400, false), (0o644, true), (0o640, true), (0o602, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let result = refuse_shared_secret_file(&path, "token file");
            assert_eq!(result.is_err(), refused, "mode {mode:o}");
            if let Err(error) = result {
                assert!(error.to_string().contains(&format!("{mode:04o}")), "{error}");
                assert!(error.to_string().contains(&path.display().to_string()), "{error}");
            }
        }
        let _ = std::fs::remove_dir_all(&directory);
    }
}
