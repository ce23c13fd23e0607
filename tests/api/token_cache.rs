//! The verified-token cache through the real worker: a repeated token skips
//! the verifier, and the cache never accepts what the verifier would refuse
//! (expired, key rotated out or replaced, tampered), stays within its bound
//! and answers each concurrent caller with its own principal.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use pushworker::auth::dev::SigningKey;
use serde_json::{Value, json};

use crate::helpers::*;

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// A token sent again is answered from the cache: one verification, then
/// hits, and the same principal each time.
#[tokio::test]
async fn a_repeated_token_is_verified_once() {
    let app = spawn_app().await;
    let token = google_token();
    let first: Value = app.whoami(&token).await.json().await.unwrap();
    for _ in 0..5 {
        let response = app.whoami(&token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["principal"], first["principal"]);
    }
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "hits"), 5, "{stats}");
    assert_eq!(stat(&stats, "misses"), 1, "{stats}");
    assert_eq!(stat(&stats, "entries"), 1, "{stats}");
    assert_eq!(stat(&stats, "capacity"), 10_000, "{stats}");
}

/// A cached token is refused as soon as the verifier would refuse it: the
/// same leeway (5 s here) past `exp`, not a second more.
#[tokio::test]
async fn a_cached_token_is_refused_once_expired() {
    let app = spawn_app().await;
    // Already 3 s past exp: accepted within the 5 s leeway, for 2 s more.
    let exp = now() - 3;
    let token = KEYS
        .google
        .sign(&with(google_claims(), "exp", json!(exp)))
        .unwrap();
    assert_eq!(app.whoami(&token).await.status(), 200);
    assert_eq!(app.whoami(&token).await.status(), 200);
    assert!(stat(&app.token_cache_stats().await, "hits") >= 1);
    // Until exp + leeway it stays accepted; past it, refused.
    loop {
        let before = now();
        if before > exp + 5 {
            break;
        }
        let status = app.whoami(&token).await.status();
        if now() == before {
            assert_eq!(status, 200, "within the leeway");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = app.whoami(&token).await;
    assert_eq!(response.status(), 401);
    assert!(
        challenge(&response).contains("expired"),
        "{:?}",
        challenge(&response)
    );
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "dropped"), 1, "{stats}");
    assert_eq!(stat(&stats, "entries"), 0, "{stats}");
}

/// A cached token is refused once its key has left the key set: the entry is
/// dropped and the verifier answers (unknown kid).
#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_rotates_out() {
    let app = spawn_app_with(Options {
        cooldown: Duration::from_millis(0),
        ..Options::default()
    })
    .await;
    let token = google_token();
    assert_eq!(app.whoami(&token).await.status(), 200);
    assert_eq!(app.whoami(&token).await.status(), 200);
    let next = SigningKey::generate("google-2").unwrap();
    app.keys.set_google_keys(vec![next.public_jwk().unwrap()]);
    // The new kid makes the worker fetch the rotated set.
    let rotated = next.sign(&google_claims()).unwrap();
    assert_eq!(app.whoami(&rotated).await.status(), 200);
    assert_eq!(app.keys.google_fetches(), 2);
    let response = app.whoami(&token).await;
    assert_eq!(response.status(), 401, "the retired key's token is refused");
    assert!(
        challenge(&response).contains("kid"),
        "{}",
        challenge(&response)
    );
    assert!(stat(&app.token_cache_stats().await, "dropped") >= 1);
}

/// The same kid re-published with other material (a replaced key) drops the
/// entries verified with the old one.
#[tokio::test]
async fn a_cached_token_is_refused_once_its_kid_names_another_key() {
    let app = spawn_app_with(Options {
        cooldown: Duration::from_millis(0),
        ..Options::default()
    })
    .await;
    let token = google_token();
    assert_eq!(app.whoami(&token).await.status(), 200);
    assert_eq!(app.whoami(&token).await.status(), 200);
    app.keys
        .set_google_keys(vec![KEYS.rogue.public_jwk_with_kid("google-1").unwrap()]);
    // An unknown kid makes the worker fetch the new set.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("not-there".into());
    let unknown = KEYS
        .google
        .sign_with_header(&header, &google_claims())
        .unwrap();
    assert_eq!(app.whoami(&unknown).await.status(), 401);
    assert_eq!(app.keys.google_fetches(), 2);
    let response = app.whoami(&token).await;
    assert_eq!(response.status(), 401);
    assert!(
        challenge(&response).contains("signature"),
        "{}",
        challenge(&response)
    );
}

/// A refresh that serves the same keys keeps the cached entries: no
/// re-verification after a routine refresh.
#[tokio::test]
async fn a_refresh_with_the_same_keys_keeps_the_entries() {
    let keys = KeyServer::start().await;
    keys.set_max_age(0);
    let app = spawn_app_on(
        keys,
        Options {
            min_ttl: Duration::from_millis(200),
            cooldown: Duration::from_millis(100),
            ..Options::default()
        },
    )
    .await;
    let token = google_token();
    assert_eq!(app.whoami(&token).await.status(), 200);
    let fetches = app.keys.google_fetches();
    // Past the TTL a hit starts the background refresh (as a lookup would).
    let start = std::time::Instant::now();
    while app.keys.google_fetches() == fetches {
        assert!(start.elapsed() < Duration::from_secs(5), "no refresh");
        assert_eq!(app.whoami(&token).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.whoami(&token).await.status(), 200);
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "misses"), 1, "verified once: {stats}");
    assert_eq!(stat(&stats, "dropped"), 0, "{stats}");
}

/// A tampered token never hits the entry of the token it was made from,
/// whatever prefix they share.
#[tokio::test]
async fn a_tampered_token_never_hits() {
    let app = spawn_app().await;
    let token = google_token();
    assert_eq!(app.whoami(&token).await.status(), 200);
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let tampered = [
        format!("{signed}.{}", String::from_utf8(flipped).unwrap()),
        format!("{token}A"),
        format!("{signed}.{}", &signature[..signature.len() - 4]),
    ];
    for bad in &tampered {
        assert!(bad.starts_with(signed));
        assert_eq!(app.whoami(bad).await.status(), 401, "{bad}");
    }
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "hits"), 0, "{stats}");
    assert_eq!(
        stat(&stats, "entries"),
        1,
        "refusals are not cached: {stats}"
    );
}

/// Authorization is checked on every request, cached principal or not.
#[tokio::test]
async fn permissions_are_still_checked_on_a_cached_principal() {
    let app = spawn_app().await;
    let viewer = clerk_token(&["org:reports:read"]);
    assert_eq!(app.whoami(&viewer).await.status(), 200);
    let response = app
        .trigger("echo", &viewer, &json!({ "message": "hi" }))
        .await;
    assert_eq!(response.status(), 403);
    assert!(stat(&app.token_cache_stats().await, "hits") >= 1);
}

/// The cache holds at most its bound.
#[tokio::test]
async fn the_cache_stays_within_its_bound() {
    let app = spawn_app_with(Options {
        token_cache_max_entries: 32,
        ..Options::default()
    })
    .await;
    for i in 0..100 {
        let token = KEYS
            .google
            .sign(&with(google_claims(), "jti", json!(format!("t{i}"))))
            .unwrap();
        assert_eq!(app.whoami(&token).await.status(), 200);
    }
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "capacity"), 32, "{stats}");
    assert!(stat(&stats, "entries") <= 32, "{stats}");
    assert_eq!(stat(&stats, "misses"), 100, "{stats}");
}

/// With the cache off, every request is verified.
#[tokio::test]
async fn zero_turns_the_cache_off() {
    let app = spawn_app_with(Options {
        token_cache_max_entries: 0,
        ..Options::default()
    })
    .await;
    let token = google_token();
    for _ in 0..3 {
        assert_eq!(app.whoami(&token).await.status(), 200);
    }
    assert_eq!(app.token_cache_stats().await, Value::Null);
}

/// Many callers at once, each with one of a few tokens (Google and Clerk,
/// valid and tampered): each gets its own principal or its own refusal.
#[tokio::test]
async fn concurrent_callers_each_get_their_own_answer() {
    let app = spawn_app().await;
    let mut cases: Vec<(String, Option<String>)> = Vec::new();
    for i in 0..6 {
        let email = if i % 2 == 0 {
            SERVICE_ACCOUNT
        } else {
            SCHEDULER_ACCOUNT
        };
        let google = KEYS
            .google
            .sign(&with(
                with(google_claims(), "email", json!(email)),
                "sub",
                json!(format!("sub-{i}")),
            ))
            .unwrap();
        cases.push((google, Some(format!("sub-{i}"))));
        let clerk = KEYS
            .clerk
            .sign(&with(
                clerk_v2_claims(&[TRIGGER]),
                "sub",
                json!(format!("user_{i}")),
            ))
            .unwrap();
        cases.push((clerk, Some(format!("user_{i}"))));
    }
    let forged = format!("{}x", cases[0].0);
    cases.push((forged, None));
    let requests = (0..400).map(|n| {
        let (token, expected) = cases[n % cases.len()].clone();
        let app = &app;
        async move {
            let response = app.whoami(&token).await;
            match expected {
                Some(id) => {
                    assert_eq!(response.status(), 200);
                    let body: Value = response.json().await.unwrap();
                    let principal = &body["principal"];
                    let got = principal["subject"]
                        .as_str()
                        .or(principal["user_id"].as_str())
                        .unwrap();
                    assert_eq!(got, id);
                }
                None => assert_eq!(response.status(), 401),
            }
        }
    });
    futures::future::join_all(requests).await;
    let stats = app.token_cache_stats().await;
    assert_eq!(stat(&stats, "entries"), 12, "{stats}");
    assert_eq!(
        stat(&stats, "hits") + stat(&stats, "misses"),
        400,
        "{stats}"
    );
}
