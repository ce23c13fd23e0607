//! The key cache against a real key server that counts fetches.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Header};
use pushworker::auth::dev::SigningKey;

use crate::helpers::*;

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys are prefetched at start-up: the first request finds them warm, and a
/// burst of requests costs no further fetch while `max-age` holds.
#[tokio::test]
async fn keys_are_prefetched_and_cached_for_max_age() {
    let app = spawn_app().await;
    wait_for("prefetch", Duration::from_secs(5), || {
        app.keys.google_fetches() == 1
    })
    .await;
    let readyz = app.readyz().await;
    assert_eq!(readyz.status(), 200);
    for _ in 0..50 {
        assert_eq!(app.whoami(&google_token()).await.status(), 200);
    }
    assert_eq!(
        app.keys.google_fetches(),
        1,
        "one fetch serves the whole burst"
    );
    assert_eq!(app.keys.clerk_fetches(), 1);
}

/// `Cache-Control: max-age` sets the TTL: past it, one background refresh.
#[tokio::test]
async fn cache_control_max_age_is_honoured() {
    let keys = KeyServer::start().await;
    keys.set_max_age(2);
    let app = spawn_app_on(
        keys,
        Options {
            min_ttl: Duration::from_millis(500),
            cooldown: Duration::from_millis(100),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    assert_eq!(app.keys.google_fetches(), 1);
    // Well within max-age=2: no refetch.
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    assert_eq!(app.keys.google_fetches(), 1);
    // The refreshed set lives long, so however slowly the 20 requests below
    // run, only the first set's expiry can cause a refresh.
    app.keys.set_max_age(3600);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Past max-age: the hit is served from the old keys and a refresh runs.
    for _ in 0..20 {
        assert_eq!(app.whoami(&google_token()).await.status(), 200);
    }
    wait_for("refresh after max-age", Duration::from_secs(3), || {
        app.keys.google_fetches() >= 2
    })
    .await;
    assert_eq!(
        app.keys.google_fetches(),
        2,
        "exactly one refresh for 20 requests"
    );
}

/// A long max-age is clamped down to the ceiling and a tiny one up to the floor.
#[test]
fn max_age_is_parsed_from_cache_control() {
    use pushworker::auth::keys::max_age;
    assert_eq!(
        max_age("public, max-age=21139, must-revalidate"),
        Some(Duration::from_secs(21139))
    );
    assert_eq!(max_age("no-cache"), None);
    assert_eq!(max_age("MAX-AGE=\"5\""), Some(Duration::from_secs(5)));
}

/// A rotated key set is picked up on the first token with the new kid; the
/// retired key stops verifying.
#[tokio::test]
async fn rotation_is_picked_up() {
    let app = spawn_app_with(Options {
        cooldown: Duration::from_millis(0),
        ..Options::default()
    })
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    let next = SigningKey::generate("google-2").unwrap();
    app.keys.set_google_keys(vec![next.public_jwk().unwrap()]);
    let rotated = next.sign(&google_claims()).unwrap();
    assert_eq!(
        app.whoami(&rotated).await.status(),
        200,
        "new kid triggers a refresh"
    );
    assert_eq!(app.keys.google_fetches(), 2);
    assert_eq!(
        app.whoami(&google_token()).await.status(),
        401,
        "the retired key is gone"
    );
}

/// A flood of unknown kids costs at most one fetch per cooldown.
#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    let app = spawn_app_with(Options {
        cooldown: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    let before = app.keys.google_fetches();
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(format!("random-{i}-{}", now()));
            KEYS.google
                .sign_with_header(&header, &google_claims())
                .unwrap()
        })
        .collect();
    for chunk in tokens.chunks(50) {
        let responses = futures::future::join_all(chunk.iter().map(|t| app.whoami(t))).await;
        for r in responses {
            assert_eq!(r.status(), 401);
        }
    }
    let extra = app.keys.google_fetches() - before;
    assert!(
        extra <= 1,
        "1000 unknown kids caused {extra} fetches; at most 1 per cooldown"
    );
    assert_eq!(
        app.whoami(&google_token()).await.status(),
        200,
        "valid tokens unaffected"
    );
}

/// The key server going down after warm-up does not stop verification: the
/// last good keys keep serving while refreshes fail (at most one per cooldown).
#[tokio::test]
async fn key_server_down_after_warm_up_keeps_old_keys() {
    let keys = KeyServer::start().await;
    keys.set_max_age(0);
    let app = spawn_app_on(
        keys,
        Options {
            min_ttl: Duration::from_millis(200),
            cooldown: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    app.keys.set_mode(Mode::Down);
    let before = app.keys.google_fetches();
    let start = Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            app.whoami(&google_token()).await.status(),
            200,
            "old keys serve while the server is down"
        );
        requests += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetches = app.keys.google_fetches() - before;
    assert!(
        fetches <= 6,
        "{fetches} fetches in 1.5 s with a 300 ms cooldown ({requests} requests)"
    );
    for mode in [Mode::Garbage, Mode::Slow(Duration::from_secs(5))] {
        app.keys.set_mode(mode);
        assert_eq!(app.whoami(&google_token()).await.status(), 200);
    }
}

/// Stale keys serve only for a bounded time; then the issuer is unavailable (503).
#[tokio::test]
async fn stale_keys_expire_after_the_bound() {
    let keys = KeyServer::start().await;
    keys.set_max_age(0);
    let app = spawn_app_on(
        keys,
        Options {
            min_ttl: Duration::from_millis(200),
            max_stale: Duration::from_millis(300),
            cooldown: Duration::from_millis(100),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 200);
    app.keys.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let response = app.whoami(&google_token()).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    app.keys.set_mode(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        app.whoami(&google_token()).await.status(),
        200,
        "recovers without restart"
    );
}

/// No keys at all: 503 (so Pub/Sub retries), never 401; readiness says so.
#[tokio::test]
async fn no_keys_at_all_is_503() {
    let keys = KeyServer::start().await;
    keys.set_mode(Mode::Down);
    let app = spawn_app_on(keys, Options::default()).await;
    let response = app.whoami(&google_token()).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "10");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "keys_unavailable");
    let push = app
        .push(
            &google_token(),
            envelope(b"{}", &[("job", "echo")], "1").to_string(),
        )
        .await;
    assert_eq!(
        push.status(),
        503,
        "a push is nacked, not refused as unauthorized"
    );
    assert_eq!(app.readyz().await.status(), 503);
    let fetches = app.keys.google_fetches();
    for _ in 0..20 {
        assert_eq!(app.whoami(&google_token()).await.status(), 503);
    }
    assert_eq!(
        app.keys.google_fetches(),
        fetches,
        "no fetch storm while cooling down"
    );
}

/// A slow key server is bounded by the fetch timeout.
#[tokio::test]
async fn slow_key_server_is_bounded_by_the_timeout() {
    let keys = KeyServer::start().await;
    keys.set_mode(Mode::Slow(Duration::from_secs(10)));
    let app = spawn_app_on(
        keys,
        Options {
            fetch_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    let start = Instant::now();
    let response = app.whoami(&google_token()).await;
    assert_eq!(response.status(), 503);
    // Far under the server's 10 s, with room for a loaded machine.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}
