//! `POST /pubsub/push`: every outcome and the answer Pub/Sub gets for it.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

/// A wrapped push reaches the job with its decoded data and metadata; 204 acks.
#[tokio::test]
async fn wrapped_push_runs_the_job_and_acks() {
    let app = spawn_app().await;
    let body = envelope(
        br#"{"order": 42}"#,
        &[("job", "record"), ("tenant", "acme")],
        "1001",
    );
    let response = app.push(&google_token(), body.to_string()).await;
    assert_eq!(response.status(), 204);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let run = &seen[0];
    assert_eq!(run.payload, json!({"order": 42}));
    let meta = run.meta.as_ref().unwrap();
    assert_eq!(meta.message_id, "1001");
    assert_eq!(meta.attributes["tenant"], "acme");
    assert_eq!(
        meta.subscription.as_deref(),
        Some("projects/acme-prod/subscriptions/work-push")
    );
    assert_eq!(
        meta.publish_time.as_deref(),
        Some("2026-11-28T10:00:00.123Z")
    );
    assert_eq!(run.attempt, 1);
    assert_eq!(run.principal.kind(), "google");
}

/// The job can be named by the path instead of the attribute, and the
/// delivery attempt comes through.
#[tokio::test]
async fn push_to_a_job_path_and_delivery_attempt() {
    let app = spawn_app().await;
    let mut body = envelope(br#"{"n": 1}"#, &[], "2002");
    body["deliveryAttempt"] = json!(4);
    let response = app
        .push_to("record", &google_token(), body.to_string())
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.seen()[0].attempt, 4);
}

/// Exactly what Pub/Sub sends: snake_case copies beside camelCase, no
/// attributes, data absent (an empty payload means `{}`).
#[tokio::test]
async fn envelope_as_pubsub_sends_it() {
    let app = spawn_app().await;
    let body = json!({
        "message": {
            "messageId": "3003", "message_id": "3003",
            "publishTime": "2026-11-28T10:00:00Z", "publish_time": "2026-11-28T10:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    });
    assert_eq!(
        app.push_to("record", &google_token(), body.to_string())
            .await
            .status(),
        204
    );
    assert_eq!(app.seen()[0].payload, json!({}));
}

/// Unwrapped delivery: raw body, metadata and attributes from headers, and
/// the emulator's form Content-Type is ignored.
#[tokio::test]
async fn unwrapped_push_reads_headers() {
    let app = spawn_app().await;
    let response = app
        .push_unwrapped(
            &google_token(),
            &[
                ("x-goog-pubsub-message-id", "4004"),
                ("x-goog-pubsub-publish-time", "2026-11-28T10:00:00Z"),
                (
                    "x-goog-pubsub-subscription-name",
                    "projects/p/subscriptions/raw",
                ),
                ("job", "record"),
                ("tenant", "acme"),
            ],
            br#"{"raw": true}"#.to_vec(),
        )
        .await;
    assert_eq!(response.status(), 204);
    let run = &app.seen()[0];
    assert_eq!(run.payload, json!({"raw": true}));
    let meta = run.meta.as_ref().unwrap();
    assert_eq!(meta.message_id, "4004");
    assert!(meta.unwrapped);
    assert_eq!(
        meta.attributes.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert!(
        !meta.attributes.contains_key("authorization"),
        "the token is never an attribute"
    );
}

/// Every failure is a non-2xx (a nack): permanent ones 4xx, transient 5xx.
#[tokio::test]
async fn failures_are_never_acked() {
    let app = spawn_app().await;
    let token = google_token();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "this is not json".into(), 400, "invalid_envelope"),
        ("no message", json!({"subscription": "s"}).to_string(), 400, "invalid_envelope"),
        ("no message id", json!({"message": {"data": b64("{}"), "attributes": {"job": "echo"}}}).to_string(), 400, "invalid_envelope"),
        ("bad base64", json!({"message": {"data": "%%%not base64%%%", "messageId": "1", "attributes": {"job": "echo"}}}).to_string(), 400, "invalid_envelope"),
        ("no job named", envelope(b"{}", &[], "5").to_string(), 422, "no_job"),
        ("unknown job", envelope(b"{}", &[("job", "nope")], "6").to_string(), 404, "unknown_job"),
        ("data is not JSON", envelope(b"\xff\xfe", &[("job", "echo")], "7").to_string(), 400, "payload_not_json"),
        ("payload does not fit", envelope(br#"{"message": 5}"#, &[("job", "echo")], "8").to_string(), 422, "invalid_payload"),
        ("job's permanent error", envelope(b"{}", &[("job", "reject")], "9").to_string(), 422, "job_failed_permanent"),
        ("job's transient error", envelope(b"{}", &[("job", "flaky")], "10").to_string(), 503, "job_failed_transient"),
        ("job panics", envelope(b"{}", &[("job", "explode")], "11").to_string(), 500, "job_panicked"),
        ("job times out", envelope(br#"{"millis": 5000}"#, &[("job", "sleep")], "12").to_string(), 504, "job_timeout"),
    ];
    for (case, body, status, error) in cases {
        let response = app.push(&token, body).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{case}: {body}");
        if status >= 500 {
            assert!(
                !body.to_string().contains("hunter2"),
                "{case}: 5xx bodies are opaque"
            );
        }
    }
    // The server survived the panic and the timeout.
    let ok = app
        .push(
            &token,
            envelope(br#"{"message": "still here"}"#, &[("job", "echo")], "13").to_string(),
        )
        .await;
    assert_eq!(ok.status(), 204);
}

/// A wrong payload names the failing field.
#[tokio::test]
async fn invalid_payload_names_the_field() {
    let app = spawn_app().await;
    let body = envelope(
        br#"{"url": "http://127.0.0.1:1/", "timeout_ms": "soon"}"#,
        &[("job", "webhook")],
        "1",
    );
    let response = app.push(&google_token(), body.to_string()).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["path"], "timeout_ms");
}

/// Bodies over Pub/Sub's limit get 413; a message at the limit is handled.
#[tokio::test]
async fn too_large_is_413_and_the_limit_itself_works() {
    let app = spawn_app().await;
    let big = format!(r#"{{"message": "{}"}}"#, "x".repeat(11 * 1024 * 1024));
    let response = app
        .push(
            &google_token(),
            envelope(big.as_bytes(), &[("job", "echo")], "1").to_string(),
        )
        .await;
    assert_eq!(response.status(), 413);

    let at_limit = format!(r#"{{"message": "{}"}}"#, "y".repeat(10 * 1024 * 1024 - 20));
    let response = app
        .push(
            &google_token(),
            envelope(at_limit.as_bytes(), &[("job", "echo")], "2").to_string(),
        )
        .await;
    assert_eq!(response.status(), 204);
}

/// Who may push: allowed service accounts, and Clerk users with the trigger
/// permission (an admin posting an envelope by hand); nobody else.
#[tokio::test]
async fn who_may_push() {
    let app = spawn_app().await;
    let body = envelope(br#"{"message": "hi"}"#, &[("job", "echo")], "1").to_string();
    assert_eq!(app.push(&google_token(), body.clone()).await.status(), 204);
    assert_eq!(
        app.push(&clerk_token(&[TRIGGER]), body.clone())
            .await
            .status(),
        204
    );
    let denied = app
        .push(&clerk_token(&["org:jobs:read"]), body.clone())
        .await;
    assert_eq!(denied.status(), 403);
    assert!(challenge(&denied).contains("insufficient_scope"));
    let anonymous = app
        .client
        .post(format!("{}/pubsub/push", app.addr))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
