//! The verified-token cache: a token the verifier accepted is accepted again
//! without a second RSA check, for as long as the verifier itself would
//! accept it.
//!
//! Why: Pub/Sub sends the same Google ID token on every push for up to an
//! hour, and a Clerk session token is reused for up to a minute. Checking an
//! RSA-2048 signature is the costliest step of verifying a token, a large
//! share of a request near the rates one Cloud Run instance can reach
//! (docs/performance.md, scenario 2 against scenario 1). A lookup here is one
//! SHA-256 of the token and one probe of a sharded map.
//!
//! What it promises:
//! - **Keyed by the whole token**: the key is the SHA-256 of every byte of
//!   it, so a token that differs anywhere (a tampered signature, another
//!   claim, a header with the same prefix) never hits another's entry.
//! - **Never longer than the verifier**: an entry holds the token's `exp` and
//!   the latest of its `nbf` and `iat`, and every hit re-checks them with the
//!   verifier's own rules and leeway (`jsonwebtoken`'s `exp < now - leeway`
//!   and the `nbf`/`iat` `> now + leeway` refusals), on the same clock. A
//!   token whose time claims are not plain integers is not cached at all.
//! - **Never past its key**: an entry holds the issuer, the `kid` and the
//!   `Arc` of the key that verified it; every hit asks the issuer's key cache
//!   whether that very key still serves that kid in a usable key set
//!   ([`super::keys::KeyCache::is_current`]). When the key has left the set
//!   (rotation), been replaced under the same kid, or gone stale past its
//!   bound, the entry is dropped and the token goes to the verifier again,
//!   which answers exactly as it would have without the cache.
//! - **Only acceptances**: refusals are never cached, so nothing a hostile
//!   client sends can fill it; only tokens that passed every check enter.
//! - **Bounded**: at most the configured number of entries
//!   (`TOKEN_CACHE_MAX_ENTRIES`), evicted by quick_cache's S3-FIFO policy, so
//!   a stream of one-off tokens cannot push out the one Pub/Sub keeps sending.
//!   Reads take a shard's read lock only.
//!
//! Authorization is not cached: the extractors still check the trigger or
//! view permission on the cached principal on every request.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use jsonwebtoken::DecodingKey;
use serde::Serialize;

use super::Principal;

/// Which verifier accepted a token, and so which key cache its key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// The Google verifier.
    Google,
    /// The Clerk verifier.
    Clerk,
}

/// The time claims of an accepted token, as the cache re-checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// `exp`, in seconds since the epoch.
    pub exp: u64,
    /// The latest of `nbf` and `iat`: the verifier refuses either when it is
    /// more than the leeway in the future.
    pub not_before: i64,
}

/// One accepted token.
struct Entry {
    principal: Arc<Principal>,
    issuer: Issuer,
    kid: Arc<str>,
    key: Arc<DecodingKey>,
    lifetime: Lifetime,
}

/// Counters, for `/readyz` and the benchmark.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TokenCacheStats {
    /// Entries now.
    pub entries: usize,
    /// The bound.
    pub capacity: usize,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests that went to the verifier.
    pub misses: u64,
    /// Entries found but refused and dropped (expired, or their key left).
    pub dropped: u64,
}

/// The cache. Shared by every request through the [`super::Authenticator`].
pub struct TokenCache {
    entries: quick_cache::sync::Cache<[u8; 32], Arc<Entry>>,
    capacity: usize,
    leeway: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    dropped: AtomicU64,
    /// `pushworker_token_cache_hits_total` and `_misses_total` (no-ops
    /// unless [`TokenCache::with_metrics`]).
    hit_counter: ::metrics::Counter,
    miss_counter: ::metrics::Counter,
    /// The principal and kid of the latest insertion, which the next one
    /// shares when it has the same: Pub/Sub's tokens all name one service
    /// account under one or two kids, so a cache full of its tokens holds
    /// one principal, not a copy per entry (the principal and its strings
    /// are most of an entry's size).
    recent: std::sync::Mutex<Option<(Arc<Principal>, Arc<str>)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// Shards of the map: a power of two. quick_cache halves it for small
/// capacities, which keeps the capacity a multiple of the shard count.
const SHARDS: usize = 16;

impl TokenCache {
    /// A cache of at most `max_entries` tokens, re-checking time claims with
    /// the verifiers' `leeway`. `None` when `max_entries` is 0 (disabled).
    pub fn new(max_entries: usize, leeway: std::time::Duration) -> Option<Self> {
        // Each shard gets capacity / shards, rounded up by quick_cache: round
        // the total down to a multiple of the shards so the bound is exact.
        let capacity = if max_entries >= SHARDS {
            max_entries / SHARDS * SHARDS
        } else {
            max_entries
        };
        if capacity == 0 {
            return None;
        }
        let shards = if capacity >= SHARDS { SHARDS } else { 1 };
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .shards(shards)
            .build()
            .ok()?;
        Some(Self {
            entries: quick_cache::sync::Cache::with_options(
                options,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            capacity,
            leeway: leeway.as_secs(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            hit_counter: ::metrics::Counter::noop(),
            miss_counter: ::metrics::Counter::noop(),
            recent: std::sync::Mutex::new(None),
        })
    }

    /// The same, counting hits and misses in `metrics` too.
    pub fn with_metrics(mut self, metrics: &crate::telemetry::metrics::Metrics) -> Self {
        use crate::telemetry::metrics::names;
        self.hit_counter = metrics.counter(names::TOKEN_CACHE_HITS, &[]);
        self.miss_counter = metrics.counter(names::TOKEN_CACHE_MISSES, &[]);
        self
    }

    /// The cache key of `token`: SHA-256 of all of it.
    pub fn digest(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The principal of the token with this digest, if it is cached and the
    /// verifier would accept it now: time claims re-checked, and its key
    /// still current (`key_is_current(issuer, kid, key)`). An entry that
    /// fails either check is dropped.
    pub fn get(
        &self,
        digest: &[u8; 32],
        key_is_current: impl FnOnce(Issuer, &str, &Arc<DecodingKey>) -> bool,
    ) -> Option<Arc<Principal>> {
        let now = jsonwebtoken::get_current_timestamp();
        self.get_at(digest, now, key_is_current)
    }

    fn get_at(
        &self,
        digest: &[u8; 32],
        now: u64,
        key_is_current: impl FnOnce(Issuer, &str, &Arc<DecodingKey>) -> bool,
    ) -> Option<Arc<Principal>> {
        let Some(entry) = self.entries.get(digest) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.miss_counter.increment(1);
            return None;
        };
        if self.accepts_at(entry.lifetime, now)
            && key_is_current(entry.issuer, &entry.kid, &entry.key)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.hit_counter.increment(1);
            return Some(Arc::clone(&entry.principal));
        }
        // Only this entry: another request may have cached the token anew.
        self.entries
            .remove_if(digest, |current| Arc::ptr_eq(current, &entry));
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.miss_counter.increment(1);
        None
    }

    /// Whether the verifier's time checks pass at `now` (seconds since the
    /// epoch): `exp` as `jsonwebtoken` checks it (refused when
    /// `exp < now - leeway`), and `nbf`/`iat` as the verifiers do (refused
    /// when more than the leeway ahead).
    pub fn accepts_at(&self, lifetime: Lifetime, now: u64) -> bool {
        let not_expired = lifetime.exp >= now.saturating_sub(self.leeway);
        let now_signed = i64::try_from(now).unwrap_or(i64::MAX);
        let started = lifetime.not_before <= now_signed.saturating_add(self.leeway as i64);
        not_expired && started
    }

    /// Remembers that the token with this digest was accepted as
    /// `principal`, verified by `key` of `issuer` under `kid`. A token
    /// without usable time claims (`lifetime: None`) is not cached.
    ///
    /// Returns the principal as cached: an equal one already held is shared
    /// rather than kept twice.
    pub fn insert(
        &self,
        digest: [u8; 32],
        issuer: Issuer,
        kid: &str,
        key: &Arc<DecodingKey>,
        principal: Arc<Principal>,
        lifetime: Option<Lifetime>,
    ) -> Arc<Principal> {
        let Some(lifetime) = lifetime else {
            return principal;
        };
        if !self.accepts_at(lifetime, jsonwebtoken::get_current_timestamp()) {
            return principal;
        }
        let (principal, kid) = self.shared(principal, kid);
        self.entries.insert(
            digest,
            Arc::new(Entry {
                principal: Arc::clone(&principal),
                issuer,
                kid,
                key: Arc::clone(key),
                lifetime,
            }),
        );
        principal
    }

    /// `principal` and `kid`, or the equal ones of the latest insertion.
    fn shared(&self, principal: Arc<Principal>, kid: &str) -> (Arc<Principal>, Arc<str>) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (principal, kid) = match recent.take() {
            Some((p, k)) => (
                if *p == *principal { p } else { principal },
                if *k == *kid { k } else { kid.into() },
            ),
            None => (principal, kid.into()),
        };
        *recent = Some((Arc::clone(&principal), Arc::clone(&kid)));
        (principal, kid)
    }

    /// Counters.
    pub fn stats(&self) -> TokenCacheStats {
        TokenCacheStats {
            entries: self.entries.len(),
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The [`Lifetime`] of verified claims: `exp` (required) and `nbf` as
/// non-negative integers, `iat` as the verifiers read it. `None` (do not
/// cache) for anything else, such as a fractional `exp` that `jsonwebtoken`
/// rounds: such tokens are simply verified every time.
pub fn lifetime(
    exp: Option<&serde_json::Value>,
    nbf: Option<&serde_json::Value>,
    iat: Option<i64>,
) -> Option<Lifetime> {
    let exp = exp?.as_u64()?;
    let nbf = match nbf {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(i64::try_from(value.as_u64()?).ok()?),
    };
    let not_before = match (nbf, iat) {
        (Some(n), Some(i)) => n.max(i),
        (Some(n), None) => n,
        (None, Some(i)) => i,
        (None, None) => i64::MIN,
    };
    Some(Lifetime { exp, not_before })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::GoogleIdentity;
    use serde_json::json;
    use std::time::Duration;

    fn principal(n: usize) -> Arc<Principal> {
        Arc::new(Principal::Google(GoogleIdentity {
            email: format!("sa{n}@p.iam.gserviceaccount.com"),
            subject: n.to_string(),
            audience: "aud".into(),
        }))
    }

    fn key() -> Arc<DecodingKey> {
        // The cache compares keys by identity, never uses them: any will do.
        Arc::new(DecodingKey::from_rsa_components("AQAB", "AQAB").expect("base64url"))
    }

    const NOW: u64 = 2_000_000_000;

    fn lifetime_until(exp: u64) -> Option<Lifetime> {
        Some(Lifetime { exp, not_before: 0 })
    }

    fn cache(capacity: usize) -> TokenCache {
        TokenCache::new(capacity, Duration::from_secs(5)).expect("enabled")
    }

    #[test]
    fn zero_disables_and_the_bound_is_exact() {
        assert!(TokenCache::new(0, Duration::from_secs(5)).is_none());
        assert_eq!(cache(10_000).stats().capacity, 10_000);
        assert_eq!(cache(10_007).stats().capacity, 10_000);
        assert_eq!(cache(5).stats().capacity, 5);
    }

    #[test]
    fn expiry_follows_the_verifiers_rule_to_the_second() {
        let cache = cache(100);
        let exp = NOW + 60;
        let lifetime = lifetime_until(exp).expect("some");
        // jsonwebtoken refuses when exp < now - leeway (5 s).
        assert!(cache.accepts_at(lifetime, exp));
        assert!(cache.accepts_at(lifetime, exp + 5));
        assert!(!cache.accepts_at(lifetime, exp + 6));
        // nbf/iat: refused when more than the leeway ahead.
        let early = Lifetime {
            exp,
            not_before: NOW as i64 + 6,
        };
        assert!(!cache.accepts_at(early, NOW));
        assert!(cache.accepts_at(early, NOW + 1));
    }

    /// The cache's exp rule and `jsonwebtoken`'s, side by side on real
    /// tokens around the boundary, at the same second.
    #[test]
    fn expiry_matches_jsonwebtoken_on_real_tokens() {
        let signing = crate::auth::dev::SigningKey::generate("k").expect("keygen");
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(signing.public_jwk().expect("jwk")).expect("jwk");
        let decoding = DecodingKey::from_jwk(&jwk).expect("key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.leeway = 5;
        validation.validate_aud = false;
        let cache = cache(100);
        for offset in -9i64..=3 {
            loop {
                let now = jsonwebtoken::get_current_timestamp();
                let exp = (now as i64 + offset) as u64;
                let token = signing
                    .sign(&json!({ "exp": exp, "iat": now - 20 }))
                    .expect("sign");
                let verifier_accepts =
                    jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
                        .is_ok();
                let cache_accepts = cache.accepts_at(
                    Lifetime {
                        exp,
                        not_before: now as i64 - 20,
                    },
                    now,
                );
                if jsonwebtoken::get_current_timestamp() != now {
                    continue; // the second turned: measure again
                }
                assert_eq!(cache_accepts, verifier_accepts, "exp = now {offset:+}");
                break;
            }
        }
    }

    #[test]
    fn a_hit_needs_a_live_entry_and_a_current_key() {
        let cache = cache(100);
        let key = key();
        let digest = TokenCache::digest("a.b.c");
        cache.insert(
            digest,
            Issuer::Google,
            "k1",
            &key,
            principal(1),
            lifetime_until(u64::MAX / 2),
        );
        let mut asked = None;
        let hit = cache.get(&digest, |issuer, kid, k| {
            asked = Some((issuer, kid.to_owned(), Arc::ptr_eq(k, &key)));
            true
        });
        assert_eq!(hit, Some(principal(1)));
        assert_eq!(asked, Some((Issuer::Google, "k1".to_owned(), true)));
        // The key left the set: refused and dropped.
        assert_eq!(cache.get(&digest, |_, _, _| false), None);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.get(&digest, |_, _, _| true), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.dropped), (1, 2, 1));
    }

    /// Tokens of one principal share one copy of it (and of their kid); a
    /// token of another principal still gets its own.
    #[test]
    fn equal_principals_are_kept_once() {
        let cache = cache(100);
        let key = key();
        let until = lifetime_until(u64::MAX / 2);
        let insert = |token: &str, p: Arc<Principal>| {
            let digest = TokenCache::digest(token);
            cache.insert(digest, Issuer::Google, "k1", &key, p, until);
            digest
        };
        let a = insert("a.a.a", principal(1));
        let b = insert("b.b.b", principal(1));
        let c = insert("c.c.c", principal(2));
        let d = insert("d.d.d", principal(1));
        let get = |digest| cache.get(&digest, |_, _, _| true).expect("cached");
        assert!(Arc::ptr_eq(&get(a), &get(b)));
        assert_eq!((get(c), get(d)), (principal(2), principal(1)));
        let kid = |digest: [u8; 32]| Arc::clone(&cache.entries.get(&digest).expect("cached").kid);
        assert!(Arc::ptr_eq(&kid(a), &kid(b)));
    }

    #[test]
    fn an_expired_entry_is_refused_and_dropped() {
        let cache = cache(100);
        let digest = TokenCache::digest("x.y.z");
        let lifetime = lifetime_until(NOW + 10);
        // Inserted "now" by the real clock would refuse an old exp; insert
        // through the map to control time.
        cache.entries.insert(
            digest,
            Arc::new(Entry {
                principal: principal(2),
                issuer: Issuer::Clerk,
                kid: "k".into(),
                key: key(),
                lifetime: lifetime.expect("some"),
            }),
        );
        assert!(cache.get_at(&digest, NOW + 15, |_, _, _| true).is_some());
        assert!(cache.get_at(&digest, NOW + 16, |_, _, _| true).is_none());
        assert_eq!(cache.stats().entries, 0, "dropped");
    }

    #[test]
    fn tokens_that_differ_anywhere_do_not_share_an_entry() {
        let cache = cache(100);
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl";
        cache.insert(
            TokenCache::digest(token),
            Issuer::Google,
            "k",
            &key(),
            principal(3),
            lifetime_until(u64::MAX / 2),
        );
        for other in [
            &token[..token.len() - 1],
            &format!("{token}x"),
            &token.replace("c2lnbmF0dXJl", "c2lnbmF0dXJm"),
        ] {
            assert!(
                cache
                    .get(&TokenCache::digest(other), |_, _, _| true)
                    .is_none()
            );
        }
        assert!(
            cache
                .get(&TokenCache::digest(token), |_, _, _| true)
                .is_some()
        );
    }

    #[test]
    fn tokens_without_integer_time_claims_are_not_cached() {
        assert_eq!(lifetime(Some(&json!(1.5e9)), None, Some(1)), None);
        assert_eq!(lifetime(Some(&json!("1")), None, Some(1)), None);
        assert_eq!(lifetime(None, None, Some(1)), None);
        assert_eq!(lifetime(Some(&json!(10)), Some(&json!(-1)), Some(1)), None);
        assert_eq!(
            lifetime(Some(&json!(10)), Some(&json!(7)), Some(3)),
            Some(Lifetime {
                exp: 10,
                not_before: 7
            })
        );
        let cache = cache(100);
        let digest = TokenCache::digest("n.o.p");
        cache.insert(digest, Issuer::Google, "k", &key(), principal(4), None);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_bound_holds_under_concurrent_inserts_and_reads() {
        let cache = Arc::new(cache(1_000));
        let key = key();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                let key = Arc::clone(&key);
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let token = format!("token-{t}-{i}");
                        let digest = TokenCache::digest(&token);
                        cache.insert(
                            digest,
                            Issuer::Google,
                            "k",
                            &key,
                            principal(t * 10_000 + i),
                            lifetime_until(u64::MAX / 2),
                        );
                        // Whatever is found is this token's own principal.
                        if let Some(p) = cache.get(&digest, |_, _, _| true) {
                            assert_eq!(p, principal(t * 10_000 + i));
                        }
                        assert!(cache.stats().entries <= 1_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert!(cache.stats().entries <= 1_000);
        assert!(cache.stats().entries > 0);
    }
}
