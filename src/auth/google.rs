//! Google OIDC tokens: what Pub/Sub push, Cloud Scheduler and Cloud Tasks send.
//!
//! Checked in this order (signature first, claims only once it holds):
//! RS256 with a `kid` from Google's key set; `iss` one of Google's two
//! spellings; `exp` present and not past (with leeway); `nbf` if present; `aud`
//! one of `GOOGLE_AUDIENCES`; `iat` present and not in the future; `email`
//! present with `email_verified: true` (the JSON boolean Google issues; the
//! string `"true"` is refused); `email` exactly one of
//! `GOOGLE_SERVICE_ACCOUNTS` (otherwise 403: Google vouches for the caller, but
//! it is not one we let in).

use serde::Deserialize;

use super::{
    AuthError, GoogleIdentity, Principal, Verified,
    keys::{KeyCache, KeySource},
    lifetime, verify_signature,
};

/// The default JWKS of Google's OIDC tokens.
pub const GOOGLE_JWKS_DEFAULT: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The issuers Google puts in its ID tokens (both spellings are in use).
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// Google issuer settings.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed service-account emails.
    pub service_accounts: Vec<String>,
    /// Key source.
    pub keys: KeySource,
}

/// Verifies Google ID tokens.
#[derive(Debug, Clone)]
pub struct GoogleVerifier {
    cfg: GoogleConfig,
    keys: KeyCache,
    validation: jsonwebtoken::Validation,
    leeway: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct GoogleClaims {
    aud: Audience,
    sub: Option<String>,
    email: Option<String>,
    /// A JSON boolean in Google's ID tokens; read as any JSON so that a
    /// string `"true"` is refused as unverified, not as a malformed token.
    email_verified: Option<serde_json::Value>,
    iat: Option<i64>,
    /// Read again (after `jsonwebtoken` validated them) only for the
    /// verified-token cache; any JSON is accepted here, so that reading them
    /// never refuses a token the validation let through.
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
}

impl GoogleVerifier {
    /// A verifier over `keys` with the given settings.
    pub fn new(cfg: GoogleConfig, keys: KeyCache, leeway: std::time::Duration) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&GOOGLE_ISSUERS);
        validation.set_audience(&cfg.audiences);
        Self {
            cfg,
            keys,
            validation,
            leeway: leeway.as_secs(),
        }
    }

    /// The key cache.
    pub fn keys(&self) -> &KeyCache {
        &self.keys
    }

    /// Verifies `token` (whose unverified header named `kid`).
    pub async fn verify(&self, token: &str, kid: &str) -> Result<Principal, AuthError> {
        self.verify_full(token, kid).await.map(|v| v.principal)
    }

    /// Verifies `token`, answering also the key and the time claims that the
    /// verified-token cache needs.
    pub(crate) async fn verify_full(&self, token: &str, kid: &str) -> Result<Verified, AuthError> {
        let key = self
            .keys
            .key(kid)
            .await
            .map_err(|e| AuthError::from_key_error(e, "google"))?;
        let claims: GoogleClaims = verify_signature(token, &key, &self.validation)?;
        let now = super::token::now_secs();
        match claims.iat {
            None => return Err(AuthError::InvalidToken("token has no iat")),
            Some(iat) if iat > now + self.leeway as i64 => {
                return Err(AuthError::InvalidToken(
                    "token was issued in the future (iat)",
                ));
            }
            Some(_) => {}
        }
        let Some(email) = claims.email else {
            return Err(AuthError::InvalidToken(
                "token has no email (mint it for a service account)",
            ));
        };
        if claims.email_verified != Some(serde_json::Value::Bool(true)) {
            return Err(AuthError::InvalidToken(
                "token's email is not verified (email_verified must be the boolean true)",
            ));
        }
        if !self.cfg.service_accounts.contains(&email) {
            return Err(AuthError::InsufficientScope(
                "service account is not in GOOGLE_SERVICE_ACCOUNTS".into(),
            ));
        }
        let audience = match claims.aud {
            Audience::One(a) => a,
            Audience::Many(list) => list
                .into_iter()
                .find(|a| self.cfg.audiences.contains(a))
                .unwrap_or_default(),
        };
        let principal = Principal::Google(GoogleIdentity {
            email,
            subject: claims.sub.unwrap_or_default(),
            audience,
        });
        Ok(Verified {
            principal,
            lifetime: lifetime(claims.exp.as_ref(), claims.nbf.as_ref(), claims.iat),
            key,
        })
    }
}
