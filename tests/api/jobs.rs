//! `GET /jobs` and `POST /jobs/{name}`: the same handlers, run by hand.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn job_list_has_descriptions_and_schemas() {
    let app = spawn_app().await;
    let response = app.list_jobs(&clerk_token(&[])).await;
    assert_eq!(
        response.status(),
        200,
        "any signed-in user may see the list"
    );
    let body: Value = response.json().await.unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    let echo = jobs.iter().find(|j| j["name"] == "echo").unwrap();
    assert!(!echo["description"].as_str().unwrap().is_empty());
    assert_eq!(
        echo["payload_schema"]["properties"]["message"]["type"],
        "string"
    );
    assert!(jobs.iter().any(|j| j["name"] == "webhook"));
    assert_eq!(
        app.client
            .get(format!("{}/jobs", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// Permission claims in both Clerk formats, with and without the permission,
/// the role alternative, and a service account (Cloud Scheduler).
#[tokio::test]
async fn manual_trigger_permissions() {
    let app = spawn_app_with(Options {
        trigger_roles: vec!["org:ops".to_owned()],
        ..Options::default()
    })
    .await;
    let payload = json!({"message": "by hand"});
    let v1_with = KEYS.clerk.sign(&clerk_v1_claims(&[TRIGGER])).unwrap();
    let v1_without = KEYS
        .clerk
        .sign(&clerk_v1_claims(&["org:jobs:read"]))
        .unwrap();
    let v2_with = clerk_token(&[TRIGGER, "org:jobs:read"]);
    let v2_without = clerk_token(&["org:jobs:read"]);
    let v2_role = {
        let mut claims = clerk_v2_claims(&[]);
        claims["o"]["rol"] = json!("ops");
        KEYS.clerk.sign(&claims).unwrap()
    };
    let no_org = KEYS
        .clerk
        .sign(&with(clerk_v2_claims(&[]), "o", Value::Null))
        .unwrap();
    let cases = [
        ("v1 with the permission", v1_with, 200),
        ("v1 without", v1_without, 403),
        ("v2 with the permission", v2_with, 200),
        ("v2 without", v2_without, 403),
        ("v2 with the trigger role", v2_role, 200),
        ("no active organization", no_org, 403),
        ("Cloud Scheduler service account", google_token(), 200),
    ];
    for (case, token, status) in cases {
        let response = app.trigger("echo", &token, &payload).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let body: Value = response.json().await.unwrap();
        if status == 200 {
            assert_eq!(body["status"], "succeeded", "{case}");
            assert_eq!(body["output"], payload, "{case}");
            assert!(
                body["run_id"].is_string() && body["duration_ms"].is_u64(),
                "{case}: {body}"
            );
        } else {
            assert_eq!(body["error"], "insufficient_scope", "{case}");
            assert!(
                body["message"].as_str().unwrap().contains(TRIGGER),
                "{case}: says what is missing"
            );
        }
    }
}

#[tokio::test]
async fn manual_trigger_outcomes() {
    let app = spawn_app().await;
    let token = clerk_token(&[TRIGGER]);

    let response = app.trigger("nope", &token, &json!({})).await;
    assert_eq!(response.status(), 404);

    let response = app
        .trigger("echo", &token, &json!({"message": ["not", "text"]}))
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_payload");
    assert_eq!(body["path"], "message");

    let response = app.trigger("echo", &token, &json!({})).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `message`"),
        "{body}"
    );

    let response = app.trigger("reject", &token, &json!({})).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed_permanent");
    assert_eq!(body["message"], "order 42 does not exist");

    let response = app.trigger("flaky", &token, &json!({})).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed_transient");
    assert!(
        !body.to_string().contains("hunter2"),
        "transient details stay in the log"
    );

    let response = app.trigger("record", &token, &json!({"k": 1})).await;
    assert_eq!(response.status(), 200);
    let seen = app.seen();
    assert_eq!(seen[0].source, pushworker::jobs::RunSource::Manual);
    assert!(seen[0].meta.is_none());

    let response = app
        .trigger("record", &google_token(), &json!({"k": 2}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.seen()[1].source, pushworker::jobs::RunSource::Service);
}

/// The webhook example: real HTTP to a local endpoint, failures classified.
#[tokio::test]
async fn webhook_job_classifies_failures() {
    use axum::{Router, http::StatusCode, routing::post};
    let target = Router::new()
        .route("/ok", post(|| async { StatusCode::OK }))
        .route("/gone", post(|| async { StatusCode::GONE }))
        .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, target).await.ok() });

    let app = spawn_app_with(Options {
        webhook_allowed_hosts: vec![base.replace("http://", ""), "127.0.0.1:1".to_owned()],
        ..Options::default()
    })
    .await;
    let token = clerk_token(&[TRIGGER]);
    let cases = [
        (format!("{base}/ok"), 200, "succeeded"),
        (format!("{base}/gone"), 422, "failed_permanent"),
        (format!("{base}/busy"), 503, "failed_transient"),
        (
            "http://127.0.0.1:1/closed".to_owned(),
            503,
            "failed_transient",
        ),
        (
            "http://169.254.169.254/computeMetadata/v1/".to_owned(),
            422,
            "failed_permanent",
        ),
    ];
    for (url, status, run_status) in cases {
        let response = app
            .trigger("webhook", &token, &json!({"url": url, "body": {"a": 1}}))
            .await;
        assert_eq!(response.status().as_u16(), status, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], run_status, "{url}: {body}");
    }
}

#[tokio::test]
async fn health_needs_no_auth() {
    let app = spawn_app().await;
    assert_eq!(app.healthz().await.status(), 200);
}

/// A second job under a name already taken stops start-up with an error that
/// names the job, rather than silently replacing the first one.
#[tokio::test]
async fn a_job_registered_twice_stops_start_up() {
    use pushworker::{
        jobs::{JobDeps, JobRegistry, echo::Echo},
        startup::Application,
    };
    let keys = KeyServer::start().await;
    let jobs = JobRegistry::builtin(&JobDeps {
        http: reqwest::Client::new(),
        webhook: webhook_config(&Options::default()),
    })
    .expect("the built-in jobs build")
    .register(Echo);
    let built = Application::build_with_jobs(config(&keys, &Options::default()), Some(jobs)).await;
    let Err(err) = built else {
        panic!("start-up went on with two jobs named `echo`");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("job `echo` is registered twice"),
        "the error should name the job: {message}"
    );
}
