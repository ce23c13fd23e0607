//! The run ledger: every dispatch recorded, a message (or an
//! `Idempotency-Key`) run once across instances, leases that free the
//! message of a dead instance, a PostgreSQL outage answered with 503 until it
//! ends, and `GET /runs`.
//!
//! PostgreSQL tests run against the machine's real server (127.0.0.1:5432),
//! each in a database of its own that is dropped at the end.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pushworker::runs::{RunQuery, RunStatus};
use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_pushworker");

/// A wrapped push of `payload` to the `count` job.
fn count_push(message_id: &str, payload: Value) -> String {
    envelope(
        payload.to_string().as_bytes(),
        &[("job", "count")],
        message_id,
    )
    .to_string()
}

/// Waits until `condition` holds (at most `limit`).
async fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a push without borrowing the app, so it can run in its own task.
fn push_task(app: &TestApp, body: String) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = app
        .client
        .post(format!("{}/pubsub/push", app.addr))
        .bearer_auth(google_token())
        .header("content-type", "application/json")
        .body(body);
    tokio::spawn(async move { request.send().await.unwrap() })
}

fn with_status<'a>(runs: &'a [Value], status: &str) -> Vec<&'a Value> {
    runs.iter().filter(|r| r["status"] == status).collect()
}

/// 50 deliveries of one message at the same moment, spread over `apps`: the
/// job body runs exactly once; every other delivery is acked as a duplicate
/// (204) or nacked while the first runs (409 naming that run); all 50 are
/// recorded, and a late redelivery is acked without running.
async fn fifty_deliveries_run_once(apps: &[&TestApp]) {
    let token = google_token();
    let body = count_push("m-concurrent", json!({"millis": 300}));
    let deliveries = (0..50).map(|i| {
        let app = apps[i % apps.len()];
        let body = body.clone();
        let token = token.clone();
        async move {
            let response = app.push(&token, body).await;
            let status = response.status().as_u16();
            let body: Value = if status == 204 {
                Value::Null
            } else {
                response.json().await.unwrap()
            };
            (status, body)
        }
    });
    let answers = futures::future::join_all(deliveries).await;
    assert_eq!(apps[0].count(), 1, "the job body ran exactly once");

    let acked = answers.iter().filter(|(s, _)| *s == 204).count();
    let nacked: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        acked + nacked.len(),
        50,
        "every delivery is 204 or 409: {answers:?}"
    );
    assert!(acked >= 1, "the run itself is acked");

    for app in apps {
        let runs = app.all_runs("job=count").await;
        assert_eq!(
            runs.len(),
            50,
            "every delivery is recorded, on every instance"
        );
        let succeeded = with_status(&runs, "succeeded");
        assert_eq!(succeeded.len(), 1, "one run");
        let run_id = &succeeded[0]["run_id"];
        let duplicates = with_status(&runs, "duplicate");
        assert_eq!(duplicates.len(), 49);
        assert!(duplicates.iter().all(|d| &d["duplicate_of"] == run_id));
        assert!(runs.iter().all(|r| r["message_id"] == "m-concurrent"));
        let in_progress = duplicates
            .iter()
            .filter(|d| d["error_kind"] == "run_in_progress")
            .count();
        assert_eq!(in_progress, nacked.len(), "each 409 is recorded as such");
        assert_eq!(49 - in_progress, acked - 1, "each acked duplicate too");
        for body in &nacked {
            assert_eq!(body["error"], "run_in_progress");
            assert_eq!(&body["run_id"], run_id, "a 409 names the running run");
        }
    }

    let late = apps[apps.len() - 1].push(&token, body).await;
    assert_eq!(
        late.status(),
        204,
        "a redelivery of a done message is acked"
    );
    assert_eq!(apps[0].count(), 1, "and not run again");
}

/// Two worker instances sharing one PostgreSQL database.
#[tokio::test]
async fn postgres_two_instances_run_a_message_once() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        ..Options::default()
    };
    let a = spawn_app_with(options.clone()).await;
    let b = spawn_app_with(options).await;
    fifty_deliveries_run_once(&[&a, &b]).await;
}

/// The same, with batches that wait longer for company: deliveries of one
/// message land in one statement and resolve as if one came after another.
#[tokio::test]
async fn postgres_batched_two_instances_run_a_message_once() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        pg: pushworker::runs::postgres::PgSettings {
            batch_max_wait: std::time::Duration::from_millis(10),
            ..Default::default()
        },
        ..Options::default()
    };
    let a = spawn_app_with(options.clone()).await;
    let b = spawn_app_with(options).await;
    fifty_deliveries_run_once(&[&a, &b]).await;
}

/// The in-memory ledger, within one instance.
#[tokio::test]
async fn memory_one_instance_runs_a_message_once() {
    let app = spawn_app().await;
    fifty_deliveries_run_once(&[&app]).await;
}

/// A stuck run (its instance hung) holds its message only for the lease:
/// within it a redelivery is nacked with 409; after it, the redelivery runs
/// the job, and the stuck run is recorded as failed.
#[tokio::test]
async fn memory_an_expired_lease_lets_a_redelivery_run() {
    let app = spawn_app_with(Options {
        // Long enough that a loaded machine still sends the second delivery
        // within it (the lease runs on the wall clock).
        lease: Duration::from_secs(3),
        job_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let body = count_push("m-stuck", json!({"hang_first": true}));
    let stuck = push_task(&app, body.clone());
    until(Duration::from_secs(5), "the first run to start", || {
        app.count() == 1
    })
    .await;

    let busy = app.push(&google_token(), body.clone()).await;
    assert_eq!(busy.status(), 409, "within the lease: in progress");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let redelivery = app.push(&google_token(), body).await;
    assert_eq!(redelivery.status(), 204, "after the lease: runs");
    assert_eq!(app.count(), 2);
    stuck.abort();

    let runs = app.all_runs("job=count").await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["succeeded", "duplicate", "failed_transient"],
        "newest first"
    );
    assert_eq!(runs[2]["error_kind"], "lease_expired");
    assert!(runs[2]["finished_at"].is_string());
}

/// A caller that leaves mid-run (its connection closed, as when Pub/Sub's
/// push deadline passes) cancels the job through the run's token: the job
/// stops long before its own end, and the run's end is still recorded, as a
/// transient failure, so the message is run again on redelivery.
#[tokio::test]
async fn memory_a_caller_that_leaves_cancels_its_job_and_the_end_is_recorded() {
    let app = spawn_app_with(Options {
        job_timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let body = envelope(br#"{"millis": 30000}"#, &[("job", "sleep")], "m-left").to_string();
    let request = push_task(&app, body);
    let start = Instant::now();
    while with_status(&app.all_runs("job=sleep").await, "running").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "no run started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    request.abort();
    let left = Instant::now();
    let run = loop {
        let runs = app.all_runs("job=sleep").await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        if runs[0]["status"] != "running" {
            break runs[0].clone();
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the job was not cancelled when its caller left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(run["status"], "failed_transient", "{run:?}");
    assert_eq!(
        run["error"], "job failed (transient): cancelled before the wait was over",
        "{run:?}"
    );
    assert_eq!(run["error_kind"], "job_failed_transient");
    assert!(run["finished_at"].is_string());
    assert!(
        run["duration_ms"].as_u64().unwrap() < 10_000,
        "stopped early: {run:?}"
    );

    // Not a success: the redelivery runs the job again (briefly this time).
    let again = envelope(br#"{"millis": 10}"#, &[("job", "sleep")], "m-left").to_string();
    let response = app.push(&google_token(), again).await;
    assert_eq!(response.status(), 204, "the redelivery runs");
    let runs = app.all_runs("job=sleep").await;
    assert_eq!(with_status(&runs, "succeeded").len(), 1, "{runs:?}");
}

/// A real instance killed mid-run (SIGKILL of the `pushworker` binary, on a
/// shared database): its message is blocked only until its lease expires,
/// then a redelivery to another instance runs the job.
#[tokio::test]
async fn postgres_a_killed_instance_frees_its_message_after_the_lease() {
    let db = TestDb::create().await;
    let survivor = spawn_app_with(Options {
        database_url: Some(db.url()),
        job_timeout: Duration::from_secs(5),
        ..Options::default()
    })
    .await;

    let dir = std::env::temp_dir().join(format!("pushworker-ledger-{}", db.name));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut doomed = Command::new(BIN)
        .args(["serve", "--dev", "--dev-dir"])
        .arg(&dir)
        .env_clear()
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("JOB_TIMEOUT_SECS", "3")
        .env("RUN_LEASE_SECS", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(start.elapsed() < Duration::from_secs(15), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = Command::new(BIN)
        .args(["dev-token", "google", "--dev-dir"])
        .arg(&dir)
        .env_clear()
        .output()
        .unwrap();
    let dev_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let body = envelope(br#"{"millis": 2500}"#, &[("job", "sleep")], "m-killed").to_string();
    let request = reqwest::Client::new()
        .post(format!("{base}/pubsub/push"))
        .bearer_auth(&dev_token)
        .body(body.clone())
        .send();
    let in_flight = tokio::spawn(request);
    let running = RunQuery {
        status: vec![RunStatus::Running],
        limit: 10,
        ..RunQuery::default()
    };
    let start = Instant::now();
    while survivor
        .runs
        .list(running.clone())
        .await
        .unwrap()
        .runs
        .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(5), "no run started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed instance never answered"
    );

    let busy = survivor.push(&google_token(), body.clone()).await;
    assert_eq!(busy.status(), 409, "the dead run's lease still holds");
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = survivor.push(&google_token(), body.clone()).await;
        if response.status() == 204 {
            break;
        }
        assert_eq!(
            response.status(),
            409,
            "only in progress until the lease ends"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lease never expired"
        );
    }

    let runs = survivor.all_runs("job=sleep").await;
    let killed: Vec<&Value> = runs
        .iter()
        .filter(|r| r["principal"]["id"] != SERVICE_ACCOUNT)
        .collect();
    assert_eq!(killed.len(), 1, "{runs:?}");
    assert_eq!(killed[0]["status"], "failed_transient");
    assert_eq!(killed[0]["error_kind"], "lease_expired");
    assert_eq!(with_status(&runs, "succeeded").len(), 1, "run once after");
    assert!(
        with_status(&runs, "duplicate")
            .iter()
            .all(|d| d["error_kind"] == "run_in_progress")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Idempotency-Key` on `POST /jobs/{name}`: a repeat answers the first
/// run's result (same status and body, `Idempotent-Replayed: true`) without
/// running again; 409 while the first still runs; keys are per job and per
/// caller; a failed run's key runs again; a reused key with another payload
/// is refused.
async fn idempotency_keys(app: &TestApp) {
    let admin = clerk_token(&[TRIGGER]);
    let first = app
        .trigger_with_key("count", &admin, "key-1", &json!({"millis": 0}))
        .await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(app.count(), 1);

    let again = app
        .trigger_with_key("count", &admin, "key-1", &json!({"millis": 0}))
        .await;
    assert_eq!(again.status(), 200, "the first run's status");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first run's body");
    assert_eq!(app.count(), 1, "not run again");

    // A repeat while the first still runs (3 s: room for a loaded machine;
    // the callers give jobs a 10 s timeout).
    let slow = {
        let request = app
            .client
            .post(format!("{}/jobs/count", app.addr))
            .bearer_auth(&admin)
            .header("idempotency-key", "key-2")
            .json(&json!({"millis": 3000}));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    until(Duration::from_secs(5), "the slow run to start", || {
        app.count() == 2
    })
    .await;
    let busy = app
        .trigger_with_key("count", &admin, "key-2", &json!({"millis": 3000}))
        .await;
    assert_eq!(busy.status(), 409);
    let busy: Value = busy.json().await.unwrap();
    assert_eq!(busy["error"], "run_in_progress");
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200);
    let slow: Value = slow.json().await.unwrap();
    assert_eq!(busy["run_id"], slow["run_id"], "409 names the first run");
    let replay = app
        .trigger_with_key("count", &admin, "key-2", &json!({"millis": 3000}))
        .await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap(), slow);
    assert_eq!(app.count(), 2);

    // Keys are scoped per job and per caller.
    let other_user = KEYS
        .clerk
        .sign(&with(
            clerk_v2_claims(&[TRIGGER]),
            "sub",
            json!("user_other"),
        ))
        .unwrap();
    let cases = [
        ("another caller", other_user.as_str(), "count"),
        ("a service account", &google_token(), "count"),
        ("another job", admin.as_str(), "record"),
    ];
    for (case, token, job) in cases {
        let response = app
            .trigger_with_key(job, token, "key-1", &json!({"millis": 0}))
            .await;
        assert_eq!(response.status(), 200, "{case}");
        assert!(
            response.headers().get("idempotent-replayed").is_none(),
            "{case}: its own run"
        );
    }
    assert_eq!(app.count(), 4, "two more count runs");

    let reused = app
        .trigger_with_key("count", &admin, "key-1", &json!({"millis": 7}))
        .await;
    assert_eq!(reused.status(), 422, "same key, another payload");
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(reused["error"], "idempotency_key_reused");
    assert_eq!(reused["run_id"], first["run_id"]);
    assert_eq!(app.count(), 4);

    // A failed run's key may run again: never replayed.
    for attempt in 1..=2 {
        let response = app
            .trigger_with_key("flaky", &admin, "key-3", &json!({}))
            .await;
        assert_eq!(response.status(), 503, "attempt {attempt}");
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    let flaky = app.all_runs("job=flaky").await;
    assert_eq!(flaky.len(), 2, "both attempts ran and were recorded");
    assert!(
        flaky
            .iter()
            .all(|r| r["status"] == "failed_transient" && r["idempotency_key"] == "key-3")
    );

    let long = "k".repeat(256);
    let bad_keys = [
        ("empty", ""),
        ("too long", long.as_str()),
        ("a space", "two words"),
    ];
    for (case, key) in bad_keys {
        let response = app.trigger_with_key("count", &admin, key, &json!({})).await;
        assert_eq!(response.status(), 400, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_idempotency_key", "{case}");
    }
    let twice = app
        .client
        .post(format!("{}/jobs/count", app.addr))
        .bearer_auth(&admin)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400, "two keys");
    assert_eq!(app.count(), 4, "no bad request ran anything");
}

#[tokio::test]
async fn memory_idempotency_keys_on_manual_triggers() {
    idempotency_keys(
        &spawn_app_with(Options {
            job_timeout: Duration::from_secs(10),
            ..Options::default()
        })
        .await,
    )
    .await;
}

#[tokio::test]
async fn postgres_idempotency_keys_on_manual_triggers() {
    let db = TestDb::create().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url()),
        job_timeout: Duration::from_secs(10),
        ..Options::default()
    })
    .await;
    idempotency_keys(&app).await;
}

/// PostgreSQL becomes unreachable (a proxy in between is cut): pushes are
/// nacked with 503 `store_unavailable` and `Retry-After`, nothing runs
/// unrecorded, manual triggers and `GET /runs` are 503 too; when it returns,
/// pushes succeed again without a restart. A job whose end cannot be
/// recorded is not acked either: its message runs again after the lease.
#[tokio::test]
async fn postgres_outage_nacks_with_503_and_recovers() {
    let db = TestDb::create().await;
    let proxy = PgProxy::start().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url_via(proxy.addr)),
        lease: Duration::from_secs(3),
        ..Options::default()
    })
    .await;
    let token = google_token();
    let admin = clerk_token(&[TRIGGER]);

    let before = app.push(&token, count_push("m-before", json!({}))).await;
    assert_eq!(before.status(), 204);
    assert_eq!(app.count(), 1);

    proxy.cut().await;
    let during = app.push(&token, count_push("m-during", json!({}))).await;
    assert_eq!(during.status(), 503, "a nack");
    assert!(during.headers().contains_key("retry-after"));
    let body: Value = during.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(app.count(), 1, "nothing ran unrecorded");
    let manual = app.trigger("count", &admin, &json!({})).await;
    assert_eq!(manual.status(), 503);
    let list = app.list_runs(&clerk_token(&[VIEW]), "").await;
    assert_eq!(list.status(), 503);
    assert_eq!(app.count(), 1);

    proxy.restore();
    let after = app.push(&token, count_push("m-during", json!({}))).await;
    assert_eq!(after.status(), 204, "back without a restart");
    assert_eq!(app.count(), 2);
    let runs = app.all_runs("job=count").await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["status"] == "succeeded"));

    // The store goes away while a job runs: its end cannot be recorded.
    let mid = push_task(&app, count_push("m-mid", json!({"millis": 500})));
    until(Duration::from_secs(5), "the job to start", || {
        app.count() == 3
    })
    .await;
    proxy.cut().await;
    let mid = mid.await.unwrap();
    assert_eq!(mid.status(), 503, "no ack without a record");
    proxy.restore();
    let start = Instant::now();
    loop {
        let response = app
            .push(&token, count_push("m-mid", json!({"millis": 500})))
            .await;
        if response.status() == 204 {
            break;
        }
        assert_eq!(response.status(), 409, "held until its lease ends");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(app.count(), 4, "the message ran again, and was acked");
    let mid_runs: Vec<Value> = app
        .all_runs("job=count")
        .await
        .into_iter()
        .filter(|r| r["message_id"] == "m-mid" && r["status"] != "duplicate")
        .collect();
    let statuses: Vec<&str> = mid_runs
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed_transient"]);
    assert_eq!(mid_runs[1]["error_kind"], "lease_expired");
}

const CONTRACT_FIELDS: [&str; 26] = [
    "run_id",
    "job",
    "source",
    "principal",
    "message_id",
    "subscription",
    "idempotency_key",
    "attempt",
    "payload_digest",
    "payload",
    "payload_truncated",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
    "output",
    // Additive beyond the agreed contract:
    "error_kind",
    "output_truncated",
    "duplicate_of",
    // An event's source, type and subject (null on other runs).
    "event_source",
    "event_type",
    "event_subject",
    // Run control: the run a re-run repeats, and a cancel request.
    "rerun_of",
    "cancel_requested_at",
    "cancelled_by",
];

/// `GET /runs` and `GET /runs/{id}`: every source recorded with the agreed
/// fields, filters, newest-first cursor pagination, 400 naming the allowed
/// values, and who may read.
async fn runs_api(app: &TestApp) {
    let google = google_token();
    let admin = clerk_token(&[TRIGGER]);
    let viewer = clerk_token(&[VIEW]);
    for (case, status, response) in [
        (
            "push",
            204,
            app.push(&google, count_push("m-1", json!({"n": 1}))).await,
        ),
        (
            "push",
            204,
            app.push(&google, count_push("m-2", json!({"n": 2}))).await,
        ),
        (
            "duplicate",
            204,
            app.push(&google, count_push("m-1", json!({"n": 1}))).await,
        ),
        (
            "transient",
            503,
            app.push(
                &google,
                envelope(b"{}", &[("job", "flaky")], "m-3").to_string(),
            )
            .await,
        ),
        (
            "permanent",
            422,
            app.push(
                &google,
                envelope(b"{}", &[("job", "reject")], "m-4").to_string(),
            )
            .await,
        ),
        (
            "manual",
            200,
            app.trigger("echo", &admin, &json!({"message": "hi"})).await,
        ),
        (
            "service",
            200,
            app.trigger("echo", &google, &json!({"message": "svc"}))
                .await,
        ),
        (
            "manual with key",
            200,
            app.trigger_with_key("count", &admin, "k-1", &json!({}))
                .await,
        ),
    ] {
        assert_eq!(response.status().as_u16(), status, "{case}");
    }

    let all = app.all_runs("").await;
    assert_eq!(all.len(), 8, "every dispatch recorded");
    let ids: Vec<&str> = all.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for run in &all {
        let keys: Vec<&str> = run
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for field in CONTRACT_FIELDS {
            assert!(keys.contains(&field), "{field} missing from {run}");
        }
        assert_eq!(keys.len(), CONTRACT_FIELDS.len(), "{run}");
        let digest = run["payload_digest"].as_str().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        assert!(run["started_at"].as_str().unwrap().contains('T'));
    }
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains(&google) && !text.contains(&admin),
        "never a token"
    );

    let find = |pred: &dyn Fn(&Value) -> bool| all.iter().find(|r| pred(r)).unwrap().clone();
    let m2 = find(&|r| r["message_id"] == "m-2");
    assert_eq!(m2["job"], "count");
    assert_eq!(m2["source"], "push");
    assert_eq!(
        m2["principal"],
        json!({"kind": "google", "id": SERVICE_ACCOUNT})
    );
    assert_eq!(
        m2["subscription"],
        "projects/acme-prod/subscriptions/work-push"
    );
    assert_eq!(m2["attempt"], 1);
    assert_eq!(m2["payload"], json!({"n": 2}));
    assert_eq!(m2["payload_truncated"], false);
    assert_eq!(m2["status"], "succeeded");
    assert!(m2["finished_at"].is_string() && m2["duration_ms"].is_u64());
    assert_eq!(m2["output"], json!({"count": 2}));
    assert_eq!(m2["error"], Value::Null);
    assert_eq!(m2["idempotency_key"], Value::Null);

    let m1 = find(&|r| r["message_id"] == "m-1" && r["status"] == "succeeded");
    let dup = find(&|r| r["status"] == "duplicate");
    assert_eq!(dup["duplicate_of"], m1["run_id"]);
    assert_eq!(dup["payload_digest"], m1["payload_digest"]);

    let flaky = find(&|r| r["job"] == "flaky");
    assert_eq!(flaky["status"], "failed_transient");
    assert_eq!(flaky["error_kind"], "job_failed_transient");
    assert!(
        flaky["error"]
            .as_str()
            .unwrap()
            .contains("database connection reset"),
        "operators see the error text: {flaky}"
    );
    let reject = find(&|r| r["job"] == "reject");
    assert_eq!(reject["status"], "failed_permanent");
    assert_eq!(
        reject["error"],
        "job failed (permanent): order 42 does not exist"
    );

    let manual = find(&|r| r["idempotency_key"] == "k-1");
    assert_eq!(manual["source"], "manual");
    assert_eq!(
        manual["principal"],
        json!({"kind": "clerk", "id": "user_2abc"})
    );
    assert_eq!(manual["message_id"], Value::Null);
    assert_eq!(manual["payload"], json!({}));
    let service = find(&|r| r["source"] == "service");
    assert_eq!(service["output"], json!({"message": "svc"}));

    // Filters.
    let filters: [(&str, usize); 11] = [
        ("job=count", 4),
        ("job=nope", 0),
        ("status=succeeded", 5),
        ("status=duplicate", 1),
        ("status=failed_transient", 1),
        ("status=failed_permanent", 1),
        ("source=push", 5),
        ("source=manual", 2),
        ("source=service", 1),
        ("job=count&status=succeeded&source=push", 2),
        ("job=echo&source=manual", 1),
    ];
    for (query, expected) in filters {
        let response = app.list_runs(&viewer, query).await;
        assert_eq!(response.status(), 200, "{query}");
        let body: Value = response.json().await.unwrap();
        let runs = body["runs"].as_array().unwrap();
        assert_eq!(runs.len(), expected, "{query}: {runs:?}");
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            assert!(runs.iter().all(|r| r[k] == v), "{query}");
        }
        assert_eq!(body["next_cursor"], Value::Null, "{query}: one page");
    }

    // Pagination: pages of 3 walk the same runs in the same order.
    for (query, pages) in [
        ("limit=3", vec![3, 3, 2]),
        ("source=push&limit=2", vec![2, 2, 1]),
    ] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.to_owned(),
            };
            let response = app.list_runs(&viewer, &q).await;
            assert_eq!(response.status(), 200, "{q}");
            let body: Value = response.json().await.unwrap();
            let runs = body["runs"].as_array().unwrap();
            sizes.push(runs.len());
            seen.extend(runs.iter().map(|r| r["run_id"].clone()));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(sizes, pages, "{query}");
        let expected: Vec<Value> = all
            .iter()
            .filter(|r| !query.starts_with("source") || r["source"] == "push")
            .map(|r| r["run_id"].clone())
            .collect();
        assert_eq!(seen, expected, "{query}");
    }
    let default_page: Value = app.list_runs(&viewer, "").await.json().await.unwrap();
    assert_eq!(default_page["runs"].as_array().unwrap().len(), 8);

    // One run.
    for run in &all {
        let response = app.get_run(&viewer, run["run_id"].as_str().unwrap()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(&response.json::<Value>().await.unwrap(), run);
    }
    let missing = app
        .get_run(&viewer, "01900000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(missing.status(), 404);
    let not_an_id = app.get_run(&viewer, "latest").await;
    assert_eq!(not_an_id.status(), 400);

    // Bad filter values say what is allowed.
    let bad = [
        (
            "status=timed_out",
            "running, succeeded, failed_transient, failed_permanent, dead_lettered, duplicate, conflict, cancelled",
        ),
        ("source=cron", "push, manual, service"),
        ("limit=0", "1 to 200"),
        ("limit=201", "1 to 200"),
        ("limit=ten", "1 to 200"),
        ("cursor=page-2", "next_cursor"),
        ("sort=oldest", "job, status, source, limit, cursor"),
    ];
    for (query, allowed) in bad {
        let response = app.list_runs(&viewer, query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_query", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(allowed),
            "{query}: {body}"
        );
    }
}

/// Who may read the ledger: Clerk users with the view permission, the
/// trigger permission or a trigger role; not service accounts, not others.
async fn runs_permissions(app: &TestApp) {
    let with_role = {
        let mut claims = clerk_v2_claims(&[]);
        claims["o"]["rol"] = json!("ops");
        KEYS.clerk.sign(&claims).unwrap()
    };
    let no_org = KEYS
        .clerk
        .sign(&with(clerk_v2_claims(&[VIEW]), "o", Value::Null))
        .unwrap();
    let cases = [
        ("view permission", clerk_token(&[VIEW]), 200),
        ("trigger permission", clerk_token(&[TRIGGER]), 200),
        ("trigger role", with_role, 200),
        (
            "v1 view permission",
            KEYS.clerk.sign(&clerk_v1_claims(&[VIEW])).unwrap(),
            200,
        ),
        ("no permission", clerk_token(&["org:billing:read"]), 403),
        ("no active organization", no_org, 403),
        ("service account", google_token(), 403),
        (
            "rogue key",
            KEYS.rogue.sign(&clerk_v2_claims(&[VIEW])).unwrap(),
            401,
        ),
    ];
    for (case, token, status) in cases {
        for path in ["/runs", "/runs/01900000-0000-7000-8000-000000000000"] {
            let response = app
                .client
                .get(format!("{}{path}", app.addr))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let expected = if status == 200 && path != "/runs" {
                404
            } else {
                status
            };
            assert_eq!(response.status().as_u16(), expected, "{case} {path}");
            if status == 403 {
                assert!(
                    challenge(&response).contains("insufficient_scope"),
                    "{case}"
                );
                let body: Value = response.json().await.unwrap();
                if case != "service account" {
                    assert!(
                        body["message"].as_str().unwrap().contains(VIEW),
                        "{case}: names the permission: {body}"
                    );
                }
            }
        }
    }
    let anonymous = app
        .client
        .get(format!("{}/runs", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn memory_runs_api() {
    let app = spawn_app_with(Options {
        trigger_roles: vec!["org:ops".to_owned()],
        ..Options::default()
    })
    .await;
    runs_api(&app).await;
    runs_permissions(&app).await;
}

#[tokio::test]
async fn postgres_runs_api() {
    let db = TestDb::create().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url()),
        trigger_roles: vec!["org:ops".to_owned()],
        ..Options::default()
    })
    .await;
    runs_api(&app).await;
    runs_permissions(&app).await;
}

/// A payload over `RUN_PAYLOAD_CAP_BYTES` is recorded by digest only; the
/// memory ledger keeps at most `RUNS_MAX_RECORDS`, dropping the oldest.
#[tokio::test]
async fn memory_caps_and_bounds() {
    let app = spawn_app_with(Options {
        payload_cap: 64,
        runs_max_records: 3,
        ..Options::default()
    })
    .await;
    let big = json!({"pad": "x".repeat(100)}).to_string();
    let response = app
        .push(
            &google_token(),
            envelope(big.as_bytes(), &[("job", "count")], "big").to_string(),
        )
        .await;
    assert_eq!(response.status(), 204, "the job still gets all of it");
    let run = &app.all_runs("").await[0];
    assert_eq!(run["payload"], Value::Null);
    assert_eq!(run["payload_truncated"], true);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, big.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(run["payload_digest"], format!("sha256:{hex}"));

    for i in 0..4 {
        let response = app
            .push(&google_token(), count_push(&format!("b-{i}"), json!({})))
            .await;
        assert_eq!(response.status(), 204);
    }
    let kept: Vec<Value> = app
        .all_runs("")
        .await
        .iter()
        .map(|r| r["message_id"].clone())
        .collect();
    assert_eq!(kept, [json!("b-3"), json!("b-2"), json!("b-1")]);
}

/// The new settings are validated at start-up, naming the variable, and the
/// database URL (with its password) is never printed.
#[test]
fn ledger_configuration_is_validated_and_the_url_never_printed() {
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 10] = [
        (
            "unreachable database",
            vec![(
                "DATABASE_URL",
                "postgres://pushworker:TOPSECRET@127.0.0.1:1/runs",
            )],
            "DATABASE_URL",
        ),
        (
            "not PostgreSQL",
            vec![(
                "DATABASE_URL",
                "mysql://pushworker:TOPSECRET@127.0.0.1/runs",
            )],
            "DATABASE_URL",
        ),
        (
            "lease shorter than the job timeout",
            vec![("JOB_TIMEOUT_SECS", "60"), ("RUN_LEASE_SECS", "30")],
            "RUN_LEASE_SECS",
        ),
        (
            "no records",
            vec![("RUNS_MAX_RECORDS", "0")],
            "RUNS_MAX_RECORDS",
        ),
        (
            "no retention",
            vec![("RUNS_RETENTION_HOURS", "0")],
            "RUNS_RETENTION_HOURS",
        ),
        (
            "empty view permission",
            vec![("RUNS_VIEW_PERMISSION", " ")],
            "RUNS_VIEW_PERMISSION",
        ),
        (
            "a pool of one",
            vec![("DATABASE_POOL_SIZE", "1")],
            "DATABASE_POOL_SIZE",
        ),
        (
            "no statement timeout",
            vec![("DATABASE_STATEMENT_TIMEOUT_SECS", "0")],
            "DATABASE_STATEMENT_TIMEOUT_SECS",
        ),
        (
            "empty batches",
            vec![("DATABASE_BATCH_MAX_ROWS", "0")],
            "DATABASE_BATCH_MAX_ROWS",
        ),
        (
            "a batch wait in seconds",
            vec![("DATABASE_BATCH_MAX_WAIT_MS", "5000")],
            "DATABASE_BATCH_MAX_WAIT_MS",
        ),
    ];
    for (case, env, variable) in cases {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if start.elapsed() > Duration::from_secs(15) {
                child.kill().ok();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(code, Some(1), "{case}: refused to start: {stderr}");
        assert!(
            stderr.contains(variable),
            "{case}: names {variable}: {stderr}"
        );
        assert!(
            !stderr.contains("TOPSECRET") && !stdout.contains("TOPSECRET"),
            "{case}: the password was printed: {stderr}"
        );
    }
}
