//! The PostgreSQL ledger under load, with group commit on: many distinct
//! messages over two instances each run once, a batch whose statement fails
//! nacks each of its members and records nothing as done, an instance killed
//! mid-batch frees its messages after the lease, and every claim outcome is
//! recorded exactly as the memory ledger records it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use pushworker::runs::{
    Claim, DedupKey, Finish, NewRun, RunPrincipal, RunQuery, RunRecord, RunStatus, RunStore,
    StoreSettings, digest,
    memory::MemoryStore,
    message_digest, now_micros,
    postgres::{
        PgSettings, PgStore,
        statements::{CLAIM_BATCH, FINISH_BATCH},
    },
};
use serde_json::Value;

use crate::helpers::*;

async fn connect(db: &TestDb) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&db.url())
        .await
        .unwrap()
}

/// Runs per status of each message, from the database itself.
async fn statuses_by_message(db: &TestDb) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, status FROM runs ORDER BY run_id")
            .fetch_all(&mut connect(db).await)
            .await
            .unwrap();
    let mut by_message: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (message, status) in rows {
        by_message.entry(message).or_default().push(status);
    }
    by_message
}

fn count_body(id: &str) -> String {
    envelope(br#"{}"#, &[("job", "count")], id).to_string()
}

/// 2,000 distinct messages, 32 at a time, spread over two instances sharing
/// one database: every push is acked, each job ran once, and the database
/// holds exactly one run per message, succeeded.
#[tokio::test]
async fn postgres_two_instances_run_two_thousand_messages_once() {
    let db = TestDb::create().await;
    let options = Options {
        database_url: Some(db.url()),
        job_timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let a = Arc::new(spawn_app_with(options.clone()).await);
    let b = Arc::new(spawn_app_with(options).await);
    const MESSAGES: usize = 2_000;
    let token = google_token();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..32).map(|w| {
        let app = Arc::clone(if w % 2 == 0 { &a } else { &b });
        let (next, token) = (Arc::clone(&next), token.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= MESSAGES {
                    return statuses;
                }
                let response = app.push(&token, count_body(&format!("many-{i}"))).await;
                statuses.push(response.status().as_u16());
            }
        })
    });
    let mut statuses = Vec::new();
    for worker in futures::future::join_all(workers).await {
        statuses.extend(worker.unwrap());
    }
    assert_eq!(statuses.len(), MESSAGES);
    assert!(statuses.iter().all(|&s| s == 204), "every push acked");
    assert_eq!(a.count(), MESSAGES, "each job ran once (both instances)");
    let by_message = statuses_by_message(&db).await;
    assert_eq!(by_message.len(), MESSAGES);
    for (message, statuses) in &by_message {
        assert_eq!(statuses, &["succeeded"], "{message}");
    }
}

/// A batch whose statement fails (here: the statement timeout, while a
/// test's lock holds the claims table) nacks each of its members with 503,
/// runs nothing and records nothing; once the lock is gone the same
/// messages run once each.
#[tokio::test]
async fn postgres_a_failed_batch_nacks_each_member_and_records_nothing() {
    let db = TestDb::create().await;
    let app = Arc::new(
        spawn_app_with(Options {
            database_url: Some(db.url()),
            pg: PgSettings {
                statement_timeout: Duration::from_secs(1),
                batch_max_wait: Duration::from_millis(20),
                ..PgSettings::default()
            },
            ..Options::default()
        })
        .await,
    );
    let token = google_token();
    let mut lock = connect(&db).await;
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE run_claims IN SHARE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    const MESSAGES: usize = 24;
    let pushes = (0..MESSAGES).map(|i| {
        let (app, token) = (Arc::clone(&app), token.clone());
        async move {
            let response = app.push(&token, count_body(&format!("cut-{i}"))).await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    });
    for (status, body) in futures::future::join_all(pushes).await {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "store_unavailable", "{body}");
    }
    assert_eq!(app.count(), 0, "nothing ran");
    let (recorded,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs")
        .fetch_one(&mut connect(&db).await)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "nothing recorded");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();

    let pushes = (0..MESSAGES).map(|i| {
        let (app, token) = (Arc::clone(&app), token.clone());
        async move {
            app.push(&token, count_body(&format!("cut-{i}")))
                .await
                .status()
        }
    });
    for status in futures::future::join_all(pushes).await {
        assert_eq!(status, 204);
    }
    assert_eq!(app.count(), MESSAGES, "each ran once");
    let by_message = statuses_by_message(&db).await;
    assert_eq!(by_message.len(), MESSAGES);
    assert!(by_message.values().all(|s| s == &["succeeded"]));
}

/// The real binary killed (SIGKILL) while batches of claims and finishes are
/// in flight: redelivered to a surviving instance, each message ends with
/// exactly one succeeded run; the ones the dead instance held wait for their
/// lease (409 meanwhile), and their dead runs are recorded as lease expired.
#[tokio::test]
async fn postgres_an_instance_killed_mid_batch_runs_each_message_once() {
    let db = TestDb::create().await;
    let doomed = DevWorker::start(
        "killed-batch",
        &[
            ("DATABASE_URL", db.url()),
            ("JOB_TIMEOUT_SECS", "2".to_owned()),
            ("RUN_LEASE_SECS", "3".to_owned()),
            ("DATABASE_BATCH_MAX_WAIT_MS", "5".to_owned()),
        ],
        false,
    )
    .await;
    let dev_token = doomed
        .identity()
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            600,
        )
        .unwrap();
    const MESSAGES: usize = 300;
    let body = |i: usize| {
        envelope(
            br#"{"millis": 200}"#,
            &[("job", "sleep")],
            &format!("k-{i}"),
        )
        .to_string()
    };
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..32)
        .map(|_| {
            let (client, next, token) = (client.clone(), Arc::clone(&next), dev_token.clone());
            let url = format!("{}/pubsub/push", doomed.base());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= MESSAGES {
                        return;
                    }
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .body(body(i))
                        .send()
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let mut conn = connect(&db).await;
    let start = Instant::now();
    loop {
        let (done,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM runs WHERE status = 'succeeded'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if done >= 40 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut doomed = doomed;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    for task in load {
        task.abort();
    }
    let (held,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE status = 'running'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(held > 0, "the kill left runs in flight");

    let survivor = spawn_app_with(Options {
        database_url: Some(db.url()),
        job_timeout: Duration::from_secs(5),
        ..Options::default()
    })
    .await;
    let token = google_token();
    let mut pending: BTreeSet<usize> = (0..MESSAGES).collect();
    let mut busy = 0;
    let start = Instant::now();
    while !pending.is_empty() {
        let answers = futures::future::join_all(pending.iter().map(|&i| {
            let request = survivor.push(&token, body(i));
            async move { (i, request.await.status().as_u16()) }
        }))
        .await;
        for (i, status) in answers {
            match status {
                204 => {
                    pending.remove(&i);
                }
                409 => busy += 1,
                other => panic!("k-{i}: unexpected {other}"),
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "leases never expired: {pending:?}"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(
        busy > 0,
        "the dead instance's messages waited for the lease"
    );
    let by_message = statuses_by_message(&db).await;
    assert_eq!(by_message.len(), MESSAGES, "every message recorded");
    let mut expired = 0;
    for (message, statuses) in &by_message {
        let succeeded = statuses.iter().filter(|s| *s == "succeeded").count();
        assert_eq!(succeeded, 1, "{message}: {statuses:?}");
        assert!(
            !statuses.iter().any(|s| s == "running"),
            "{message}: {statuses:?}"
        );
        expired += statuses.iter().filter(|s| *s == "failed_transient").count();
    }
    let (lease_expired,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM runs WHERE error_kind = 'lease_expired'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(usize::try_from(lease_expired).unwrap(), expired);
    assert!(lease_expired > 0, "a run held by the dead instance expired");
}

fn settings() -> StoreSettings {
    StoreSettings {
        lease: Duration::from_secs(60),
        retention: Duration::from_secs(3600),
        max_records: 1000,
        postgres: PgSettings {
            // Long enough that concurrent claims share a batch.
            batch_max_wait: Duration::from_millis(20),
            ..PgSettings::default()
        },
    }
}

fn new_run(key: Option<DedupKey>, data: &[u8]) -> NewRun {
    NewRun {
        record: RunRecord {
            run_id: uuid::Uuid::now_v7(),
            job: "echo".to_owned(),
            source: pushworker::jobs::RunSource::Push,
            principal: RunPrincipal {
                kind: "google".to_owned(),
                id: SERVICE_ACCOUNT.to_owned(),
            },
            message_id: Some("m".to_owned()),
            subscription: Some("s".to_owned()),
            idempotency_key: None,
            event_source: None,
            event_type: None,
            event_subject: None,
            attempt: 1,
            payload_digest: digest(data),
            payload: None,
            payload_truncated: false,
            status: RunStatus::Running,
            started_at: now_micros(),
            finished_at: None,
            duration_ms: None,
            error: None,
            error_kind: None,
            output: None,
            output_truncated: false,
            duplicate_of: None,
            rerun_of: None,
            cancel_requested_at: None,
            cancelled_by: None,
            dedup_key: None,
        },
        dedup: key,
    }
}

/// One script of claims and finishes against a store; returns its claims.
/// Claims in one step go together (concurrently: one batch in PostgreSQL,
/// in order in memory).
async fn script(
    store: &dyn RunStore,
    steps: &[Vec<NewRun>],
    finishes: &[Option<(usize, RunStatus)>],
    ended_at: time::OffsetDateTime,
) -> Vec<Claim> {
    let mut claims = Vec::new();
    let mut begun: Vec<uuid::Uuid> = Vec::new();
    for (step, finish) in steps.iter().zip(finishes) {
        let answers = futures::future::join_all(step.iter().map(|n| store.begin(n.clone()))).await;
        for (n, answer) in step.iter().zip(answers) {
            begun.push(n.record.run_id);
            claims.push(answer.unwrap());
        }
        if let Some((at, status)) = finish {
            let mut end = Finish::status(*status);
            end.finished_at = Some(ended_at);
            end.duration_ms = Some(3);
            assert!(store.finish(begun[*at], end).await.unwrap());
        }
    }
    claims
}

/// The same requests, one batch at a time in PostgreSQL and one after the
/// other in memory, give the same claims and the same records: a first
/// claim, a repeat while it runs, another content (a conflict), a keyless
/// run, a repeat once done, a failed run's key claimed again, and a manual
/// key (no content) repeated.
#[tokio::test]
async fn postgres_batched_claims_record_what_the_memory_ledger_records() {
    let db = TestDb::create().await;
    let pg = PgStore::connect(&db.url(), settings()).await.unwrap();
    let memory = MemoryStore::new(settings());
    let a = message_digest("echo", b"A");
    let b = message_digest("echo", b"B");
    let key = |content| Some(DedupKey::push(Some("s"), "m", content));
    let failing = || Some(DedupKey::push(Some("s"), "f", a));
    let manual = || Some(DedupKey::manual("echo", "user", "k"));
    let steps = vec![
        // 0, 1, 2, 3 together: first wins; the rest resolve against it.
        vec![
            new_run(key(a), b"A"),
            new_run(key(a), b"A"),
            new_run(key(b), b"B"),
            new_run(None, b"A"),
        ],
        // 4, 5: after run 0 succeeded.
        vec![new_run(key(a), b"A"), new_run(key(b), b"B")],
        // 6 fails; 7 claims its key again, 8 is its repeat.
        vec![new_run(failing(), b"A")],
        vec![new_run(failing(), b"A"), new_run(failing(), b"A")],
        vec![new_run(manual(), b"{}"), new_run(manual(), b"{}")],
    ];
    let finishes = vec![
        Some((0, RunStatus::Succeeded)),
        None,
        Some((6, RunStatus::FailedTransient)),
        None,
        None,
    ];
    let ended_at = now_micros();
    let from_pg = script(&pg, &steps, &finishes, ended_at).await;
    let from_memory = script(&memory, &steps, &finishes, ended_at).await;
    assert_eq!(from_pg, from_memory);
    let kinds: Vec<&str> = from_pg
        .iter()
        .map(|c| match c {
            Claim::Started => "started",
            Claim::Done { .. } => "done",
            Claim::InProgress { .. } => "in_progress",
            Claim::Conflict { .. } => "conflict",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "started",
            "in_progress",
            "conflict",
            "started",
            "done",
            "conflict",
            "started",
            "started",
            "in_progress",
            "started",
            "in_progress"
        ]
    );
    let all = RunQuery {
        limit: 200,
        ..RunQuery::default()
    };
    let pg_runs = pg.list(all.clone()).await.unwrap().runs;
    let memory_runs = memory.list(all).await.unwrap().runs;
    assert_eq!(pg_runs.len(), 11);
    for (p, m) in pg_runs.iter().zip(&memory_runs) {
        assert_eq!(p, m);
    }
}

/// The batched claim and finish are planned once per connection, and on a
/// new ledger that is while the tables are empty: those plans must still
/// find runs and keys by index, or every batch would read the tables whole
/// as they grow. Reads and sums are planned anew for their values.
#[tokio::test]
async fn postgres_batch_plans_find_rows_by_index_on_an_empty_ledger() {
    use sqlx::Executor as _;
    let db = TestDb::create().await;
    let pg = PgStore::connect(&db.url(), settings()).await.unwrap();
    let mut conn = pg.batch_pool().acquire().await.unwrap();
    for (name, sql, params) in [("claim", CLAIM_BATCH, 21), ("finish", FINISH_BATCH, 9)] {
        conn.execute(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .await
            .unwrap();
        let nulls = vec!["NULL"; params].join(", ");
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) EXECUTE {name}({nulls})"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let mut scans = Vec::new();
        relation_scans(&plan, &mut scans);
        assert!(
            scans.iter().any(|(_, relation)| relation == "runs"),
            "{name} reads runs: {plan:#}"
        );
        for (node, relation) in &scans {
            assert!(
                node.starts_with("Index") || node.starts_with("Bitmap"),
                "{name} reads {relation} by {node}: {plan:#}"
            );
        }
    }
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}

/// (node type, relation) of every plan node that reads a table.
fn relation_scans(plan: &Value, out: &mut Vec<(String, String)>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|v| relation_scans(v, out)),
        Value::Object(node) => {
            if let (Some(Value::String(kind)), Some(Value::String(relation))) =
                (node.get("Node Type"), node.get("Relation Name"))
                && kind != "ModifyTable"
            {
                out.push((kind.clone(), relation.clone()));
            }
            node.values().for_each(|v| relation_scans(v, out));
        }
        _ => {}
    }
}

/// The status and source indexes hold only what a succeeded push is not
/// (other statuses, other sources), so the hot path never writes them; the
/// searches an operator makes for those rare runs still go by index.
#[tokio::test]
async fn postgres_searches_for_rare_runs_use_indexes_a_succeeded_push_never_writes() {
    use sqlx::Executor as _;
    let db = TestDb::create().await;
    let _migrated = PgStore::connect(&db.url(), settings()).await.unwrap();
    let mut conn = connect(&db).await;
    conn.execute(
        "INSERT INTO runs (run_id, job, source, principal_kind, principal_id, attempt, \
             payload_digest, status, started_at) \
         SELECT gen_random_uuid(), 'echo', \
             CASE WHEN g % 1000 = 0 THEN 'manual' ELSE 'push' END, 'google', 'p', 1, 'sha256:x', \
             CASE WHEN g % 997 = 0 THEN 'dead_lettered' ELSE 'succeeded' END, now() \
         FROM generate_series(1, 50000) g",
    )
    .await
    .unwrap();
    conn.execute("ANALYZE runs").await.unwrap();
    let cases = [
        ("status = 'dead_lettered'", "runs_other_status_idx"),
        (
            "status = ANY('{failed_permanent,dead_lettered}'::text[])",
            "runs_other_status_idx",
        ),
        ("source = 'manual'", "runs_other_source_idx"),
    ];
    for (filter, index) in cases {
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) SELECT run_id FROM runs WHERE TRUE AND {filter} \
             ORDER BY run_id DESC LIMIT 51"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(plan.to_string().contains(index), "{filter}: {plan:#}");
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'runs' \
         AND indexdef NOT LIKE '%WHERE%' ORDER BY indexname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        ["runs_job_idx", "runs_pkey"],
        "the only whole-table indexes of runs"
    );
}
