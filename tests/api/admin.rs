//! `/admin`: the page and its headers under each sign-in mode, the development
//! sign-in's protections, and CORS. (The page's behaviour in a real browser is
//! tested in `tests/admin_e2e.rs`.)

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use axum::{body::Body, extract::ConnectInfo, http::Request};
use base64::Engine as _;
use clap::Parser as _;
use pushworker::{
    cli::{Cli, Command},
    config::Config,
    http::admin::{dev_session_refusal, is_loopback_peer},
    startup::Application,
};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::helpers::*;

const FRONTEND_API_HOST: &str = "clerk.acme-admin.test";

fn publishable_key(host: &str) -> String {
    format!(
        "pk_test_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{host}$"))
    )
}

/// The CSP as directive → sources.
fn csp(response: &reqwest::Response) -> BTreeMap<String, Vec<String>> {
    let value = response
        .headers()
        .get("content-security-policy")
        .expect("a Content-Security-Policy header")
        .to_str()
        .unwrap();
    value
        .split(';')
        .filter_map(|d| {
            let mut parts = d.split_whitespace();
            let name = parts.next()?.to_owned();
            Some((name, parts.map(str::to_owned).collect()))
        })
        .collect()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Every `<script …>` opening tag of the page.
fn script_tags(html: &str) -> Vec<String> {
    html.match_indices("<script")
        .map(|(i, _)| html[i..i + html[i..].find('>').unwrap() + 1].to_owned())
        .collect()
}

/// Under a Clerk configuration the page loads ClerkJS, and only ClerkJS, from
/// the Frontend API derived from the publishable key, and the CSP names
/// exactly that origin (plus Clerk's image host), with no inline script.
#[tokio::test]
async fn clerk_page_loads_clerkjs_from_the_frontend_api_of_the_publishable_key() {
    let pk = publishable_key(FRONTEND_API_HOST);
    let app = spawn_app_with(Options {
        publishable_key: Some(pk.clone()),
        ..Options::default()
    })
    .await;
    let frontend = format!("https://{FRONTEND_API_HOST}");

    let response = app
        .client
        .get(format!("{}/admin", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/html"));
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(header(&response, "referrer-policy"), "no-referrer");
    let policy = csp(&response);
    let html = response.text().await.unwrap();

    let scripts = script_tags(&html);
    assert_eq!(
        scripts.len(),
        3,
        "ClerkJS, the vendored uPlot and app.js only: {scripts:?}"
    );
    assert!(
        scripts
            .iter()
            .any(|s| s.contains(r#"src="/admin/vendor/uPlot.iife.min.js""#)),
        "uPlot from this origin, not a CDN: {scripts:?}"
    );
    let clerk_src = format!("{frontend}/npm/@clerk/clerk-js@5/dist/clerk.browser.js");
    assert!(
        scripts
            .iter()
            .any(|s| s.contains(&format!(r#"src="{clerk_src}""#))
                && s.contains(&format!(r#"data-clerk-publishable-key="{pk}""#))
                && s.contains(r#"crossorigin="anonymous""#)),
        "ClerkJS from the Frontend API: {scripts:?}"
    );
    assert!(
        scripts
            .iter()
            .all(|s| s.contains(" src=\"https://") || s.contains(" src=\"/admin/")),
        "no inline script: {scripts:?}"
    );
    assert!(!html.contains("sk_test_") && !html.contains("sk_live_"));

    assert_eq!(policy["default-src"], ["'self'"]);
    assert_eq!(policy["script-src"], ["'self'", frontend.as_str()]);
    assert_eq!(policy["connect-src"], ["'self'", frontend.as_str()]);
    assert_eq!(policy["frame-src"], [frontend.as_str()]);
    assert_eq!(
        policy["img-src"],
        ["'self'", "data:", "https://img.clerk.com"]
    );
    assert_eq!(policy["object-src"], ["'none'"]);
    assert_eq!(policy["base-uri"], ["'none'"]);
    assert_eq!(policy["frame-ancestors"], ["'none'"]);
    let origins: Vec<&String> = policy
        .values()
        .flatten()
        .filter(|s| s.starts_with("https://"))
        .collect();
    assert!(
        origins
            .iter()
            .all(|o| **o == frontend || *o == "https://img.clerk.com"),
        "only the Frontend API (and Clerk's images): {origins:?}"
    );
    assert!(
        !policy["script-src"].iter().any(|s| s.contains("unsafe")),
        "no unsafe-inline / unsafe-eval for scripts"
    );
    // The issuer configured for the API (CLERK_ISSUER) is not what the page
    // loads: the page follows the publishable key.
    assert!(!html.contains(CLERK_ISSUER));

    let response = app
        .client
        .get(format!("{}/admin/config.json", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let config: Value = response.json().await.unwrap();
    assert_eq!(config["sign_in"], "clerk");
    assert_eq!(config["frontend_api"], frontend);
    assert_eq!(config["trigger_permission"], TRIGGER);

    let response = app
        .client
        .post(format!("{}/admin/dev/session", app.addr))
        .json(&json!({"persona": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "no development sign-in outside dev mode"
    );
}

/// The assets are embedded and served with their types; without a
/// publishable key the page says what to configure and its CSP names no
/// other origin; outside dev mode the development sign-in does not exist.
#[tokio::test]
async fn assets_headers_and_no_dev_sign_in_outside_dev_mode() {
    let app = spawn_app().await;
    for (path, content_type, needle) in [
        ("/admin", "text/html", "<main id=\"main\""),
        (
            "/admin/app.js",
            "text/javascript",
            "Clerk.session.getToken()",
        ),
        ("/admin/app.css", "text/css", ":root"),
        (
            "/admin/vendor/uPlot.iife.min.js",
            "text/javascript",
            "var uPlot=",
        ),
        ("/admin/vendor/uPlot.min.css", "text/css", ".uplot"),
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            header(&response, "content-type").starts_with(content_type),
            "{path}"
        );
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        assert_eq!(header(&response, "x-frame-options"), "DENY");
        let policy = csp(&response);
        assert_eq!(policy["script-src"], ["'self'"], "{path}");
        assert_eq!(policy["connect-src"], ["'self'"], "{path}");
        assert_eq!(policy["frame-src"], ["'none'"], "{path}");
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
    let response = app
        .client
        .get(format!("{}/admin/", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "/admin/ redirects to /admin");
    assert_eq!(response.url().path(), "/admin");

    let config: Value = app
        .client
        .get(format!("{}/admin/config.json", app.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["sign_in"], "unconfigured");
    assert!(
        config["reason"]
            .as_str()
            .unwrap()
            .contains("CLERK_PUBLISHABLE_KEY")
    );

    for body in [json!({"persona": "admin"}), json!({})] {
        let response = app
            .client
            .post(format!("{}/admin/dev/session", app.addr))
            .header("origin", &app.addr)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
}

/// A worker in dev mode on a free port, as `make run` starts it.
struct DevApp {
    base: String,
    port: u16,
    config: Config,
    _dir: TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dev_config(port: u16, dir: &std::path::Path) -> Config {
    let cli = Cli::try_parse_from([
        "pushworker",
        "serve",
        "--dev",
        "--dev-dir",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        // Servers run side by side: each takes a free metrics port.
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    Config::from_args(&args).unwrap()
}

async fn spawn_dev_app() -> DevApp {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pushworker-admin-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dev_config(port, &dir);
    let app = Application::build(config.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    DevApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        config,
        _dir: TempDir(dir),
        _shutdown: tx,
    }
}

impl DevApp {
    async fn dev_session(&self, origin: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}/admin/dev/session", self.base))
            .json(&body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }
}

/// Under dev mode the page offers the development sign-in: a 60-second token
/// per persona whose `azp` is the page's origin, accepted by the API like a
/// Clerk session token; refused without an Origin, for a foreign Origin and
/// for an unknown persona. The CSP names no Clerk origin at all.
#[tokio::test]
async fn dev_sign_in_mints_short_lived_tokens_for_the_page_origin() {
    let app = spawn_dev_app().await;
    let client = reqwest::Client::new();

    let page = client
        .get(format!("{}/admin", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = csp(&page);
    assert!(
        !policy.values().flatten().any(|s| s.contains("clerk")),
        "no Clerk origin in dev mode: {policy:?}"
    );
    assert!(
        !page.text().await.unwrap().contains("clerk-js"),
        "no ClerkJS in dev mode"
    );
    let config: Value = client
        .get(format!("{}/admin/config.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["sign_in"], "dev");
    assert_eq!(config["personas"].as_array().unwrap().len(), 2);

    for (origin, persona, can_trigger) in [
        (app.base.clone(), "admin", true),
        (format!("http://localhost:{}", app.port), "admin", true),
        (app.base.clone(), "viewer", false),
    ] {
        let response = app
            .dev_session(Some(&origin), json!({ "persona": persona }))
            .await;
        assert_eq!(response.status(), 200, "{origin} {persona}");
        assert_eq!(header(&response, "cache-control"), "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["expires_in"], 60);
        let token = body["token"].as_str().unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            60
        );
        let whoami = client
            .get(format!("{}/auth/whoami", app.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(whoami.status(), 200);
        let whoami: Value = whoami.json().await.unwrap();
        assert_eq!(whoami["principal"]["authorized_party"], origin.as_str());
        assert_eq!(whoami["can_trigger"], can_trigger, "{whoami}");
        if !can_trigger {
            assert!(
                whoami["trigger_denied_reason"]
                    .as_str()
                    .unwrap()
                    .contains("org:jobs:trigger")
            );
        }
    }

    for (origin, body, status) in [
        (None, json!({"persona": "admin"}), 403),
        (
            Some("http://evil.example"),
            json!({"persona": "admin"}),
            403,
        ),
        (Some("http://localhost:1"), json!({"persona": "admin"}), 403),
        (Some(app.base.as_str()), json!({"persona": "root"}), 400),
        (Some(app.base.as_str()), json!({}), 400),
    ] {
        let response = app.dev_session(origin, body.clone()).await;
        assert_eq!(response.status(), status, "{origin:?} {body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error.get("token").is_none());
    }
}

/// A peer that is not on loopback is refused, through the real router (the
/// peer address is what `into_make_service_with_connect_info` would give),
/// and by the check itself.
#[tokio::test]
async fn dev_sign_in_refuses_peers_off_loopback() {
    let app = spawn_dev_app().await;
    let built = Application::build(Config {
        port: 0,
        ..app.config.clone()
    })
    .await
    .unwrap();
    let router = pushworker::http::router(built.state().clone()).unwrap();
    let request = |peer: SocketAddr| {
        Request::builder()
            .method("POST")
            .uri("/admin/dev/session")
            .header("origin", &app.base)
            .header("content-type", "application/json")
            .extension(ConnectInfo(peer))
            .body(Body::from(r#"{"persona":"admin"}"#))
            .unwrap()
    };
    for (peer, status) in [
        ("203.0.113.7:40000", 403),
        ("10.1.2.3:40000", 403),
        ("[2001:db8::7]:40000", 403),
        ("127.0.0.1:40000", 200),
        ("[::ffff:127.0.0.1]:40000", 200),
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        let response = router.clone().oneshot(request(peer)).await.unwrap();
        assert_eq!(response.status(), status, "{peer}");
        if status == 403 {
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert!(
                String::from_utf8_lossy(&body).contains("loopback"),
                "the refusal says why"
            );
        }
    }

    let peer: SocketAddr = "198.51.100.9:1234".parse().unwrap();
    assert!(!is_loopback_peer(&peer));
    assert!(dev_session_refusal(&app.config, &peer, Some(&app.base)).is_some());
    let local: SocketAddr = "127.0.0.1:1234".parse().unwrap();
    assert_eq!(
        dev_session_refusal(&app.config, &local, Some(&app.base)),
        None
    );
    let not_dev = Config {
        dev_mode: false,
        dev_identity: None,
        ..app.config.clone()
    };
    assert!(dev_session_refusal(&not_dev, &local, Some(&app.base)).is_some());
}

/// `CORS_ALLOWED_ORIGINS`: a listed origin's preflight is allowed with the
/// headers the page sends; another origin gets no CORS headers; with the
/// list empty there is no CORS at all.
#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let allowed = "https://admin.acme.test";
    let app = spawn_app_with(Options {
        cors_allowed_origins: vec![allowed.to_owned()],
        ..Options::default()
    })
    .await;
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/jobs/echo", app.addr))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };

    let response = preflight(&app, allowed).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), allowed);
    let allow_headers = header(&response, "access-control-allow-headers").to_lowercase();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allow_headers.contains(h), "{h} in {allow_headers}");
    }
    assert!(header(&response, "access-control-allow-methods").contains("POST"));

    let response = preflight(&app, "https://evil.example").await.unwrap();
    assert_eq!(response.headers().get("access-control-allow-origin"), None);

    let response = app
        .client
        .get(format!("{}/auth/whoami", app.addr))
        .header("origin", allowed)
        .bearer_auth(clerk_token(&[TRIGGER]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), allowed);
    let response = app
        .client
        .get(format!("{}/auth/whoami", app.addr))
        .header("origin", "https://evil.example")
        .bearer_auth(clerk_token(&[TRIGGER]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "CORS is the browser's check, not auth"
    );
    assert_eq!(response.headers().get("access-control-allow-origin"), None);

    let plain = spawn_app().await;
    let response = preflight(&plain, allowed).await.unwrap();
    assert_eq!(response.status(), 405, "no CORS configured: no preflight");
    assert_eq!(response.headers().get("access-control-allow-origin"), None);
}
