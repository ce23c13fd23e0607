//! Searching the run ledger (`GET /runs?message_id=&idempotency_key=&since=&until=`)
//! and summing it up (`GET /runs/stats?since=&bucket=`), against the memory
//! store and PostgreSQL alike: the same runs give the same answers.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::helpers::*;

/// A wrapped push of `{}` to the `count` job as message `message_id`.
fn count_push(message_id: &str) -> String {
    envelope(b"{}", &[("job", "count")], message_id).to_string()
}

/// `text` as a query value (`+` of an offset, `:` and the rest).
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn time_of(run: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(run["started_at"].as_str().unwrap(), &Rfc3339).unwrap()
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// `GET /runs?{query}` as the viewer: 200, and the runs' ids.
async fn search(app: &TestApp, query: &str) -> Vec<String> {
    let response = app.list_runs(&clerk_token(&[VIEW]), query).await;
    assert_eq!(response.status(), 200, "GET /runs?{query}");
    let body: Value = response.json().await.unwrap();
    body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /runs/stats?{query}` as the viewer: 200, and the body.
async fn stats(app: &TestApp, query: &str) -> Value {
    let response = app.run_stats(&clerk_token(&[VIEW]), query).await;
    assert_eq!(response.status(), 200, "GET /runs/stats?{query}");
    response.json().await.unwrap()
}

fn ids(runs: &[&Value]) -> Vec<String> {
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A message delivered twice, another once, two manual runs with keys and
/// one without: each search finds exactly its runs, newest first, and pages
/// like any listing; a time range cuts on `started_at` to the microsecond.
async fn searches(app: &TestApp) {
    let google = google_token();
    let trigger = clerk_token(&[TRIGGER]);
    for (message, expected) in [
        ("m-search-a", 204),
        ("m-search-a", 204),
        ("m-search-b", 204),
    ] {
        let response = app.push(&google, count_push(message)).await;
        assert_eq!(response.status(), expected, "push {message}");
    }
    for key in ["key-search-1", "key-search-2"] {
        let response = app
            .trigger_with_key("echo", &trigger, key, &json!({"message": key}))
            .await;
        assert_eq!(response.status(), 200, "trigger with {key}");
    }
    let response = app
        .trigger("echo", &trigger, &json!({"message": "no key"}))
        .await;
    assert_eq!(response.status(), 200);

    let all = app.all_runs("").await;
    assert_eq!(all.len(), 6);
    let by = |field: &str, value: &str| -> Vec<&Value> {
        all.iter().filter(|r| r[field] == value).collect()
    };
    let a = by("message_id", "m-search-a");
    assert_eq!(a.len(), 2);
    let mut statuses: Vec<&str> = a.iter().map(|r| r["status"].as_str().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["duplicate", "succeeded"]);
    let key1 = by("idempotency_key", "key-search-1");
    assert_eq!(key1.len(), 1);

    for (query, expected) in [
        ("message_id=m-search-a", ids(&a)),
        (
            "message_id=m-search-b",
            ids(&by("message_id", "m-search-b")),
        ),
        (
            "message_id=m-search-a&status=duplicate",
            ids(&by("status", "duplicate")),
        ),
        ("message_id=m-search-a&source=manual", vec![]),
        ("message_id=m-search-c", vec![]),
        // A message id names push runs only, whatever else holds that text.
        ("message_id=key-search-1", vec![]),
        ("idempotency_key=key-search-1", ids(&key1)),
        (
            "idempotency_key=key-search-2&job=echo",
            ids(&by("idempotency_key", "key-search-2")),
        ),
        ("idempotency_key=key-search-1&job=count", vec![]),
        ("idempotency_key=m-search-a", vec![]),
        ("message_id=m-search-a&idempotency_key=key-search-1", vec![]),
    ] {
        assert_eq!(search(app, query).await, expected, "GET /runs?{query}");
    }

    // Pages of a search.
    let first = app
        .list_runs(&clerk_token(&[VIEW]), "message_id=m-search-a&limit=1")
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["runs"][0]["run_id"], a[0]["run_id"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(
        search(
            app,
            &format!("message_id=m-search-a&limit=1&cursor={cursor}")
        )
        .await,
        ids(&a[1..])
    );

    // Time ranges, on the runs' own `started_at` (newest first in `all`).
    let newest = time_of(&all[0]);
    let oldest = time_of(&all[5]);
    let middle = &all[2];
    let at = time_of(middle);
    let micro = Duration::from_micros(1);
    let all_ids = ids(&all.iter().collect::<Vec<_>>());
    for (since, until, expected) in [
        (
            Some(at),
            Some(at + micro),
            vec![middle["run_id"].as_str().unwrap().to_owned()],
        ),
        (Some(at), None, all_ids[..3].to_vec()),
        (None, Some(at), all_ids[3..].to_vec()),
        (Some(oldest), Some(newest + micro), all_ids.clone()),
        (Some(newest + micro), None, vec![]),
        (None, Some(oldest), vec![]),
        // Offsets other than `Z` mean the same moment.
        (
            Some(at.to_offset(time::UtcOffset::from_hms(5, 30, 0).unwrap())),
            Some(at + micro),
            vec![middle["run_id"].as_str().unwrap().to_owned()],
        ),
    ] {
        let mut parts = Vec::new();
        if let Some(since) = since {
            parts.push(format!("since={}", encode(&rfc3339(since))));
        }
        if let Some(until) = until {
            parts.push(format!("until={}", encode(&rfc3339(until))));
        }
        let query = parts.join("&");
        assert_eq!(search(app, &query).await, expected, "GET /runs?{query}");
    }
    let since = encode(&rfc3339(oldest));
    assert_eq!(
        search(app, &format!("since={since}&message_id=m-search-a")).await,
        ids(&a)
    );
    assert_eq!(
        search(
            app,
            &format!(
                "until={}&idempotency_key=key-search-1",
                encode(&rfc3339(oldest))
            )
        )
        .await,
        Vec::<String>::new()
    );

    // Bad searches say what to fix.
    let long_id = "m".repeat(201);
    let long_key = "k".repeat(256);
    let at_text = encode(&rfc3339(at));
    for (query, says) in [
        (
            format!("message_id={long_id}"),
            "message_id must be at most 200 characters",
        ),
        (
            format!("idempotency_key={long_key}"),
            "idempotency_key must be at most 255",
        ),
        (
            "since=yesterday".to_owned(),
            "since must be an RFC 3339 time",
        ),
        (
            "until=2026-12-07".to_owned(),
            "until must be an RFC 3339 time",
        ),
        (
            "since=2026-12-07T09:00:00".to_owned(),
            "since must be an RFC 3339 time",
        ),
        // An unencoded `+` arrives as a space.
        ("since=2026-12-07T09:00:00+01:00".to_owned(), "%2B"),
        (
            format!("since={at_text}&until={at_text}"),
            "since must be before until",
        ),
        (
            format!("since={}&until={at_text}", encode(&rfc3339(at + micro))),
            "since must be before until",
        ),
        (
            "message=m-search-a".to_owned(),
            "unknown parameter `message`",
        ),
    ] {
        let response = app.list_runs(&clerk_token(&[VIEW]), &query).await;
        assert_eq!(response.status(), 400, "GET /runs?{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_query", "{query}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
}

#[tokio::test]
async fn memory_searches_runs() {
    let app = spawn_app().await;
    searches(&app).await;
}

#[tokio::test]
async fn postgres_searches_runs() {
    let db = TestDb::create().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url()),
        ..Options::default()
    })
    .await;
    searches(&app).await;
}

/// `percentile_cont`: linear interpolation between the nearest ranks.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = p * last as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    Some(sorted[low] + (sorted[high] - sorted[low]) * (at - low as f64))
}

fn close(a: &Value, b: Option<f64>) -> bool {
    match (a.as_f64(), b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        (None, None) => a.is_null(),
        _ => false,
    }
}

/// Sleeps of known lengths and two permanent failures: the stats count
/// each (job, status) exactly; their percentiles are those of the recorded
/// durations, per bucket, and within a tolerance of the sleeps' lengths; a
/// run still running counts with no duration; bad buckets are 400s.
async fn stats_of_known_runs(app: &TestApp) {
    let trigger = clerk_token(&[TRIGGER]);
    let sleeps = [40_u64, 80, 120, 160, 200];
    let runs = sleeps.map(|millis| {
        let (client, addr, token) = (app.client.clone(), app.addr.clone(), trigger.clone());
        async move {
            client
                .post(format!("{addr}/jobs/sleep"))
                .bearer_auth(token)
                .json(&json!({ "millis": millis }))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures::future::join_all(runs).await {
        assert_eq!(status, 200);
    }
    for _ in 0..2 {
        let response = app.trigger("reject", &trigger, &json!({})).await;
        assert_eq!(response.status(), 422);
    }
    // One still running while the stats are read.
    let long = {
        let request = app
            .client
            .post(format!("{}/jobs/sleep", app.addr))
            .bearer_auth(&trigger)
            .json(&json!({ "millis": 2500 }))
            .send();
        tokio::spawn(request)
    };
    let started = Instant::now();
    while app.all_runs("status=running").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the long sleep never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let week = stats(app, "bucket=7d").await;
    assert_eq!(week["bucket_secs"], 604_800);
    let since = OffsetDateTime::parse(week["since"].as_str().unwrap(), &Rfc3339).unwrap();
    let until = OffsetDateTime::parse(week["until"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(
        since.unix_timestamp() % 604_800,
        0,
        "since is a bucket boundary"
    );
    assert!(until - since >= time::Duration::hours(1));
    let entries = week["buckets"].as_array().unwrap();
    let entry = |job: &str, status: &str| -> &Value {
        let found: Vec<&Value> = entries
            .iter()
            .filter(|e| e["job"] == job && e["status"] == status)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one week bucket of {job} {status}: {week:#}"
        );
        found[0]
    };
    let slept = entry("sleep", "succeeded");
    assert_eq!(slept["count"], 5);
    let week_of = |at: OffsetDateTime| at.unix_timestamp().div_euclid(604_800) * 604_800;
    let start = OffsetDateTime::parse(slept["start"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(start.unix_timestamp(), week_of(OffsetDateTime::now_utc()));
    // The jobs' own overhead is small: the sleeps' percentiles, give or take.
    let p50 = slept["p50_ms"].as_f64().unwrap();
    let p95 = slept["p95_ms"].as_f64().unwrap();
    assert!((120.0..170.0).contains(&p50), "p50 {p50}");
    assert!(
        (192.0..242.0).contains(&p95),
        "p95 {p95} (160 + 0.8 × 40 = 192 slept)"
    );
    let rejected = entry("reject", "failed_permanent");
    assert_eq!(rejected["count"], 2);
    assert!(rejected["p95_ms"].as_f64().is_some());
    let running = entry("sleep", "running");
    assert_eq!(running["count"], 1);
    assert!(
        running["p50_ms"].is_null() && running["p95_ms"].is_null(),
        "{running}"
    );
    assert_eq!(entries.len(), 3, "{week:#}");

    // Minutes: each entry is exactly what the ledger holds for its minute.
    let minutes = stats(app, "bucket=1m").await;
    assert_eq!(minutes["bucket_secs"], 60);
    let all = app.all_runs("").await;
    let mut expected: BTreeMap<(i64, String, String), Vec<f64>> = BTreeMap::new();
    let mut counts: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
    for run in &all {
        let minute = time_of(run).unix_timestamp().div_euclid(60) * 60;
        let key = (
            minute,
            run["job"].as_str().unwrap().to_owned(),
            run["status"].as_str().unwrap().to_owned(),
        );
        *counts.entry(key.clone()).or_default() += 1;
        let durations = expected.entry(key).or_default();
        if let Some(ms) = run["duration_ms"].as_f64() {
            durations.push(ms);
        }
    }
    let entries = minutes["buckets"].as_array().unwrap();
    assert_eq!(entries.len(), counts.len(), "{minutes:#}");
    for (entry, ((minute, job, status), count)) in entries.iter().zip(&counts) {
        let start = OffsetDateTime::parse(entry["start"].as_str().unwrap(), &Rfc3339).unwrap();
        assert_eq!(start.unix_timestamp(), *minute, "{entry}");
        assert_eq!(
            (&entry["job"], &entry["status"]),
            (&json!(job), &json!(status))
        );
        assert_eq!(entry["count"], *count, "{entry}");
        let mut durations = expected[&(*minute, job.clone(), status.clone())].clone();
        durations.sort_by(f64::total_cmp);
        assert!(
            close(&entry["p50_ms"], percentile(&durations, 0.5)),
            "{entry} {durations:?}"
        );
        assert!(
            close(&entry["p95_ms"], percentile(&durations, 0.95)),
            "{entry} {durations:?}"
        );
    }
    assert_eq!(long.await.unwrap().unwrap().status(), 200);

    // A `since` after the runs: none of them.
    let later = encode(&rfc3339(
        OffsetDateTime::now_utc() + time::Duration::seconds(-1),
    ));
    let none = stats(app, &format!("since={later}&bucket=1s")).await;
    let sleeps_later = none["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["job"] == "reject")
        .count();
    assert_eq!(sleeps_later, 0, "{none:#}");

    // Bad queries say what to fix.
    let day_ago = encode(&rfc3339(
        OffsetDateTime::now_utc() - time::Duration::days(1),
    ));
    let future = encode(&rfc3339(
        OffsetDateTime::now_utc() + time::Duration::minutes(5),
    ));
    for (query, says) in [
        (
            "bucket=0m".to_owned(),
            "bucket must be a whole number and a unit",
        ),
        ("bucket=1w".to_owned(), "bucket must be"),
        ("bucket=1.5m".to_owned(), "bucket must be"),
        ("bucket=m".to_owned(), "bucket must be"),
        ("bucket=60".to_owned(), "bucket must be"),
        ("bucket=8d".to_owned(), "from 1s to 7d"),
        ("bucket=1s".to_owned(), "buckets; at most 1440"),
        (
            format!("bucket=1m&since={day_ago}"),
            "buckets; at most 1440",
        ),
        (format!("since={future}"), "since must be in the past"),
        (
            "since=an-hour-ago".to_owned(),
            "since must be an RFC 3339 time",
        ),
        (
            "until=2026-12-07T10:00:00Z".to_owned(),
            "unknown parameter `until`",
        ),
        ("job=sleep".to_owned(), "allowed: since, bucket"),
    ] {
        let response = app.run_stats(&clerk_token(&[VIEW]), &query).await;
        assert_eq!(response.status(), 400, "GET /runs/stats?{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_query", "{query}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
    // A day of minutes is the most: 1440 buckets.
    let day = encode(&rfc3339(
        OffsetDateTime::now_utc() - time::Duration::hours(23),
    ));
    let response = app
        .run_stats(&clerk_token(&[VIEW]), &format!("bucket=1m&since={day}"))
        .await;
    assert_eq!(response.status(), 200);
}

fn stats_options() -> Options {
    Options {
        job_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

#[tokio::test]
async fn memory_stats_count_and_time_known_runs() {
    let app = spawn_app_with(stats_options()).await;
    stats_of_known_runs(&app).await;
}

#[tokio::test]
async fn postgres_stats_count_and_time_known_runs() {
    let db = TestDb::create().await;
    let app = spawn_app_with(Options {
        database_url: Some(db.url()),
        ..stats_options()
    })
    .await;
    stats_of_known_runs(&app).await;
}

/// The searches and the stats are for the same callers as `GET /runs`:
/// no token is a 401, a token without the view or trigger permission a 403.
#[tokio::test]
async fn searches_and_stats_need_the_view_permission() {
    let app = spawn_app().await;
    let paths = [
        "/runs?message_id=m-1",
        "/runs?since=2026-12-07T09:00:00Z",
        "/runs/stats",
        "/runs/stats?bucket=5m",
    ];
    for path in paths {
        for (who, token, expected) in [
            ("viewer", Some(clerk_token(&[VIEW])), 200),
            ("trigger", Some(clerk_token(&[TRIGGER])), 200),
            (
                "other permission",
                Some(clerk_token(&["org:billing:read"])),
                403,
            ),
            ("service account", Some(google_token()), 403),
            ("no token", None, 401),
        ] {
            let mut request = app.client.get(format!("{}{path}", app.addr));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), expected, "{who} GET {path}");
            if expected == 401 {
                assert!(challenge(&response).starts_with("Bearer"), "{path}");
            }
        }
    }
}
