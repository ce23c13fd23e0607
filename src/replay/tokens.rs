//! The bearer token of each delivery: the development identity's on
//! loopback, a real Google ID token elsewhere.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::auth::dev::DevIdentity;

use super::ReplayArgs;

/// Where bearer tokens come from.
pub(super) enum TokenSource {
    Dev {
        identity: DevIdentity,
        email: String,
        audience: String,
        cached: Mutex<Option<(String, Instant)>>,
    },
    Google(google_cloud_auth::credentials::idtoken::IDTokenCredentials),
}

impl TokenSource {
    pub(super) fn for_target(args: &ReplayArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.target)
            .with_context(|| format!("--target: `{}` is not a URL", args.target))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if loopback {
            let identity = DevIdentity::load_or_create(&args.dev_dir).with_context(|| {
                format!(
                    "DEV_DIR: cannot use the development key in `{}`",
                    args.dev_dir.display()
                )
            })?;
            Ok(Self::Dev {
                identity,
                email: args.service_account.clone(),
                audience: args
                    .audience
                    .clone()
                    .unwrap_or_else(|| DevIdentity::GOOGLE_AUDIENCE.to_owned()),
                cached: Mutex::new(None),
            })
        } else {
            let audience = args
                .audience
                .clone()
                .unwrap_or_else(|| args.target.trim_end_matches('/').to_owned());
            let creds = google_cloud_auth::credentials::idtoken::Builder::new(audience)
                .with_include_email()
                .build()
                .context("cannot get Google credentials for an ID token (run `gcloud auth application-default login`, or impersonate a service account)")?;
            Ok(Self::Google(creds))
        }
    }

    pub(super) async fn token(&self) -> anyhow::Result<String> {
        match self {
            Self::Dev {
                identity,
                email,
                audience,
                cached,
            } => {
                if let Ok(guard) = cached.lock()
                    && let Some((token, minted)) = guard.as_ref()
                    && minted.elapsed() < Duration::from_secs(1800)
                {
                    return Ok(token.clone());
                }
                let token = identity.google_token(email, audience, 3600)?;
                if let Ok(mut guard) = cached.lock() {
                    *guard = Some((token.clone(), Instant::now()));
                }
                Ok(token)
            }
            Self::Google(creds) => creds.id_token().await.context("minting a Google ID token"),
        }
    }
}
