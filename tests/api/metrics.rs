//! Metrics: the Prometheus text on the metrics listener moves by exactly the
//! work a test does; `METRICS_ADDR=off` opens no listener; `/metrics` is
//! never on the public port.
//!
//! Each worker owns its recorder, so a worker started here counts only what
//! this test sent it, even with other tests' workers in the same process.

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;

use crate::helpers::{
    DevWorker, KEYS, Options, TRIGGER, clerk_token, envelope, free_port, google_claims,
    google_token, spawn_app, spawn_app_with, with,
};

/// One series: its name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// A scrape: every sample by series.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<Series, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

/// Reads `name{labels} value` lines, label values quoted with `\\`, `\"`
/// and `\n` escapes (route templates put braces inside them, which the
/// line-regex parsers on crates.io split on).
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        text: text.to_owned(),
        ..Scrape::default()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            scrape.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed: {line}"));
                match c {
                    '}' => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, c)| c) {
                                Some('"') => break,
                                Some('\\') => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("bad escape: {line}"),
                                },
                                Some(c) => value.push(c),
                                None => panic!("unterminated value: {line}"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
        }
        let value: f64 = rest
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        scrape.samples.insert((name, labels), value);
    }
    scrape
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

impl Scrape {
    /// A sample's value; 0 when absent (a series not registered yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .get(&series(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every series of `name`.
    fn family(&self, name: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }
}

/// `GET /metrics` on the metrics listener of `base`.
async fn scrape(base: &str) -> Scrape {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&response.text().await.unwrap())
}

/// How each family of `name` moved from `before` to `after`, unchanged
/// series left out.
fn moved(before: &Scrape, after: &Scrape, name: &str) -> BTreeMap<String, f64> {
    let old = before.family(name);
    after
        .family(name)
        .into_iter()
        .filter_map(|(labels, value)| {
            let delta = value - old.get(&labels).copied().unwrap_or(0.0);
            (delta != 0.0).then(|| {
                let text = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (text, delta)
            })
        })
        .collect()
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Waits for the prefetch of both issuers' keys (one fetch each, counted),
/// so that nothing but the test's own work moves the counters after.
async fn settled(base: &str) -> Scrape {
    let start = std::time::Instant::now();
    loop {
        let now = scrape(base).await;
        let fetched = |issuer| {
            now.get(
                "pushworker_key_fetches_total",
                &[("issuer", issuer), ("outcome", "ok")],
            )
        };
        if fetched("google") == 1.0 && fetched("clerk") == 1.0 {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keys not fetched: {}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A push, a manual run, and refused tokens of each kind (table below) move
/// every family by exactly that; nothing else moves.
#[tokio::test]
async fn the_counters_and_histograms_move_by_exactly_the_work_done() {
    let app = spawn_app().await;
    let base = app.metrics_base.clone().expect("metrics on in tests");
    let before = settled(&base).await;

    // Two pushes with one token: a cache miss, then a hit.
    let token = google_token();
    for id in ["m-1", "m-2"] {
        let body = envelope(br#"{"n": 1}"#, &[("job", "record")], id).to_string();
        assert_eq!(app.push(&token, body).await.status(), 204, "push {id}");
    }
    // A manual run.
    let trigger = clerk_token(&[TRIGGER]);
    let response = app.trigger("record", &trigger, &json!({"k": 1})).await;
    assert_eq!(response.status(), 200);
    // Refusals: (case, Authorization, status, issuer label, reason label).
    let expired = KEYS
        .google
        .sign(&with(
            with(google_claims(), "exp", json!(crate::helpers::now() - 3600)),
            "iat",
            json!(crate::helpers::now() - 7200),
        ))
        .unwrap();
    let evil = KEYS
        .google
        .sign(&with(google_claims(), "iss", json!("https://evil.example")))
        .unwrap();
    let person = clerk_token(&["org:jobs:read"]);
    let cases: Vec<(&str, Option<String>, u16, &str, &str)> = vec![
        ("no token", None, 401, "none", "missing_token"),
        ("expired", Some(expired), 401, "google", "expired"),
        (
            "unknown issuer",
            Some(evil),
            401,
            "_other",
            "issuer_not_accepted",
        ),
        (
            "a person pushing",
            Some(person),
            403,
            "clerk",
            "insufficient_scope",
        ),
    ];
    let body = envelope(b"{}", &[("job", "record")], "m-refused").to_string();
    for (case, authorization, status, _, _) in &cases {
        let mut request = app
            .client
            .post(format!("{}/pubsub/push", app.addr))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = authorization {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), *status, "{case}");
    }
    // An unknown path.
    let response = app
        .client
        .get(format!("{}/nope", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // The request histogram is recorded once the body is sent, which may
    // be a moment after the client has read it.
    let requests = "http_server_request_duration_seconds_count";
    let expected_requests = expect(&[
        (
            "http_request_method=POST,http_response_status_code=204,http_route=/pubsub/push",
            2.0,
        ),
        (
            "http_request_method=POST,http_response_status_code=401,http_route=/pubsub/push",
            3.0,
        ),
        (
            "http_request_method=POST,http_response_status_code=403,http_route=/pubsub/push",
            1.0,
        ),
        (
            "http_request_method=POST,http_response_status_code=200,http_route=/jobs/{name}",
            1.0,
        ),
        (
            "http_request_method=GET,http_response_status_code=404,http_route=_other",
            1.0,
        ),
    ]);
    let start = std::time::Instant::now();
    let after = loop {
        let now = scrape(&base).await;
        if moved(&before, &now, requests) == expected_requests
            || start.elapsed() > Duration::from_secs(5)
        {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(moved(&before, &after, requests), expected_requests);

    assert_eq!(
        moved(&before, &after, "pushworker_runs_total"),
        expect(&[
            ("job_name=record,source=manual,status=succeeded", 1.0),
            ("job_name=record,source=push,status=succeeded", 2.0),
        ])
    );
    assert_eq!(
        moved(&before, &after, "pushworker_run_duration_seconds_count"),
        expect(&[
            ("job_name=record,source=manual", 1.0),
            ("job_name=record,source=push", 2.0),
        ])
    );
    assert_eq!(
        after.get("pushworker_runs_in_flight", &[("job_name", "record")]),
        0.0,
        "every run ended"
    );
    // Only the two pushes that reached the handler: the refused ones never
    // did. Acknowledged, so no error_type.
    assert_eq!(
        moved(&before, &after, "messaging_process_duration_seconds_count"),
        expect(&[(
            "messaging_destination_subscription_name=work-push,messaging_system=gcp_pubsub",
            2.0
        )])
    );
    let rejections: Vec<(String, f64)> = cases
        .iter()
        .map(|(_, _, _, issuer, reason)| (format!("issuer={issuer},reason={reason}"), 1.0))
        .collect();
    assert_eq!(
        moved(&before, &after, "pushworker_auth_rejections_total"),
        rejections.into_iter().collect()
    );
    // Misses: the push token, the manual run's, and the three tokens that
    // reached a verifier (the person's verified, then refused); the second
    // push is the one hit.
    assert_eq!(
        moved(&before, &after, "pushworker_token_cache_hits_total"),
        expect(&[("", 1.0)])
    );
    assert_eq!(
        moved(&before, &after, "pushworker_token_cache_misses_total"),
        expect(&[("", 5.0)])
    );
    assert_eq!(
        moved(&before, &after, "pushworker_key_fetches_total"),
        expect(&[]),
        "the keys were cached"
    );
    // Each run is begun and finished once in the ledger.
    assert_eq!(
        moved(
            &before,
            &after,
            "pushworker_ledger_operation_duration_seconds_count"
        ),
        expect(&[
            ("operation=begin,store=memory", 3.0),
            ("operation=finish,store=memory", 3.0),
        ])
    );
    // The sums moved by a positive, plausible time.
    let seconds = after.get(
        "pushworker_run_duration_seconds_sum",
        &[("job_name", "record"), ("source", "push")],
    ) - before.get(
        "pushworker_run_duration_seconds_sum",
        &[("job_name", "record"), ("source", "push")],
    );
    assert!(seconds > 0.0 && seconds < 5.0, "{seconds}");
}

/// Failures are counted by status and `error_type`; the buckets are
/// cumulative and end in `+Inf` equal to the count.
#[tokio::test]
async fn failed_pushes_carry_their_error_type_and_status() {
    let app = spawn_app().await;
    let base = app.metrics_base.clone().expect("metrics on in tests");
    let before = settled(&base).await;
    let token = google_token();
    for (job, status) in [("flaky", 503), ("reject", 422), ("nope", 404)] {
        let body = envelope(b"{}", &[("job", job)], &format!("m-{job}")).to_string();
        let response = app.push(&token, body).await;
        assert_eq!(response.status(), status, "{job}");
    }
    let after = scrape(&base).await;
    let moved_runs = moved(&before, &after, "pushworker_runs_total");
    assert_eq!(
        moved_runs.get("job_name=flaky,source=push,status=failed_transient"),
        Some(&1.0),
        "{moved_runs:?}"
    );
    assert_eq!(
        moved_runs.get("job_name=reject,source=push,status=failed_permanent"),
        Some(&1.0),
        "{moved_runs:?}"
    );
    let pushes = moved(&before, &after, "messaging_process_duration_seconds_count");
    assert_eq!(pushes.values().sum::<f64>(), 3.0, "{pushes:?}");
    assert!(
        pushes.keys().all(|k| k.starts_with("error_type=")),
        "every failure has an error_type: {pushes:?}"
    );
    let buckets: Vec<(f64, f64)> = after
        .samples
        .iter()
        .filter(|((n, l), _)| {
            n == "pushworker_run_duration_seconds_bucket"
                && l.get("job_name").map(String::as_str) == Some("flaky")
        })
        .map(|((_, l), v)| {
            let le = l["le"].parse::<f64>().unwrap_or(f64::INFINITY);
            (le, *v)
        })
        .collect();
    assert!(buckets.len() > 5, "{buckets:?}");
    let mut sorted = buckets.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(sorted.windows(2).all(|w| w[0].1 <= w[1].1), "{sorted:?}");
    assert_eq!(sorted.last(), Some(&(f64::INFINITY, 1.0)));
}

/// Every family has its `# TYPE` line (the ones registered on first use once
/// that use happened), no label is called `job`, and no series carries a
/// value a caller chose (a job name outside the registry is `_other`).
#[tokio::test]
async fn the_listener_answers_prometheus_text_with_every_family() {
    let app = spawn_app().await;
    let base = app.metrics_base.clone().expect("metrics on in tests");
    settled(&base).await;
    let token = google_token();
    let body = envelope(b"{}", &[("job", "record")], "m-types").to_string();
    assert_eq!(app.push(&token, body).await.status(), 204);
    let body = envelope(b"{}", &[("job", "no-such-job-42")], "m-unknown").to_string();
    assert_eq!(app.push(&token, body).await.status(), 404);
    assert_eq!(app.whoami("not-a-token").await.status(), 401);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = scrape(&base).await;
    for (name, kind) in [
        ("http_server_request_duration_seconds", "histogram"),
        ("messaging_process_duration_seconds", "histogram"),
        ("pushworker_runs_total", "counter"),
        ("pushworker_run_duration_seconds", "histogram"),
        ("pushworker_runs_in_flight", "gauge"),
        ("pushworker_auth_rejections_total", "counter"),
        ("pushworker_key_fetches_total", "counter"),
        ("pushworker_token_cache_hits_total", "counter"),
        ("pushworker_token_cache_misses_total", "counter"),
        ("pushworker_ledger_operation_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            metrics.types.get(name).map(String::as_str),
            Some(kind),
            "# TYPE {name} {kind} in:\n{}",
            metrics.text
        );
        assert!(
            metrics.text.contains(&format!("# HELP {name} ")),
            "# HELP {name}"
        );
    }
    for (name, labels) in metrics.samples.keys() {
        assert!(!labels.contains_key("job"), "{name} has a `job` label");
    }
    assert!(!metrics.text.contains("no-such-job-42"), "{}", metrics.text);
    assert_eq!(
        metrics.get(
            "pushworker_runs_total",
            &[
                ("job_name", "_other"),
                ("source", "push"),
                ("status", "failed_permanent")
            ]
        ),
        1.0,
        "{}",
        metrics.text
    );
}

/// `/metrics` is not on the public port (404, like any unknown path), and
/// the metrics listener serves nothing else.
#[tokio::test]
async fn metrics_are_not_on_the_public_port() {
    let app = spawn_app().await;
    let base = app.metrics_base.clone().expect("metrics on in tests");
    assert_ne!(base, app.addr);
    for (url, status) in [
        (format!("{}/metrics", app.addr), 404),
        (format!("{base}/metrics"), 200),
        (format!("{base}/healthz"), 404),
        (format!("{base}/"), 404),
    ] {
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), status, "{url}");
    }
}

/// Listening TCP sockets the process `pid` holds (its fds matched against
/// /proc/net/tcp{,6} in state LISTEN).
fn listening_sockets(pid: u32) -> usize {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let text = target.to_string_lossy().into_owned();
            text.strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // st is field 3, inode field 9; 0A is LISTEN.
                    (fields.get(3) == Some(&"0A"))
                        .then(|| fields.get(9).map(|s| (*s).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// The real binary: with `METRICS_ADDR` it listens there too and serves
/// `/metrics`; with `off` it holds one listening socket, the public port's.
/// In process, `off` leaves the application without a metrics address.
#[tokio::test]
async fn off_opens_no_listener() {
    let port = free_port();
    let on = DevWorker::start(
        "metrics-on",
        &[("METRICS_ADDR", format!("127.0.0.1:{port}"))],
        false,
    )
    .await;
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("# TYPE pushworker_")
    );
    assert_eq!(listening_sockets(on.child.id()), 2, "public + metrics");
    drop(on);

    let off = DevWorker::start("metrics-off", &[("METRICS_ADDR", "off".to_owned())], false).await;
    assert_eq!(listening_sockets(off.child.id()), 1, "the public port only");
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .is_err(),
        "nothing listens on the former metrics port"
    );
    drop(off);

    let app = spawn_app_with(Options {
        metrics_addr: None,
        ..Options::default()
    })
    .await;
    assert_eq!(app.metrics_base, None);
    let body = envelope(b"{}", &[("job", "record")], "m-off").to_string();
    assert_eq!(app.push(&google_token(), body).await.status(), 204);
}
