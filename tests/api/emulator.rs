//! The whole push loop through the real Pub/Sub emulator: google-cloud-pubsub's
//! publisher → emulator → `pushworker replay --subscription` (the bridge, with
//! tokens) → worker → job; transient failures redelivered; poison messages
//! dead-lettered; the emulator's own (token-less) push refused.
//!
//! One emulator serves every scenario (it takes seconds to start); each
//! scenario uses its own topics and subscriptions: the emulator keeps handing
//! messages to a streaming pull that has just closed until their ack deadline
//! passes, so a fresh subscription per bridge run keeps the test fast.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use google_cloud_pubsub::model::{DeadLetterPolicy, Message, PushConfig};
use pushworker::{
    auth::dev::DevIdentity,
    pubsub::{dead_letter::attr, gcp::PubsubTarget},
    replay::{ReplayArgs, replay_subscription},
};
use serde_json::json;

use crate::helpers::*;

const PROJECT: &str = "pushworker-test";

/// The emulator process group; killed on drop, even when a test panics.
pub(crate) struct Emulator {
    pub(crate) host: String,
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "pushworker-{name}-{}-{}",
        std::process::id(),
        now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

impl Emulator {
    pub(crate) async fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let has_gcloud = Command::new("gcloud")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_gcloud,
            "the Pub/Sub emulator is needed: install the Google Cloud CLI with its emulator \
             (apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator, or \
             gcloud components install beta pubsub-emulator)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = temp_dir("emulator");
        let log = std::fs::File::create(dir.0.join("emulator.log")).unwrap();
        let child = Command::new("gcloud")
            .args(["beta", "emulators", "pubsub", "start"])
            .arg(format!("--host-port=127.0.0.1:{port}"))
            .arg(format!("--project={PROJECT}"))
            .arg(format!("--data-dir={}", dir.0.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting the Pub/Sub emulator");
        let mut emulator = Self {
            host: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let up = client
                .get(format!("http://{}/", emulator.host))
                .send()
                .await;
            if up.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = emulator.child.try_wait() {
                let log = std::fs::read_to_string(emulator._dir.0.join("emulator.log"))
                    .unwrap_or_default();
                panic!(
                    "the Pub/Sub emulator exited ({status}); is it installed (gcloud components install pubsub-emulator)?\n{log}"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the emulator did not start in 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        emulator
    }

    pub(crate) fn target(&self) -> PubsubTarget {
        PubsubTarget::new(Some(self.host.clone()))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn topic(name: &str) -> String {
    format!("projects/{PROJECT}/topics/{name}")
}

pub(crate) fn subscription(name: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{name}")
}

/// Creates `work-<tag>` with a pull subscription dead-lettering to
/// `dead-<tag>`, which has its own subscription.
async fn create_loop(emulator: &Emulator, tag: &str) {
    let topics = emulator.target().topic_admin().await.unwrap();
    let subs = emulator.target().subscription_admin().await.unwrap();
    for name in [format!("work-{tag}"), format!("dead-{tag}")] {
        topics
            .create_topic()
            .set_name(topic(&name))
            .send()
            .await
            .unwrap();
    }
    subs.create_subscription()
        .set_name(subscription(&format!("dead-{tag}-sub")))
        .set_topic(topic(&format!("dead-{tag}")))
        .send()
        .await
        .unwrap();
    subs.create_subscription()
        .set_name(subscription(&format!("bridge-{tag}")))
        .set_topic(topic(&format!("work-{tag}")))
        .set_ack_deadline_seconds(10)
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(topic(&format!("dead-{tag}")))
                .set_max_delivery_attempts(5),
        )
        .send()
        .await
        .unwrap();
}

pub(crate) async fn publish(
    emulator: &Emulator,
    topic_name: &str,
    data: &[u8],
    attributes: &[(&str, &str)],
) -> String {
    let publisher = emulator
        .target()
        .publisher(&topic(topic_name))
        .await
        .unwrap();
    let attributes: HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let id = publisher
        .publish(
            Message::new()
                .set_data(data.to_vec())
                .set_attributes(attributes),
        )
        .await
        .unwrap();
    publisher.flush().await;
    id
}

/// Replay arguments for the bridge: the dev identity (whose key the test key
/// server also serves) mints tokens for the test audience and account.
fn bridge_args(
    app: &TestApp,
    emulator: &Emulator,
    dev_dir: &TempDir,
    sub: &str,
    max: Option<usize>,
    idle: u64,
) -> ReplayArgs {
    ReplayArgs {
        paths: Vec::new(),
        subscription: Some(subscription(sub)),
        target: app.addr.clone(),
        job: None,
        unwrapped: false,
        concurrency: 4,
        dry_run: false,
        audience: Some(AUDIENCE.to_owned()),
        service_account: SERVICE_ACCOUNT.to_owned(),
        dev_dir: dev_dir.0.clone(),
        max,
        idle_timeout: idle,
        emulator_host: Some(emulator.host.clone()),
        timeout: 30,
    }
}

/// Pulls from `sub` (acking) until `expected` messages came, waiting up to
/// 30 s for them (a loaded machine's emulator can be slow to start
/// delivering), then 1 s more for any extra.
pub(crate) async fn drain(emulator: &Emulator, sub: &str, expected: usize) -> Vec<Message> {
    let subscriber = emulator.target().subscriber().await.unwrap();
    let mut stream = subscriber.subscribe(subscription(sub)).build();
    let mut out = Vec::new();
    loop {
        let wait = if out.len() < expected {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        let Ok(Some(next)) = tokio::time::timeout(wait, stream.next()).await else {
            break;
        };
        let (message, handler) = next.unwrap();
        handler.ack();
        out.push(message);
    }
    stream.shutdown_token().shutdown().await;
    out
}

#[tokio::test]
async fn push_loop_through_the_real_emulator() {
    let emulator = Emulator::start().await;
    let dev_dir = temp_dir("dev");
    let dev = DevIdentity::load_or_create(&dev_dir.0).unwrap();
    let keys = KeyServer::start().await;
    keys.set_google_keys(vec![
        KEYS.google.public_jwk().unwrap(),
        dev.key().public_jwk().unwrap(),
    ]);
    let app = spawn_app_on(
        keys,
        Options {
            dead_letter_topic: Some(topic("dead-main")),
            emulator_host: Some(emulator.host.clone()),
            ..Options::default()
        },
    )
    .await;
    for tag in ["main", "flaky", "poison", "dlfail"] {
        create_loop(&emulator, tag).await;
    }

    // 1. Published messages travel to the job with payload and attributes, and are acked.
    let mut ids = Vec::new();
    for i in 0..3 {
        let data = json!({"n": i}).to_string();
        ids.push(
            publish(
                &emulator,
                "work-main",
                data.as_bytes(),
                &[("job", "record"), ("tenant", "acme")],
            )
            .await,
        );
    }
    let summary = replay_subscription(
        &bridge_args(&app, &emulator, &dev_dir, "bridge-main", Some(3), 30),
        &subscription("bridge-main"),
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.acked(), summary.nacked()),
        (3, 0),
        "{}",
        summary.report()
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    let mut payloads: Vec<i64> = seen
        .iter()
        .map(|s| s.payload["n"].as_i64().unwrap())
        .collect();
    payloads.sort();
    assert_eq!(payloads, vec![0, 1, 2]);
    for s in &seen {
        let meta = s.meta.as_ref().unwrap();
        assert_eq!(meta.attributes["tenant"], "acme");
        assert!(
            ids.contains(&meta.message_id),
            "the job sees Pub/Sub's message id"
        );
        assert_eq!(
            meta.subscription.as_deref(),
            Some(subscription("bridge-main").as_str())
        );
    }

    // 2. A transient failure is nacked, redelivered, and succeeds on a later attempt.
    let flaky_id = publish(
        &emulator,
        "work-flaky",
        b"{\"k\":\"v\"}",
        &[("job", "flaky_once")],
    )
    .await;
    let summary = replay_subscription(
        &bridge_args(&app, &emulator, &dev_dir, "bridge-flaky", Some(2), 30),
        &subscription("bridge-flaky"),
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.acked(), summary.nacked()),
        (1, 1),
        "{}",
        summary.report()
    );
    let last = app.seen().last().cloned().unwrap();
    assert_eq!(last.meta.as_ref().unwrap().message_id, flaky_id);
    assert!(
        last.attempt >= 2,
        "the success came on a later delivery attempt ({})",
        last.attempt
    );

    // 3. A poison message ends on the dead-letter topic with the reason, and is acked on the source.
    let poison_id = publish(
        &emulator,
        "work-poison",
        br#"{"message": 5}"#,
        &[("job", "echo"), ("tenant", "acme")],
    )
    .await;
    let summary = replay_subscription(
        &bridge_args(&app, &emulator, &dev_dir, "bridge-poison", Some(1), 30),
        &subscription("bridge-poison"),
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.acked(), summary.nacked()),
        (1, 0),
        "dead-lettered, then acked: {}",
        summary.report()
    );
    let dead = drain(&emulator, "dead-main-sub", 1).await;
    assert_eq!(
        dead.len(),
        1,
        "exactly one message on the dead-letter topic"
    );
    let d = &dead[0];
    assert_eq!(d.data.as_ref(), br#"{"message": 5}"#, "the original data");
    assert_eq!(d.attributes["tenant"], "acme", "the original attributes");
    assert_eq!(d.attributes[attr::ERROR_KIND], "invalid_payload");
    assert!(
        d.attributes[attr::ERROR].contains("message"),
        "{:?}",
        d.attributes
    );
    assert_eq!(d.attributes[attr::JOB], "echo");
    assert_eq!(d.attributes[attr::MESSAGE_ID], poison_id);
    assert_eq!(
        d.attributes[attr::SUBSCRIPTION],
        subscription("bridge-poison")
    );
    assert!(d.attributes.contains_key(attr::ATTEMPT));
    let runs = app
        .list_runs(&clerk_token(&[TRIGGER]), "status=dead_lettered")
        .await;
    assert_eq!(runs.status(), 200);
    let runs: serde_json::Value = runs.json().await.unwrap();
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "the ledger records the run as dead-lettered");
    assert_eq!(runs[0]["message_id"], poison_id);
    // Past the 10 s ack deadline an unacked message would be redelivered.
    let again = replay_subscription(
        &bridge_args(&app, &emulator, &dev_dir, "bridge-poison", None, 13),
        &subscription("bridge-poison"),
    )
    .await
    .unwrap();
    assert_eq!(
        again.deliveries.len(),
        0,
        "the poison message was acked on the source"
    );

    // 4. If dead-lettering fails, the push is nacked and the message stays.
    let broken = spawn_app_on(
        {
            let keys = KeyServer::start().await;
            keys.set_google_keys(vec![dev.key().public_jwk().unwrap()]);
            keys
        },
        Options {
            dead_letter_topic: Some(topic("no-such-topic")),
            emulator_host: Some(emulator.host.clone()),
            ..Options::default()
        },
    )
    .await;
    // (Delivered directly: the bridge's nack-and-redeliver is scenario 2.)
    let poison = envelope(b"not json", &[("job", "echo")], "dlfail-1").to_string();
    let token = dev.google_token(SERVICE_ACCOUNT, AUDIENCE, 600).unwrap();
    let response = broken.push(&token, poison.clone()).await;
    assert_eq!(response.status(), 503, "publish failed: nacked, not acked");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "dead_letter_failed");
    let healthy = spawn_app_on(
        {
            let keys = KeyServer::start().await;
            keys.set_google_keys(vec![dev.key().public_jwk().unwrap()]);
            keys
        },
        Options {
            dead_letter_topic: Some(topic("dead-dlfail")),
            emulator_host: Some(emulator.host.clone()),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        healthy.push(&token, poison).await.status(),
        204,
        "the redelivery is dead-lettered and acked"
    );
    let dead = drain(&emulator, "dead-dlfail-sub", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes[attr::ERROR_KIND], "payload_not_json");

    // 5. The emulator's own push (no token) is refused, and the message stays in Pub/Sub.
    native_push_is_refused(&emulator, &app).await;
}

async fn native_push_is_refused(emulator: &Emulator, app: &TestApp) {
    use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
    // A recording relay in front of the worker, to see what the emulator got.
    type Seen = Arc<Mutex<Vec<(u16, bool)>>>;
    let statuses: Seen = Arc::default();
    let relay = Router::new()
        .route(
            "/push",
            post(
                |State((worker, statuses)): State<(String, Seen)>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let had_token = headers.contains_key("authorization");
                    let mut request = reqwest::Client::new()
                        .post(format!("{worker}/pubsub/push"))
                        .body(body);
                    for (k, v) in &headers {
                        if k != "host" && k != "content-length" {
                            request = request.header(k, v);
                        }
                    }
                    let status = request
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(599);
                    statuses.lock().unwrap().push((status, had_token));
                    axum::http::StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state((app.addr.clone(), Arc::clone(&statuses)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, relay).await.ok() });

    let topics = emulator.target().topic_admin().await.unwrap();
    let subs = emulator.target().subscription_admin().await.unwrap();
    topics
        .create_topic()
        .set_name(topic("native"))
        .send()
        .await
        .unwrap();
    subs.create_subscription()
        .set_name(subscription("native-push"))
        .set_topic(topic("native"))
        .set_ack_deadline_seconds(10)
        .set_push_config(PushConfig::new().set_push_endpoint(relay_url))
        .send()
        .await
        .unwrap();
    let before = app.seen().len();
    publish(
        emulator,
        "native",
        br#"{"message":"pushed natively"}"#,
        &[("job", "record")],
    )
    .await;
    let start = Instant::now();
    while statuses.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the emulator did not push twice in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = statuses.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(status, had_token)| *status == 401 && !had_token),
        "{seen:?}"
    );
    assert_eq!(app.seen().len(), before, "the job never ran");
    // Turn the subscription into a pull one: the message is still there.
    subs.modify_push_config()
        .set_subscription(subscription("native-push"))
        .set_push_config(PushConfig::new())
        .send()
        .await
        .unwrap();
    let left = drain(emulator, "native-push", 1).await;
    assert_eq!(left.len(), 1, "never acked: still in Pub/Sub");
    assert_eq!(left[0].data.as_ref(), br#"{"message":"pushed natively"}"#);
}

/// With a dead-letter topic, a conflicting delivery (the message id of a run
/// that succeeded, other data) is published there, with its own data and
/// `message_conflict` as the reason, and only then acked; its record stays
/// `conflict`. A same-content redelivery is still a plain acked duplicate.
#[tokio::test]
async fn a_conflicting_delivery_is_dead_lettered_then_acked() {
    let emulator = Emulator::start().await;
    let topics = emulator.target().topic_admin().await.unwrap();
    let subs = emulator.target().subscription_admin().await.unwrap();
    topics
        .create_topic()
        .set_name(topic("dead-conflict"))
        .send()
        .await
        .unwrap();
    subs.create_subscription()
        .set_name(subscription("dead-conflict-sub"))
        .set_topic(topic("dead-conflict"))
        .send()
        .await
        .unwrap();
    let app = spawn_app_with(Options {
        dead_letter_topic: Some(topic("dead-conflict")),
        emulator_host: Some(emulator.host.clone()),
        ..Options::default()
    })
    .await;
    let push = |data: &[u8]| envelope(data, &[("job", "echo")], "m-dl-conflict").to_string();
    let a = br#"{"message": "A"}"#;
    let b = br#"{"message": "B"}"#;
    assert_eq!(app.push(&google_token(), push(a)).await.status(), 204);
    assert_eq!(app.push(&google_token(), push(a)).await.status(), 204);
    assert_eq!(
        app.push(&google_token(), push(b)).await.status(),
        204,
        "dead-lettered, then acked"
    );
    let dead = drain(&emulator, "dead-conflict-sub", 1).await;
    assert_eq!(dead.len(), 1, "only the conflict is dead-lettered");
    assert_eq!(&dead[0].data[..], &b[..]);
    assert_eq!(dead[0].attributes[attr::ERROR_KIND], "message_conflict");
    assert_eq!(dead[0].attributes[attr::MESSAGE_ID], "m-dl-conflict");
    assert_eq!(dead[0].attributes["job"], "echo");

    let runs = app.all_runs("").await;
    let status = |s: &str| runs.iter().filter(|r| r["status"] == s).count();
    assert_eq!(
        (status("succeeded"), status("duplicate"), status("conflict")),
        (1, 1, 1),
        "{runs:?}"
    );
    let conflict = runs.iter().find(|r| r["status"] == "conflict").unwrap();
    let original = runs.iter().find(|r| r["status"] == "succeeded").unwrap();
    assert_eq!(conflict["duplicate_of"], original["run_id"]);
    assert!(
        dead[0].attributes[attr::ERROR].contains(original["run_id"].as_str().unwrap()),
        "the reason names the run that holds the id"
    );
}
