//! Property tests of everything that parses what a caller sends: the Pub/Sub
//! push envelope (wrapped and unwrapped), the bearer token and its unverified
//! header, the full authentication core, the Clerk organization claims and
//! replay's message files.
//!
//! Each property says what any input must come to: a clean error or a correct
//! parse, never a panic, and round trips where one exists. Case counts are
//! modest so `make test` stays fast; the fuzz targets in `fuzz/` run the same
//! kind of checks for minutes at a time (`make fuzz`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::LazyLock,
    time::Duration,
};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header::AUTHORIZATION};
use base64::Engine as _;
use proptest::{prelude::*, sample::Index};
use pushworker::{
    auth::{
        AuthError, Authenticator, ClerkUser, GoogleIdentity, Principal,
        clerk::ClerkVerifier,
        dev::{MAX_V2_PERMISSION_NAMES, SigningKey, encode_v2_permissions, now_secs},
        google::GoogleVerifier,
        keys::KeyCache,
        token::{MAX_TOKEN_BYTES, bearer_token, inspect},
    },
    config::{ClerkConfig, GoogleConfig, KeyCacheConfig, KeySource},
    pubsub::{EnvelopeError, MessageMeta, parse_push, parse_unwrapped, parse_wrapped, wrap},
    replay::read_messages,
};
use serde_json::{Map, Value, json};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A private folder under the system temp dir for this test binary.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pushworker-properties-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// --- Strategies ------------------------------------------------------------

/// Strings: mostly printable ASCII, sometimes any Unicode (controls included).
fn text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).expect("regex"),
        1 => proptest::collection::vec(any::<char>(), 0..max)
            .prop_map(|chars| chars.into_iter().collect()),
    ]
    .boxed()
}

/// Keys of JSON objects: the envelope's and a token header's own field names
/// (so structure is hit often), or anything.
fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "message", "data", "attributes", "messageId", "message_id", "publishTime",
            "publish_time", "orderingKey", "subscription", "deliveryAttempt", "alg", "kid",
            "iss", "jku", "crit",
        ])
        .prop_map(str::to_owned),
        1 => text(8),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(24).prop_map(Value::String),
        "[A-Za-z0-9+/=]{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value for a field that is usually the right type (a string), sometimes not.
fn string_or_json(s: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    prop_oneof![3 => s.prop_map(Value::String), 1 => json_value()].boxed()
}

/// An object with each named field present or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    values
        .prop_map(move |values| {
            let map: Map<String, Value> = names
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                .collect();
            Value::Object(map)
        })
        .boxed()
}

fn maybe(value: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop::option::of(value).boxed()
}

/// Something shaped like a push envelope, with fields of any type.
fn envelope_like() -> BoxedStrategy<Value> {
    let data = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
        1 => "[A-Za-z0-9+/=_-]{0,24}".prop_map(Value::String),
        1 => json_value(),
    ]
    .boxed();
    let attributes = prop_oneof![
        2 => prop::collection::btree_map(text(8), text(8), 0..4)
            .prop_map(|m| json!(m)),
        1 => json_value(),
    ]
    .boxed();
    let message = object(vec![
        ("data", maybe(data)),
        ("attributes", maybe(attributes)),
        ("messageId", maybe(string_or_json(text(8)))),
        ("message_id", maybe(string_or_json(text(8)))),
        ("publishTime", maybe(string_or_json(text(8)))),
        ("publish_time", maybe(string_or_json(text(8)))),
        ("orderingKey", maybe(string_or_json(text(8)))),
    ]);
    let attempt = prop_oneof![any::<u32>().prop_map(Value::from), json_value()].boxed();
    object(vec![
        ("message", prop::option::weighted(0.9, message).boxed()),
        ("subscription", maybe(string_or_json(text(16)))),
        ("deliveryAttempt", maybe(attempt)),
    ])
}

/// Message metadata as a wrapped delivery would carry it.
fn message_meta() -> impl Strategy<Value = MessageMeta> {
    let key = prop_oneof![2 => "[a-z_][a-z0-9_.-]{0,15}", 1 => text(16)];
    (
        prop_oneof![4 => "[0-9]{1,20}", 1 => text(24)],
        prop::option::of(prop_oneof![
            Just("2026-01-01T00:00:00.123Z".to_owned()),
            text(32)
        ]),
        prop::option::of(prop_oneof![
            "projects/[a-z0-9-]{1,12}/subscriptions/[a-z0-9-]{1,12}",
            text(32)
        ]),
        prop::collection::btree_map(key, text(64), 0..12),
        prop::option::of(text(16)),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(message_id, publish_time, subscription, attributes, ordering_key, attempt)| {
                MessageMeta {
                    message_id,
                    publish_time,
                    subscription,
                    attributes,
                    ordering_key,
                    delivery_attempt: attempt,
                    unwrapped: false,
                }
            },
        )
}

/// Header names: the ones that matter (in any case), token-shaped ones, and
/// raw bytes (mostly not valid names, which are skipped).
fn header_name() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "authorization", "Authorization", "AUTHORIZATION", "aUtHoRiZaTiOn",
            "x-goog-pubsub-message-id", "X-Goog-PubSub-Message-Id",
            "x-goog-pubsub-publish-time", "x-goog-pubsub-subscription-name",
            "x-goog-pubsub-ordering-key", "x-goog-pubsub-delivery-attempt",
            "x-goog-other", "x-cloud-trace-context", "x-forwarded-for", "host",
            "content-type", "user-agent", "cookie", "traceparent", "job", "tenant",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        3 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,24}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..24),
    ]
    .boxed()
}

/// Header values: printable, numeric, empty, or raw bytes (non-ASCII
/// included; control bytes make them invalid, and they are skipped).
fn header_value_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => "[0-9]{1,12}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..40),
    ]
    .boxed()
}

/// A header map from raw pairs, skipping names or values HTTP would refuse.
fn header_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// Authorization values: raw bytes, `Bearer`-ish prefixes of any case before
/// token-ish text, and values around the size cap.
fn authorization_value() -> BoxedStrategy<Vec<u8>> {
    let scheme = prop_oneof![
        "(?i:bearer)",
        Just("Basic".to_owned()),
        "[A-Za-z]{0,8}",
        Just(String::new())
    ];
    let around_cap = (
        MAX_TOKEN_BYTES - 16..MAX_TOKEN_BYTES + 48,
        prop::sample::select(b"abcXYZ019-_.".to_vec()),
    )
        .prop_map(|(len, c)| {
            let mut value = b"Bearer ".to_vec();
            value.resize(value.len() + len, c);
            value
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64),
        3 => (scheme, "[ \t]{0,3}", "[ -~]{0,64}", "[ \t]{0,3}")
            .prop_map(|(s, a, t, b)| format!("{s}{a}{t}{b}").into_bytes()),
        1 => around_cap,
    ]
    .boxed()
}

// --- Near-JWTs --------------------------------------------------------------

/// A token header: usually close to acceptable, with each part that matters
/// (alg, kid, key references, crit) varied.
fn jwt_header() -> BoxedStrategy<Value> {
    let alg = prop_oneof![
        4 => Just(json!("RS256")),
        3 => prop::sample::select(vec!["rs256", "RS384", "RS512", "HS256", "none", "ES256", "PS256", "RS256 ", ""])
            .prop_map(Value::from),
        1 => json_value(),
    ]
    .boxed();
    let kid = prop_oneof![
        4 => "[A-Za-z0-9_-]{1,40}".prop_map(Value::String),
        1 => Just(json!("")),
        1 => prop::sample::select(vec![255usize, 256, 257]).prop_map(|n| Value::String("k".repeat(n))),
        1 => json_value(),
    ]
    .boxed();
    let reference = || prop::option::weighted(0.12, json_value()).boxed();
    object(vec![
        ("alg", prop::option::weighted(0.9, alg).boxed()),
        ("kid", prop::option::weighted(0.85, kid).boxed()),
        ("typ", maybe(Just(json!("JWT")).boxed())),
        ("jku", reference()),
        ("x5u", reference()),
        ("jwk", reference()),
        ("x5c", reference()),
        ("crit", reference()),
        ("x5t", reference()),
    ])
}

/// A token payload: an object with or without a usable `iss`, or any JSON.
fn jwt_payload() -> BoxedStrategy<Value> {
    let iss = prop_oneof![
        3 => prop::sample::select(vec!["https://accounts.google.com", "accounts.google.com", "https://clerk.example.test"])
            .prop_map(Value::from),
        1 => Just(json!("")),
        1 => json_value(),
    ]
    .boxed();
    prop_oneof![
        8 => object(vec![
            ("iss", prop::option::weighted(0.9, iss.clone()).boxed()),
            ("sub", maybe(string_or_json(text(8)))),
            ("exp", maybe(json_value())),
        ]),
        1 => iss.prop_map(|iss| json!([iss])),
        1 => json_value(),
    ]
    .boxed()
}

/// How the encoded parts are damaged, if at all.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Padding(usize),
    BadChar(usize, char),
    ExtraPart,
    MissingPart,
    EmptyPart(usize),
}

fn damage() -> BoxedStrategy<Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        1 => (0usize..3).prop_map(Damage::Padding),
        1 => (0usize..3, prop::sample::select(vec!['+', '/', '=', ' ', '*', 'é']))
            .prop_map(|(p, c)| Damage::BadChar(p, c)),
        1 => Just(Damage::ExtraPart),
        1 => Just(Damage::MissingPart),
        1 => (0usize..3).prop_map(Damage::EmptyPart),
    ]
    .boxed()
}

/// Encodes header and payload, adds the signature and applies the damage.
fn assemble(header: &Value, payload: &Value, signature: String, damage: &Damage) -> String {
    let mut parts = vec![
        B64URL.encode(serde_json::to_vec(header).expect("json")),
        B64URL.encode(serde_json::to_vec(payload).expect("json")),
        signature,
    ];
    match *damage {
        Damage::None => {}
        Damage::Padding(p) => parts[p].push('='),
        Damage::BadChar(p, c) => {
            let at = parts[p].len() / 2;
            let at = (0..=at)
                .rev()
                .find(|&i| parts[p].is_char_boundary(i))
                .unwrap_or(0);
            parts[p].insert(at, c);
        }
        Damage::ExtraPart => parts.push("e30".to_owned()),
        Damage::MissingPart => {
            parts.pop();
        }
        Damage::EmptyPart(p) => parts[p].clear(),
    }
    parts.join(".")
}

fn signature() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 1..300).prop_map(|b| B64URL.encode(b)),
        1 => "[A-Za-z0-9_-]{0,5}",
    ]
    .boxed()
}

/// One way a token differs from an acceptable one.
#[derive(Debug, Clone)]
enum Deviation {
    Alg(Value),
    NoAlg,
    Kid(Value),
    NoKid,
    /// `jku`, `x5u`, `jwk`, `x5c` or `crit`, with any value.
    KeyReference(&'static str, Value),
    /// Any other header member (it may replace `alg` or `kid`).
    HeaderMember(String, Value),
    Payload(Value),
    Signature(String),
    Damage(Damage),
}

fn deviation() -> BoxedStrategy<Deviation> {
    prop_oneof![
        prop_oneof![
            3 => prop::sample::select(vec!["rs256", "RS384", "HS256", "none", "ES256", "PS256", "RS256 ", ""])
                .prop_map(Value::from),
            1 => json_value(),
        ]
        .prop_map(Deviation::Alg),
        Just(Deviation::NoAlg),
        prop_oneof![
            Just(json!("")),
            prop::sample::select(vec![255usize, 256, 257]).prop_map(|n| Value::String("k".repeat(n))),
            json_value(),
        ]
        .prop_map(Deviation::Kid),
        Just(Deviation::NoKid),
        (prop::sample::select(vec!["jku", "x5u", "jwk", "x5c", "crit"]), json_value())
            .prop_map(|(k, v)| Deviation::KeyReference(k, v)),
        (json_key(), json_value()).prop_map(|(k, v)| Deviation::HeaderMember(k, v)),
        jwt_payload().prop_map(Deviation::Payload),
        "[A-Za-z0-9_-]{0,5}".prop_map(Deviation::Signature),
        damage().prop_map(Deviation::Damage),
    ]
    .boxed()
}

/// Near-JWTs, two ways: an acceptable token with zero to two deviations
/// (so each rule is hit on its own, often), and header, payload and
/// signature each drawn at random.
fn near_jwt() -> impl Strategy<Value = String> {
    let deviated = (
        "[A-Za-z0-9_-]{1,40}",
        prop::sample::select(vec![
            "https://accounts.google.com",
            "https://clerk.example.test",
        ]),
        signature(),
        prop::collection::vec(deviation(), 0..3),
    )
        .prop_map(|(kid, iss, signature, deviations)| {
            let mut header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
            let mut payload = json!({"iss": iss, "sub": "someone"});
            let mut signature = signature;
            let mut damage = Damage::None;
            for deviation in deviations {
                let Some(members) = header.as_object_mut() else {
                    continue;
                };
                match deviation {
                    Deviation::Alg(alg) => {
                        members.insert("alg".into(), alg);
                    }
                    Deviation::NoAlg => {
                        members.remove("alg");
                    }
                    Deviation::Kid(kid) => {
                        members.insert("kid".into(), kid);
                    }
                    Deviation::NoKid => {
                        members.remove("kid");
                    }
                    Deviation::KeyReference(name, value) => {
                        members.insert(name.into(), value);
                    }
                    Deviation::HeaderMember(name, value) => {
                        members.insert(name, value);
                    }
                    Deviation::Payload(p) => payload = p,
                    Deviation::Signature(s) => signature = s,
                    Deviation::Damage(d) => damage = d,
                }
            }
            assemble(&header, &payload, signature, &damage)
        });
    let random = (jwt_header(), jwt_payload(), signature(), damage()).prop_map(
        |(header, payload, signature, damage)| assemble(&header, &payload, signature, &damage),
    );
    prop_oneof![deviated, random]
}

/// What `inspect` must decide, worked out independently: `Some((kid, iss))`
/// exactly when the token has three non-empty base64url parts, a JSON object
/// header with `alg` "RS256", a non-empty `kid` of at most 256 bytes and no
/// `jku`/`x5u`/`jwk`/`x5c`/`crit`, and a JSON object payload with a
/// non-empty string `iss`.
fn expected_inspect(token: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return None;
    };
    let decode = |part: &str| {
        if part.is_empty() {
            None
        } else {
            B64URL.decode(part).ok()
        }
    };
    let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
    let payload: Value = serde_json::from_slice(&decode(payload)?).ok()?;
    decode(signature)?;
    let header = header.as_object()?;
    if header.get("alg")? != "RS256" {
        return None;
    }
    if ["jku", "x5u", "jwk", "x5c", "crit"]
        .iter()
        .any(|k| header.contains_key(*k))
    {
        return None;
    }
    let kid = header.get("kid")?.as_str()?;
    if kid.is_empty() || kid.len() > 256 {
        return None;
    }
    let iss = payload.as_object()?.get("iss")?.as_str()?;
    if iss.is_empty() {
        return None;
    }
    Some((kid.to_owned(), iss.to_owned()))
}

// --- An authenticator over a local key file ----------------------------------

const AUDIENCE: &str = "https://pushworker.test/pubsub/push";
const SERVICE_ACCOUNT: &str = "pusher@acme-prod.iam.gserviceaccount.com";
const CLERK_ISSUER: &str = "https://clerk.pushworker.test";
const AZP: &str = "https://admin.pushworker.test";
const TRUSTED_KID: &str = "trusted-1";

/// A configured authenticator that trusts one key, read from a JWKS file,
/// for both issuers; tokens signed with it; and keys nobody trusts.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
    trusted: SigningKey,
    /// Not trusted, but signs under the trusted kid.
    impostor: SigningKey,
    /// Not trusted, under a kid of its own.
    rogue: SigningKey,
    /// Valid tokens signed with the trusted key, each with who it is.
    valid: Vec<(String, Principal)>,
}

fn google_claims() -> Value {
    let now = now_secs();
    json!({
        "iss": "https://accounts.google.com", "aud": AUDIENCE,
        "sub": "112233445566778899000", "email": SERVICE_ACCOUNT, "email_verified": true,
        "iat": now - 10, "exp": now + 3600,
    })
}

fn clerk_claims(org: Value) -> Value {
    let now = now_secs();
    let mut claims = json!({
        "iss": CLERK_ISSUER, "sub": "user_2abc", "sid": "sess_2abc", "azp": AZP,
        "iat": now - 5, "nbf": now - 10, "exp": now + 3600,
    });
    if let (Some(claims), Value::Object(org)) = (claims.as_object_mut(), org) {
        claims.extend(org);
    }
    claims
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let trusted = SigningKey::generate(TRUSTED_KID).expect("keygen");
    let impostor = SigningKey::generate(TRUSTED_KID).expect("keygen");
    let rogue = SigningKey::generate("rogue-1").expect("keygen");
    let dir = temp_dir("keys");
    let jwks = dir.join("jwks.json");
    let document = json!({ "keys": [trusted.public_jwk().expect("jwk")] });
    std::fs::write(&jwks, serde_json::to_vec(&document).expect("json")).expect("write jwks");
    let cache = KeyCacheConfig {
        min_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(86_400),
        refresh_cooldown: Duration::from_secs(3600),
        max_stale: Duration::from_secs(3600),
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
    let auth = Authenticator::new(
        Some(GoogleVerifier::new(
            google.clone(),
            KeyCache::new("google", google.keys, http.clone(), cache.clone()),
            leeway,
        )),
        Some(ClerkVerifier::new(
            clerk.clone(),
            KeyCache::new("clerk", clerk.keys, http, cache),
            leeway,
        )),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let google_user = Principal::Google(GoogleIdentity {
        email: SERVICE_ACCOUNT.to_owned(),
        subject: "112233445566778899000".to_owned(),
        audience: AUDIENCE.to_owned(),
    });
    let clerk_user = |organization| {
        Principal::Clerk(ClerkUser {
            user_id: "user_2abc".to_owned(),
            session_id: "sess_2abc".to_owned(),
            authorized_party: AZP.to_owned(),
            organization,
        })
    };
    let (fea, per, fpm) = encode_v2_permissions(&["org:jobs:trigger".to_owned()]);
    let v2 = json!({"v": 2, "fea": fea, "o": {"id": "org_1", "slg": "acme", "rol": "admin", "per": per, "fpm": fpm}});
    let v1 = json!({"org_id": "org_1", "org_role": "org:member", "org_permissions": ["org:jobs:trigger"]});
    let org = |role: &str| {
        Some(pushworker::auth::Organization {
            id: "org_1".to_owned(),
            slug: (role == "org:admin").then(|| "acme".to_owned()),
            role: Some(role.to_owned()),
            permissions: ["org:jobs:trigger".to_owned()].into(),
        })
    };
    let valid = vec![
        (trusted.sign(&google_claims()).expect("sign"), google_user),
        (
            trusted.sign(&clerk_claims(v2)).expect("sign"),
            clerk_user(org("org:admin")),
        ),
        (
            trusted.sign(&clerk_claims(v1)).expect("sign"),
            clerk_user(org("org:member")),
        ),
    ];
    // Every valid token must pass once, or the properties below prove nothing.
    for (token, who) in &valid {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        let got = runtime
            .block_on(auth.authenticate(&headers))
            .map(|p| (*p).clone());
        assert_eq!(got.as_ref(), Ok(who), "a valid token was refused");
    }
    Fixture {
        runtime,
        auth,
        trusted,
        impostor,
        rogue,
        valid,
    }
});

/// What is done to a valid token before it is sent.
#[derive(Debug, Clone)]
enum Mutation {
    /// Sent as is (the control: must be accepted).
    Untouched,
    FlipByte(Index, u8),
    Truncate(Index),
    /// Header, payload and signature each taken from any valid token.
    SwapParts([Index; 3]),
    /// The same claims signed by a key under the trusted kid.
    Impostor,
    /// The same claims signed by an untrusted key under its own kid.
    Rogue,
    /// `alg: none` with the signature dropped or kept.
    AlgNone(bool),
    /// HS256 keyed with the trusted key's public modulus (alg confusion).
    Hs256,
    /// The trusted key's header and a signature over other claims.
    OtherClaims(Value),
    /// Arbitrary bytes as the whole Authorization value.
    Raw(Vec<u8>),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        2 => Just(Mutation::Untouched),
        6 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        3 => any::<Index>().prop_map(Mutation::Truncate),
        3 => any::<[Index; 3]>().prop_map(Mutation::SwapParts),
        1 => Just(Mutation::Impostor),
        1 => Just(Mutation::Rogue),
        1 => any::<bool>().prop_map(Mutation::AlgNone),
        1 => Just(Mutation::Hs256),
        2 => jwt_payload().prop_map(Mutation::OtherClaims),
        2 => authorization_value().prop_map(Mutation::Raw),
    ]
    .boxed()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or("");
    serde_json::from_slice(&B64URL.decode(payload).unwrap_or_default()).unwrap_or(Value::Null)
}

/// The Authorization value a mutation makes of valid token `index`.
fn mutate(fx: &Fixture, index: usize, mutation: &Mutation) -> Vec<u8> {
    let token = &fx.valid[index].0;
    let parts = |t: &str| t.split('.').map(str::to_owned).collect::<Vec<_>>();
    let unsigned = |header: Value, claims: &Value| {
        format!(
            "{}.{}",
            B64URL.encode(serde_json::to_vec(&header).expect("json")),
            B64URL.encode(serde_json::to_vec(claims).expect("json"))
        )
    };
    let token: String = match mutation {
        Mutation::Untouched => token.clone(),
        Mutation::FlipByte(at, x) => {
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            return [b"Bearer ".as_slice(), &bytes].concat();
        }
        Mutation::Truncate(at) => token[..at.index(token.len())].to_owned(),
        Mutation::SwapParts(picks) => picks
            .iter()
            .enumerate()
            .map(|(part, pick)| parts(&fx.valid[pick.index(fx.valid.len())].0)[part].clone())
            .collect::<Vec<_>>()
            .join("."),
        Mutation::Impostor => fx.impostor.sign(&claims_of(token)).expect("sign"),
        Mutation::Rogue => fx.rogue.sign(&claims_of(token)).expect("sign"),
        Mutation::AlgNone(keep_signature) => {
            let body = unsigned(
                json!({"alg": "none", "kid": TRUSTED_KID, "typ": "JWT"}),
                &claims_of(token),
            );
            let signature = if *keep_signature {
                parts(token)[2].clone()
            } else {
                String::new()
            };
            format!("{body}.{signature}")
        }
        Mutation::Hs256 => {
            let jwk = fx.trusted.public_jwk().expect("jwk");
            let secret = jwk["n"].as_str().unwrap_or_default().as_bytes().to_vec();
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(TRUSTED_KID.to_owned());
            jsonwebtoken::encode(
                &header,
                &claims_of(token),
                &jsonwebtoken::EncodingKey::from_secret(&secret).expect("an HMAC key"),
            )
            .expect("sign")
        }
        Mutation::OtherClaims(claims) => {
            // A real signature, but over different claims than these.
            let other = fx.trusted.sign(&json!({"other": true})).expect("sign");
            let header = B64URL
                .decode(parts(token)[0].as_bytes())
                .unwrap_or_default();
            let header: Value = serde_json::from_slice(&header).unwrap_or(Value::Null);
            format!("{}.{}", unsigned(header, claims), parts(&other)[2])
        }
        Mutation::Raw(bytes) => return bytes.clone(),
    };
    format!("Bearer {token}").into_bytes()
}

// --- Properties ---------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes: a clean error or a parse, never a panic.
    #[test]
    fn parse_wrapped_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_wrapped(&body);
    }

    /// Any JSON value, and envelope-shaped ones with fields of any type: when
    /// it parses, the id and the data are the ones in the envelope.
    #[test]
    fn parse_wrapped_on_json_values_is_consistent(
        value in prop_oneof![json_value(), envelope_like(), envelope_like()]
    ) {
        let body = serde_json::to_vec(&value).expect("json");
        if let Ok(msg) = parse_wrapped(&body) {
            let message = &value["message"];
            prop_assert!(!msg.meta.message_id.is_empty());
            prop_assert!(
                message["messageId"] == msg.meta.message_id.as_str()
                    || message["message_id"] == msg.meta.message_id.as_str()
            );
            let expected = match message["data"].as_str() {
                None | Some("") => Vec::new(),
                Some(text) => base64::engine::general_purpose::STANDARD
                    .decode(text.trim_end_matches('='))
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(text.trim_end_matches('=')))
                    .expect("accepted data is base64"),
            };
            prop_assert_eq!(msg.data, expected);
            prop_assert!(!msg.meta.unwrapped);
            prop_assert_eq!(msg.meta.delivery_attempt.map(u64::from), value["deliveryAttempt"].as_u64());
        }
    }

    /// Unwrapped deliveries: any headers and body, never a panic, never an
    /// `authorization` (or other transport) attribute; the id, data and
    /// attributes are the ones sent.
    #[test]
    fn parse_unwrapped_keeps_transport_headers_out(
        pairs in prop::collection::vec((header_name(), header_value_bytes()), 0..24),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let headers = header_map(&pairs);
        let result = parse_unwrapped(&headers, &body);
        let id = headers
            .get("x-goog-pubsub-message-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        match (id, result) {
            (None, result) => prop_assert_eq!(result, Err(EnvelopeError::NoMessageId)),
            (Some(_), Err(e)) => prop_assert!(false, "refused with an id: {e}"),
            (Some(id), Ok(msg)) => {
                prop_assert_eq!(&msg.meta.message_id, id);
                prop_assert_eq!(&msg.data, &body);
                prop_assert!(msg.meta.unwrapped);
                for (name, value) in &msg.meta.attributes {
                    prop_assert!(!name.eq_ignore_ascii_case("authorization"));
                    prop_assert!(!name.starts_with("x-goog-"));
                    prop_assert!(headers.get_all(name.as_str()).iter().any(|v| v == value.as_str()));
                }
                // `parse_push` routes the same request to the same parse.
                prop_assert_eq!(parse_push(&headers, &body), Ok(msg));
            }
        }
    }

    /// Any Authorization header(s): never a panic; a token only from exactly
    /// one `Bearer` header, at most 8 KiB, trimmed, and taken from that header.
    #[test]
    fn bearer_token_only_returns_bounded_tokens(
        values in prop::collection::vec(authorization_value(), 0..3)
    ) {
        let mut headers = HeaderMap::new();
        for value in &values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(AUTHORIZATION, value);
            }
        }
        if let Ok(token) = bearer_token(&headers) {
            prop_assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
            prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
            prop_assert_eq!(token, token.trim());
            let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).expect("ascii");
            let (scheme, rest) = value.split_once(' ').expect("a scheme");
            prop_assert!(scheme.eq_ignore_ascii_case("bearer"));
            prop_assert_eq!(rest.trim(), token);
        }
    }

    /// Round trip: `Bearer <token>` in any case and spacing gives the token
    /// back when it fits the cap, and a clean refusal when it does not.
    #[test]
    fn bearer_token_round_trips(
        scheme in "(?i:bearer)",
        before in "[ \t]{0,3}",
        token in prop_oneof![
            3 => "[!-~]{1,64}",
            1 => (MAX_TOKEN_BYTES - 8..MAX_TOKEN_BYTES + 8)
                .prop_map(|n| "x".repeat(n)),
        ],
        after in "[ \t]{0,3}",
    ) {
        let mut headers = HeaderMap::new();
        let value = format!("{scheme} {before}{token}{after}");
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).expect("header"));
        let result = bearer_token(&headers);
        if token.len() <= MAX_TOKEN_BYTES {
            prop_assert_eq!(result, Ok(token.as_str()));
        } else {
            prop_assert_eq!(result, Err(AuthError::InvalidToken("token is too large")));
        }
    }

    /// Any string: never a panic, and Ok only as the independent check says.
    #[test]
    fn inspect_on_arbitrary_strings(
        token in prop_oneof![".{0,200}", "[A-Za-z0-9_=-]{0,40}(\\.[A-Za-z0-9_=-]{0,40}){0,4}"]
    ) {
        let got = inspect(&token).ok().map(|u| (u.kid, u.iss));
        prop_assert_eq!(got, expected_inspect(&token));
    }

    /// Near-JWTs with random algs, kids, key references, crit, payloads and
    /// damage: Ok exactly when alg is RS256, a kid is present, no
    /// jku/x5u/jwk/x5c/crit exists and the payload has an issuer.
    #[test]
    fn inspect_on_near_jwts(token in near_jwt()) {
        let got = inspect(&token).ok().map(|u| (u.kid, u.iss));
        prop_assert_eq!(got, expected_inspect(&token));
    }

    /// Replay's message files: any message object either is refused with an
    /// error or becomes a delivery the worker accepts, with the same id,
    /// data and attributes (a replayed message must not be one Pub/Sub
    /// could never deliver).
    #[test]
    fn replay_messages_become_deliverable_envelopes(
        messages in prop::collection::vec(
            object(vec![
                ("data", maybe(prop_oneof![
                    2 => json_value(),
                    1 => prop::collection::vec(any::<u8>(), 0..32)
                        .prop_map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
                ].boxed())),
                ("attributes", maybe(prop_oneof![
                    2 => prop::collection::btree_map(text(8), text(8), 0..4).prop_map(|m| json!(m)),
                    1 => json_value(),
                ].boxed())),
                ("messageId", maybe(string_or_json(text(8)))),
                ("orderingKey", maybe(string_or_json(text(8)))),
                ("publishTime", maybe(string_or_json(text(8)))),
            ]),
            1..4,
        ),
    ) {
        let dir = temp_dir("replay");
        let file = dir.join("messages.json");
        std::fs::write(&file, serde_json::to_vec(&messages).expect("json")).expect("write");
        if let Ok(out) = read_messages(std::slice::from_ref(&file), "http://127.0.0.1:8080") {
            prop_assert_eq!(out.len(), messages.len());
            for outgoing in out {
                let body = serde_json::to_vec(&wrap(&outgoing.meta, &outgoing.data)).expect("json");
                let parsed = parse_wrapped(&body);
                prop_assert!(parsed.is_ok(), "{}: {:?} for {:?}", outgoing.origin, parsed, outgoing.meta);
                let parsed = parsed.expect("checked");
                prop_assert_eq!(parsed.data, outgoing.data);
                prop_assert_eq!(parsed.meta.message_id, outgoing.meta.message_id);
                prop_assert_eq!(parsed.meta.attributes, outgoing.meta.attributes);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Round trip: `wrap` then `parse_wrapped` gives back the metadata and the
    /// data (0..64 KiB), for any id, attributes and optional fields. An empty
    /// ordering key is no ordering key; an empty id is refused.
    #[test]
    fn wrap_then_parse_wrapped_round_trips(
        meta in message_meta(),
        data in prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..64),
            1 => prop::collection::vec(any::<u8>(), 0..64 * 1024),
        ],
    ) {
        let body = serde_json::to_vec(&wrap(&meta, &data)).expect("json");
        let parsed = parse_wrapped(&body);
        if meta.message_id.is_empty() {
            prop_assert_eq!(parsed, Err(EnvelopeError::NoMessageId));
        } else {
            let parsed = parsed.expect("a wrapped message parses");
            let mut expected = meta.clone();
            expected.ordering_key = meta.ordering_key.filter(|k| !k.is_empty());
            prop_assert_eq!(parsed.meta, expected);
            prop_assert_eq!(parsed.data, data);
        }
    }
}

proptest! {
    // Each case may sign a token (RSA): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// The full core over a configured authenticator: valid tokens mutated
    /// (bytes flipped, truncated, parts swapped, re-signed by other keys,
    /// alg none, HS256 with the public key, a signature over other claims),
    /// alone or beside arbitrary Authorization values. Never a panic, and
    /// never accepted unless the token is one the trusted key signed, as
    /// signed, and then as who it names.
    #[test]
    fn authenticate_accepts_only_tokens_signed_by_the_trusted_key(
        index in any::<Index>(),
        mutation in mutation(),
        extra in prop::option::weighted(0.1, authorization_value()),
    ) {
        let fx = &*FIXTURE;
        let index = index.index(fx.valid.len());
        let value = mutate(fx, index, &mutation);
        let mut headers = HeaderMap::new();
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            return Ok(());
        };
        headers.append(AUTHORIZATION, value);
        if let Some(extra) = extra.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.append(AUTHORIZATION, extra);
        }
        let result = fx
            .runtime
            .block_on(fx.auth.authenticate(&headers))
            .map(|p| (*p).clone());
        if let Ok(principal) = &result {
            let token = bearer_token(&headers).expect("accepted, so a bearer token");
            let signed = fx.valid.iter().find(|(t, _)| t == token);
            prop_assert!(signed.is_some(), "accepted a token the trusted key did not sign: {token}");
            prop_assert_eq!(principal, &signed.expect("checked").1);
        }
        if matches!(mutation, Mutation::Untouched) && headers.get_all(AUTHORIZATION).iter().count() == 1 {
            prop_assert_eq!(result, Ok(fx.valid[index].1.clone()));
        }
    }

    /// Clerk v2 organization claims: any `o`/`fea` strings in a token the
    /// trusted key signed never panic the parser, permissions only name
    /// features and names that were sent; and permissions encoded the way
    /// Clerk does come back exactly.
    #[test]
    fn clerk_v2_organization_claims(
        per in prop_oneof![text(40), "[a-z]{1,4}(,[a-z]{0,4}){0,140}"],
        fpm in prop_oneof![text(40), "[0-9 ]{0,40}(,[0-9+ -]{0,40}){0,4}"],
        fea in prop_oneof![text(40), "(u|o|uo|x)?:[a-z]{0,4}(,(u|o|uo|x)?:[a-z]{0,4}){0,4}"],
        wanted in prop::collection::btree_set(("[a-z_]{1,3}", "[a-z_]{1,6}"), 0..160),
        rol in prop::option::of(text(12)),
    ) {
        let fx = &*FIXTURE;
        let authenticate = |org: Value| {
            let token = fx.trusted.sign(&clerk_claims(org)).expect("sign");
            let mut headers = HeaderMap::new();
            headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
            fx.runtime
                .block_on(fx.auth.authenticate(&headers))
                .map(|p| (*p).clone())
        };
        let organization = |principal: Result<Principal, AuthError>| match principal {
            Ok(Principal::Clerk(user)) => user.organization,
            other => panic!("a valid Clerk token was refused: {other:?}"),
        };

        // Arbitrary strings.
        let org = organization(authenticate(json!({
            "v": 2, "fea": fea, "o": {"id": "org_1", "rol": rol, "per": per, "fpm": fpm},
        })))
        .expect("an organization");
        prop_assert_eq!(org.role, rol.map(|r| format!("org:{r}")));
        // Only `org:<feature>:<name>` of an org-scoped feature (`o:`, `uo:`)
        // in `fea` and a name in `per`.
        let features: Vec<&str> = fea
            .split(',')
            .filter_map(|f| f.trim().split_once(':'))
            .filter(|(scope, _)| scope.contains('o'))
            .map(|(_, name)| name)
            .collect();
        for permission in &org.permissions {
            prop_assert!(
                features.iter().any(|f| per
                    .split(',')
                    .any(|n| !n.trim().is_empty() && *permission == format!("org:{f}:{}", n.trim()))),
                "{} is not one that was sent", permission
            );
        }

        // Encoded as Clerk does: the same permissions come back, as long as
        // the names fit the 128-bit masks; past that, nothing unasked-for.
        let names = wanted.iter().map(|(_, n)| n).collect::<BTreeSet<_>>().len();
        let wanted: BTreeSet<String> =
            wanted.into_iter().map(|(f, n)| format!("org:{f}:{n}")).collect();
        let (fea, per, fpm) = encode_v2_permissions(&wanted.iter().cloned().collect::<Vec<_>>());
        let org = organization(authenticate(json!({
            "v": 2, "fea": fea, "o": {"id": "org_1", "rol": "member", "per": per, "fpm": fpm},
        })))
        .expect("an organization");
        if names <= MAX_V2_PERMISSION_NAMES {
            prop_assert_eq!(org.permissions, wanted);
        } else {
            prop_assert!(org.permissions.is_subset(&wanted));
        }
    }
}

/// Attribute maps survive a wrap even with keys that need JSON escaping (a
/// fixed case beside the generated ones, kept as an example).
#[test]
fn attributes_with_escapes_round_trip() {
    let meta = MessageMeta {
        message_id: "1".into(),
        attributes: BTreeMap::from([("\"\\\u{0}ü".to_owned(), "\n\u{7f}\u{1F600}".to_owned())]),
        ..MessageMeta::default()
    };
    let body = serde_json::to_vec(&wrap(&meta, b"\0\xff")).expect("json");
    let parsed = parse_wrapped(&body).expect("parses");
    assert_eq!(parsed.meta, meta);
    assert_eq!(parsed.data, b"\0\xff");
}
