//! `POST /events`: CloudEvents from Eventarc, through a real server with real
//! tokens. Binary and structured events of both kinds (a Cloud Storage
//! object, a Pub/Sub message) run their jobs; each (source, id) runs once,
//! on the memory ledger and across two instances on PostgreSQL; bad events
//! get their status and a message naming what to fix, and nothing runs; and
//! events the CloudEvents Python SDK builds run like ours.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

const STORAGE_SOURCE: &str = "//storage.googleapis.com/projects/_/buckets/acme-uploads";
const FINALIZED: &str = "google.cloud.storage.object.v1.finalized";
const PUBSUB_SOURCE: &str = "//pubsub.googleapis.com/projects/acme-prod/topics/work";
const PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";
const ORDER_SOURCE: &str = "https://shop.example.com/orders";
const ORDER_CREATED: &str = "com.example.order.v1.created";

/// A CloudEvent as the tests build it.
#[derive(Clone)]
struct Event {
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    data: Value,
}

impl Event {
    fn new(id: &str, source: &str, event_type: &str, subject: Option<&str>, data: Value) -> Self {
        Self {
            id: id.to_owned(),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            subject: subject.map(str::to_owned),
            data,
        }
    }

    /// Binary mode, as Eventarc sends it: the context in `ce-*` headers
    /// (the subject percent-encoded), the data as the body.
    fn binary(&self) -> (Vec<(String, String)>, Vec<u8>) {
        let mut headers = vec![
            ("ce-specversion".to_owned(), "1.0".to_owned()),
            ("ce-id".to_owned(), self.id.clone()),
            ("ce-source".to_owned(), self.source.clone()),
            ("ce-type".to_owned(), self.event_type.clone()),
            ("ce-time".to_owned(), "2026-11-28T10:00:00.123Z".to_owned()),
            (
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            ),
        ];
        if let Some(s) = &self.subject {
            headers.push(("ce-subject".to_owned(), s.replace(' ', "%20")));
        }
        (headers, serde_json::to_vec(&self.data).unwrap())
    }

    /// Structured mode: one `application/cloudevents+json` object.
    fn structured(&self) -> (Vec<(String, String)>, Vec<u8>) {
        let mut body = json!({
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.event_type,
            "time": "2026-11-28T10:00:00.123Z",
            "datacontenttype": "application/json",
            "data": self.data,
        });
        if let Some(s) = &self.subject {
            body["subject"] = json!(s);
        }
        (
            vec![(
                "content-type".to_owned(),
                "application/cloudevents+json".to_owned(),
            )],
            serde_json::to_vec(&body).unwrap(),
        )
    }
}

/// The data Cloud Storage sends when `name` is written to `acme-uploads`.
fn object_data(name: &str) -> Value {
    json!({
        "kind": "storage#object",
        "id": format!("acme-uploads/{name}/1700000000000000"),
        "selfLink": format!("https://www.googleapis.com/storage/v1/b/acme-uploads/o/{name}"),
        "mediaLink": format!("https://storage.googleapis.com/download/storage/v1/b/acme-uploads/o/{name}?alt=media"),
        "bucket": "acme-uploads",
        "name": name,
        "generation": "1700000000000000",
        "metageneration": "1",
        "contentType": "text/csv",
        "timeCreated": "2026-11-28T10:00:00.000Z",
        "updated": "2026-11-28T10:00:00.000Z",
        "storageClass": "STANDARD",
        "timeStorageClassUpdated": "2026-11-28T10:00:00.000Z",
        "size": "1024",
        "md5Hash": "XUFAKrxLKna5cZ2REBfFkg==",
        "crc32c": "AAAAAA==",
        "etag": "CIDg8ZXk/YkDEAE=",
        "metadata": { "uploaded-by": "ada" },
    })
}

fn storage_event(id: &str, name: &str) -> Event {
    Event::new(
        id,
        STORAGE_SOURCE,
        FINALIZED,
        Some(&format!("objects/{name}")),
        object_data(name),
    )
}

/// A Pub/Sub message through an Eventarc trigger: its data is the push
/// envelope, with the message's own data in base64.
fn pubsub_event(message_id: &str, data: &Value, attributes: Value) -> Event {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(data).unwrap());
    Event::new(
        message_id,
        PUBSUB_SOURCE,
        PUBLISHED,
        None,
        json!({
            "message": {
                "data": encoded,
                "attributes": attributes,
                "messageId": message_id,
                "publishTime": "2026-11-28T10:00:00.123Z",
            },
            "subscription": "projects/acme-prod/subscriptions/eventarc-work",
        }),
    )
}

async fn send(
    app: &TestApp,
    (headers, body): (Vec<(String, String)>, Vec<u8>),
) -> reqwest::Response {
    app.event(&google_token(), &headers, body).await
}

/// The one run of the ledger with this message (event) id.
async fn run_of(app: &TestApp, job: &str, id: &str) -> Value {
    let runs: Vec<Value> = app
        .all_runs(&format!("job={job}"))
        .await
        .into_iter()
        .filter(|r| r["message_id"] == id)
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

#[tokio::test]
async fn storage_events_in_both_modes_run_the_storage_object_job() {
    let app = spawn_app().await;
    for (mode, event) in [
        ("binary", storage_event("4711", "reports/q3 final.csv")),
        ("structured", storage_event("4712", "reports/q4.csv")),
    ] {
        let request = if mode == "binary" {
            event.binary()
        } else {
            event.structured()
        };
        assert_eq!(send(&app, request).await.status(), 204, "{mode}");
        let run = run_of(&app, "storage-object", &event.id).await;
        assert_eq!(run["status"], "succeeded", "{mode}: {run}");
        assert_eq!(run["source"], "event", "{mode}");
        assert_eq!(run["event_source"], STORAGE_SOURCE, "{mode}");
        assert_eq!(run["event_type"], FINALIZED, "{mode}");
        assert_eq!(
            run["event_subject"],
            event.subject.clone().unwrap(),
            "{mode}"
        );
        assert_eq!(run["principal"]["id"], SERVICE_ACCOUNT, "{mode}");
        let name = event.data["name"].as_str().unwrap();
        assert_eq!(
            run["output"],
            json!({
                "object": format!("gs://acme-uploads/{name}"),
                "bucket": "acme-uploads",
                "name": name,
                "generation": "1700000000000000",
                "size_bytes": 1024,
                "content_type": "text/csv",
                "action": "finalized",
                "event_id": event.id,
            }),
            "{mode}"
        );
        assert_eq!(run["payload"], event.data, "{mode}: the data, as sent");
    }
}

/// The job sees the event's context (id, source, type, subject, time) and
/// its data as the payload; a subject prefix route picks another job.
#[tokio::test]
async fn routed_events_carry_their_context_to_the_job() {
    let app = spawn_app().await;
    let order = Event::new(
        "o-1",
        ORDER_SOURCE,
        ORDER_CREATED,
        Some("orders/fast/1"),
        json!({"order": 1}),
    );
    assert_eq!(send(&app, order.binary()).await.status(), 204);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].payload, json!({"order": 1}));
    assert_eq!(seen[0].source, pushworker::jobs::RunSource::Event);
    assert!(seen[0].meta.is_none(), "not a Pub/Sub message");
    let ctx = seen[0].event.clone().expect("the event's context");
    assert_eq!(
        (
            ctx.id.as_str(),
            ctx.source.as_str(),
            ctx.event_type.as_str(),
            ctx.subject.as_deref()
        ),
        ("o-1", ORDER_SOURCE, ORDER_CREATED, Some("orders/fast/1"))
    );
    assert_eq!(
        ctx.time.map(|t| t.unix_timestamp()),
        Some(1_795_860_000),
        "2026-11-28T10:00:00Z"
    );

    let slow = Event::new(
        "o-2",
        ORDER_SOURCE,
        ORDER_CREATED,
        Some("orders/slow/2"),
        json!({"millis": 0}),
    );
    assert_eq!(send(&app, slow.structured()).await.status(), 204);
    assert_eq!(app.count(), 1, "orders/slow/ runs `count`");
    assert_eq!(app.seen().len(), 1, "and not `record`");
}

/// A Pub/Sub event is unwrapped like a push: its message's data is the
/// payload, its `job` attribute the job, its attributes and id the job's
/// message; in either mode.
#[tokio::test]
async fn pubsub_events_are_unwrapped_and_routed_by_their_job_attribute() {
    let app = spawn_app().await;
    let binary = pubsub_event(
        "900",
        &json!({"n": 1}),
        json!({"job": "record", "tenant": "acme"}),
    );
    let structured = pubsub_event("901", &json!({"n": 2}), json!({"job": "record"}));
    assert_eq!(send(&app, binary.binary()).await.status(), 204);
    assert_eq!(send(&app, structured.structured()).await.status(), 204);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].payload, json!({"n": 1}));
    assert_eq!(seen[1].payload, json!({"n": 2}));
    let meta = seen[0].meta.clone().expect("the Pub/Sub message");
    assert_eq!(meta.message_id, "900");
    assert_eq!(meta.attributes["tenant"], "acme");
    assert_eq!(
        meta.subscription.as_deref(),
        Some("projects/acme-prod/subscriptions/eventarc-work")
    );
    assert_eq!(seen[0].event.as_ref().unwrap().event_type, PUBLISHED);
    let run = run_of(&app, "record", "900").await;
    assert_eq!(run["source"], "event");
    assert_eq!(run["event_source"], PUBSUB_SOURCE);
    assert_eq!(run["event_type"], PUBLISHED);
    assert_eq!(run["payload"], json!({"n": 1}));
}

/// The same (source, id) twice runs once (a duplicate is acked, in either
/// mode, on either instance); while it runs a repeat is a 409; the same id
/// from another source is another event and runs.
async fn each_source_and_id_runs_once(a: &TestApp, b: &TestApp) {
    let slow = |id: &str, source: &str, millis: u64| {
        Event::new(
            id,
            source,
            ORDER_CREATED,
            Some("orders/slow/1"),
            json!({"millis": millis}),
        )
    };
    let first = slow("e-1", ORDER_SOURCE, 600);
    let running = {
        let (headers, body) = first.binary();
        let client = a.client.clone();
        let url = format!("{}/events", a.addr);
        tokio::spawn(async move {
            let mut request = client.post(url).bearer_auth(google_token());
            for (k, v) in headers {
                request = request.header(k, v);
            }
            request.body(body).send().await.unwrap().status()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let in_progress = send(b, first.structured()).await;
    assert_eq!(in_progress.status(), 409, "while it runs");
    let body: Value = in_progress.json().await.unwrap();
    assert_eq!(body["error"], "run_in_progress", "{body}");
    assert_eq!(running.await.unwrap(), 204);
    assert_eq!(a.count(), 1);

    for (mode, request) in [
        ("binary", first.binary()),
        ("structured", first.structured()),
    ] {
        for app in [a, b] {
            assert_eq!(send(app, request.clone()).await.status(), 204, "{mode}");
        }
    }
    assert_eq!(
        a.count(),
        1,
        "a repeat of (source, id) is a duplicate, acked"
    );

    let elsewhere = slow("e-1", "https://other.example.com/orders", 600);
    assert_eq!(send(b, elsewhere.binary()).await.status(), 204);
    assert_eq!(
        a.count(),
        2,
        "the same id from another source is another event"
    );

    let runs = a.all_runs("job=count").await;
    let mut statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["event_source"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            ("https://other.example.com/orders", "succeeded"),
            (ORDER_SOURCE, "duplicate"),
            (ORDER_SOURCE, "duplicate"),
            (ORDER_SOURCE, "duplicate"),
            (ORDER_SOURCE, "duplicate"),
            (ORDER_SOURCE, "duplicate"),
            (ORDER_SOURCE, "succeeded"),
        ],
        "{runs:?}"
    );
    assert!(runs.iter().all(|r| r["source"] == "event"));
}

#[tokio::test]
async fn memory_each_source_and_id_runs_once() {
    let app = spawn_app().await;
    each_source_and_id_runs_once(&app, &app).await;
}

#[tokio::test]
async fn postgres_each_source_and_id_runs_once_across_two_instances() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        job_timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let a = spawn_app_with(options.clone()).await;
    let b = spawn_app_with(options).await;
    each_source_and_id_runs_once(&a, &b).await;
}

/// Many deliveries of the same storage event at once, over two instances
/// sharing PostgreSQL: acked or told it runs elsewhere, and it runs once.
#[tokio::test]
async fn postgres_a_storage_event_delivered_at_once_to_two_instances_runs_once() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        ..Options::default()
    };
    let a = Arc::new(spawn_app_with(options.clone()).await);
    let b = Arc::new(spawn_app_with(options).await);
    let event = storage_event("race-1", "race.csv");
    let sends = (0..8).map(|i| {
        let app = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let request = if i % 3 == 0 {
            event.structured()
        } else {
            event.binary()
        };
        async move { send(&app, request).await.status().as_u16() }
    });
    for status in futures::future::join_all(sends).await {
        assert!(matches!(status, 204 | 409), "{status}");
    }
    let runs = a.all_runs("job=storage-object").await;
    let succeeded = runs.iter().filter(|r| r["status"] == "succeeded").count();
    assert_eq!(succeeded, 1, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r["status"] == "succeeded" || r["status"] == "duplicate"),
        "{runs:?}"
    );
}

/// One bad event: how it is sent, and what it must answer.
struct Bad {
    name: &'static str,
    request: (Vec<(String, String)>, Vec<u8>),
    status: u16,
    error: &'static str,
    /// The message names this.
    names: &'static str,
}

fn without(
    mut request: (Vec<(String, String)>, Vec<u8>),
    header: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    request.0.retain(|(k, _)| k != header);
    request
}

fn with_header(
    mut request: (Vec<(String, String)>, Vec<u8>),
    header: &str,
    value: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    request.0.retain(|(k, _)| k != header);
    request.0.push((header.to_owned(), value.to_owned()));
    request
}

fn structured_with(
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> (Vec<(String, String)>, Vec<u8>) {
    let (headers, body) = storage_event("bad-s", "bad.csv").structured();
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(&body).unwrap();
    edit(&mut object);
    (headers, serde_json::to_vec(&object).unwrap())
}

fn bad_events() -> Vec<Bad> {
    let storage = storage_event("bad-1", "bad.csv");
    let mut cases = Vec::new();
    for attribute in ["id", "source", "specversion", "type"] {
        cases.push(Bad {
            name: "binary, an attribute missing",
            request: without(storage.binary(), &format!("ce-{attribute}")),
            status: 400,
            error: "invalid_event",
            names: match attribute {
                "id" => "`id`",
                "source" => "`source`",
                "specversion" => "`specversion`",
                _ => "`type`",
            },
        });
        cases.push(Bad {
            name: "structured, an attribute missing",
            request: structured_with(|o| {
                o.remove(attribute);
            }),
            status: 400,
            error: "invalid_event",
            names: match attribute {
                "id" => "`id`",
                "source" => "`source`",
                "specversion" => "`specversion`",
                _ => "`type`",
            },
        });
    }
    cases.extend([
        Bad {
            name: "binary, specversion 0.3",
            request: with_header(storage.binary(), "ce-specversion", "0.3"),
            status: 400,
            error: "invalid_event",
            names: "specversion `0.3`",
        },
        Bad {
            name: "structured, specversion 0.3",
            request: structured_with(|o| {
                o.insert("specversion".into(), json!("0.3"));
            }),
            status: 400,
            error: "invalid_event",
            names: "specversion `0.3`",
        },
        Bad {
            name: "an empty id",
            request: with_header(storage.binary(), "ce-id", ""),
            status: 400,
            error: "invalid_event",
            names: "`id` must not be empty",
        },
        Bad {
            name: "a time that is not RFC 3339",
            request: with_header(storage.binary(), "ce-time", "yesterday"),
            status: 400,
            error: "invalid_event",
            names: "`time`",
        },
        Bad {
            name: "a structured body that is not JSON",
            request: (
                vec![(
                    "content-type".to_owned(),
                    "application/cloudevents+json".to_owned(),
                )],
                b"{\"specversion\": \"1.0\", \"id\": ".to_vec(),
            ),
            status: 400,
            error: "invalid_event",
            names: "not a JSON object",
        },
        Bad {
            name: "batch mode",
            request: (
                vec![(
                    "content-type".to_owned(),
                    "application/cloudevents-batch+json".to_owned(),
                )],
                serde_json::to_vec(&json!([serde_json::from_slice::<Value>(
                    &storage.structured().1
                )
                .unwrap()]))
                .unwrap(),
            ),
            status: 415,
            error: "unsupported_media_type",
            names: "application/cloudevents-batch+json",
        },
        Bad {
            name: "a structured format other than JSON",
            request: with_header(
                storage.structured(),
                "content-type",
                "application/cloudevents+avro",
            ),
            status: 415,
            error: "unsupported_media_type",
            names: "application/cloudevents+avro",
        },
        Bad {
            name: "no CloudEvent at all",
            request: (
                vec![("content-type".to_owned(), "application/json".to_owned())],
                serde_json::to_vec(&object_data("plain.csv")).unwrap(),
            ),
            status: 415,
            error: "unsupported_media_type",
            names: "not a CloudEvent",
        },
        Bad {
            name: "data that is not JSON by its type",
            request: with_header(
                (storage.binary().0, b"a,b,c".to_vec()),
                "content-type",
                "text/csv",
            ),
            status: 415,
            error: "unsupported_media_type",
            names: "`text/csv`",
        },
        Bad {
            name: "data that is not JSON",
            request: (storage.binary().0, b"{not json".to_vec()),
            status: 400,
            error: "payload_not_json",
            names: "not valid JSON",
        },
        Bad {
            name: "data the job's type refuses",
            request: Event::new(
                "bad-2",
                STORAGE_SOURCE,
                FINALIZED,
                Some("objects/x"),
                json!({"bucket": 7, "name": "x"}),
            )
            .binary(),
            status: 422,
            error: "invalid_payload",
            names: "`bucket`",
        },
        Bad {
            name: "no route",
            request: Event::new(
                "bad-3",
                ORDER_SOURCE,
                "com.example.order.v1.cancelled",
                Some("orders/1"),
                json!({}),
            )
            .binary(),
            status: 422,
            error: "no_route",
            names: "`com.example.order.v1.cancelled`",
        },
        Bad {
            name: "a Pub/Sub event that names no job",
            request: pubsub_event("bad-4", &json!({}), json!({"tenant": "acme"})).binary(),
            status: 422,
            error: "no_job",
            names: "`job` attribute",
        },
        Bad {
            name: "a Pub/Sub event whose data is no Pub/Sub message",
            request: Event::new("bad-5", PUBSUB_SOURCE, PUBLISHED, None, json!({"order": 1}))
                .binary(),
            status: 400,
            error: "invalid_event",
            names: "not a Pub/Sub message",
        },
    ]);
    cases
}

#[tokio::test]
async fn bad_events_get_their_status_and_a_clear_message_and_nothing_runs() {
    let app = spawn_app().await;
    for case in bad_events() {
        let response = send(&app, case.request.clone()).await;
        assert_eq!(response.status(), case.status, "{}", case.name);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], case.error, "{}: {body}", case.name);
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(case.names), "{}: {message}", case.name);
    }
    assert!(app.seen().is_empty(), "no job ran");
    assert_eq!(app.count(), 0);
    let runs = app.all_runs("").await;
    assert!(
        runs.iter().all(|r| r["status"] == "failed_permanent"),
        "only data the job refused is recorded, as failed: {runs:?}"
    );
    assert_eq!(
        runs.len(),
        2,
        "data not JSON, and data of the wrong shape: {runs:?}"
    );
}

/// An event that can never run gets what a push of such a payload gets.
#[tokio::test]
async fn an_event_that_cannot_run_is_answered_as_a_push_that_cannot() {
    let app = spawn_app().await;
    let data = json!({"bucket": 7, "name": "x"});
    let event = Event::new(
        "p-1",
        STORAGE_SOURCE,
        FINALIZED,
        Some("objects/x"),
        data.clone(),
    );
    let as_event = send(&app, event.binary()).await;
    let as_push = app
        .push(
            &google_token(),
            envelope(
                &serde_json::to_vec(&data).unwrap(),
                &[("job", "storage-object")],
                "p-1",
            )
            .to_string(),
        )
        .await;
    assert_eq!(as_event.status(), as_push.status());
    let (event_body, push_body): (Value, Value) = (
        as_event.json().await.unwrap(),
        as_push.json().await.unwrap(),
    );
    assert_eq!(event_body, push_body);
}

#[tokio::test]
async fn who_may_send_events() {
    let app = spawn_app().await;
    let (headers, body) = storage_event("auth-1", "a.csv").binary();
    let rogue = KEYS.rogue.sign(&google_claims()).unwrap();
    let stranger = KEYS
        .google
        .sign(&with(
            google_claims(),
            "email",
            json!("intruder@elsewhere.iam.gserviceaccount.com"),
        ))
        .unwrap();
    let wrong_audience = KEYS
        .google
        .sign(&with(
            google_claims(),
            "aud",
            json!("https://elsewhere.test/events"),
        ))
        .unwrap();
    let person = clerk_token(&[TRIGGER]);
    for (who, token, status, error) in [
        (
            "a token signed by an unknown key",
            rogue.as_str(),
            401,
            "invalid_token",
        ),
        (
            "another audience",
            wrong_audience.as_str(),
            401,
            "invalid_token",
        ),
        (
            "a service account not allowed",
            stranger.as_str(),
            403,
            "insufficient_scope",
        ),
        ("a person", person.as_str(), 403, "insufficient_scope"),
    ] {
        let response = app.event(token, &headers, body.clone()).await;
        assert_eq!(response.status(), status, "{who}");
        assert!(challenge(&response).starts_with("Bearer"), "{who}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], error, "{who}: {answer}");
    }
    let mut anonymous = app.client.post(format!("{}/events", app.addr));
    for (k, v) in &headers {
        anonymous = anonymous.header(k, v);
    }
    assert_eq!(
        anonymous.body(body.clone()).send().await.unwrap().status(),
        401
    );
    assert!(
        app.all_runs("").await.is_empty(),
        "nothing of a refused event is recorded"
    );
    assert_eq!(
        app.event(&google_token(), &headers, body).await.status(),
        204
    );
}

/// The CloudEvents Python SDK (requirements-test.txt, installed into the
/// test virtualenv by `make test`) builds a storage and a Pub/Sub event in
/// each mode and sends them with Python's own HTTP client: each runs its job.
#[tokio::test]
async fn the_cloudevents_sdk_events_run() {
    let venv = std::env::var_os("PUSHWORKER_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python virtualenv at {}: run `scripts/test-prereqs.sh venv` (make test does)",
        venv.display()
    );
    let app = spawn_app().await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/cloudevents_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&app.addr, &google_token(), &run])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed (is cloudevents installed? scripts/test-prereqs.sh venv): {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?} {stderr}");
    for line in &lines {
        assert_eq!(line["status"], 204, "{line}");
    }
    for mode in ["binary", "structured"] {
        let run_record = run_of(&app, "storage-object", &format!("storage-{run}-{mode}")).await;
        assert_eq!(run_record["status"], "succeeded", "{mode}");
        assert_eq!(
            run_record["output"]["object"],
            format!("gs://acme-uploads/uploads/{run}/{mode}.csv"),
            "{mode}"
        );
        assert_eq!(run_record["output"]["size_bytes"], 2048);
        assert_eq!(
            run_record["event_subject"],
            format!("objects/uploads/{run}/{mode}.csv")
        );
    }
    let mut payloads: Vec<Value> = app.seen().into_iter().map(|s| s.payload).collect();
    payloads.sort_by_key(|p| p["sdk"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        payloads,
        [json!({"sdk": "binary"}), json!({"sdk": "structured"})]
    );
}
