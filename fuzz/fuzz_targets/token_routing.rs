//! Bearer tokens through the whole authentication core: `bearer_token`,
//! `inspect` (the unverified header and `iss` that route a token), and
//! `Authenticator::authenticate` over a local JWKS that trusts one RSA key
//! (generated at start-up) for both the Google and the Clerk issuer.
//!
//! The first byte of the input picks what the rest is (modulo 4, so the
//! ASCII digits `0`..`3` name the modes in the seed files):
//! - `0`, raw: the rest as an Authorization header value, and (if UTF-8) as a
//!   bare token sent as `Bearer <token>`;
//! - `1`, tamper: one of the valid tokens the trusted key signed (Google,
//!   Clerk v2, Clerk v1, Clerk without an organization), as
//!   `Bearer <token>`, with `arbitrary` edits: bytes flipped, set, inserted,
//!   removed, a truncation, or a `.`-separated part spliced in from another
//!   valid token;
//! - `2`, signed claims: the rest as JSON claims, signed by the trusted key
//!   (so the claim checks after the signature are reached);
//! - `3`, impostor: the same claims, signed by a key nobody trusts under the
//!   trusted key id.
//!
//! Checked for every request:
//! - nothing panics;
//! - the authenticator with the verified-token cache answers exactly as the
//!   one without it;
//! - routing: a refusal by `bearer_token` or `inspect` is the answer; an
//!   `iss` that is neither Google's nor the configured Clerk issuer is
//!   refused as such; a Google principal only from a Google `iss`, a Clerk
//!   one only from the Clerk `iss`; signing keys are never "unavailable";
//! - raw and tamper: accepted only if the token is, byte for byte, one the
//!   trusted key signed, and then as that token's principal (so tampering
//!   never yields another accepted principal); an untouched token is accepted;
//! - signed claims: an accepted principal says what the claims say (email and
//!   audience, or user, session and authorized party);
//! - impostor: never accepted.
#![no_main]

use std::{sync::LazyLock, time::Duration};

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use pushworker::{
    auth::{
        AuthError, Authenticator, Principal,
        clerk::ClerkVerifier,
        dev::{SigningKey, encode_v2_permissions, now_secs},
        google::{GOOGLE_ISSUERS, GoogleVerifier},
        keys::KeyCache,
        token::{MAX_TOKEN_BYTES, bearer_token, inspect},
        token_cache::TokenCache,
    },
    config::{ClerkConfig, GoogleConfig, KeyCacheConfig, KeySource},
};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://pushworker.test/pubsub/push";
const SERVICE_ACCOUNT: &str = "pusher@acme-prod.iam.gserviceaccount.com";
const CLERK_ISSUER: &str = "https://clerk.pushworker.test";
const AZP: &str = "https://admin.pushworker.test";
const TRUSTED_KID: &str = "trusted-1";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// No token cache.
    plain: Authenticator,
    /// The same verifiers behind the verified-token cache.
    cached: Authenticator,
    trusted: SigningKey,
    /// Not trusted, but signs under the trusted kid.
    impostor: SigningKey,
    /// Tokens the trusted key signed, each with who it is.
    valid: Vec<(String, Principal)>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let trusted = SigningKey::generate(TRUSTED_KID).expect("keygen");
    let impostor = SigningKey::generate(TRUSTED_KID).expect("keygen");
    let dir = std::env::temp_dir().join(format!("pushworker-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let jwks = dir.join("jwks.json");
    let document = json!({ "keys": [trusted.public_jwk().expect("jwk")] });
    std::fs::write(&jwks, serde_json::to_vec(&document).expect("json")).expect("write jwks");
    // Long enough that a run of any length never refreshes (and so never
    // needs the file again after the first load).
    let week = Duration::from_secs(7 * 86_400);
    let cache = KeyCacheConfig {
        min_ttl: week,
        max_ttl: week,
        refresh_cooldown: week,
        max_stale: week,
        fetch_timeout: Duration::from_secs(5),
    };
    let http = pushworker::startup::http_client().expect("http client");
    let leeway = Duration::from_secs(30);
    let google = GoogleConfig {
        audiences: vec![AUDIENCE.to_owned()],
        service_accounts: vec![SERVICE_ACCOUNT.to_owned()],
        keys: KeySource::File(jwks.clone()),
    };
    let clerk = ClerkConfig {
        issuer: CLERK_ISSUER.to_owned(),
        authorized_parties: vec![AZP.to_owned()],
        keys: KeySource::File(jwks.clone()),
        publishable_key: None,
    };
    let google = GoogleVerifier::new(
        google.clone(),
        KeyCache::new("google", google.keys, http.clone(), cache.clone()),
        leeway,
    );
    let clerk = ClerkVerifier::new(
        clerk.clone(),
        KeyCache::new("clerk", clerk.keys, http, cache),
        leeway,
    );
    let plain = Authenticator::new(Some(google.clone()), Some(clerk.clone()));
    let cached = Authenticator::new(Some(google), Some(clerk))
        .with_token_cache(TokenCache::new(4096, leeway));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Valid for 30 days, so a long run never sees them expire.
    let now = now_secs();
    let google_claims = json!({
        "iss": "https://accounts.google.com", "aud": AUDIENCE,
        "sub": "112233445566778899000", "email": SERVICE_ACCOUNT, "email_verified": true,
        "iat": now - 10, "exp": now + 30 * 86_400,
    });
    let clerk_claims = |org: Value| {
        let mut claims = json!({
            "iss": CLERK_ISSUER, "sub": "user_2abc", "sid": "sess_2abc", "azp": AZP,
            "iat": now - 5, "nbf": now - 10, "exp": now + 30 * 86_400,
        });
        if let (Some(claims), Value::Object(org)) = (claims.as_object_mut(), org) {
            claims.extend(org);
        }
        claims
    };
    let (fea, per, fpm) = encode_v2_permissions(&["org:jobs:trigger".to_owned()]);
    let v2 = json!({"v": 2, "fea": fea, "o": {"id": "org_1", "slg": "acme", "rol": "admin", "per": per, "fpm": fpm}});
    let v1 = json!({"org_id": "org_1", "org_role": "org:member", "org_permissions": ["org:jobs:trigger"]});
    let tokens = [
        trusted.sign(&google_claims).expect("sign"),
        trusted.sign(&clerk_claims(v2)).expect("sign"),
        trusted.sign(&clerk_claims(v1)).expect("sign"),
        trusted.sign(&clerk_claims(Value::Null)).expect("sign"),
    ];
    let valid = tokens
        .into_iter()
        .map(|token| {
            let headers = bearer(token.as_bytes()).expect("header");
            let who = runtime
                .block_on(plain.authenticate(&headers))
                .expect("a valid token was refused");
            (token, who)
        })
        .collect();
    // The keys are loaded; the file is not read again.
    std::fs::remove_dir_all(&dir).ok();
    Fixture {
        runtime,
        plain,
        cached,
        trusted,
        impostor,
        valid,
    }
});

/// `FUZZ_TRACE=1` prints each answer (to see what the seeds come to).
static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_TRACE").is_some());

/// `Authorization: Bearer <token>`, if that is a valid header value.
fn bearer(token: &[u8]) -> Option<HeaderMap> {
    authorization([b"Bearer ".as_slice(), token].concat())
}

fn authorization(value: Vec<u8>) -> Option<HeaderMap> {
    let value = HeaderValue::from_bytes(&value).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    Some(headers)
}

/// Authenticates with and without the token cache, and checks what holds
/// for any request (see the top of the file).
fn authenticate(fx: &Fixture, headers: &HeaderMap) -> Result<Principal, AuthError> {
    let result = fx.runtime.block_on(fx.plain.authenticate(headers));
    let cached = fx.runtime.block_on(fx.cached.authenticate(headers));
    assert_eq!(result, cached, "the token cache changed the answer");
    if *TRACE {
        eprintln!("trace: {result:?}");
    }
    assert!(
        !matches!(result, Err(AuthError::KeysUnavailable(_))),
        "keys unavailable: {result:?}"
    );
    let token = match bearer_token(headers) {
        Err(e) => {
            assert_eq!(result, Err(e));
            return result;
        }
        Ok(token) => token,
    };
    assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES && token == token.trim());
    match inspect(token) {
        Err(e) => assert_eq!(result, Err(e)),
        Ok(unverified) => {
            let google = GOOGLE_ISSUERS.contains(&unverified.iss.as_str());
            let clerk = unverified.iss == CLERK_ISSUER;
            if !google && !clerk {
                assert_eq!(
                    result,
                    Err(AuthError::InvalidToken("issuer not accepted")),
                    "an unknown issuer was routed"
                );
            }
            match &result {
                Ok(Principal::Google(_)) => {
                    assert!(google, "Google principal from {}", unverified.iss)
                }
                Ok(Principal::Clerk(_)) => {
                    assert!(clerk, "Clerk principal from {}", unverified.iss)
                }
                Err(_) => {}
            }
        }
    }
    result
}

/// Accepted only if the token is one the trusted key signed, as signed.
fn accepted_only_as_signed(
    fx: &Fixture,
    headers: &HeaderMap,
    result: &Result<Principal, AuthError>,
) {
    if let Ok(principal) = result {
        let token = bearer_token(headers).expect("accepted, so a bearer token");
        let Some((_, who)) = fx.valid.iter().find(|(t, _)| t == token) else {
            panic!("accepted a token the trusted key did not sign: {token}");
        };
        assert_eq!(principal, who, "accepted as someone else");
    }
}

#[derive(Debug, Arbitrary)]
enum Edit {
    Flip {
        at: u16,
        xor: u8,
    },
    Set {
        at: u16,
        byte: u8,
    },
    Insert {
        at: u16,
        byte: u8,
    },
    Remove {
        at: u16,
    },
    Truncate {
        at: u16,
    },
    /// Replace `.`-separated part `part` with the same part of valid token
    /// `from` (header of one, payload of another, ...).
    Splice {
        part: u8,
        from: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Tamper {
    token: u8,
    edits: Vec<Edit>,
}

fn splice(value: &[u8], part: usize, other: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = value.split(|&b| b == b'.').collect();
    let others: Vec<&[u8]> = other.split(|&b| b == b'.').collect();
    let i = part % parts.len();
    if let Some(replacement) = others.get(i) {
        parts[i] = replacement;
    }
    parts.join(&b'.')
}

fn tamper(fx: &Fixture, data: &[u8]) {
    let Ok(t) = Tamper::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let index = usize::from(t.token) % fx.valid.len();
    let (token, who) = &fx.valid[index];
    let original = [b"Bearer ".as_slice(), token.as_bytes()].concat();
    let mut value = original.clone();
    for edit in &t.edits {
        let at = |at: &u16, len: usize| usize::from(*at) % (len + 1);
        match edit {
            Edit::Flip { at: i, xor } => {
                let i = at(i, value.len());
                if let Some(b) = value.get_mut(i) {
                    *b ^= xor;
                }
            }
            Edit::Set { at: i, byte } => {
                let i = at(i, value.len());
                if let Some(b) = value.get_mut(i) {
                    *b = *byte;
                }
            }
            Edit::Insert { at: i, byte } => {
                let i = at(i, value.len());
                value.insert(i, *byte);
            }
            Edit::Remove { at: i } => {
                let i = at(i, value.len());
                if i < value.len() {
                    value.remove(i);
                }
            }
            Edit::Truncate { at: i } => {
                let i = at(i, value.len());
                value.truncate(i);
            }
            Edit::Splice { part, from } => {
                let other = &fx.valid[usize::from(*from) % fx.valid.len()].0;
                value = splice(&value, usize::from(*part), other.as_bytes());
            }
        }
    }
    let untouched = value == original;
    let Some(headers) = authorization(value) else {
        return;
    };
    let result = authenticate(fx, &headers);
    accepted_only_as_signed(fx, &headers, &result);
    if untouched {
        assert_eq!(result.as_ref(), Ok(who), "a valid token was refused");
    }
    if bearer_token(&headers) == Ok(token.as_str()) {
        // The token itself unchanged (only the scheme or spacing edited):
        // accepted as the same principal, or refused for the header.
        if let Ok(principal) = &result {
            assert_eq!(principal, who);
        }
    }
}

fn raw(fx: &Fixture, data: &[u8]) {
    if let Some(headers) = authorization(data.to_vec()) {
        let result = authenticate(fx, &headers);
        accepted_only_as_signed(fx, &headers, &result);
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = inspect(token);
        if let Some(headers) = bearer(token.as_bytes()) {
            let result = authenticate(fx, &headers);
            accepted_only_as_signed(fx, &headers, &result);
        }
    }
}

fn signed_claims(fx: &Fixture, data: &[u8], impostor: bool) {
    let Ok(claims) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let key = if impostor { &fx.impostor } else { &fx.trusted };
    let Ok(token) = key.sign(&claims) else {
        return;
    };
    let Some(headers) = bearer(token.as_bytes()) else {
        return;
    };
    let result = authenticate(fx, &headers);
    if impostor {
        assert!(
            result.is_err(),
            "accepted a token signed by an untrusted key: {result:?}"
        );
        return;
    }
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    match &result {
        Ok(Principal::Google(g)) => {
            assert_eq!(Some(g.email.as_str()), claim("email"));
            assert_eq!(g.email, SERVICE_ACCOUNT);
            assert_eq!(g.audience, AUDIENCE);
        }
        Ok(Principal::Clerk(c)) => {
            assert_eq!(claim("iss"), Some(CLERK_ISSUER));
            assert_eq!(Some(c.user_id.as_str()), claim("sub"));
            assert_eq!(Some(c.session_id.as_str()), claim("sid"));
            assert_eq!(c.authorized_party, AZP);
            assert!(!c.user_id.is_empty() && !c.session_id.is_empty());
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => raw(fx, rest),
        1 => tamper(fx, rest),
        2 => signed_claims(fx, rest, false),
        _ => signed_claims(fx, rest, true),
    }
});
