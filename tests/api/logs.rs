//! What the real `pushworker` process writes to its log: text lines that
//! input from a caller can neither split, forge nor colour, on a pipe or in a
//! file; and the request line's `responseSize`, the bytes the client got.

use std::{
    io::Read as _,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::helpers::*;

/// A job name that would start a forged `ERROR` line, switch a terminal to
/// red and move the cursor back over the line, were it written raw.
const FORGED: &str = "evil\n2026-12-06T00:00:00Z ERROR FORGED\x1b[31mRED\rCR";
/// The same, percent-encoded for a path.
const FORGED_PATH: &str = "evil%0a2026-12-06T00:00:00Z%20ERROR%20FORGED%1b%5b31mRED%0dCR";

fn google_token(worker: &DevWorker) -> String {
    worker
        .identity()
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            600,
        )
        .unwrap()
}

/// SIGTERM, then everything the worker wrote to stdout once it exited 0.
fn stop(worker: &mut DevWorker) -> Vec<u8> {
    let status = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(worker.child.wait().unwrap().code(), Some(0));
    let mut out = Vec::new();
    if let Some(mut stdout) = worker.child.stdout.take() {
        stdout.read_to_end(&mut out).unwrap();
    }
    out
}

/// The forged name three ways: as the path's job and as the job attribute of
/// a push (both unknown jobs, logged as permanent failures), and as the
/// name of a manual trigger.
async fn send_forgeries(worker: &DevWorker) {
    let client = reqwest::Client::new();
    let token = google_token(worker);
    let base = worker.base();
    let cases = [
        (
            format!("{base}/pubsub/push/{FORGED_PATH}"),
            "m-path",
            vec![],
        ),
        (
            format!("{base}/pubsub/push"),
            "m-attr",
            vec![("job", FORGED)],
        ),
    ];
    for (url, id, attributes) in cases {
        let response = client
            .post(url)
            .bearer_auth(&token)
            .json(&envelope(b"{}", &attributes, id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{id}: an unknown job");
    }
    let response = client
        .post(format!("{base}/jobs/{FORGED_PATH}"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "trigger of an unknown job");
}

/// Text logs hold the forged name only escaped: no raw ESC (nor any colour:
/// the log is not a terminal), no carriage return, no line that the name
/// started; and the name did reach the log, from the path and from the
/// attribute.
fn assert_escaped(out: &[u8]) {
    assert!(!out.contains(&0x1b), "a raw ESC in the log");
    assert!(!out.contains(&b'\r'), "a raw CR in the log");
    let text = String::from_utf8(out.to_vec()).unwrap();
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-12-06T00:00:00Z"),
            "a forged line: {line}\n{text}"
        );
    }
    for id in ["m-path", "m-attr"] {
        let line = text
            .lines()
            .find(|l| l.contains(id) && l.contains("FORGED"))
            .unwrap_or_else(|| panic!("no line shows {id}'s job name:\n{text}"));
        assert!(
            line.contains(r"evil\n2026-12-06T00:00:00Z ERROR FORGED"),
            "the newline is escaped: {line}"
        );
        assert!(
            line.contains(r"\x1b[31mRED") || line.contains(r"\u{1b}[31mRED"),
            "the ESC is escaped: {line}"
        );
        assert!(line.contains(r"RED\rCR"), "the CR is escaped: {line}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("/jobs/{FORGED_PATH}"))),
        "the trigger's request line:\n{text}"
    );
}

#[tokio::test]
async fn text_logs_on_a_pipe_escape_what_callers_send() {
    let mut worker = DevWorker::start(
        "logs-pipe",
        &[("LOG_FORMAT", "text".into()), ("RUST_LOG", "debug".into())],
        true,
    )
    .await;
    send_forgeries(&worker).await;
    assert_escaped(&stop(&mut worker));
}

#[tokio::test]
async fn text_logs_in_a_file_hold_no_escape_byte() {
    let dir = std::env::temp_dir().join(format!(
        "pushworker-logs-file-{}-{}",
        std::process::id(),
        now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stdout.log");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pushworker"))
        .args(["serve", "--dev", "--dev-dir"])
        .arg(&dir)
        .env_clear()
        .env("PORT", port.to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = DevWorker { child, port, dir };
    wait_ready(port).await;
    send_forgeries(&worker).await;
    stop(&mut worker);
    assert_escaped(&std::fs::read(&log).unwrap());
}

/// `httpRequest.responseSize` of `GET /jobs` is the length of the body the
/// client received (a JSON answer whose body states no size up front).
#[tokio::test]
async fn the_request_line_logs_the_bytes_sent() {
    let mut worker = DevWorker::start("logs-size", &[("LOG_FORMAT", "json".into())], true).await;
    let response = reqwest::Client::new()
        .get(format!("{}/jobs", worker.base()))
        .bearer_auth(google_token(&worker))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = response.bytes().await.unwrap().len();
    assert!(received > 100, "a list of jobs");
    let out = String::from_utf8(stop(&mut worker)).unwrap();
    let line: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["httpRequest"]["requestUrl"] == "/jobs")
        .unwrap_or_else(|| panic!("no request line for /jobs:\n{out}"));
    assert_eq!(
        line["httpRequest"]["responseSize"],
        received.to_string(),
        "{line}"
    );
}
