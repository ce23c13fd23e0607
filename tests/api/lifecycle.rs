//! The real `pushworker` process on Cloud Run's terms: SIGTERM with jobs in
//! flight, and JSON logs in Cloud Logging's format.

use std::{
    io::Read as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::*;

fn dev_google_token(worker: &DevWorker) -> String {
    worker
        .identity()
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            600,
        )
        .unwrap()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            start.elapsed() < within,
            "the worker did not exit within {within:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn push_sleep(
    client: &reqwest::Client,
    port: u16,
    token: &str,
    millis: u64,
    id: &str,
) -> reqwest::Response {
    client
        .post(format!("http://127.0.0.1:{port}/pubsub/push"))
        .bearer_auth(token)
        .json(&envelope(
            json!({ "millis": millis }).to_string().as_bytes(),
            &[("job", "sleep")],
            id,
        ))
        .send()
        .await
        .unwrap()
}

/// SIGTERM during jobs: a job that finishes within the grace period gets its
/// real answer (204); one that does not is cancelled and nacked (503), never
/// acked; new connections are refused; the process exits 0; and the ledger
/// (PostgreSQL, read after the process is gone) records no success for the
/// cut-off run.
#[tokio::test]
async fn sigterm_lets_short_jobs_finish_and_nacks_the_rest() {
    let db = TestDb::create().await;
    let mut worker = DevWorker::start(
        "sigterm",
        &[
            ("SHUTDOWN_GRACE_SECS", "2".into()),
            ("JOB_TIMEOUT_SECS", "60".into()),
            ("DATABASE_URL", db.url()),
        ],
        false,
    )
    .await;
    let token = dev_google_token(&worker);
    let client = reqwest::Client::new();
    let port = worker.port;
    let (short, long) = {
        let (t1, t2) = (token.clone(), token.clone());
        let (c1, c2) = (client.clone(), client.clone());
        let short =
            tokio::spawn(async move { push_sleep(&c1, port, &t1, 1000, "short-1").await.status() });
        let long =
            tokio::spawn(
                async move { push_sleep(&c2, port, &t2, 30_000, "long-1").await.status() },
            );
        (short, long)
    };
    // Both jobs have begun (their runs are recorded as running) before the
    // signal: waited for, not slept on, since the worker is another process.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let (running,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM runs WHERE status = 'running'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if running == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "both jobs should have begun: {running} running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    sigterm(&worker.child);
    // The listener closes soon after the signal, while both jobs still run.
    let refused = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    signalled.elapsed() < Duration::from_millis(1500),
                    "new connections are refused after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Reset, not refused, when the connect raced the listener's close.
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ),
        "{refused:?}"
    );
    assert!(!long.is_finished(), "refused while a job still runs");
    assert_eq!(
        short.await.unwrap(),
        204,
        "the short job finished within the grace period"
    );
    assert_eq!(
        long.await.unwrap(),
        503,
        "the long job is nacked, never acked"
    );
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "answered within the grace period and a little: {took:?}"
    );
    assert_eq!(
        wait_exit(&mut worker.child, Duration::from_secs(10)),
        Some(0),
        "exit code 0"
    );

    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url())
        .await
        .unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, status FROM runs ORDER BY message_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("long-1".to_owned(), "failed_transient".to_owned()),
            ("short-1".to_owned(), "succeeded".to_owned())
        ],
        "the cut-off run is not recorded as done"
    );
}

/// JSON logs: every line is a JSON object with `severity` and `message`; a
/// run's lines carry job, message id, attempt, run id and principal kind and
/// the trace of its request, from `traceparent` and from
/// `X-Cloud-Trace-Context`; the request line has `httpRequest` and, for a
/// push, is the run's one line (job, message id, run id); and no token
/// (valid or hostile) appears anywhere in the output.
#[tokio::test]
async fn json_logs_follow_cloud_logging_and_never_hold_a_token() {
    let mut worker = DevWorker::start(
        "logs",
        &[
            ("LOG_FORMAT", "json".into()),
            ("GOOGLE_CLOUD_PROJECT", "acme-prod".into()),
            ("RUST_LOG", "debug".into()),
        ],
        true,
    )
    .await;
    let token = dev_google_token(&worker);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", worker.port);
    let push = |trace_header: (&'static str, &'static str), id: &'static str| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            client
                .post(format!("{base}/pubsub/push"))
                .bearer_auth(&token)
                .header(trace_header.0, trace_header.1)
                .json(&envelope(
                    br#"{"message":"traced"}"#,
                    &[("job", "echo")],
                    id,
                ))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        push(
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ),
            "m-w3c"
        )
        .await,
        204
    );
    assert_eq!(
        push(
            (
                "x-cloud-trace-context",
                "105445aa7843bc8bf206b12000100000/18;o=1"
            ),
            "m-gcp"
        )
        .await,
        204
    );
    let hostile = [
        format!("{token}x"),
        KEYS.rogue.sign(&google_claims()).unwrap(),
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2FjY291bnRzLmdvb2dsZS5jb20ifQ.".to_owned(),
    ];
    for bad in &hostile {
        let status = client
            .get(format!("{base}/auth/whoami"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    sigterm(&worker.child);
    assert_eq!(
        wait_exit(&mut worker.child, Duration::from_secs(10)),
        Some(0)
    );
    let mut out = String::new();
    worker
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    worker
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();

    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{out}");
    for line in &lines {
        assert!(
            line["severity"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    let run_line = |id: &str| {
        lines
            .iter()
            .find(|l| l["message_id"] == id && l["message"] == "request")
            .unwrap_or_else(|| panic!("no run line for {id}:\n{out}"))
            .clone()
    };
    let w3c = run_line("m-w3c");
    assert_eq!(
        w3c["logging.googleapis.com/trace"],
        "projects/acme-prod/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(w3c["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
    for field in ["job", "message_id", "attempt", "run_id", "principal"] {
        assert!(!w3c[field].is_null(), "run lines carry {field}: {w3c}");
    }
    assert_eq!(w3c["job"], "echo");
    assert_eq!(w3c["httpRequest"]["status"], 204, "{w3c}");
    assert_eq!(w3c["principal"], "google");
    let gcp = run_line("m-gcp");
    assert_eq!(
        gcp["logging.googleapis.com/trace"],
        "projects/acme-prod/traces/105445aa7843bc8bf206b12000100000"
    );
    assert_eq!(gcp["logging.googleapis.com/spanId"], format!("{:016x}", 18));
    let request = lines
        .iter()
        .find(|l| l["httpRequest"]["requestUrl"] == "/pubsub/push")
        .expect("a request line");
    assert_eq!(request["httpRequest"]["status"], 204);
    assert_eq!(request["httpRequest"]["requestMethod"], "POST");
    assert!(
        request["httpRequest"]["latency"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );

    let everything = out + &err;
    for secret in std::iter::once(&token).chain(hostile.iter()) {
        // The signature part is the secret-bearing piece; no part may leak.
        for part in secret.split('.').filter(|p| p.len() > 16) {
            assert!(
                !everything.contains(part),
                "a token part appears in the logs"
            );
        }
    }
}
