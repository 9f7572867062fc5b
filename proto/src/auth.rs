//! Authentication and session headers shared by client and server.

/// Carries `Bearer <token>`: the shared secret from the token file given to both sides.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Carries the session id returned by OpenSession.
pub const SESSION_HEADER: &str = "cudele-session";

/// Read a token file: the secret is its content with surrounding whitespace removed. A file
/// that group or others may access is refused (`crate::transport::refuse_shared_secret_file`).
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

/// Compare a presented `authorization` value with the expected token without an early exit
/// on the first differing byte.
pub fn token_matches(presented: Option<&str>, expected: &str) -> bool {
    let Some(presented) = presented.and_then(|value| value.strip_prefix("Bearer ")) else {
        return false;
    };
    if presented.len() != expected.len() {
        return false;
    }
    presented.bytes().zip(expected.bytes()).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}
