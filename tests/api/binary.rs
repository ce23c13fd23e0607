//! The real `pushworker` binary: start-up validation of the configuration,
//! and the development identity end to end (`serve --dev` + `dev-token`).

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::DevWorker;

const BIN: &str = env!("CARGO_BIN_EXE_pushworker");

/// Runs `pushworker serve` with exactly these variables; returns (code, stderr).
fn serve_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .env("PORT", "0")
        .env("METRICS_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            return (None, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bad value stops start-up with a message naming the variable, and never
/// prints a secret value.
#[test]
fn bad_configuration_names_the_variable() {
    let secret_pem = "-----BEGIN PUBLIC KEY-----\nTOPSECRETGARBAGE\n-----END PUBLIC KEY-----";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "leeway too large",
            vec![("AUTH_LEEWAY_SECS", "120")],
            "AUTH_LEEWAY_SECS",
        ),
        (
            "leeway not a number",
            vec![("AUTH_LEEWAY_SECS", "five")],
            "AUTH_LEEWAY_SECS",
        ),
        (
            "audience without accounts",
            vec![("GOOGLE_AUDIENCES", "a")],
            "GOOGLE_SERVICE_ACCOUNTS",
        ),
        (
            "accounts without audience",
            vec![("GOOGLE_SERVICE_ACCOUNTS", "a@b.iam.gserviceaccount.com")],
            "GOOGLE_AUDIENCES",
        ),
        (
            "account not an email",
            vec![
                ("GOOGLE_AUDIENCES", "a"),
                ("GOOGLE_SERVICE_ACCOUNTS", "pusher"),
            ],
            "GOOGLE_SERVICE_ACCOUNTS",
        ),
        (
            "CORS wildcard",
            vec![("CORS_ALLOWED_ORIGINS", "*")],
            "CORS_ALLOWED_ORIGINS",
        ),
        (
            "CORS origin with a path",
            vec![("CORS_ALLOWED_ORIGINS", "https://admin.example.com/admin")],
            "CORS_ALLOWED_ORIGINS",
        ),
        (
            "JWKS over plain http",
            vec![
                ("GOOGLE_AUDIENCES", "a"),
                ("GOOGLE_SERVICE_ACCOUNTS", "a@b.c"),
                ("GOOGLE_JWKS_URL", "http://keys.example.com/certs"),
            ],
            "GOOGLE_JWKS_URL",
        ),
        (
            "JWKS bad scheme",
            vec![
                ("GOOGLE_AUDIENCES", "a"),
                ("GOOGLE_SERVICE_ACCOUNTS", "a@b.c"),
                ("GOOGLE_JWKS_URL", "ftp://x/y"),
            ],
            "GOOGLE_JWKS_URL",
        ),
        (
            "bad publishable key",
            vec![("CLERK_PUBLISHABLE_KEY", "pk_live_%%%")],
            "CLERK_PUBLISHABLE_KEY",
        ),
        (
            "bad publishable key beside an issuer",
            vec![
                ("CLERK_ISSUER", "https://clerk.example.com"),
                ("CLERK_AUTHORIZED_PARTIES", "https://a.example.com"),
                ("CLERK_PUBLISHABLE_KEY", "pk_test_%%%"),
            ],
            "CLERK_PUBLISHABLE_KEY",
        ),
        (
            "issuer without parties",
            vec![("CLERK_ISSUER", "https://clerk.example.com")],
            "CLERK_AUTHORIZED_PARTIES",
        ),
        (
            "issuer with a slash",
            vec![
                ("CLERK_ISSUER", "https://clerk.example.com/"),
                ("CLERK_AUTHORIZED_PARTIES", "https://a.example.com"),
            ],
            "CLERK_ISSUER",
        ),
        (
            "bad PEM",
            vec![
                ("CLERK_ISSUER", "https://clerk.example.com"),
                ("CLERK_AUTHORIZED_PARTIES", "https://a.example.com"),
                ("CLERK_JWT_KEY", secret_pem),
            ],
            "CLERK_JWT_KEY",
        ),
        (
            "dev mode on Cloud Run",
            vec![("PUSHWORKER_DEV", "true"), ("K_SERVICE", "pushworker")],
            "PUSHWORKER_DEV",
        ),
        (
            "job timeout zero",
            vec![("JOB_TIMEOUT_SECS", "0")],
            "JOB_TIMEOUT_SECS",
        ),
        (
            "header timeout zero",
            vec![("HTTP_HEADER_READ_TIMEOUT_SECS", "0")],
            "HTTP_HEADER_READ_TIMEOUT_SECS",
        ),
        (
            "idle timeout zero",
            vec![("HTTP_IDLE_TIMEOUT_SECS", "0")],
            "HTTP_IDLE_TIMEOUT_SECS",
        ),
        (
            "connection bound zero",
            vec![("HTTP_MAX_CONNECTIONS", "0")],
            "HTTP_MAX_CONNECTIONS",
        ),
        ("port out of range", vec![("PORT", "70000")], "PORT"),
    ];
    for (case, env, variable) in cases {
        let (code, stderr) = serve_with(&env);
        assert_eq!(
            code,
            Some(if variable == "PORT" || case.contains("not a number") {
                2
            } else {
                1
            }),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains(variable),
            "{case}: message must name {variable}: {stderr}"
        );
        assert!(
            !stderr.contains("TOPSECRETGARBAGE"),
            "{case}: a secret was printed: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

/// `serve --dev` creates the key on first use; `dev-token` mints tokens it
/// accepts, for both issuers; the dev key lives in a git-ignored folder.
#[tokio::test]
async fn dev_mode_end_to_end() {
    let worker = DevWorker::start("dev", &[], true).await;
    let (dir, port) = (worker.dir.clone(), worker.port);
    let client = reqwest::Client::new();
    let base = worker.base();
    let mint = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("dev-token")
            .args(args)
            .arg("--dev-dir")
            .arg(&dir)
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let google = mint(&["google"]);
    let azp = format!("--azp=http://localhost:{port}");
    let clerk = mint(&["clerk", &azp]);
    let clerk_v1_no_perm = mint(&["clerk", &azp, "--v1", "--no-permissions"]);
    for (token, status, can_trigger) in [
        (&google, 200, true),
        (&clerk, 200, true),
        (&clerk_v1_no_perm, 200, false),
    ] {
        let response = client
            .get(format!("{base}/auth/whoami"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["can_trigger"], can_trigger, "{body}");
    }
    let response = client
        .post(format!("{base}/jobs/echo"))
        .bearer_auth(&clerk)
        .json(&serde_json::json!({"message": "dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        std::fs::read_to_string(dir.join(".gitignore"))
            .unwrap()
            .contains('*')
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("signing-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the dev key is private to its owner");
    }
    let mut worker = worker;
    worker.child.kill().ok();
    let mut log = String::new();
    for pipe in [
        worker
            .child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        worker
            .child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        pipe.read_to_string(&mut log).unwrap();
    }
    assert!(log.contains("DEVELOPMENT MODE"), "dev mode is loud: {log}");
    for token in [&google, &clerk] {
        assert!(!log.contains(token.as_str()), "a token was logged");
    }
}

/// `pushworker replay` over the fixtures (push messages and CloudEvents):
/// every good one acked, every poison one nacked, the summary says so and
/// the exit code follows.
#[tokio::test]
async fn replay_fixtures_into_a_dev_server() {
    let server = DevWorker::start("replay", &[], false).await;
    let dir = server.dir.clone();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let replay = |path: &str, extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("replay")
            .arg(format!("--target=http://127.0.0.1:{}", server.port))
            .arg("--dev-dir")
            .arg(&dir)
            .args(extra)
            .arg(fixtures.join(path))
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let count = |sub: &str| -> usize {
        std::fs::read_dir(fixtures.join(sub))
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("jsonl") => text.lines().filter(|l| !l.trim().is_empty()).count(),
                    _ => match serde_json::from_str::<serde_json::Value>(&text).unwrap() {
                        serde_json::Value::Array(a) => a.len(),
                        _ => 1,
                    },
                }
            })
            .sum()
    };
    let (good, poison) = (count("good"), count("poison"));
    assert!(good >= 5 && poison >= 6, "fixtures cover every example job");

    let (code, _, stderr) = replay("good", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{good} acked, 0 nacked")),
        "{stderr}"
    );
    // Events are counted by their type.
    for job in [
        "echo",
        "sleep",
        "webhook",
        "google.cloud.storage.object.v1.finalized",
        "google.cloud.pubsub.topic.v1.messagePublished",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(job)),
            "summary per job: {stderr}"
        );
    }

    let (code, _, stderr) = replay("poison", &["--unwrapped"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("0 acked, {poison} nacked")),
        "{stderr}"
    );
    assert!(
        stderr.contains("status codes:") && stderr.contains("422"),
        "{stderr}"
    );

    let (code, stdout, _) = replay("good/echo.json", &["--dry-run"]);
    assert_eq!(code, Some(0));
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"]["attributes"]["job"], "echo");
    assert!(first["message"]["messageId"] == first["message"]["message_id"]);
    let _ = std::fs::remove_dir_all(&dir);
}
