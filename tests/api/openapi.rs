//! The API document: `GET /openapi.json` (public, `OPENAPI_ENABLED`), its
//! validity as OpenAPI 3.1 (openapi-spec-validator), the committed
//! `docs/openapi.json`, one operation per job, and Schemathesis against a
//! live worker checking every answer against the document.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{
    KEYS, Options, TRIGGER, VIEW, clerk_v2_claims, google_token, now, spawn_app, spawn_app_with,
    venv_program, with,
};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The document a worker serves, fetched without a token.
async fn served(app: &crate::helpers::TestApp) -> Value {
    let response = app.get_public("/openapi.json").await;
    assert_eq!(response.status(), 200, "GET /openapi.json needs no token");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

/// A worker as `pushworker serve` has it: the built-in jobs, the default
/// `EVENT_ROUTES`.
fn builtin_only() -> Options {
    Options {
        builtin_jobs_only: true,
        event_routes: pushworker::events::routes::DEFAULT_ROUTES.to_owned(),
        ..Options::default()
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let app = spawn_app_with(builtin_only()).await;
    let doc = served(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc.get("servers").is_none(), "no host in the document");
    let file = std::env::temp_dir().join(format!(
        "pushworker-openapi-{}.json",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let output = tokio::process::Command::new(venv_program("python"))
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import OpenAPIV31SpecValidator, validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec, cls=OpenAPIV31SpecValidator)\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success() && output.stdout.starts_with(b"valid"),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `docs/openapi.json` is what `pushworker openapi` prints, which is what a
/// worker with the built-in jobs serves.
#[tokio::test]
async fn the_committed_document_is_the_generated_one() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pushworker"))
        .arg("openapi")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pushworker openapi failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed =
        std::fs::read_to_string(manifest_dir().join("docs/openapi.json")).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates: run `make openapi` and commit docs/openapi.json"
    );
    let app = spawn_app_with(builtin_only()).await;
    assert_eq!(
        served(&app).await,
        serde_json::from_str::<Value>(&generated).unwrap(),
        "GET /openapi.json and `pushworker openapi` differ"
    );
}

/// Each registered job is an operation of its own, its body the schema
/// `GET /jobs` serves; the generic `/jobs/{name}` is not in the document.
#[tokio::test]
async fn every_registered_job_is_an_operation() {
    let app = spawn_app().await;
    let doc = served(&app).await;
    let jobs: Value = app
        .list_jobs(&crate::helpers::clerk_token(&[TRIGGER]))
        .await
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(!paths.contains_key("/jobs/{name}"));
    let names: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"record") && names.contains(&"echo"),
        "{names:?}"
    );
    for name in &names {
        let op = &doc["paths"][format!("/jobs/{name}")]["post"];
        assert_eq!(
            op["operationId"],
            format!("trigger_{}", name.replace('-', "_"))
        );
        assert_eq!(
            op["security"],
            json!([{ "clerk_session": [] }, { "google_oidc": [] }])
        );
        let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert!(body.is_string(), "{name}: {op}");
    }
    let trigger_paths = paths.keys().filter(|p| p.starts_with("/jobs/")).count();
    assert_eq!(trigger_paths, names.len(), "{:?}", paths.keys());
    // The schema of echo's payload is the one GET /jobs serves, less the
    // dialect.
    let echo_jobs = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "echo")
        .unwrap();
    let mut expected = echo_jobs["payload_schema"].clone();
    expected.as_object_mut().unwrap().remove("$schema");
    assert_eq!(doc["components"]["schemas"]["EchoPayload"], expected);
    // A declared output is the 200's `output`.
    let ok = &doc["paths"]["/jobs/storage-object"]["post"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_eq!(
        ok["allOf"][1]["properties"]["output"]["anyOf"][0]["$ref"],
        "#/components/schemas/StorageObjectOutput"
    );
}

/// With `OPENAPI_ENABLED=false`, the document and its page are 404s.
#[tokio::test]
async fn openapi_disabled_answers_404() {
    let on = spawn_app_with(builtin_only()).await;
    let off = spawn_app_with(Options {
        openapi_enabled: false,
        ..builtin_only()
    })
    .await;
    for (path, content_type) in [
        ("/openapi.json", "application/json"),
        ("/docs", "text/html; charset=utf-8"),
        ("/docs/docs.js", "text/javascript; charset=utf-8"),
        ("/docs/docs.css", "text/css; charset=utf-8"),
        (
            "/docs/swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8"),
    ] {
        let response = on.get_public(path).await;
        assert_eq!(response.status(), 200, "{path} (enabled)");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let response = off.get_public(path).await;
        assert_eq!(response.status(), 404, "{path} (OPENAPI_ENABLED=false)");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
}

/// `/docs` carries the admin page's Content-Security-Policy and headers.
#[tokio::test]
async fn the_docs_page_has_the_admin_pages_headers() {
    let app = spawn_app_with(builtin_only()).await;
    let admin = app.get_public("/admin").await;
    assert_eq!(admin.status(), 200);
    for path in ["/docs", "/docs/swagger-ui-bundle.js"] {
        let docs = app.get_public(path).await;
        assert_eq!(docs.status(), 200, "{path}");
        for header in [
            "content-security-policy",
            "x-content-type-options",
            "referrer-policy",
            "x-frame-options",
        ] {
            assert_eq!(
                docs.headers().get(header),
                admin.headers().get(header),
                "{path}: {header}"
            );
        }
    }
    let html = app.get_public("/docs").await.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("https://"),
        "nothing from another host: {html}"
    );
}

/// Schemathesis generates at least 20 cases per operation from the document
/// and checks each answer of a live worker against it: no 5xx, every status
/// documented, every content type and body as documented. The worker has
/// the built-in jobs, the webhook job may call no host, and the callers are
/// a Clerk user who may trigger and read runs and an allowed service
/// account.
#[tokio::test]
async fn schemathesis_finds_no_mismatch() {
    let app = spawn_app_with(Options {
        webhook_allowed_hosts: Vec::new(),
        job_timeout: Duration::from_secs(2),
        ..builtin_only()
    })
    .await;
    // Longer than Clerk's minute: the run takes about as long.
    let claims = with(clerk_v2_claims(&[TRIGGER, VIEW]), "exp", json!(now() + 600));
    let clerk = KEYS.clerk.sign(&claims).unwrap();
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(venv_program("schemathesis"))
        .current_dir(manifest_dir())
        .args([
            "--no-color",
            "--config-file",
            "tests/schemathesis.toml",
            "run",
            &format!("{}/openapi.json", app.addr),
        ])
        .env("PUSHWORKER_CLERK_TOKEN", clerk)
        .env("PUSHWORKER_GOOGLE_TOKEN", google_token())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis found mismatches between the API and its document:\n{stdout}\n{stderr}"
    );
    eprintln!("schemathesis: {:.0?}\n{stdout}", started.elapsed());
    // Each caller's token reached the routes it is for: some of the cases
    // ran jobs by hand, by push and by event.
    for source in ["manual", "push", "event"] {
        let runs = app.all_runs(&format!("source={source}")).await;
        assert!(!runs.is_empty(), "no {source} run: the tokens did not work");
    }
}
