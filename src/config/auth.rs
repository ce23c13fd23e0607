//! The issuers' settings, validated: Google's and Clerk's (each falling back
//! on the development identity in dev mode), and the key cache's.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};

use super::{ServeArgs, clean_list};
use crate::auth::{
    TriggerPolicy,
    clerk::{ClerkConfig, issuer_from_publishable_key},
    dev::DevIdentity,
    google::{GOOGLE_JWKS_DEFAULT, GoogleConfig},
    keys::{KeyCacheConfig, KeySource},
};

/// The development identity's key set as a key source URL, in dev mode.
pub(super) fn dev_jwks(dev: Option<&DevIdentity>) -> Option<String> {
    dev.map(|d| format!("file://{}", d.jwks_path().display()))
}

/// The Google issuer, if audiences and service accounts are both set (in dev
/// mode they default to the development identity's).
pub(super) fn google_config(
    args: &ServeArgs,
    dev: Option<&DevIdentity>,
) -> anyhow::Result<Option<GoogleConfig>> {
    let mut audiences = clean_list(&args.auth.google_audiences);
    let mut service_accounts = clean_list(&args.auth.google_service_accounts);
    if dev.is_some() {
        if audiences.is_empty() {
            audiences.push(DevIdentity::GOOGLE_AUDIENCE.to_owned());
        }
        if service_accounts.is_empty() {
            service_accounts.push(DevIdentity::SERVICE_ACCOUNT.to_owned());
        }
    }
    let google_jwks = args
        .auth
        .google_jwks_url
        .clone()
        .or_else(|| dev_jwks(dev))
        .unwrap_or_else(|| GOOGLE_JWKS_DEFAULT.to_owned());
    let google = match (audiences.is_empty(), service_accounts.is_empty()) {
        (true, true) => None,
        (false, false) => Some(GoogleConfig {
            audiences,
            service_accounts,
            keys: key_source("GOOGLE_JWKS_URL", &google_jwks)?,
        }),
        (true, false) => bail!(
            "GOOGLE_AUDIENCES: must be set when GOOGLE_SERVICE_ACCOUNTS is (the audience configured on the push subscription)"
        ),
        (false, true) => bail!(
            "GOOGLE_SERVICE_ACCOUNTS: must be set when GOOGLE_AUDIENCES is (the push subscription's service-account email)"
        ),
    };
    if let Some(g) = &google {
        for sa in &g.service_accounts {
            if !sa.contains('@') {
                bail!("GOOGLE_SERVICE_ACCOUNTS: `{sa}` is not an email address");
            }
        }
    }
    Ok(google)
}

/// The Clerk issuer, if one is named (or derived from the publishable key, or
/// in dev mode the development one).
pub(super) fn clerk_config(
    args: &ServeArgs,
    dev: Option<&DevIdentity>,
) -> anyhow::Result<Option<ClerkConfig>> {
    let issuer = match (&args.auth.clerk_issuer, &args.auth.clerk_publishable_key) {
        (Some(iss), _) if !iss.trim().is_empty() => Some(iss.trim().to_owned()),
        (_, Some(pk)) if !pk.trim().is_empty() => Some(issuer_from_publishable_key(pk.trim())?),
        _ => dev.map(|_| DevIdentity::CLERK_ISSUER.to_owned()),
    };
    let Some(issuer) = issuer else {
        return Ok(None);
    };
    let parsed = reqwest::Url::parse(&issuer).with_context(|| {
        format!("CLERK_ISSUER: `{issuer}` is not a URL (expected e.g. https://clerk.example.com)")
    })?;
    if parsed.scheme() != "https" && !is_loopback_url(&parsed) {
        bail!("CLERK_ISSUER: `{issuer}` must be an https URL");
    }
    if issuer.ends_with('/') {
        bail!(
            "CLERK_ISSUER: `{issuer}` must not end with `/` (it must equal the tokens' iss exactly)"
        );
    }
    let mut parties = clean_list(&args.auth.clerk_authorized_parties);
    if dev.is_some() && parties.is_empty() {
        parties = DevIdentity::authorized_parties(args.port);
    }
    if parties.is_empty() {
        bail!(
            "CLERK_AUTHORIZED_PARTIES: must list the origins of your admin page (e.g. https://admin.example.com) when a Clerk issuer is configured"
        );
    }
    let keys = if let Some(pem) = args
        .auth
        .clerk_jwt_key
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    {
        let pem = pem.replace("\\n", "\n");
        jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
            anyhow::anyhow!("CLERK_JWT_KEY: not a PEM RSA public key (copy the PEM from Clerk's dashboard, API keys → JWT public key)")
        })?;
        KeySource::Pem(pem)
    } else {
        let url = args
            .auth
            .clerk_jwks_url
            .clone()
            .or_else(|| {
                if args.auth.clerk_issuer.is_none() && args.auth.clerk_publishable_key.is_none() {
                    dev_jwks(dev)
                } else {
                    None
                }
            })
            .unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
        key_source("CLERK_JWKS_URL", &url)?
    };
    let publishable_key = args
        .auth
        .clerk_publishable_key
        .as_deref()
        .map(str::trim)
        .filter(|pk| !pk.is_empty())
        .map(|pk| issuer_from_publishable_key(pk).map(|_| pk.to_owned()))
        .transpose()?;
    Ok(Some(ClerkConfig {
        issuer,
        authorized_parties: parties,
        keys,
        publishable_key,
    }))
}

/// Who may trigger jobs by hand.
pub(super) fn trigger_policy(args: &ServeArgs) -> TriggerPolicy {
    TriggerPolicy {
        permission: args.auth.trigger_permission.trim().to_owned(),
        roles: clean_list(&args.auth.trigger_roles),
    }
}

/// The key cache's settings (shared by both issuers).
pub(super) fn key_cache(args: &ServeArgs) -> KeyCacheConfig {
    KeyCacheConfig {
        min_ttl: Duration::from_secs(args.auth.jwks_min_ttl_secs),
        max_ttl: Duration::from_secs(args.auth.jwks_max_ttl_secs),
        refresh_cooldown: Duration::from_millis(args.auth.jwks_refresh_cooldown_ms),
        max_stale: Duration::from_secs(args.auth.jwks_max_stale_secs),
        fetch_timeout: Duration::from_millis(args.auth.jwks_fetch_timeout_ms),
    }
}

fn key_source(var: &str, value: &str) -> anyhow::Result<KeySource> {
    if let Some(path) = value.strip_prefix("file://") {
        if path.is_empty() {
            bail!("{var}: `file://` needs a path, e.g. file:///etc/keys/jwks.json");
        }
        return Ok(KeySource::File(PathBuf::from(path)));
    }
    let url = reqwest::Url::parse(value)
        .with_context(|| format!("{var}: `{value}` is not a URL (use https://… or file://PATH)"))?;
    match url.scheme() {
        "https" => Ok(KeySource::Url(value.to_owned())),
        "http" if is_loopback_url(&url) => Ok(KeySource::Url(value.to_owned())),
        "http" => {
            bail!("{var}: keys must be fetched over https (plain http is allowed only on loopback)")
        }
        other => bail!("{var}: unsupported scheme `{other}` (use https://… or file://PATH)"),
    }
}

pub(super) fn is_loopback_url(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
