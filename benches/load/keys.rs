//! The key server the worker's verifiers fetch their keys from, and the
//! tokens the loads carry, signed with its keys.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context, Result};
use axum::{Router, http::header, routing::get};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header};
use pushworker::auth::dev::{SigningKey, encode_v2_permissions, now_secs};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

pub const AUDIENCE: &str = "https://pushworker.bench/pubsub/push";
pub const SERVICE_ACCOUNT: &str = "pusher@bench-project.iam.gserviceaccount.com";
pub const CLERK_ISSUER: &str = "https://clerk.pushworker.bench";
pub const AZP: &str = "https://admin.pushworker.bench";
const TRIGGER: &str = "org:jobs:trigger";
/// The key server's `max-age`: the "cache period" of the fetch target.
const KEY_MAX_AGE_SECS: u64 = 3600;

/// Serves `app` on a free loopback port from `rt`, for as long as `rt` lives.
pub fn serve(rt: &Runtime, app: Router) -> Result<SocketAddr> {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        anyhow::Ok(addr)
    })
}

/// A JWKS server for a Google-like (`/google`) and a Clerk-like (`/clerk`)
/// issuer, real RSA keys, that counts every fetch.
pub struct KeyServer {
    pub addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    pub fn start(rt: &Runtime, signers: &Signers) -> Result<Self> {
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = |key: &SigningKey| -> Result<_> {
            Ok(jwks_route(
                json!({ "keys": [key.public_jwk()?] }),
                fetches.clone(),
            ))
        };
        let app = Router::new()
            .route("/google", jwks(&signers.google)?)
            .route("/clerk", jwks(&signers.clerk)?);
        let addr = serve(rt, app)?;
        Ok(Self { addr, fetches })
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks_route(jwks: Value, fetches: Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let body = jwks.to_string();
    get(move || {
        fetches.fetch_add(1, Ordering::SeqCst);
        let body = body.clone();
        async move {
            (
                [
                    (
                        header::CACHE_CONTROL,
                        format!("public, max-age={KEY_MAX_AGE_SECS}"),
                    ),
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                ],
                body,
            )
        }
    })
}

/// The keys the tokens are signed with: the key server publishes `google`'s
/// and `clerk`'s; `stranger`'s is known to nobody.
pub struct Signers {
    google: SigningKey,
    clerk: SigningKey,
    stranger: SigningKey,
}

fn google_claims() -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "sub": "112233445566778899000",
        "email": SERVICE_ACCOUNT,
        "email_verified": true,
        "iat": now_secs() - 10,
        "exp": now_secs() + 3600,
    })
}

impl Signers {
    pub fn generate() -> Result<Self> {
        Ok(Self {
            google: SigningKey::generate("bench-google-1")?,
            clerk: SigningKey::generate("bench-clerk-1")?,
            stranger: SigningKey::generate("bench-stranger")?,
        })
    }

    /// A valid Google OIDC token, as Pub/Sub sends with a push.
    pub fn google_token(&self) -> Result<String> {
        self.google.sign(&google_claims())
    }

    /// A Clerk session token of a member allowed to trigger jobs.
    pub fn clerk_token(&self) -> Result<String> {
        let (fea, per, fpm) = encode_v2_permissions(&[TRIGGER.to_owned()]);
        let now = now_secs();
        self.clerk.sign(&json!({
            "iss": CLERK_ISSUER,
            "sub": "user_bench",
            "sid": "sess_bench",
            "azp": AZP,
            "iat": now - 1,
            "nbf": now - 5,
            "exp": now + 300,
            "v": 2,
            "fea": fea,
            "o": { "id": "org_bench", "slg": "bench", "rol": "admin", "per": per, "fpm": fpm },
        }))
    }

    /// At least `count` distinct valid Google tokens, signed on every core.
    pub fn distinct_google_tokens(&self, count: usize) -> Result<Vec<String>> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per = count.div_ceil(cores);
        let google = &self.google;
        let minted: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..cores)
                .map(|i| {
                    s.spawn(move || -> Result<Vec<String>> {
                        (0..per)
                            .map(|j| {
                                let mut claims = google_claims();
                                // Distinct claims, so distinct tokens.
                                claims["jti"] = json!(format!("bench-{i}-{j}"));
                                google.sign(&claims)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("minting panicked"))?)
                .collect::<Result<_>>()
        })?;
        Ok(minted.into_iter().flatten().collect())
    }

    /// Tokens that must be refused with 401: half signed by a key the server
    /// does not know under ever new kids (each one a reason to look for new
    /// keys, which the cooldown must bound), half a valid token with its
    /// signature altered.
    pub fn hostile_tokens(&self, count: usize) -> Result<Vec<String>> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        (0..count)
            .map(|i| {
                if i % 2 == 0 {
                    let mut header = Header::new(Algorithm::RS256);
                    header.kid = Some(format!("unknown-kid-{i}"));
                    self.stranger.sign_with_header(&header, &google_claims())
                } else {
                    let token = self.google_token()?;
                    let (signed, signature) = token.rsplit_once('.').context("a JWT")?;
                    let mut sig = b64.decode(signature)?;
                    let at = i % sig.len();
                    sig[at] ^= 0x5a;
                    Ok(format!("{signed}.{}", b64.encode(sig)))
                }
            })
            .collect()
    }
}
