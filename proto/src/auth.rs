//! Authentication shared by client and server: the header names, token files, session
//! credentials and the roles a token grants (docs/SECURITY.md).
//!
//! - A **token** (`authorization: Bearer <token>`) admits a node: the client token admits a
//!   mount, the admin token an operator, the replica token (made by the MDS at start and
//!   handed to the replica processes it launches) a cache replica.
//! - A **session credential** (`cudele-session: <id>.<secret>`) proves which session a call
//!   belongs to. OpenSession makes the secret (128 random bits); the MDS keeps only its
//!   SHA-256 ([`credential_verifier`]), journaled, so a session can be resumed after a
//!   restart by the mount that holds the secret and by nobody else.

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use tonic::metadata::AsciiMetadataValue;

/// Carries `Bearer <token>`: the shared secret from the token file given to both sides.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Carries the session credential returned by OpenSession (`<id>.<secret hex>`).
pub const SESSION_HEADER: &str = "cudele-session";
/// Random bytes in a session secret (128 bits).
pub const SESSION_SECRET_BYTES: usize = 16;
/// Bytes of a verifier (SHA-256 of the secret).
pub const VERIFIER_BYTES: usize = 32;

/// What a presented token admits. Ordered by power: an admin may do what a client may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A mount or CLI with the client token.
    Client,
    /// A cache replica launched by the MDS (the replica token) or by an operator.
    Replica,
    /// An operator with the admin token (or any caller of an MDS started `--insecure`).
    Admin,
}

/// The tokens an MDS accepts and the role each grants.
#[derive(Clone, Default)]
pub struct Tokens {
    /// None: `--insecure`, every caller is admitted as admin.
    pub client: Option<String>,
    pub admin: Option<String>,
    pub replica: Option<String>,
}

impl Tokens {
    /// The role the `authorization` value presented admits, or None (refuse the call).
    pub fn role_of(&self, presented: Option<&str>) -> Option<Role> {
        let Some(client) = &self.client else { return Some(Role::Admin) };
        if self.admin.as_deref().is_some_and(|admin| token_matches(presented, admin)) {
            return Some(Role::Admin);
        }
        if self.replica.as_deref().is_some_and(|replica| token_matches(presented, replica)) {
            return Some(Role::Replica);
        }
        token_matches(presented, client).then_some(Role::Client)
    }
}

/// Read a token file: the secret is its content with surrounding whitespace removed. A file
/// that group or others may read is refused, as ssh refuses such a key.
pub fn read_token_file(path: &std::path::Path) -> std::io::Result<String> {
    crate::transport::refuse_shared_secret_file(path, "token file")?;
    let token = std::fs::read_to_string(path)?.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("token file {} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// Refuse a secret file that group or others may read or write.
pub fn check_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {:04o}: a secret must not be accessible by group or others (chmod 600 it)",
                path.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Compare a presented `authorization` value with the expected token without an early exit
/// on the first differing byte.
pub fn token_matches(presented: Option<&str>, expected: &str) -> bool {
    let Some(presented) = presented.and_then(|value| value.strip_prefix("Bearer ")) else {
        return false;
    };
    constant_time_equal(presented.as_bytes(), expected.as_bytes())
}

fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// A session credential as presented: the id and the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub session: u64,
    pub secret: [u8; SESSION_SECRET_BYTES],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: credentials end up in logs through Debug.
        write!(formatter, "Credential {{ session: {}, secret: <hidden> }}", self.session)
    }
}

/// Why a `cudele-session` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// Not `<decimal id>.<32 hex digits>` (e.g. a bare session id).
    Malformed,
}

impl Credential {
    /// A fresh credential for `session` with a secret from the OS's random source.
    pub fn generate(session: u64) -> Credential {
        let mut secret = [0u8; SESSION_SECRET_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        Credential { session, secret }
    }

    /// The header value: `<id>.<secret hex>`.
    pub fn encode(&self) -> String {
        let mut text = format!("{}.", self.session);
        for byte in self.secret {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    pub fn parse(text: &str) -> Result<Credential, CredentialError> {
        let (id, secret_hex) = text.split_once('.').ok_or(CredentialError::Malformed)?;
        let session: u64 = id.parse().map_err(|_| CredentialError::Malformed)?;
        if session == 0 || secret_hex.len() != SESSION_SECRET_BYTES * 2 {
            return Err(CredentialError::Malformed);
        }
        let mut secret = [0u8; SESSION_SECRET_BYTES];
        for (index, byte) in secret.iter_mut().enumerate() {
            let pair = secret_hex.get(index * 2..index * 2 + 2).ok_or(CredentialError::Malformed)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| CredentialError::Malformed)?;
        }
        Ok(Credential { session, secret })
    }

    /// What the MDS keeps (and journals) instead of the secret.
    pub fn verifier(&self) -> [u8; VERIFIER_BYTES] {
        credential_verifier(self.session, &self.secret)
    }

    /// Whether this credential matches a stored verifier (constant time).
    pub fn verifies(&self, verifier: &[u8; VERIFIER_BYTES]) -> bool {
        constant_time_equal(&self.verifier(), verifier)
    }
}

/// SHA-256 over a domain tag, the session id and the secret. The id is bound in so that a
/// verifier cannot be replayed for another session.
pub fn credential_verifier(session: u64, secret: &[u8; SESSION_SECRET_BYTES]) -> [u8; VERIFIER_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(b"cudele-session-verifier-v1");
    hasher.update(session.to_le_bytes());
    hasher.update(secret);
    hasher.finalize().into()
}

/// The session a client's calls carry, shared by every clone of its interceptor: the id
/// (0: none yet) and the header value. Set on OpenSession; cleared when the session is lost.
#[derive(Default)]
pub struct SessionSlot {
    id: AtomicU64,
    header: RwLock<Option<AsciiMetadataValue>>,
}

impl SessionSlot {
    /// Hold `credential` (the OpenSession reply's). A credential that is not a header value
    /// is refused (a conforming MDS never sends one).
    pub fn set(&self, credential: &str) -> Result<u64, CredentialError> {
        let parsed = Credential::parse(credential)?;
        let value = AsciiMetadataValue::try_from(credential).map_err(|_| CredentialError::Malformed)?;
        *self.header.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
        self.id.store(parsed.session, Ordering::Release);
        Ok(parsed.session)
    }

    pub fn clear(&self) {
        self.id.store(0, Ordering::Release);
        *self.header.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// The session id (0: none).
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// The `cudele-session` header value, if a session is held.
    pub fn header(&self) -> Option<AsciiMetadataValue> {
        self.header.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_round_trips_and_only_its_own_secret_verifies() {
        let credential = Credential::generate(7);
        let text = credential.encode();
        assert_eq!(text.len(), 2 + 32);
        let parsed = Credential::parse(&text).expect("parses");
        assert_eq!(parsed, credential);
        assert!(parsed.verifies(&credential.verifier()));
        let mut other = credential.clone();
        other.secret[0] ^= 1;
        assert!(!other.verifies(&credential.verifier()));
        let moved = Credential { session: 8, secret: credential.secret };
        assert!(!moved.verifies(&credential.verifier()), "the id is bound into the verifier");
        assert!(!format!("{credential:?}").contains(&text[2..]), "Debug hides the secret");
    }

    #[test]
    fn malformed_credentials_are_refused() {
        for text in [
            "7",
            "7.",
            "0.00112233445566778899aabbccddeeff",
            "x.00112233445566778899aabbccddeeff",
            "7.0011",
            "7.zz112233445566778899aabbccddeeff",
            "7.00112233445566778899aabbccddeeff00",
        ] {
            assert_eq!(Credential::parse(text), Err(CredentialError::Malformed), "{text}");
        }
    }

    #[test]
    fn tokens_grant_roles_and_insecure_admits_everyone_as_admin() {
        let tokens = Tokens { client: Some("c".into()), admin: Some("a".into()), replica: Some("r".into()) };
        assert_eq!(tokens.role_of(Some("Bearer c")), Some(Role::Client));
        assert_eq!(tokens.role_of(Some("Bearer a")), Some(Role::Admin));
        assert_eq!(tokens.role_of(Some("Bearer r")), Some(Role::Replica));
        assert_eq!(tokens.role_of(Some("Bearer x")), None);
        assert_eq!(tokens.role_of(None), None);
        assert_eq!(Tokens::default().role_of(None), Some(Role::Admin));
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("token");
        std::fs::write(&path, "secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = read_token_file(&path).expect_err("0644 refused");
        assert!(error.to_string().contains("0644"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&path).expect("0600 accepted"), "secret");
    }
}
