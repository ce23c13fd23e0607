//! Run control: `POST /runs/{id}/cancel`, `POST /runs/{id}/rerun`,
//! `POST /runs/rerun` and `GET /runs/rerun/{bulk_id}`, for Clerk users with
//! the trigger permission, against the memory store and, across two
//! instances, PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

/// A sleep of `millis` pushed as message `message_id`.
fn sleep_push(millis: u64, message_id: &str) -> String {
    envelope(
        json!({ "millis": millis }).to_string().as_bytes(),
        &[("job", "sleep")],
        message_id,
    )
    .to_string()
}

/// Waits until the ledger lists a running run of `job`, and returns its id.
async fn running_run(app: &TestApp, job: &str) -> String {
    let start = Instant::now();
    loop {
        let runs = app.all_runs(&format!("job={job}&status=running")).await;
        if let Some(run) = runs.first() {
            return run["run_id"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {job} run started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /runs/{id}` as the viewer: 200, and the run.
async fn run_of(app: &TestApp, id: &str) -> Value {
    let response = app.get_run(&clerk_token(&[VIEW]), id).await;
    assert_eq!(response.status(), 200, "GET /runs/{id}");
    response.json().await.unwrap()
}

/// Polls a bulk re-run until it is finished, and returns its progress.
async fn finished(app: &TestApp, bulk_id: &str) -> Value {
    let start = Instant::now();
    loop {
        let response = app.rerun_progress(&clerk_token(&[VIEW]), bulk_id).await;
        assert_eq!(response.status(), 200, "GET /runs/rerun/{bulk_id}");
        let progress: Value = response.json().await.unwrap();
        if progress["finished"] == true {
            return progress;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A refusal to check: the case, the token, the run id, the status and
/// the error code.
type Refusal = (&'static str, String, String, u16, &'static str);

fn case(name: &'static str, token: String, id: &str, status: u16, code: &'static str) -> Refusal {
    (name, token, id.to_owned(), status, code)
}

/// What every route on one run refuses, `id` being a run that exists.
fn refusals_of(id: &str) -> Vec<Refusal> {
    let missing = uuid::Uuid::now_v7().to_string();
    vec![
        case(
            "unknown run",
            clerk_token(&[TRIGGER]),
            &missing,
            404,
            "not_found",
        ),
        case(
            "not a uuid",
            clerk_token(&[TRIGGER]),
            "nope",
            400,
            "invalid_query",
        ),
        case(
            "no trigger permission",
            clerk_token(&[VIEW]),
            id,
            403,
            "insufficient_scope",
        ),
        case(
            "service account",
            google_token(),
            id,
            403,
            "insufficient_scope",
        ),
    ]
}

/// The answer has `status` and the error `code`.
async fn refused(case: &str, response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status, "{case}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{case}: {body}");
}

fn long_jobs() -> Options {
    Options {
        job_timeout: Duration::from_secs(20),
        ..Options::default()
    }
}

/// A manual run of a long sleep is cancelled: 202 with the run marked as
/// asked by whom, the trigger answers 409 `run_cancelled` with the run, and
/// the record ends `cancelled` well before the sleep would have.
#[tokio::test]
async fn cancelling_a_manual_run_ends_it_cancelled() {
    let app = std::sync::Arc::new(spawn_app_with(long_jobs()).await);
    let started = Instant::now();
    let trigger = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.trigger(
                "sleep",
                &clerk_token(&[TRIGGER]),
                &json!({ "millis": 15_000 }),
            )
            .await
        })
    };
    let id = running_run(&app, "sleep").await;

    let response = app.cancel_run(&clerk_token(&[TRIGGER]), &id).await;
    assert_eq!(response.status(), 202);
    let marked: Value = response.json().await.unwrap();
    assert_eq!(marked["run_id"], id.as_str());
    assert_eq!(marked["status"], "running");
    assert!(marked["cancel_requested_at"].is_string(), "{marked}");
    assert_eq!(
        marked["cancelled_by"],
        json!({ "kind": "clerk", "id": "user_2abc" })
    );

    let answer = trigger.await.unwrap();
    assert_eq!(answer.status(), 409);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "run_cancelled");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["run_id"], id.as_str());
    assert!(started.elapsed() < Duration::from_secs(10));

    let run = run_of(&app, &id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["error_kind"], "run_cancelled");
    assert!(run["finished_at"].is_string());
    // A second cancel of the ended run is refused.
    let again = app.cancel_run(&clerk_token(&[TRIGGER]), &id).await;
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"], "run_not_running");
    assert_eq!(body["run_id"], id.as_str());
}

/// A cancelled push is acked (cancel means "don't retry"), and its
/// redelivery is a duplicate that does not run it again.
#[tokio::test]
async fn a_cancelled_push_is_acked_and_not_run_again() {
    let app = std::sync::Arc::new(spawn_app_with(long_jobs()).await);
    let body = sleep_push(15_000, "m-cancel");
    let push = {
        let (app, body) = (std::sync::Arc::clone(&app), body.clone());
        tokio::spawn(async move { app.push(&google_token(), body).await })
    };
    let id = running_run(&app, "sleep").await;
    let response = app.cancel_run(&clerk_token(&[TRIGGER]), &id).await;
    assert_eq!(response.status(), 202);
    assert_eq!(push.await.unwrap().status(), 204, "acked");
    assert_eq!(run_of(&app, &id).await["status"], "cancelled");

    let again = app.push(&google_token(), body).await;
    assert_eq!(again.status(), 204);
    let runs = app.all_runs("message_id=m-cancel").await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["duplicate", "cancelled"]);
    assert_eq!(runs[0]["duplicate_of"], id.as_str());
}

/// Who may not cancel, and what cannot be cancelled, each with its status
/// and code.
#[tokio::test]
async fn cancel_refusals() {
    let app = spawn_app().await;
    let done = app
        .trigger(
            "echo",
            &clerk_token(&[TRIGGER]),
            &json!({ "message": "hi" }),
        )
        .await;
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.unwrap();
    let done_id = done["run_id"].as_str().unwrap().to_owned();
    let mut cases = refusals_of(&done_id);
    cases.push(case(
        "ended run",
        clerk_token(&[TRIGGER]),
        &done_id,
        409,
        "run_not_running",
    ));
    cases.push(case(
        "bad token",
        "not.a.token".to_owned(),
        &done_id,
        401,
        "invalid_token",
    ));
    for (case, token, id, status, code) in cases {
        refused(case, app.cancel_run(&token, &id).await, status, code).await;
    }
    // Nothing refused changed the run.
    assert!(run_of(&app, &done_id).await["cancel_requested_at"].is_null());
}

/// With PostgreSQL, a cancel sent to one instance stops a run on the other
/// within a second (its poll of the ledger).
#[tokio::test]
async fn postgres_cancel_reaches_a_run_on_another_instance() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        ..long_jobs()
    };
    let runner = std::sync::Arc::new(spawn_app_with(options.clone()).await);
    let other = spawn_app_with(options).await;
    let push = {
        let runner = std::sync::Arc::clone(&runner);
        tokio::spawn(async move {
            let answer = runner
                .push(&google_token(), sleep_push(15_000, "m-far"))
                .await;
            (answer.status(), Instant::now())
        })
    };
    let id = running_run(&other, "sleep").await;
    let asked = Instant::now();
    let response = other.cancel_run(&clerk_token(&[TRIGGER]), &id).await;
    assert_eq!(response.status(), 202);
    let (status, answered) = push.await.unwrap();
    assert_eq!(status, 204, "the cancelled push is acked");
    let took = answered.duration_since(asked);
    assert!(took < Duration::from_secs(1), "stopped after {took:?}");
    let run = run_of(&other, &id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["cancelled_by"]["id"], "user_2abc");
}

/// A re-run runs the recorded payload again as a new manual run by the
/// caller, carrying `rerun_of`, and answers as `POST /jobs/{name}` does.
#[tokio::test]
async fn rerun_runs_the_recorded_payload_again() {
    let app = spawn_app().await;
    let first = app
        .push(
            &google_token(),
            envelope(br#"{"message":"again"}"#, &[("job", "echo")], "m-echo").to_string(),
        )
        .await;
    assert_eq!(first.status(), 204);
    let original = app.all_runs("message_id=m-echo").await[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let response = app.rerun_run(&clerk_token(&[TRIGGER]), &original).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["output"], json!({ "message": "again" }));
    let new_id = body["run_id"].as_str().unwrap();
    assert_ne!(new_id, original);

    let run = run_of(&app, new_id).await;
    assert_eq!(run["rerun_of"], original.as_str());
    assert_eq!(run["source"], "manual");
    assert_eq!(
        run["principal"],
        json!({ "kind": "clerk", "id": "user_2abc" })
    );
    assert_eq!(run["payload"], json!({ "message": "again" }));
    assert!(run_of(&app, &original).await["rerun_of"].is_null());

    // A re-run of a job that fails answers as the trigger does: 422 with
    // the new run.
    let failed = app
        .trigger("reject", &clerk_token(&[TRIGGER]), &json!({}))
        .await;
    assert_eq!(failed.status(), 422);
    let failed: Value = failed.json().await.unwrap();
    let response = app
        .rerun_run(&clerk_token(&[TRIGGER]), failed["run_id"].as_str().unwrap())
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed_permanent");
    assert_ne!(body["run_id"], failed["run_id"]);
}

/// A payload over the cap was not kept, so its run cannot be re-run: 409
/// `payload_not_kept`, and nothing runs. Other refusals, table-driven.
#[tokio::test]
async fn rerun_refusals() {
    let app = spawn_app_with(Options {
        payload_cap: 32,
        ..Options::default()
    })
    .await;
    let big = app
        .trigger(
            "echo",
            &clerk_token(&[TRIGGER]),
            &json!({ "message": "x".repeat(100) }),
        )
        .await;
    assert_eq!(big.status(), 200);
    let big: Value = big.json().await.unwrap();
    let big_id = big["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run_of(&app, &big_id).await["payload_truncated"], true);
    let mut cases = refusals_of(&big_id);
    cases.push(case(
        "payload not kept",
        clerk_token(&[TRIGGER]),
        &big_id,
        409,
        "payload_not_kept",
    ));
    for (case, token, id, status, code) in cases {
        refused(case, app.rerun_run(&token, &id).await, status, code).await;
    }
    assert_eq!(app.all_runs("job=echo").await.len(), 1, "nothing ran again");
}

#[tokio::test]
async fn memory_bulk_rerun_reruns_what_the_filter_matches() {
    bulk_rerun_reruns_what_the_filter_matches(Options::default()).await;
}

#[tokio::test]
async fn postgres_bulk_rerun_reruns_what_the_filter_matches() {
    let db = TestDb::create().await;
    bulk_rerun_reruns_what_the_filter_matches(Options {
        database_url: Some(db.url()),
        ..Options::default()
    })
    .await;
}

/// A bulk re-run of the runs a filter matches re-runs each once, and its
/// progress counts them; a selection re-runs exactly the runs selected.
async fn bulk_rerun_reruns_what_the_filter_matches(options: Options) {
    let app = spawn_app_with(options).await;
    let token = clerk_token(&[TRIGGER]);
    let mut rejected = Vec::new();
    for i in 0..3 {
        let response = app.trigger("reject", &token, &json!({ "i": i })).await;
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        rejected.push(body["run_id"].as_str().unwrap().to_owned());
    }
    let echo = app
        .trigger("echo", &token, &json!({ "message": "kept" }))
        .await;
    assert_eq!(echo.status(), 200);
    let echo: Value = echo.json().await.unwrap();

    let response = app
        .rerun_runs(
            &token,
            &json!({ "status": ["failed_permanent", "dead_lettered"] }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let started: Value = response.json().await.unwrap();
    assert_eq!(started["matched"], 3);
    let bulk_id = started["bulk_id"].as_str().unwrap();
    assert_eq!(location, format!("/runs/rerun/{bulk_id}"));
    let progress = finished(&app, bulk_id).await;
    assert_eq!(
        (
            &progress["done"],
            &progress["failed"],
            &progress["succeeded"],
            &progress["skipped"]
        ),
        (&json!(3), &json!(3), &json!(0), &json!(0)),
        "{progress}"
    );
    assert_eq!(progress["requested_by"]["id"], "user_2abc");
    let mut rerun_of: Vec<String> = Vec::new();
    for id in progress["runs"].as_array().unwrap() {
        let run = run_of(&app, id.as_str().unwrap()).await;
        assert_eq!(run["status"], "failed_permanent");
        rerun_of.push(run["rerun_of"].as_str().unwrap().to_owned());
    }
    rerun_of.sort();
    rejected.sort();
    assert_eq!(rerun_of, rejected, "each matched run re-ran once");

    // A selection: exactly those runs, and a filter narrows it.
    let response = app
        .rerun_runs(
            &token,
            &json!({ "run_ids": [echo["run_id"], rejected[0]], "job": "echo" }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    assert_eq!(started["matched"], 1);
    let progress = finished(&app, started["bulk_id"].as_str().unwrap()).await;
    assert_eq!(progress["succeeded"], 1, "{progress}");
    assert_eq!(app.all_runs("job=echo").await.len(), 2);
}

/// Bulk re-runs refused, each with its status and code.
#[tokio::test]
async fn bulk_rerun_refusals() {
    let app = spawn_app().await;
    let trigger = clerk_token(&[TRIGGER]);
    let cases: [(&str, &str, Value, u16, &str); 9] = [
        ("no filter", &trigger, json!({}), 400, "invalid_query"),
        (
            "empty selection",
            &trigger,
            json!({ "run_ids": [] }),
            400,
            "invalid_query",
        ),
        (
            "bad status",
            &trigger,
            json!({ "status": ["lost"] }),
            400,
            "invalid_query",
        ),
        (
            "empty status",
            &trigger,
            json!({ "status": [] }),
            400,
            "invalid_query",
        ),
        (
            "bad source",
            &trigger,
            json!({ "source": "fax" }),
            400,
            "invalid_query",
        ),
        (
            "limit 0",
            &trigger,
            json!({ "job": "echo", "limit": 0 }),
            400,
            "invalid_query",
        ),
        (
            "unknown field",
            &trigger,
            json!({ "jobs": "echo" }),
            400,
            "invalid_body",
        ),
        (
            "bad time",
            &trigger,
            json!({ "job": "echo", "since": "yesterday" }),
            400,
            "invalid_query",
        ),
        (
            "no trigger permission",
            &clerk_token(&[VIEW]),
            json!({ "job": "echo" }),
            403,
            "insufficient_scope",
        ),
    ];
    for (case, token, filter, status, code) in cases {
        refused(case, app.rerun_runs(token, &filter).await, status, code).await;
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let response = app.rerun_progress(&clerk_token(&[VIEW]), &unknown).await;
    assert_eq!(response.status(), 404);
    let response = app.rerun_progress(&clerk_token(&[VIEW]), "nope").await;
    assert_eq!(response.status(), 400);
    let response = app.rerun_progress(&google_token(), &unknown).await;
    assert_eq!(response.status(), 403);
}
