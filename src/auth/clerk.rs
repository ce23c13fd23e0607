//! Clerk session tokens: what the admin page sends for a signed-in user.
//!
//! Checked in this order: RS256 with a `kid` from the instance's keys (or
//! `CLERK_JWT_KEY`); `iss` equal to the configured instance (Clerk's JS SDK
//! once skipped this and tokens of one instance passed another); `exp`, `nbf`
//! present and valid with leeway; `iat` present and not in the future; `sub`
//! and `sid` present (template tokens lack `sid` and outlive session
//! revocation); `azp` present and allowed; `sts` not `pending`.
//!
//! Organization claims come in two formats, both parsed into one
//! [`Organization`]: v1 (`org_id`, `org_slug`, `org_role`, `org_permissions`)
//! and v2 (`o: {id, slg, rol, per, fpm}` with `fea`), where `fpm` holds one
//! bitmask per org feature over the `per` list.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::Deserialize;

use super::keys::KeySource;
use super::{
    AuthError, ClerkUser, Organization, Principal, Verified, keys::KeyCache, lifetime,
    verify_signature,
};

/// The most distinct permission names a v2 token can carry: the verifier
/// reads each `fpm` bitmask as a 128-bit number.
pub const MAX_V2_PERMISSION_NAMES: usize = 128;

/// Clerk issuer settings.
#[derive(Debug, Clone)]
pub struct ClerkConfig {
    /// The instance's Frontend API URL, exactly as in `iss`.
    pub issuer: String,
    /// Allowed `azp` origins.
    pub authorized_parties: Vec<String>,
    /// Key source.
    pub keys: KeySource,
    /// The publishable key, when given (the admin page needs it).
    pub publishable_key: Option<String>,
}

/// Derives the Frontend API URL from a Clerk publishable key:
/// `pk_test_`/`pk_live_` + base64 of `"<frontend-api-host>$"`.
pub fn issuer_from_publishable_key(key: &str) -> anyhow::Result<String> {
    let encoded = key
        .strip_prefix("pk_test_")
        .or_else(|| key.strip_prefix("pk_live_"))
        .context("CLERK_PUBLISHABLE_KEY: must start with pk_test_ or pk_live_")?;
    let trimmed = encoded.trim_end_matches('=');
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .context("CLERK_PUBLISHABLE_KEY: the part after pk_…_ is not base64 text")?;
    let host = decoded
        .strip_suffix('$')
        .context("CLERK_PUBLISHABLE_KEY: decoded value does not end with `$`; copy the key again from Clerk's dashboard")?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        bail!("CLERK_PUBLISHABLE_KEY: decoded host `{host}` is not a host name");
    }
    Ok(format!("https://{host}"))
}

/// Verifies Clerk session tokens.
#[derive(Debug, Clone)]
pub struct ClerkVerifier {
    cfg: ClerkConfig,
    keys: KeyCache,
    validation: jsonwebtoken::Validation,
    leeway: u64,
}

#[derive(Deserialize)]
struct OrgV2 {
    id: Option<String>,
    slg: Option<String>,
    rol: Option<String>,
    per: Option<String>,
    fpm: Option<String>,
}

#[derive(Deserialize)]
struct ClerkClaims {
    sub: Option<String>,
    sid: Option<String>,
    azp: Option<String>,
    iat: Option<i64>,
    /// Read again (after `jsonwebtoken` validated them) only for the
    /// verified-token cache; any JSON is accepted here, so that reading them
    /// never refuses a token the validation let through.
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    sts: Option<String>,
    o: Option<OrgV2>,
    fea: Option<String>,
    org_id: Option<String>,
    org_slug: Option<String>,
    org_role: Option<String>,
    org_permissions: Option<Vec<String>>,
}

impl ClerkVerifier {
    /// A verifier over `keys` with the given settings.
    pub fn new(cfg: ClerkConfig, keys: KeyCache, leeway: std::time::Duration) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        Self {
            cfg,
            keys,
            validation,
            leeway: leeway.as_secs(),
        }
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
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
            .map_err(|e| AuthError::from_key_error(e, "clerk"))?;
        let claims: ClerkClaims = verify_signature(token, &key, &self.validation)?;
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
        let user_id = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::InvalidToken("token has no sub"))?;
        let session_id = claims
            .sid
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::InvalidToken(
                "token has no sid (not a session token)",
            ))?;
        let azp = claims.azp.ok_or(AuthError::InvalidToken(
            "token has no azp (authorized party)",
        ))?;
        if !self.cfg.authorized_parties.contains(&azp) {
            return Err(AuthError::InvalidToken(
                "token's azp is not in CLERK_AUTHORIZED_PARTIES",
            ));
        }
        if claims.sts.as_deref() == Some("pending") {
            return Err(AuthError::InvalidToken(
                "session is pending (the user has a step to finish)",
            ));
        }
        // v2 tokens (`v: 2`) carry `o`; v1 tokens carry `org_*`.
        let organization = if let Some(o) = claims.o {
            organization_v2(o, claims.fea.as_deref())
        } else {
            claims.org_id.map(|id| Organization {
                id,
                slug: claims.org_slug,
                role: claims.org_role,
                permissions: claims
                    .org_permissions
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
        };
        let principal = Principal::Clerk(ClerkUser {
            user_id,
            session_id,
            authorized_party: azp,
            organization,
        });
        Ok(Verified {
            principal,
            lifetime: lifetime(claims.exp.as_ref(), claims.nbf.as_ref(), claims.iat),
            key,
        })
    }
}

fn organization_v2(o: OrgV2, fea: Option<&str>) -> Option<Organization> {
    let id = o.id?;
    let names: Vec<&str> = o
        .per
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let masks: Vec<&str> = o
        .fpm
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    // Org-scoped features: `o:` or `uo:` entries of `fea`, prefix removed.
    let features: Vec<&str> = fea
        .unwrap_or("")
        .split(',')
        .filter_map(|f| {
            let (scope, name) = f.trim().split_once(':')?;
            scope.contains('o').then_some(name)
        })
        .collect();
    let mut permissions = BTreeSet::new();
    for (feature, mask) in features.iter().zip(masks.iter()) {
        let Ok(mask) = mask.parse::<u128>() else {
            continue;
        };
        for (bit, name) in names.iter().enumerate().take(MAX_V2_PERMISSION_NAMES) {
            if !name.is_empty() && mask & (1u128 << bit) != 0 {
                permissions.insert(format!("org:{feature}:{name}"));
            }
        }
    }
    Some(Organization {
        id,
        slug: o.slg,
        role: o.rol.map(|r| format!("org:{r}")),
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_permissions_follow_the_feature_bitmasks() {
        let org = organization_v2(
            OrgV2 {
                id: Some("org_1".into()),
                slg: Some("acme".into()),
                rol: Some("admin".into()),
                per: Some("read,manage,trigger".into()),
                fpm: Some("5,2".into()),
            },
            Some("o:jobs,u:profile,uo:billing"),
        )
        .unwrap();
        assert_eq!(org.role.as_deref(), Some("org:admin"));
        let expected: BTreeSet<String> =
            ["org:jobs:read", "org:jobs:trigger", "org:billing:manage"]
                .into_iter()
                .map(String::from)
                .collect();
        assert_eq!(org.permissions, expected);
    }

    #[test]
    fn dev_encoding_round_trips_through_the_v2_parser() {
        let wanted = vec![
            "org:jobs:trigger".to_owned(),
            "org:runs:read".to_owned(),
            "org:jobs:read".to_owned(),
        ];
        let (fea, per, fpm) = crate::auth::dev::encode_v2_permissions(&wanted);
        let org = organization_v2(
            OrgV2 {
                id: Some("org_1".into()),
                slg: None,
                rol: Some("member".into()),
                per: Some(per),
                fpm: Some(fpm),
            },
            Some(&fea),
        )
        .unwrap();
        assert_eq!(org.permissions, wanted.into_iter().collect());
    }

    #[test]
    fn publishable_key_yields_frontend_api() {
        let pk = format!(
            "pk_test_{}",
            base64::engine::general_purpose::STANDARD.encode("clerk.example.com$")
        );
        assert_eq!(
            issuer_from_publishable_key(&pk).unwrap(),
            "https://clerk.example.com"
        );
    }

    #[test]
    fn bad_publishable_keys_say_what_is_wrong() {
        for (key, expect) in [
            ("sk_test_abc", "must start with pk_test_"),
            ("pk_test_!!!", "not base64"),
            ("pk_live_Y2xlcmsuZXhhbXBsZS5jb20", "does not end with `$`"),
        ] {
            let err = issuer_from_publishable_key(key).unwrap_err().to_string();
            assert!(err.contains(expect), "{key}: {err}");
        }
    }
}
