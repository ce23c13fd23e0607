//! Authentication: one core, [`Authenticator::authenticate`], that turns a
//! request's bearer token into a [`Principal`], and the checks on it.
//!
//! Two kinds of callers reach the same routes: Google service identities
//! (Pub/Sub push, Cloud Scheduler, Cloud Tasks) with Google-signed OIDC
//! tokens, and people signed in with Clerk. Both send `Authorization: Bearer`.
//! The core takes the token from the header ([`token::bearer_token`]), checks
//! its header and reads the unverified `iss` ([`token::inspect`]), and hands it
//! to the verifier of that issuer, which uses only that issuer's keys. Any
//! other issuer is refused. The result is a typed [`Principal`].
//!
//! Two checks narrow it, which the HTTP extractors ([`crate::http::extract`])
//! apply:
//! - [`Principal::check_trigger`]: may run jobs: an allowed Google service
//!   account, or a Clerk user with the trigger permission (or role);
//! - [`Principal::check_push`]: may deliver to the push routes: an allowed
//!   Google service account only. A push claims its message id in the run
//!   ledger, so a person posting an envelope could claim the id of a message
//!   Pub/Sub has yet to deliver; people run jobs with `POST /jobs/{name}`;
//! - [`Principal::check_view_runs`]: may read the run ledger: a Clerk user
//!   with the view permission, or one who may trigger. Service accounts may
//!   not: the ledger holds every payload, and pushing a message is no reason
//!   to read others'.
//!
//! A token the verifiers accepted is remembered in the [`token_cache`] (keyed
//! by its SHA-256), so a token sent again, as Pub/Sub does on every push,
//! skips the RSA check for as long as the verifier itself would accept it.
//!
//! Failures follow RFC 6750 (see [`AuthError`]); tokens are never logged.

pub mod clerk;
pub mod dev;
pub mod google;
pub mod keys;
pub mod settings;
pub mod token;
pub mod token_cache;

pub use crate::principal::{ClerkUser, GoogleIdentity, Organization, Principal};

use std::sync::Arc;

use jsonwebtoken::{DecodingKey, errors::ErrorKind};
use serde::de::DeserializeOwned;

use google::GOOGLE_ISSUERS;

use crate::telemetry::metrics::{Metrics, OTHER, names};

/// Who may trigger jobs by hand.
#[derive(Debug, Clone)]
pub struct TriggerPolicy {
    /// The Clerk permission that allows it.
    pub permission: String,
    /// Roles that allow it without the permission.
    pub roles: Vec<String>,
}

/// Why a request was not authenticated or not allowed. Descriptions are fixed
/// strings: nothing from the token is echoed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header: 401 with a bare `WWW-Authenticate: Bearer`.
    #[error("no bearer token")]
    MissingToken,
    /// An `Authorization` header with another scheme: 401, bare challenge.
    #[error("authorization scheme is not Bearer")]
    WrongScheme,
    /// A malformed request (two headers, non-ASCII): 400 `invalid_request`.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A token was presented and refused: 401 `invalid_token`.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// A valid caller that may not do this: 403 `insufficient_scope`.
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    /// No signing keys can be had for the token's issuer: 503, so that
    /// Pub/Sub retries rather than dead-letters.
    #[error("signing keys of the {0} issuer are unavailable")]
    KeysUnavailable(&'static str),
}

impl AuthError {
    /// A short, fixed name for the refusal: the `reason` label of
    /// `pushworker_auth_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::WrongScheme => "wrong_scheme",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(text) => match *text {
                "token has expired" => "expired",
                "bad signature" => "bad_signature",
                "unknown signing key (kid)" => "unknown_kid",
                "issuer not accepted" | "Google tokens are not accepted here" => {
                    "issuer_not_accepted"
                }
                text if text.starts_with("audience not accepted") => "audience_not_accepted",
                _ => "invalid_token",
            },
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    fn from_key_error(err: keys::KeyError, issuer: &'static str) -> Self {
        match err {
            keys::KeyError::UnknownKid => Self::InvalidToken("unknown signing key (kid)"),
            keys::KeyError::Unavailable => Self::KeysUnavailable(issuer),
        }
    }
}

impl Principal {
    /// Whether this caller may run jobs. Google identities got here only if
    /// their service account is allowed; Clerk users need the permission or
    /// one of the roles.
    pub fn check_trigger(&self, policy: &TriggerPolicy) -> Result<(), AuthError> {
        match self {
            Self::Google(_) => Ok(()),
            Self::Clerk(user) => {
                let org = user.organization.as_ref();
                let has_permission =
                    org.is_some_and(|o| o.permissions.contains(&policy.permission));
                let has_role = org
                    .and_then(|o| o.role.as_ref())
                    .is_some_and(|r| policy.roles.contains(r));
                if has_permission || has_role {
                    Ok(())
                } else {
                    Err(AuthError::InsufficientScope(trigger_denial(
                        policy,
                        org.is_some(),
                    )))
                }
            }
        }
    }
}

impl Principal {
    /// Whether this caller may use the push routes: Google identities only
    /// (they got here only if their service account is allowed).
    pub fn check_push(&self) -> Result<(), AuthError> {
        match self {
            Self::Google(_) => Ok(()),
            Self::Clerk(_) => Err(AuthError::InsufficientScope(PUSH_DENIAL.to_owned())),
        }
    }

    /// Whether this caller may control runs (cancel, re-run): a Clerk user
    /// who may trigger jobs. Each action is recorded with who did it, so it
    /// is for people, not service accounts.
    pub fn check_control_runs(&self, trigger: &TriggerPolicy) -> Result<(), AuthError> {
        match self {
            Self::Google(_) => Err(AuthError::InsufficientScope(
                "cancelling and re-running runs is for people signed in with Clerk, not service accounts"
                    .to_owned(),
            )),
            Self::Clerk(_) => self.check_trigger(trigger),
        }
    }

    /// Whether this caller may read the run ledger: a Clerk user with
    /// `view_permission`, or one who may trigger jobs.
    pub fn check_view_runs(
        &self,
        trigger: &TriggerPolicy,
        view_permission: &str,
    ) -> Result<(), AuthError> {
        match self {
            Self::Google(_) => Err(AuthError::InsufficientScope(
                "the run ledger is for people signed in with Clerk, not service accounts"
                    .to_owned(),
            )),
            Self::Clerk(user) => {
                let org = user.organization.as_ref();
                if org.is_some_and(|o| o.permissions.contains(view_permission))
                    || self.check_trigger(trigger).is_ok()
                {
                    return Ok(());
                }
                let mut text = format!(
                    "requires the permission {view_permission} or {}",
                    trigger.permission
                );
                if !trigger.roles.is_empty() {
                    text.push_str(&format!(" or the role {}", trigger.roles.join(" or ")));
                }
                if org.is_none() {
                    text.push_str(" in the active organization (no organization is active)");
                }
                Err(AuthError::InsufficientScope(text))
            }
        }
    }
}

/// Why a person is refused on the push routes, and what to use instead.
pub const PUSH_DENIAL: &str = "the push routes take Pub/Sub deliveries from allowed service accounts only; to run a job by hand, use POST /jobs/{name}";

/// The plain explanation of a refused trigger.
pub fn trigger_denial(policy: &TriggerPolicy, has_org: bool) -> String {
    let mut text = format!("requires the permission {}", policy.permission);
    if !policy.roles.is_empty() {
        text.push_str(&format!(" or the role {}", policy.roles.join(" or ")));
    }
    if !has_org {
        text.push_str(" in the active organization (no organization is active)");
    }
    text
}

/// A verifier's acceptance, with what the [`token_cache`] needs to keep it no
/// longer than the verifier would: the key that checked the signature and the
/// token's time claims.
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    pub(crate) key: Arc<DecodingKey>,
    pub(crate) lifetime: Option<token_cache::Lifetime>,
}

pub(crate) use token_cache::lifetime;

/// The authentication core: routes a token by issuer to its verifier, in
/// front of the verified-token cache.
#[derive(Debug, Clone)]
pub struct Authenticator {
    google: Option<google::GoogleVerifier>,
    clerk: Option<clerk::ClerkVerifier>,
    tokens: Option<Arc<token_cache::TokenCache>>,
    metrics: Metrics,
}

/// The `issuer` label of a refusal before any token was read.
const NO_TOKEN: &str = "none";

impl Authenticator {
    /// An authenticator over the configured verifiers (either may be absent,
    /// and then its tokens are refused), with no token cache.
    pub fn new(
        google: Option<google::GoogleVerifier>,
        clerk: Option<clerk::ClerkVerifier>,
    ) -> Self {
        Self {
            google,
            clerk,
            tokens: None,
            metrics: Metrics::disabled(),
        }
    }

    /// The same, counting refusals in `metrics`
    /// (`pushworker_auth_rejections_total{issuer, reason}`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// Counts a refusal of a token of `issuer` (`google`, `clerk`, `_other`
    /// for any other or unreadable token, `none` without one).
    fn reject(&self, issuer: &'static str, error: AuthError) -> AuthError {
        if self.metrics.is_enabled() {
            self.metrics
                .counter(
                    names::AUTH_REJECTIONS,
                    &[("issuer", issuer), ("reason", error.reason())],
                )
                .increment(1);
        }
        error
    }

    /// Applies an authorization check ([`Principal::check_trigger`] and the
    /// like) to `principal`, counting a refusal.
    pub fn authorize(
        &self,
        principal: &Principal,
        check: Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        check.map_err(|e| self.reject(principal.kind(), e))
    }

    /// The same, remembering accepted tokens in `cache` (`None`: no cache).
    pub fn with_token_cache(mut self, cache: Option<token_cache::TokenCache>) -> Self {
        self.tokens = cache.map(Arc::new);
        self
    }

    /// The verified-token cache, if enabled.
    pub fn token_cache(&self) -> Option<&token_cache::TokenCache> {
        self.tokens.as_deref()
    }

    /// The Google verifier, if configured.
    pub fn google(&self) -> Option<&google::GoogleVerifier> {
        self.google.as_ref()
    }

    /// The Clerk verifier, if configured.
    pub fn clerk(&self) -> Option<&clerk::ClerkVerifier> {
        self.clerk.as_ref()
    }

    /// Authenticates a request from its headers: from the token cache when
    /// the token is there and still acceptable, otherwise by its verifier
    /// (and then cached).
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Arc<Principal>, AuthError> {
        let token = token::bearer_token(headers).map_err(|e| self.reject(NO_TOKEN, e))?;
        let Some(cache) = &self.tokens else {
            return self
                .verify(token)
                .await
                .map(|(_, _, v)| Arc::new(v.principal))
                .map_err(|(issuer, e)| self.reject(issuer, e));
        };
        let digest = token_cache::TokenCache::digest(token);
        if let Some(principal) = cache.get(&digest, |issuer, kid, key| {
            self.key_is_current(issuer, kid, key)
        }) {
            return Ok(principal);
        }
        let (issuer, kid, verified) = self
            .verify(token)
            .await
            .map_err(|(issuer, e)| self.reject(issuer, e))?;
        Ok(cache.insert(
            digest,
            issuer,
            &kid,
            &verified.key,
            Arc::new(verified.principal),
            verified.lifetime,
        ))
    }

    /// Whether `key` still serves `kid` in `issuer`'s current key set.
    fn key_is_current(
        &self,
        issuer: token_cache::Issuer,
        kid: &str,
        key: &Arc<DecodingKey>,
    ) -> bool {
        match issuer {
            token_cache::Issuer::Google => self
                .google
                .as_ref()
                .is_some_and(|v| v.keys().is_current(kid, key)),
            token_cache::Issuer::Clerk => self
                .clerk
                .as_ref()
                .is_some_and(|v| v.keys().is_current(kid, key)),
        }
    }

    /// Checks the token's header, routes it by its unverified `iss`, and
    /// verifies it with that issuer's verifier. A refusal comes with the
    /// issuer's label (see [`Authenticator::reject`]).
    async fn verify(
        &self,
        token: &str,
    ) -> Result<(token_cache::Issuer, String, Verified), (&'static str, AuthError)> {
        let unverified = token::inspect(token).map_err(|e| (OTHER, e))?;
        let kid = unverified.kid;
        if GOOGLE_ISSUERS.contains(&unverified.iss.as_str()) {
            let google = |e| ("google", e);
            return match &self.google {
                Some(v) => {
                    let verified = v.verify_full(token, &kid).await.map_err(google)?;
                    Ok((token_cache::Issuer::Google, kid, verified))
                }
                None => Err(google(AuthError::InvalidToken(
                    "Google tokens are not accepted here",
                ))),
            };
        }
        match &self.clerk {
            Some(v) if v.issuer() == unverified.iss => {
                let verified = v.verify_full(token, &kid).await.map_err(|e| ("clerk", e))?;
                Ok((token_cache::Issuer::Clerk, kid, verified))
            }
            _ => Err((OTHER, AuthError::InvalidToken("issuer not accepted"))),
        }
    }
}

/// Verifies the signature (first), then `exp`/`nbf`/`iss`/`aud` as the
/// validation says, then deserialises the claims.
fn verify_signature<C: DeserializeOwned>(
    token: &str,
    key: &jsonwebtoken::DecodingKey,
    validation: &jsonwebtoken::Validation,
) -> Result<C, AuthError> {
    jsonwebtoken::decode::<C>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|err| {
            AuthError::InvalidToken(match err.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)",
                ErrorKind::InvalidAudience => "audience not accepted (check GOOGLE_AUDIENCES)",
                ErrorKind::InvalidIssuer => "issuer not accepted",
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "exp" => "token has no exp",
                    "nbf" => "token has no nbf",
                    "aud" => "token has no aud",
                    "sub" => "token has no sub",
                    _ => "token lacks a required claim",
                },
                ErrorKind::InvalidAlgorithm => "algorithm not allowed (only RS256)",
                ErrorKind::Json(_) => "token claims have the wrong types",
                ErrorKind::InvalidClaimFormat(_) => "token claims have the wrong types",
                _ => "token could not be verified",
            })
        })
}
