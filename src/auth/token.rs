//! Getting the bearer token out of a request, and the checks that happen
//! before any signature is verified: exactly one `Authorization: Bearer`
//! header, a size cap, three base64url parts, an RS256 header with a `kid` and
//! no key references (`jku`, `x5u`, `jwk`, `x5c`) or critical extensions, and
//! the unverified `iss` that routes the token to its issuer's verifier.
//!
//! Nothing read here is trusted: `iss` only picks which verifier (and which
//! issuer's keys) will check the signature, and that verifier pins `iss` again.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header::AUTHORIZATION};
use base64::Engine as _;

use super::AuthError;

/// Seconds since the Unix epoch: the clock the time claims are read against.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Largest accepted token, in bytes. Google ID tokens are about 1 KB and Clerk
/// session tokens must fit a 4 KB cookie.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The bearer token of a request. Anything but exactly one `Authorization`
/// header with the `Bearer` scheme (case-insensitive) is refused here.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::MissingToken);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(AuthError::InvalidToken("token is too large"));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidRequest("Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::WrongScheme);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::InvalidToken("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidToken("token is too large"));
    }
    Ok(token)
}

/// What is read from a token before its signature is checked.
#[derive(Debug)]
pub struct Unverified {
    /// The header's key id.
    pub kid: String,
    /// The payload's issuer (unverified: used only for routing).
    pub iss: String,
}

fn b64url(part: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::InvalidToken("token is not a JWT (bad base64url)"))
}

/// Checks the header and reads `kid` and the unverified `iss`.
pub fn inspect(token: &str) -> Result<Unverified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::InvalidToken(
            "token is not a JWT (expected three parts)",
        ));
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(AuthError::InvalidToken("token is not a JWT (empty part)"));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b64url(header)?)
            .map_err(|_| AuthError::InvalidToken("token header is not a JSON object"))?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("RS256") => {}
        _ => {
            return Err(AuthError::InvalidToken(
                "algorithm not allowed (only RS256)",
            ));
        }
    }
    if ["jku", "x5u", "jwk", "x5c"]
        .iter()
        .any(|k| header.contains_key(*k))
    {
        return Err(AuthError::InvalidToken(
            "token header carries a key or key URL (jku/x5u/jwk/x5c), which is never trusted",
        ));
    }
    if header.contains_key("crit") {
        return Err(AuthError::InvalidToken(
            "token header has unsupported critical extensions",
        ));
    }
    let kid = match header.get("kid").and_then(|k| k.as_str()) {
        Some(kid) if !kid.is_empty() && kid.len() <= 256 => kid.to_owned(),
        _ => return Err(AuthError::InvalidToken("token header has no kid")),
    };
    // A map, not a struct with an `iss` field: serde would read a struct from
    // a JSON array too, and take `["https://accounts.google.com"]` as an issuer.
    let mut claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b64url(payload)?)
            .map_err(|_| AuthError::InvalidToken("token payload is not a JSON object"))?;
    let iss = match claims.remove("iss") {
        Some(serde_json::Value::String(iss)) if !iss.is_empty() => iss,
        _ => return Err(AuthError::InvalidToken("token has no issuer")),
    };
    b64url(signature)?;
    Ok(Unverified { kid, iss })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.AA", b64(header), b64(payload))
    }

    #[test]
    fn reads_kid_and_iss() {
        let got = inspect(&token(
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"{"iss":"https://accounts.google.com"}"#,
        ))
        .unwrap();
        assert_eq!(
            (got.kid.as_str(), got.iss.as_str()),
            ("k1", "https://accounts.google.com")
        );
    }

    /// Regression (found by the property tests): a JSON array payload was
    /// read as the struct it deserialised into, its first element as `iss`.
    #[test]
    fn an_array_payload_is_not_claims() {
        let err = inspect(&token(
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"["https://accounts.google.com"]"#,
        ))
        .unwrap_err();
        assert_eq!(
            err,
            AuthError::InvalidToken("token payload is not a JSON object")
        );
    }
}
