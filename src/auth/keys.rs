//! A signing-key cache per issuer, written on `jsonwebtoken` (google-cloud-auth's
//! verifier keeps keys a fixed hour, refetches on every unknown `kid` and fails
//! under concurrency; see docs/platform-notes.md, "Crates").
//!
//! What it promises:
//! - **No lock on a hit.** The current key set sits behind an [`ArcSwapOption`];
//!   a lookup is an atomic load and a hash-map probe.
//! - **TTL from `Cache-Control: max-age`**, clamped to `[min_ttl, max_ttl]`.
//!   Past the TTL the old keys keep serving while one background refresh runs.
//! - **One fetch in flight**, and every fetch that is not the start-up
//!   prefetch waits out `refresh_cooldown` since the previous attempt: a flood
//!   of unknown `kid`s, or a key server that is down, costs at most one fetch
//!   per cooldown.
//! - **Stale keys serve for a bounded time** (`max_stale` past the TTL) while
//!   refreshes fail; after that the issuer is unavailable and callers answer
//!   503 so Pub/Sub retries instead of dead-lettering.
//! - **Fetches are bounded**: a timeout and a body-size cap.
//! - **A key keeps its identity across refreshes.** A refresh that serves a
//!   `kid` with the same material (`n`, `e`) reuses the previous
//!   `Arc<DecodingKey>`, so "is this still the key for that kid?" is a
//!   pointer comparison ([`KeyCache::is_current`]): the verified-token cache
//!   keeps its entries across a routine refresh and drops them as soon as
//!   their key is gone or replaced.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use arc_swap::ArcSwapOption;
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

use crate::telemetry::metrics::{Metrics, names};

/// Where an issuer's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document over HTTP(S).
    Url(String),
    /// A JWKS document on disk (`file://PATH`).
    File(PathBuf),
    /// One PEM public key (`CLERK_JWT_KEY`): no network, any `kid`.
    Pem(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "{u}"),
            Self::File(p) => write!(f, "file://{}", p.display()),
            Self::Pem(_) => write!(f, "<PEM key set>"),
        }
    }
}

/// Settings of the key cache, shared by both issuers.
#[derive(Debug, Clone)]
pub struct KeyCacheConfig {
    /// Lower clamp of the `Cache-Control: max-age` TTL.
    pub min_ttl: Duration,
    /// Upper clamp of the TTL.
    pub max_ttl: Duration,
    /// Least time between fetches not due to expiry.
    pub refresh_cooldown: Duration,
    /// How long stale keys serve while refreshes fail.
    pub max_stale: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Why no key could be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The issuer's keys are known, but none has this `kid` (even after a
    /// refresh, or the refresh is cooling down).
    UnknownKid,
    /// No usable keys at all: never fetched, or stale past the bound.
    Unavailable,
}

/// One verification key and the material it was built from (the JWK's `n`
/// and `e`, or the PEM), which decides whether a refresh may keep its `Arc`.
struct Key {
    decoding: Arc<DecodingKey>,
    material: String,
}

/// One fetched key set.
struct KeySet {
    by_kid: HashMap<String, Key>,
    /// A single key that serves every kid (`CLERK_JWT_KEY`).
    any_kid: Option<Key>,
    fresh_until: Instant,
    usable_until: Instant,
    generation: u64,
}

impl KeySet {
    fn entry(&self, kid: &str) -> Option<&Key> {
        self.any_kid.as_ref().or_else(|| self.by_kid.get(kid))
    }

    fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.entry(kid).map(|k| Arc::clone(&k.decoding))
    }
}

/// Reuses `previous`'s `Arc` for every key whose material did not change, so
/// that a refresh serving the same keys keeps their identity.
fn keep_identity(fresh: Key, previous: Option<&Key>) -> Key {
    match previous {
        Some(old) if old.material == fresh.material => Key {
            decoding: Arc::clone(&old.decoding),
            material: fresh.material,
        },
        _ => fresh,
    }
}

/// Counters for readiness and the benchmark.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyCacheStats {
    /// Whether usable keys are loaded now.
    pub loaded: bool,
    /// Number of keys in the current set.
    pub keys: usize,
    /// Fetch attempts since start.
    pub fetches: u64,
    /// Failed fetch attempts since start.
    pub failures: u64,
}

/// The key cache of one issuer. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct KeyCache(Arc<Inner>);

struct Inner {
    name: &'static str,
    source: KeySource,
    client: reqwest::Client,
    cfg: KeyCacheConfig,
    current: ArcSwapOption<KeySet>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Milliseconds since `epoch` of the last fetch attempt; `u64::MAX` = never.
    last_attempt_ms: AtomicU64,
    background_in_flight: AtomicBool,
    generation: AtomicU64,
    fetches: AtomicU64,
    failures: AtomicU64,
    /// `pushworker_key_fetches_total{issuer, outcome="ok"|"error"}`.
    fetched_ok: ::metrics::Counter,
    fetch_failed: ::metrics::Counter,
    epoch: Instant,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("issuer", &self.0.name)
            .field("source", &self.0.source)
            .finish_non_exhaustive()
    }
}

/// A JWKS document with its entries unread: each is parsed on its own
/// ([`Jwk`]), so that one bad entry is skipped and the others kept.
#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

impl KeyCache {
    /// A cache for the issuer called `name` (used in logs), reading `source`.
    pub fn new(
        name: &'static str,
        source: KeySource,
        client: reqwest::Client,
        cfg: KeyCacheConfig,
    ) -> Self {
        Self::metered(name, source, client, cfg, &Metrics::disabled())
    }

    /// The same, counting its fetches in `metrics` (`name` is the issuer
    /// label).
    pub fn metered(
        name: &'static str,
        source: KeySource,
        client: reqwest::Client,
        cfg: KeyCacheConfig,
        metrics: &Metrics,
    ) -> Self {
        let fetches = |outcome| {
            metrics.counter(
                names::KEY_FETCHES,
                &[("issuer", name), ("outcome", outcome)],
            )
        };
        Self(Arc::new(Inner {
            fetched_ok: fetches("ok"),
            fetch_failed: fetches("error"),
            name,
            source,
            client,
            cfg,
            current: ArcSwapOption::empty(),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_attempt_ms: AtomicU64::new(u64::MAX),
            background_in_flight: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// Starts fetching the keys in the background, so the first request finds
    /// them warm. Must be called within a Tokio runtime.
    pub fn prefetch(&self) {
        let inner = Arc::clone(&self.0);
        tokio::spawn(async move {
            let _guard = inner.refresh_lock.lock().await;
            if inner.current.load().is_none() {
                inner.fetch_and_store().await;
            }
        });
    }

    /// Returns the key for `kid`, fetching when the set is missing, stale past
    /// its bound, or lacks the kid (subject to the cooldown).
    pub async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, KeyError> {
        let inner = &self.0;
        let now = Instant::now();
        let seen = inner.current.load_full();
        if let Some(set) = seen.as_ref().filter(|s| now < s.usable_until) {
            if now >= set.fresh_until {
                self.spawn_background_refresh();
            }
            if let Some(key) = set.get(kid) {
                return Ok(key);
            }
            if !inner.cooldown_passed(now) {
                return Err(KeyError::UnknownKid);
            }
        }
        // Slow path: an unknown kid past the cooldown, or no usable keys. One
        // fetch at a time; whoever waited on someone else's fetch uses its
        // result instead of fetching again.
        let seen_generation = seen.as_ref().map(|s| s.generation);
        {
            let _guard = inner.refresh_lock.lock().await;
            let latest_generation = inner.current.load().as_ref().map(|s| s.generation);
            if latest_generation == seen_generation && inner.cooldown_passed(Instant::now()) {
                inner.fetch_and_store().await;
            }
        }
        match inner.usable_set(Instant::now()) {
            Some(set) => set.get(kid).ok_or(KeyError::UnknownKid),
            None => Err(KeyError::Unavailable),
        }
    }

    /// Whether `key` is still the key that the current, usable key set serves
    /// for `kid`: the check behind every hit of the verified-token cache.
    ///
    /// It never fetches in the foreground, but past the TTL it starts the same
    /// background refresh a lookup would, so that a cache serving every
    /// request still notices a rotation. `false` when the set is stale past
    /// its bound, when the kid is gone, or when it now names other material.
    pub fn is_current(&self, kid: &str, key: &Arc<DecodingKey>) -> bool {
        let now = Instant::now();
        let Some(set) = self.0.usable_set(now) else {
            return false;
        };
        if now >= set.fresh_until {
            self.spawn_background_refresh();
        }
        set.entry(kid)
            .is_some_and(|k| Arc::ptr_eq(&k.decoding, key))
    }

    /// Whether usable keys are loaded.
    pub fn is_loaded(&self) -> bool {
        self.0.usable_set(Instant::now()).is_some()
    }

    /// Counters.
    pub fn stats(&self) -> KeyCacheStats {
        let inner = &self.0;
        let set = inner.usable_set(Instant::now());
        KeyCacheStats {
            loaded: set.is_some(),
            keys: set.map_or(0, |s| s.by_kid.len() + usize::from(s.any_kid.is_some())),
            fetches: inner.fetches.load(Ordering::Relaxed),
            failures: inner.failures.load(Ordering::Relaxed),
        }
    }

    fn spawn_background_refresh(&self) {
        let inner = &self.0;
        if !inner.cooldown_passed(Instant::now())
            || inner
                .background_in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            {
                let _guard = inner.refresh_lock.lock().await;
                if inner.cooldown_passed(Instant::now()) {
                    inner.fetch_and_store().await;
                }
            }
            inner.background_in_flight.store(false, Ordering::Release);
        });
    }
}

impl Inner {
    fn usable_set(&self, now: Instant) -> Option<Arc<KeySet>> {
        self.current.load_full().filter(|s| now < s.usable_until)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn cooldown_passed(&self, now: Instant) -> bool {
        let last = self.last_attempt_ms.load(Ordering::Acquire);
        last == u64::MAX
            || self.now_ms(now).saturating_sub(last) >= self.cfg.refresh_cooldown.as_millis() as u64
    }

    async fn fetch_and_store(&self) {
        self.last_attempt_ms
            .store(self.now_ms(Instant::now()), Ordering::Release);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match fetch_key_set(&self.source, &self.client, &self.cfg).await {
            Ok((by_kid, any_kid, ttl)) => {
                self.fetched_ok.increment(1);
                let previous = self.current.load_full();
                let previous = previous.as_deref();
                let by_kid: HashMap<String, Key> = by_kid
                    .into_iter()
                    .map(|(kid, key)| {
                        let old = previous.and_then(|p| p.by_kid.get(&kid));
                        (kid, keep_identity(key, old))
                    })
                    .collect();
                let any_kid = any_kid
                    .map(|key| keep_identity(key, previous.and_then(|p| p.any_kid.as_ref())));
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                let fetched = Instant::now();
                tracing::info!(
                    issuer = self.name,
                    keys = by_kid.len() + usize::from(any_kid.is_some()),
                    ttl_secs = ttl.as_secs(),
                    "signing keys loaded"
                );
                self.current.store(Some(Arc::new(KeySet {
                    by_kid,
                    any_kid,
                    fresh_until: fetched + ttl,
                    usable_until: fetched + ttl + self.cfg.max_stale,
                    generation,
                })));
            }
            Err(err) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.fetch_failed.increment(1);
                let error = format!("{err:#}");
                if self.usable_set(Instant::now()).is_some() {
                    tracing::warn!(issuer = self.name, source = ?self.source, %error, "signing-key refresh failed; the last good keys keep serving");
                } else {
                    tracing::error!(issuer = self.name, source = ?self.source, %error, "signing-key fetch failed and no keys are loaded; this issuer's tokens get 503");
                }
            }
        }
    }
}

type Fetched = (HashMap<String, Key>, Option<Key>, Duration);

async fn fetch_key_set(
    source: &KeySource,
    client: &reqwest::Client,
    cfg: &KeyCacheConfig,
) -> anyhow::Result<Fetched> {
    let clamp = |d: Duration| d.clamp(cfg.min_ttl, cfg.max_ttl);
    match source {
        KeySource::Pem(pem) => {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .context("CLERK_JWT_KEY is not an RSA public key")?;
            let key = Key {
                decoding: Arc::new(key),
                material: pem.clone(),
            };
            Ok((HashMap::new(), Some(key), cfg.max_ttl))
        }
        KeySource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            if bytes.len() > MAX_JWKS_BYTES {
                bail!("JWKS file is larger than {MAX_JWKS_BYTES} bytes");
            }
            Ok((parse_jwks_keys(&bytes)?, None, cfg.min_ttl))
        }
        KeySource::Url(url) => {
            let fetch = async {
                let mut response = client
                    .get(url)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .context("request failed")?;
                if !response.status().is_success() {
                    bail!("key server answered {}", response.status());
                }
                let max_age = response
                    .headers()
                    .get(reqwest::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok())
                    .and_then(max_age);
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.context("reading the body")? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        bail!("JWKS is larger than {MAX_JWKS_BYTES} bytes");
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok((body, max_age))
            };
            let (body, max_age) = tokio::time::timeout(cfg.fetch_timeout, fetch)
                .await
                .map_err(|_| anyhow::anyhow!("timed out after {:?}", cfg.fetch_timeout))??;
            let ttl = clamp(max_age.unwrap_or(cfg.min_ttl));
            Ok((parse_jwks_keys(&body)?, None, ttl))
        }
    }
}

/// Parses `max-age=N` out of a `Cache-Control` value.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        value
            .trim()
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// Parses a JWKS document into RS256 verification keys by kid. Keys of other
/// types, algorithms or uses are skipped; a document with none is an error.
pub fn parse_jwks(bytes: &[u8]) -> anyhow::Result<HashMap<String, Arc<DecodingKey>>> {
    Ok(parse_jwks_keys(bytes)?
        .into_iter()
        .map(|(kid, key)| (kid, key.decoding))
        .collect())
}

fn parse_jwks_keys(bytes: &[u8]) -> anyhow::Result<HashMap<String, Key>> {
    let jwks: Jwks = serde_json::from_slice(bytes)
        .context("not a JWKS document (expected {\"keys\": [...]})")?;
    let mut keys = HashMap::new();
    for value in jwks.keys {
        let Some((kid, n, e)) = rs256_signing_key(value) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_rsa_components(&n, &e) {
            let material = format!("{n}.{e}");
            keys.insert(
                kid,
                Key {
                    decoding: Arc::new(key),
                    material,
                },
            );
        }
    }
    if keys.is_empty() {
        bail!("JWKS has no usable RS256 signing keys");
    }
    Ok(keys)
}

/// The kid and RSA components of a JWKS entry that is an RS256 signing key
/// (`use` and `alg`, when present, must say so); `None` for any other entry.
fn rs256_signing_key(value: serde_json::Value) -> Option<(String, String, String)> {
    let jwk = match serde_json::from_value::<Jwk>(value) {
        Ok(jwk) => jwk,
        Err(err) => {
            tracing::debug!(error = %err, "JWKS entry skipped: not a JWK");
            return None;
        }
    };
    let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
        return None;
    };
    if jwk
        .common
        .public_key_use
        .is_some_and(|u| u != PublicKeyUse::Signature)
        || jwk
            .common
            .key_algorithm
            .is_some_and(|a| a != KeyAlgorithm::RS256)
    {
        return None;
    }
    Some((jwk.common.key_id?, rsa.n, rsa.e))
}
