//! The HTTP server under abuse, on loopback: half-sent headers and silent
//! connections are closed by the header timeout while `/healthz` answers; a
//! kept-alive connection outlives the header timeout and is closed by the
//! idle one; a flood beyond `HTTP_MAX_CONNECTIONS` waits without being
//! served and leaves the real binary's memory near idle; running out of
//! file descriptors backs off instead of spinning; and every answer,
//! errors included, says `nosniff`.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use pushworker::server::HttpServerConfig;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::helpers::*;

const HALF_HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one HTTP/1.1 response (header, then a `Content-Length` body) from
/// a kept-alive connection; its status, or `None` if the server closed it.
async fn read_response(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(status)
}

/// `GET /healthz` on an open connection; its status.
async fn healthz_on(stream: &mut TcpStream) -> Option<u16> {
    stream.write_all(HEALTHZ).await.ok()?;
    read_response(stream).await
}

/// Waits until the server closes `stream` (EOF or reset), for at most
/// `within`; how long that took, and how many bytes the server sent first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<(Duration, usize)> {
    let start = Instant::now();
    let mut sent = 0;
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sent += n,
            }
        }
    })
    .await
    .ok()?;
    Some((start.elapsed(), sent))
}

/// Polls `/healthz` on fresh connections until `until` is over; every
/// answer must be 200. Returns how many there were.
async fn poll_healthz(addr: String, until: Duration) -> usize {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < until {
        let response = client.get(format!("{addr}/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200, "/healthz during the attack");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answered
}

/// 300 connections that send half a header, and 20 that send nothing, are
/// each closed (with no answer) once the header timeout is over, not before
/// and not much after; `/healthz` answers 200 all along.
#[tokio::test]
async fn slow_and_silent_headers_are_closed_by_the_header_timeout() {
    let timeout = Duration::from_secs(2);
    let app = spawn_app_with(Options {
        http: HttpServerConfig {
            header_read_timeout: timeout,
            ..HttpServerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let port: u16 = app.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut slow = Vec::new();
    for i in 0..320 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i < 300 {
            stream.write_all(HALF_HEADER).await.unwrap();
        }
        slow.push((Instant::now(), stream));
    }
    let poller = tokio::spawn(poll_healthz(
        app.addr.clone(),
        timeout + Duration::from_secs(1),
    ));
    let margin = Duration::from_secs(3);
    let closes =
        futures::future::join_all(slow.into_iter().map(|(opened, mut stream)| async move {
            let closed = closed_within(&mut stream, timeout + margin).await;
            (opened, closed)
        }))
        .await;
    for (i, (opened, closed)) in closes.into_iter().enumerate() {
        let (_, sent) = closed.unwrap_or_else(|| {
            panic!(
                "connection {i} still open {:?} after it was opened",
                opened.elapsed()
            )
        });
        assert_eq!(sent, 0, "connection {i}: no answer to half a request");
    }
    assert!(
        poller.await.unwrap() >= 10,
        "/healthz was polled throughout"
    );
    // Timed apart from the flood: one connection is not closed early.
    let mut one = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    one.write_all(HALF_HEADER).await.unwrap();
    let (took, _) = closed_within(&mut one, timeout + margin).await.unwrap();
    assert!(
        took >= timeout - Duration::from_millis(100),
        "closed by the timeout, not before it: {took:?}"
    );
}

/// A kept-alive connection idle for longer than the header timeout still
/// serves its next request (the front end reuses it); once idle for the idle
/// timeout it is closed; and a later request's header sent by halves is
/// timed from its first byte.
#[tokio::test]
async fn keep_alive_outlives_the_header_timeout_and_ends_with_the_idle_one() {
    let app = spawn_app_with(Options {
        http: HttpServerConfig {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            ..HttpServerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let port: u16 = app.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(healthz_on(&mut kept).await, Some(200));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        healthz_on(&mut kept).await,
        Some(200),
        "idle beyond the header timeout, within the idle timeout: still served"
    );
    let (took, sent) = closed_within(&mut kept, Duration::from_secs(8))
        .await
        .expect("closed by the idle timeout");
    assert_eq!(sent, 0);
    assert!(
        took >= Duration::from_millis(2900),
        "closed by the idle timeout, not the header one: {took:?}"
    );

    let mut halves = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(healthz_on(&mut halves).await, Some(200));
    halves.write_all(HALF_HEADER).await.unwrap();
    let (took, sent) = closed_within(&mut halves, Duration::from_secs(4))
        .await
        .expect("closed by the header timeout");
    assert_eq!(sent, 0);
    assert!(
        took < Duration::from_millis(2900),
        "a half header after a request gets the header timeout, not the idle one: {took:?}"
    );
}

/// The resident memory of a process, in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// User plus system CPU time of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Opens `n` connections at once, each sending half a header; those the
/// kernel does not take within a second (listen queue full) are left out.
async fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let opened = futures::future::join_all((0..n).map(|_| async move {
        let connect = TcpStream::connect(("127.0.0.1", port));
        let mut stream = tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .ok()?
            .ok()?;
        stream.write_all(HALF_HEADER).await.ok()?;
        Some(stream)
    }))
    .await;
    opened.into_iter().flatten().collect()
}

/// The real binary with `HTTP_MAX_CONNECTIONS=50`: a flood of 150
/// half-header connections leaves `/healthz` answering 200 on a kept-alive
/// connection; a new connection beyond the bound is not served until the
/// flood ends, then is; and the resident memory, during and after, stays
/// near its idle level.
#[tokio::test]
async fn a_flood_beyond_the_bound_waits_and_memory_stays_near_idle() {
    let worker = DevWorker::start(
        "flood",
        &[
            ("HTTP_MAX_CONNECTIONS", "50".into()),
            // The flood is held by the bound here, not the header timeout.
            ("HTTP_HEADER_READ_TIMEOUT_SECS", "120".into()),
        ],
        false,
    )
    .await;
    let (pid, port) = (worker.child.id(), worker.port);
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(healthz_on(&mut kept).await, Some(200));
    // Warm the idle level with a few ordinary requests.
    for _ in 0..20 {
        assert_eq!(healthz_on(&mut kept).await, Some(200));
    }
    let idle = rss_kib(pid);

    // Fewer than the listen queue holds (128), so one more still connects.
    let flooded = flood(port, 150).await;
    assert!(
        flooded.len() > 50,
        "the kernel queues the flood beyond the bound: {}",
        flooded.len()
    );
    for _ in 0..10 {
        assert_eq!(
            healthz_on(&mut kept).await,
            Some(200),
            "/healthz on an open connection during the flood"
        );
    }
    let mut beyond = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    beyond.write_all(HEALTHZ).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), read_response(&mut beyond))
            .await
            .is_err(),
        "a connection beyond the bound is not served"
    );
    let during = rss_kib(pid);

    drop(flooded);
    let served = tokio::time::timeout(Duration::from_secs(20), read_response(&mut beyond)).await;
    assert_eq!(
        served.ok().flatten(),
        Some(200),
        "served once the flood's connections closed"
    );
    assert_eq!(healthz_on(&mut kept).await, Some(200));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    eprintln!("VmRSS of the binary: idle {idle} KiB, flood {during} KiB, after {after} KiB");
    // Without the bound every connection holds buffers and a task: each
    // costs buffers and a task; 50 cost little; 50 cost little.
    for (when, rss) in [("during", during), ("after", after)] {
        assert!(
            rss < idle + 16 * 1024,
            "VmRSS {when} the flood: {rss} KiB against {idle} KiB idle"
        );
    }
}

/// Out of file descriptors (the binary under `ulimit -n 96` with a bound
/// above it): accepting backs off instead of spinning, warns a few times
/// rather than once per failure, `/healthz` keeps answering on an open
/// connection, and new connections are served again once the flood ends.
#[tokio::test]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let dir = std::env::temp_dir().join(format!(
        "pushworker-emfile-{}-{}",
        std::process::id(),
        now()
    ));
    let port = free_port();
    let child = std::process::Command::new("prlimit")
        .args(["--nofile=96:96", "--"])
        .arg(env!("CARGO_BIN_EXE_pushworker"))
        .args(["serve", "--dev", "--dev-dir"])
        .arg(&dir)
        .env_clear()
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("HTTP_MAX_CONNECTIONS", "1000")
        .env("HTTP_HEADER_READ_TIMEOUT_SECS", "120")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = DevWorker { child, port, dir };
    wait_ready(port).await;
    let pid = worker.child.id();
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(healthz_on(&mut kept).await, Some(200));

    let flooded = flood(port, 300).await;
    let cpu_before = cpu_ticks(pid);
    let held = Instant::now();
    for _ in 0..15 {
        assert_eq!(
            healthz_on(&mut kept).await,
            Some(200),
            "/healthz on an open connection while accept fails"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy = cpu_ticks(pid) - cpu_before;
    let ticks = held.elapsed().as_secs_f64() * 100.0;
    assert!(
        (busy as f64) < ticks * 0.25,
        "accepting must not spin: {busy} CPU ticks in {ticks:.0}"
    );

    drop(flooded);
    let start = Instant::now();
    loop {
        let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), healthz_on(&mut fresh)).await;
        if answer.ok().flatten() == Some(200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "new connections are served again after the flood"
        );
    }

    worker.child.kill().ok();
    let mut log = String::new();
    if let Some(mut out) = worker.child.stdout.take() {
        out.read_to_string(&mut log).unwrap();
    }
    if let Some(mut err) = worker.child.stderr.take() {
        err.read_to_string(&mut log).unwrap();
    }
    let warnings = log.matches("accept failed").count();
    assert!(
        (1..=4).contains(&warnings),
        "accept errors warned about, rate-limited: {warnings} lines\n{log}"
    );
    assert!(log.contains("WARN"), "{log}");
}

/// Every answer carries `X-Content-Type-Options: nosniff`, and every error
/// body is JSON (with its `error` code), never HTML, even when it echoes
/// what the client sent.
#[tokio::test]
async fn every_answer_says_nosniff_and_errors_are_json() {
    let app = spawn_app().await;
    let trigger = clerk_token(&[TRIGGER]);
    let client = &app.client;
    let at = |path: &str| format!("{}{path}", app.addr);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("healthz", client.get(at("/healthz")), 200),
        ("readyz", client.get(at("/readyz")), 200),
        ("admin page", client.get(at("/admin")), 200),
        ("unknown path", client.get(at("/nope<script>")), 404),
        (
            "whoami without a token",
            client.get(at("/auth/whoami")),
            401,
        ),
        (
            "whoami with a bad token",
            client.get(at("/auth/whoami")).bearer_auth("x.y.z"),
            401,
        ),
        (
            "unknown job echoed",
            client
                .post(at("/jobs/nope%3Cscript%3E"))
                .bearer_auth(&trigger)
                .json(&json!({})),
            404,
        ),
        (
            "push without a token",
            client.post(at("/pubsub/push")).body("{}"),
            401,
        ),
        (
            "runs with a bad query",
            client
                .get(at("/runs?limit=<b>"))
                .bearer_auth(clerk_token(&[VIEW])),
            400,
        ),
        ("wrong method", client.delete(at("/healthz")), 405),
    ];
    for (case, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(
            response
                .headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{case}"
        );
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.bytes().await.unwrap();
        if status >= 400 && !body.is_empty() {
            assert_eq!(
                content_type.as_deref(),
                Some("application/json"),
                "{case}: {}",
                String::from_utf8_lossy(&body)
            );
            let error: Value = serde_json::from_slice(&body).unwrap();
            assert!(error["error"].is_string(), "{case}: {error}");
        }
        if status == 404 {
            assert!(!body.is_empty(), "{case}: a 404 says what was not found");
        }
    }
}
