//! The webhook job against hostile endpoints on loopback: redirects off the
//! allow-list, ports and non-public addresses that are not listed, and
//! responses too large to read, through `POST /jobs/webhook` and real pushes
//! (and the real binary for its memory).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use serde_json::{Value, json};

use crate::helpers::*;

/// One chunk of a streamed body: static, so a large response costs the
/// test server no memory.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

#[derive(Default)]
struct Counters {
    /// Requests received, any path.
    hits: AtomicUsize,
    /// Body bytes handed to the connection by the streaming routes.
    streamed: AtomicU64,
}

/// An HTTP endpoint on loopback that counts what reaches it:
/// - `/ok`: 200 `ok`;
/// - `/redirect/{code}?to=URL`: that status with `Location: URL`;
/// - `/stream/{bytes}`: that many bytes, chunked (no Content-Length);
/// - `/declared/{bytes}`: that many bytes with their Content-Length.
#[derive(Clone)]
struct Endpoint {
    port: u16,
    counters: Arc<Counters>,
}

#[derive(serde::Deserialize)]
struct To {
    to: String,
}

fn stream(counters: Arc<Counters>, total: u64) -> Body {
    let chunks = futures::stream::unfold(total, move |left| {
        let counters = Arc::clone(&counters);
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK.len() as u64);
            counters.streamed.fetch_add(n, Ordering::SeqCst);
            let chunk = Bytes::from_static(&CHUNK[..n as usize]);
            Some((Ok::<_, std::io::Error>(chunk), left - n))
        }
    });
    Body::from_stream(chunks)
}

impl Endpoint {
    /// Listens on `127.0.0.1:0`.
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Self {
            port,
            counters: Arc::default(),
        };
        endpoint.serve(listener);
        endpoint
    }

    /// Serves the same routes, with the same counters, on `ip` and this
    /// endpoint's port too, when the machine lets it bind there.
    async fn also_on(&self, ip: &str) -> bool {
        let addr = SocketAddr::new(ip.parse().unwrap(), self.port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                self.serve(listener);
                true
            }
            Err(e) => {
                eprintln!("not testing {addr}: cannot bind it here ({e})");
                false
            }
        }
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let counters = Arc::clone(&self.counters);
        let app = Router::new()
            .route("/ok", any(|| async { "ok" }))
            .route(
                "/redirect/{code}",
                any(|Path(code): Path<u16>, Query(to): Query<To>| async move {
                    (
                        StatusCode::from_u16(code).unwrap(),
                        [(header::LOCATION, to.to)],
                    )
                }),
            )
            .route(
                "/stream/{bytes}",
                any(
                    |State(c): State<Arc<Counters>>, Path(bytes): Path<u64>| async move {
                        stream(c, bytes)
                    },
                ),
            )
            .route(
                "/declared/{bytes}",
                any(
                    |State(c): State<Arc<Counters>>, Path(bytes): Path<u64>| async move {
                        let mut response: Response = stream(c, bytes).into_response();
                        response
                            .headers_mut()
                            .insert(header::CONTENT_LENGTH, bytes.into());
                        response
                    },
                ),
            )
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&counters),
                |State(c): State<Arc<Counters>>,
                 request: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    c.hits.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                },
            ))
            .with_state(counters);
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::SeqCst)
    }

    fn streamed(&self) -> u64 {
        self.counters.streamed.load(Ordering::SeqCst)
    }
}

/// A worker whose webhook job may call exactly `hosts`.
async fn app_allowing(hosts: &[String]) -> TestApp {
    spawn_app_with(Options {
        webhook_allowed_hosts: hosts.to_vec(),
        ..Options::default()
    })
    .await
}

/// `POST /jobs/webhook` with `payload`; the status and the body.
async fn run_webhook(app: &TestApp, payload: Value) -> (u16, Value) {
    let response = app
        .trigger("webhook", &clerk_token(&[TRIGGER]), &payload)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A push of `payload` for the webhook job; the status and the body.
async fn push_webhook(app: &TestApp, payload: Value, message_id: &str) -> (u16, Value) {
    let body = envelope(
        payload.to_string().as_bytes(),
        &[("job", "webhook")],
        message_id,
    );
    let response = app.push(&google_token(), body.to_string()).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asserts a manual run failed permanently with a message containing every
/// one of `parts`.
fn assert_permanent(case: &str, (status, body): &(u16, Value), parts: &[&str]) {
    assert_eq!(*status, 422, "{case}: {body}");
    assert_eq!(body["status"], "failed_permanent", "{case}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    for part in parts {
        assert!(
            message.contains(part),
            "{case}: `{part}` missing: {message}"
        );
    }
}

/// Asserts a push was nacked as a permanent failure whose message contains
/// every one of `parts`.
fn assert_push_permanent(case: &str, (status, body): &(u16, Value), parts: &[&str]) {
    assert_eq!(*status, 422, "{case}: {body}");
    assert_eq!(body["error"], "job_failed_permanent", "{case}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    for part in parts {
        assert!(
            message.contains(part),
            "{case}: `{part}` missing: {message}"
        );
    }
}

/// Every redirect status is answered as a permanent failure naming the
/// status and where it pointed; the target, off the list, is never reached,
/// and neither is an allowed one (no redirect is followed at all).
#[tokio::test]
async fn webhook_redirects_are_never_followed() {
    let allowed = Endpoint::start().await;
    let off_list = Endpoint::start().await;
    let app = app_allowing(&[format!("127.0.0.1:{}", allowed.port)]).await;
    let internal = off_list.url("/internal");
    let mut calls = 0;
    for code in [301, 302, 303, 307, 308] {
        for method in ["POST", "GET"] {
            let case = format!("{code} on {method}");
            let url = allowed.url(&format!("/redirect/{code}?to={internal}"));
            let payload = json!({"url": url, "method": method, "body": {"secret": "s"}});
            let expected = format!("redirect {code} to {internal} not followed");
            let hint = "webhook redirects are never followed; point the job at the final URL";
            let run = run_webhook(&app, payload.clone()).await;
            assert_permanent(&case, &run, &[&expected, hint]);
            let push = push_webhook(&app, payload, &format!("{code}-{method}")).await;
            assert_push_permanent(&case, &push, &[&expected, hint]);
            calls += 2;
        }
    }
    assert_eq!(
        off_list.hits(),
        0,
        "a redirect reached the host off the list"
    );
    assert_eq!(
        allowed.hits(),
        calls,
        "every run called the allowed host once"
    );

    // To the allowed host itself, relative or absolute: still not followed.
    for location in ["/ok", &allowed.url("/ok")] {
        let before = allowed.hits();
        let url = allowed.url(&format!("/redirect/302?to={location}"));
        let run = run_webhook(&app, json!({"url": url})).await;
        let expected = format!("redirect 302 to {} not followed", allowed.url("/ok"));
        assert_permanent(location, &run, &[&expected]);
        assert_eq!(allowed.hits(), before + 1, "{location}: /ok was not called");
    }
    let run = run_webhook(&app, json!({"url": allowed.url("/ok")})).await;
    assert_eq!(run.0, 200, "the allowed host works: {}", run.1);
    assert_eq!(off_list.hits(), 0);
}

/// An entry without a port allows only the scheme's default port; one with a
/// port allows only that port. No connection is made to a port not listed.
#[tokio::test]
async fn webhook_ports_not_listed_are_refused() {
    let endpoint = Endpoint::start().await;
    let port = endpoint.port;
    let other = free_port();
    let cases = [
        (
            "entry without a port",
            "127.0.0.1".to_owned(),
            endpoint.url("/ok"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "name entry without a port",
            "localhost".to_owned(),
            format!("http://localhost:{port}/ok"),
            format!("localhost:{port}"),
        ),
        (
            "another port listed",
            format!("127.0.0.1:{other}"),
            endpoint.url("/ok"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "https default port is not the one listed",
            format!("127.0.0.1:{port}"),
            "https://127.0.0.1/ok".to_owned(),
            "127.0.0.1:443".to_owned(),
        ),
    ];
    for (case, entry, url, target) in cases {
        let app = app_allowing(std::slice::from_ref(&entry)).await;
        let run = run_webhook(&app, json!({ "url": url })).await;
        assert_permanent(
            case,
            &run,
            &[&format!("`{target}` is not in WEBHOOK_ALLOWED_HOSTS")],
        );
        let push = push_webhook(&app, json!({ "url": url }), "1").await;
        assert_push_permanent(case, &push, &["is not in WEBHOOK_ALLOWED_HOSTS"]);
    }
    assert_eq!(endpoint.hits(), 0, "a port that is not listed was reached");

    let app = app_allowing(&[format!("127.0.0.1:{port}")]).await;
    let run = run_webhook(&app, json!({"url": endpoint.url("/ok")})).await;
    assert_eq!(run.0, 200, "the listed port works: {}", run.1);
    assert_eq!(endpoint.hits(), 1);
}

/// Loopback, link-local, private and other non-public targets are refused
/// unless listed exactly, IP literals and names alike, and nothing connects
/// to them. The endpoint also listens on 127.0.0.2 and [::1] (same port,
/// same counter) where the machine allows, so that a connection there would
/// be counted.
#[tokio::test]
async fn webhook_non_public_targets_not_listed_are_refused() {
    let endpoint = Endpoint::start().await;
    let port = endpoint.port;
    let on_127_2 = endpoint.also_on("127.0.0.2").await;
    endpoint.also_on("::1").await;
    let listed = format!("127.0.0.1:{port}");
    let app = app_allowing(std::slice::from_ref(&listed)).await;
    let literals = [
        format!("http://127.0.0.2:{port}/ok"),
        format!("http://2130706434:{port}/ok"),
        format!("http://0x7f.0.0.2:{port}/ok"),
        format!("http://0.0.0.0:{port}/ok"),
        format!("http://[::1]:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://[::ffff:7f00:2]:{port}/ok"),
        format!("http://[::]:{port}/ok"),
        "http://169.254.169.254/computeMetadata/v1/".to_owned(),
        format!("http://169.254.169.254:{port}/ok"),
        "http://[::ffff:169.254.169.254]/latest/meta-data/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://172.16.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ];
    for url in &literals {
        let run = run_webhook(&app, json!({ "url": url })).await;
        assert_permanent(url, &run, &["is not in WEBHOOK_ALLOWED_HOSTS"]);
    }
    let push = push_webhook(&app, json!({"url": literals[0]}), "1").await;
    assert_push_permanent(&literals[0], &push, &["is not in WEBHOOK_ALLOWED_HOSTS"]);

    // A listed name that resolves to loopback: refused at the resolver, on
    // the addresses it would connect to.
    let by_name = format!("http://localhost:{port}/ok");
    let app = app_allowing(&[format!("localhost:{port}")]).await;
    let run = run_webhook(&app, json!({ "url": by_name })).await;
    let refused = [
        "host `localhost` resolves only to addresses the webhook may not call",
        "127.0.0.1 (loopback)",
        "WEBHOOK_ALLOWED_HOSTS lists that address too, with the same port",
    ];
    assert_permanent(&by_name, &run, &refused);
    let push = push_webhook(&app, json!({ "url": by_name }), "2").await;
    assert_push_permanent(&by_name, &push, &refused);
    assert_eq!(endpoint.hits(), 0, "a non-public target was reached");

    // Listed explicitly, the same targets work.
    let app = app_allowing(&[format!("localhost:{port}"), listed.clone()]).await;
    let run = run_webhook(&app, json!({ "url": by_name })).await;
    assert_eq!(run.0, 200, "name and address listed: {}", run.1);
    assert_eq!(endpoint.hits(), 1);
    if on_127_2 {
        let app = app_allowing(&[format!("127.0.0.2:{port}")]).await;
        let run = run_webhook(&app, json!({"url": format!("http://127.0.0.2:{port}/ok")})).await;
        assert_eq!(run.0, 200, "127.0.0.2 listed: {}", run.1);
        assert_eq!(endpoint.hits(), 2);
    }
}

/// The response cap: a body up to it is read, one past it fails permanently
/// naming the limit, whether it is chunked or declares its length, and the
/// job stops reading (the endpoint could not hand over the rest).
#[tokio::test]
async fn webhook_response_over_the_cap_fails_permanently() {
    let endpoint = Endpoint::start().await;
    let cap: u64 = 64 * 1024;
    let app = spawn_app_with(Options {
        webhook_allowed_hosts: vec![format!("127.0.0.1:{}", endpoint.port)],
        webhook_max_response_bytes: cap,
        ..Options::default()
    })
    .await;
    let limit = format!("over WEBHOOK_MAX_RESPONSE_BYTES ({cap} bytes)");
    for route in ["stream", "declared"] {
        let run = run_webhook(
            &app,
            json!({"url": endpoint.url(&format!("/{route}/{cap}"))}),
        )
        .await;
        assert_eq!(run.0, 200, "{route} at the cap: {}", run.1);
        assert_eq!(run.1["output"]["response_bytes"], cap, "{route}: {}", run.1);
        let run = run_webhook(
            &app,
            json!({"url": endpoint.url(&format!("/{route}/{}", cap + 1))}),
        )
        .await;
        assert_permanent(route, &run, &[&limit, "raise WEBHOOK_MAX_RESPONSE_BYTES"]);
    }
    let before = endpoint.streamed();
    let huge = 1024 * 1024 * 1024;
    for (route, id) in [("stream", "1"), ("declared", "2")] {
        let url = endpoint.url(&format!("/{route}/{huge}"));
        let push = push_webhook(&app, json!({ "url": url }), id).await;
        assert_push_permanent(route, &push, &[&limit]);
    }
    let declared = run_webhook(
        &app,
        json!({"url": endpoint.url(&format!("/declared/{huge}"))}),
    )
    .await;
    assert_permanent(
        "declared",
        &declared,
        &[&format!("is {huge} bytes (Content-Length)")],
    );
    let sent = endpoint.streamed() - before;
    assert!(
        sent < 64 * 1024 * 1024,
        "the job read on past the cap: {sent} of 3 GiB handed over"
    );
}

/// A 256 MiB response, streamed, against the real binary: the run fails
/// permanently naming the limit, and the worker's peak resident memory stays
/// under 64 MB.
#[tokio::test]
async fn webhook_huge_response_leaves_the_worker_small() {
    let endpoint = Endpoint::start().await;
    let worker = DevWorker::start(
        "webhook-rss",
        &[(
            "WEBHOOK_ALLOWED_HOSTS",
            format!("127.0.0.1:{}", endpoint.port),
        )],
        false,
    )
    .await;
    let identity = worker.identity();
    let admin = identity
        .clerk_token(
            &pushworker::auth::dev::DevClerkUser {
                user_id: "user_rss".into(),
                session_id: "sess_rss".into(),
                org_id: Some("org_rss".into()),
                role: "member".into(),
                permissions: vec![TRIGGER.to_owned()],
                v1: false,
                authorized_party: format!("http://localhost:{}", worker.port),
            },
            600,
        )
        .unwrap();
    let google = identity
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            600,
        )
        .unwrap();
    let payload = json!({"url": endpoint.url(&format!("/stream/{}", 256u64 << 20))});
    let client = reqwest::Client::new();
    let limit = "over WEBHOOK_MAX_RESPONSE_BYTES (1048576 bytes)";

    let response = client
        .post(format!("{}/jobs/webhook", worker.base()))
        .bearer_auth(&admin)
        .json(&payload)
        .send()
        .await
        .unwrap();
    let run = (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap(),
    );
    assert_permanent("manual", &run, &[limit]);

    let body = envelope(payload.to_string().as_bytes(), &[("job", "webhook")], "1");
    let response = client
        .post(format!("{}/pubsub/push", worker.base()))
        .bearer_auth(&google)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let push = (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap(),
    );
    assert_push_permanent("push", &push, &[limit]);

    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    let sent = endpoint.streamed();
    eprintln!(
        "webhook 256 MiB response: worker peak RSS (VmHWM) {peak_kib} kB; {sent} bytes handed over in two runs"
    );
    assert!(
        peak_kib * 1024 < 64 * 1000 * 1000,
        "worker peak RSS {peak_kib} kB is not under 64 MB"
    );
    assert!(
        sent < 2 * (256 << 20),
        "the worker read a whole 256 MiB body"
    );
}

/// Bad webhook settings stop start-up with a message naming the variable and
/// saying how to write it.
#[test]
fn webhook_bad_settings_stop_start_up() {
    for (var, value, expect) in [
        (
            "WEBHOOK_ALLOWED_HOSTS",
            "https://hooks.example.com",
            "has a scheme",
        ),
        (
            "WEBHOOK_ALLOWED_HOSTS",
            "hooks.example.com:99999",
            "from 1 to 65535",
        ),
        (
            "WEBHOOK_ALLOWED_HOSTS",
            "*.example.com",
            "wildcards are not supported",
        ),
        ("WEBHOOK_ALLOWED_HOSTS", "fd00::5", "in brackets"),
        ("WEBHOOK_ALLOWED_HOSTS", "0.0.0.0:8080", "no destination"),
        ("WEBHOOK_MAX_RESPONSE_BYTES", "0", "out of range"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushworker"))
            .arg("serve")
            .env_clear()
            .env("PORT", "0")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}: ")) && stderr.contains(expect),
            "{var}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{var}={value}: {stderr}");
    }
}
