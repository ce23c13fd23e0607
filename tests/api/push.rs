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

/// Who may push: allowed service accounts only. A person, even one who may
/// trigger jobs, is refused on every push route (wrapped, by path, unwrapped)
/// with 403 `insufficient_scope` naming `POST /jobs/{name}`; nothing of a
/// refused push runs or is recorded.
#[tokio::test]
async fn who_may_push() {
    let app = spawn_app().await;
    let body = envelope(br#"{"message": "hi"}"#, &[("job", "echo")], "1").to_string();
    assert_eq!(app.push(&google_token(), body.clone()).await.status(), 204);
    let scheduler = KEYS
        .google
        .sign(&with(google_claims(), "email", json!(SCHEDULER_ACCOUNT)))
        .unwrap();
    assert_eq!(
        app.push(
            &scheduler,
            envelope(br#"{"message": "hi"}"#, &[("job", "echo")], "2").to_string()
        )
        .await
        .status(),
        204,
        "any allowed service account"
    );
    let unwrapped_headers = [("x-goog-pubsub-message-id", "3"), ("job", "echo")];
    let unwrapped = br#"{"message": "hi"}"#.to_vec();
    for token in [clerk_token(&[TRIGGER]), clerk_token(&["org:jobs:read"])] {
        let refused = [
            ("wrapped", app.push(&token, body.clone()).await),
            ("by path", app.push_to("echo", &token, body.clone()).await),
            (
                "unwrapped",
                app.push_unwrapped(&token, &unwrapped_headers, unwrapped.clone())
                    .await,
            ),
        ];
        for (route, response) in refused {
            assert_eq!(response.status(), 403, "{route}");
            let challenge = challenge(&response);
            assert!(
                challenge.contains(r#"error="insufficient_scope""#),
                "{route}: {challenge}"
            );
            assert!(
                challenge.contains("POST /jobs/{name}"),
                "{route}: {challenge}"
            );
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["error"], "insufficient_scope", "{route}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("POST /jobs/{name}"),
                "{route}: {answer}"
            );
        }
    }
    let anonymous = app
        .client
        .post(format!("{}/pubsub/push", app.addr))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let runs = app.all_runs("").await;
    assert!(
        runs.iter().all(|r| r["principal"]["kind"] == "google"),
        "a refused push is not recorded: {runs:?}"
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
}

/// The pre-claim: a person who may trigger jobs posts an envelope with the
/// id of a message Pub/Sub will deliver later (data A), and is refused; the
/// real delivery (the service account, data B) then runs and succeeds, and
/// the person's way to run a job, `POST /jobs/{name}`, still works.
async fn a_person_cannot_preclaim_a_message(app: &TestApp) {
    let person = clerk_token(&[TRIGGER]);
    let forged = envelope(br#"{"by": "person"}"#, &[("job", "count")], "m-pre").to_string();
    let refused = app.push(&person, forged.clone()).await;
    assert_eq!(refused.status(), 403);
    assert!(challenge(&refused).contains("insufficient_scope"));
    assert_eq!(app.push_to("count", &person, forged).await.status(), 403);
    let refused = app
        .push_unwrapped(
            &person,
            &[("x-goog-pubsub-message-id", "m-pre"), ("job", "count")],
            br#"{"by": "person"}"#.to_vec(),
        )
        .await;
    assert_eq!(refused.status(), 403);

    let real = envelope(br#"{"by": "pubsub"}"#, &[("job", "count")], "m-pre").to_string();
    assert_eq!(app.push(&google_token(), real).await.status(), 204);
    assert_eq!(app.count(), 1, "the real delivery ran");
    let runs = app.all_runs("job=count").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["message_id"], "m-pre");
    assert_eq!(runs[0]["payload"], json!({"by": "pubsub"}));
    assert_eq!(runs[0]["principal"]["id"], SERVICE_ACCOUNT);

    let by_hand = app
        .trigger("count", &person, &json!({"by": "person"}))
        .await;
    assert_eq!(
        by_hand.status(),
        200,
        "people run jobs with POST /jobs/{{name}}"
    );
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn memory_a_person_cannot_preclaim_a_message() {
    a_person_cannot_preclaim_a_message(&spawn_app().await).await;
}

#[tokio::test]
async fn postgres_a_person_cannot_preclaim_a_message() {
    let db = TestDb::create().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url()),
        ..Options::default()
    })
    .await;
    a_person_cannot_preclaim_a_message(&app).await;
}

/// Stops a worker with SIGTERM (so its log writer flushes) and returns its
/// JSON log lines.
fn stop_and_read_logs(worker: &mut DevWorker) -> Vec<Value> {
    use std::io::Read as _;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    while worker.child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the worker did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut out = String::new();
    worker
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The same message id from the allowed service account with other content
/// (other data, or another job) is not acked as a duplicate: it is recorded
/// as a `conflict` pointing at the run that holds the id, answered 409
/// `message_conflict` (a nack: no dead-letter topic here), and logged at
/// error level with the message id and both runs. The same content stays a
/// plain acked duplicate, and the job ran once.
async fn a_conflicting_delivery_is_kept_and_logged(worker: &mut DevWorker) {
    let token = worker
        .identity()
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            600,
        )
        .unwrap();
    let viewer = worker
        .identity()
        .clerk_token(
            &pushworker::auth::dev::DevClerkUser {
                user_id: "user_viewer".into(),
                session_id: "sess_viewer".into(),
                org_id: Some("org_dev".into()),
                role: "member".into(),
                permissions: vec!["org:jobs:read".into()],
                v1: false,
                authorized_party: worker.base(),
            },
            600,
        )
        .unwrap();
    let client = reqwest::Client::new();
    let push = |data: &'static [u8], job: &'static str| {
        let request = client
            .post(format!("{}/pubsub/push", worker.base()))
            .bearer_auth(&token)
            .json(&envelope(data, &[("job", job)], "m-conflict"));
        async move { request.send().await.unwrap() }
    };
    let a = br#"{"message": "A"}"#;
    assert_eq!(push(a, "echo").await.status(), 204);
    assert_eq!(
        push(a, "echo").await.status(),
        204,
        "same content: a duplicate"
    );
    let runs = |query: &'static str| {
        let request = client
            .get(format!("{}/runs?{query}", worker.base()))
            .bearer_auth(&viewer);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["runs"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let succeeded = runs("status=succeeded").await;
    assert_eq!(succeeded.len(), 1, "{succeeded:?}");
    let claimed = succeeded[0]["run_id"].as_str().unwrap().to_owned();

    for (data, job) in [(&br#"{"message": "B"}"#[..], "echo"), (&a[..], "sleep")] {
        let response = push(data, job).await;
        assert_eq!(response.status(), 409, "{job}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "message_conflict", "{answer}");
        assert_eq!(answer["run_id"], claimed.as_str(), "{answer}");
    }
    let conflicts = runs("status=conflict").await;
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    for conflict in &conflicts {
        assert_eq!(conflict["duplicate_of"], claimed.as_str());
        assert_eq!(conflict["message_id"], "m-conflict");
        assert_eq!(conflict["error_kind"], "message_conflict");
        assert!(conflict["error"].as_str().unwrap().contains(&claimed));
    }
    assert_eq!(conflicts[1]["payload"], json!({"message": "B"}));
    assert_eq!(runs("status=duplicate").await.len(), 1);
    assert_eq!(runs("status=succeeded").await.len(), 1, "ran once");

    let lines = stop_and_read_logs(worker);
    for conflict in &conflicts {
        let run_id = conflict["run_id"].as_str().unwrap();
        let line = lines
            .iter()
            .find(|l| l["conflict_run_id"] == run_id && l["severity"] == "ERROR")
            .unwrap_or_else(|| panic!("no error line for conflict {run_id}: {lines:?}"));
        assert_eq!(line["claimed_run_id"], claimed.as_str(), "{line}");
        assert_eq!(line["message_id"], "m-conflict", "{line}");
        assert_eq!(line["kind"], "message_conflict", "{line}");
        let reason = line["reason"].as_str().unwrap();
        assert!(
            reason.contains(&claimed) && reason.contains(run_id),
            "{line}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l["severity"] == "ERROR" && l["conflict_run_id"].is_null()),
        "only the conflicts log errors: {lines:?}"
    );
}

#[tokio::test]
async fn memory_a_conflicting_delivery_is_kept_and_logged() {
    let mut worker =
        DevWorker::start("conflict-mem", &[("LOG_FORMAT", "json".to_owned())], true).await;
    a_conflicting_delivery_is_kept_and_logged(&mut worker).await;
}

#[tokio::test]
async fn postgres_a_conflicting_delivery_is_kept_and_logged() {
    let db = TestDb::create().await;
    let mut worker = DevWorker::start(
        "conflict-pg",
        &[
            ("LOG_FORMAT", "json".to_owned()),
            ("DATABASE_URL", db.url()),
        ],
        true,
    )
    .await;
    a_conflicting_delivery_is_kept_and_logged(&mut worker).await;
}
