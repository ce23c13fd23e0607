//! `pushworker redrive`, the real binary against the real Pub/Sub emulator:
//! dead-lettered messages go back to the work topic with their data,
//! attributes and ordering key plus `redriven_from`, and leave the dead-letter
//! subscription; `--filter`, `--dry-run` and `--limit` leave the rest where it
//! was; bad flags and missing resources are refused with what to fix.
//!
//! Each scenario has its own topics and subscriptions (see emulator.rs on why).

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use google_cloud_pubsub::model::Message;
use pushworker::{
    pubsub::dead_letter::attr,
    redrive::{REDRIVEN_FROM, RedriveArgs, redrive},
};

use crate::emulator::{Emulator, drain, publish, subscription, topic};

const BIN: &str = env!("CARGO_BIN_EXE_pushworker");

/// Runs `pushworker redrive ARGS` against the emulator; (code, stdout, stderr).
fn run(emulator: Option<&Emulator>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("redrive").args(args).env_clear();
    if let Some(emulator) = emulator {
        cmd.env("PUBSUB_EMULATOR_HOST", &emulator.host);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The summary line of a run's stdout.
fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("redriven ") || l.starts_with("dry run: "))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"))
}

/// Creates topics `dead-<tag>` and `work-<tag>`, each with a subscription
/// `<topic>-sub` (10 s ack deadline; the work one with ordering on).
async fn create_pair(emulator: &Emulator, tag: &str) {
    let topics = emulator.target().topic_admin().await.unwrap();
    let subs = emulator.target().subscription_admin().await.unwrap();
    for name in [format!("dead-{tag}"), format!("work-{tag}")] {
        topics
            .create_topic()
            .set_name(topic(&name))
            .send()
            .await
            .unwrap();
        subs.create_subscription()
            .set_name(subscription(&format!("{name}-sub")))
            .set_topic(topic(&name))
            .set_ack_deadline_seconds(10)
            .set_enable_message_ordering(name.starts_with("work-"))
            .send()
            .await
            .unwrap();
    }
}

/// Asserts that nothing arrives on `sub` within `wait`.
async fn stays_empty(emulator: &Emulator, sub: &str, wait: Duration) {
    let subscriber = emulator.target().subscriber().await.unwrap();
    let mut stream = subscriber.subscribe(subscription(sub)).build();
    let got = tokio::time::timeout(wait, stream.next()).await;
    if let Ok(Some(Ok((message, handler)))) = got {
        handler.nack();
        panic!("{sub} is not empty: {message:?}");
    }
    stream.shutdown_token().shutdown().await;
}

/// Pulls from `sub` (acking) until `expected` messages came, for up to
/// `within`, then 1 s more for any other; their data, sorted. The emulator sends a stream more than it
/// asked for and ignores the stream's cancel (its log shows it failing to
/// read the reset), so a message it sends to a stream just closed (past
/// `--limit`, or nacked as the run ends) may come back only after a few lease
/// periods; real Pub/Sub takes it back when the run ends. So these checks
/// come last, side by side.
async fn returns_within(
    emulator: &Emulator,
    sub: &str,
    expected: usize,
    within: Duration,
) -> Vec<String> {
    let subscriber = emulator.target().subscriber().await.unwrap();
    let mut stream = subscriber.subscribe(subscription(sub)).build();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let wait = if out.len() < expected {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        let Ok(Some(next)) = tokio::time::timeout(wait, stream.next()).await else {
            break;
        };
        let (message, handler) = next.unwrap();
        handler.ack();
        out.push(String::from_utf8_lossy(&message.data).into_owned());
    }
    out.sort();
    stream.shutdown_token().shutdown().await;
    out
}

fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn redrive_through_the_real_emulator() {
    let emulator = Emulator::start().await;
    for tag in ["all", "filter", "dry", "limit", "fail"] {
        create_pair(&emulator, tag).await;
    }
    let from = |tag: &str| subscription(&format!("dead-{tag}-sub"));
    let to = |tag: &str| topic(&format!("work-{tag}"));

    // 1. Every message goes to the work topic as it was, plus where it came
    //    from, and is acked on the dead-letter subscription; the run ends idle.
    let publisher = emulator
        .target()
        .publisher(&topic("dead-all"))
        .await
        .unwrap();
    let sent = [
        (
            &b"{\"message\":\"one\"}"[..],
            attributes(&[("job", "echo"), ("tenant", "acme")]),
            "",
        ),
        (
            &b"\xff not json"[..],
            attributes(&[("job", "record"), (attr::ERROR_KIND, "payload_not_json")]),
            "key-1",
        ),
        (
            &b"{\"message\":\"three\"}"[..],
            attributes(&[("job", "echo")]),
            "key-1",
        ),
    ];
    for (data, attrs, key) in &sent {
        publisher
            .publish(
                Message::new()
                    .set_data(data.to_vec())
                    .set_attributes(attrs.clone())
                    .set_ordering_key(*key),
            )
            .await
            .unwrap();
    }
    let (code, stdout, stderr) = run(
        Some(&emulator),
        &[
            "--from",
            &from("all"),
            "--to",
            &to("all"),
            "--idle-secs",
            "5",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout), "redriven 3, skipped 0, failed 0");
    let mut arrived = drain(&emulator, "work-all-sub", 3).await;
    assert_eq!(arrived.len(), 3, "{arrived:?}");
    arrived.sort_by(|a, b| a.data.cmp(&b.data));
    let mut expected = sent.to_vec();
    expected.sort_by(|a, b| a.0.cmp(b.0));
    for (got, (data, attrs, key)) in arrived.iter().zip(&expected) {
        assert_eq!(got.data.as_ref(), *data, "the original data");
        let mut want = attrs.clone();
        want.insert(REDRIVEN_FROM.to_owned(), from("all"));
        assert_eq!(
            got.attributes, want,
            "the original attributes + redriven_from"
        );
        assert_eq!(got.ordering_key, *key, "the ordering key");
    }
    // Past the 10 s ack deadline, an unacked message would be back.
    stays_empty(&emulator, "dead-all-sub", Duration::from_secs(13)).await;

    // 2. --filter: only the named jobs (by the job attribute, or the one the
    //    dead-letter publisher recorded); the others stay.
    for (data, attrs) in [
        ("e1", vec![("job", "echo")]),
        ("e2", vec![(attr::JOB, "echo"), ("tenant", "acme")]),
        ("s1", vec![("job", "sleep")]),
        ("r1", vec![("job", "record")]),
        ("n1", vec![("tenant", "acme")]),
    ] {
        publish(&emulator, "dead-filter", data.as_bytes(), &attrs).await;
    }
    let (code, stdout, stderr) = run(
        Some(&emulator),
        &[
            "--from",
            &from("filter"),
            "--to",
            &to("filter"),
            "--filter",
            "job=echo",
            "--filter=job=sleep",
            "--idle-secs",
            "5",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout), "redriven 3, skipped 2, failed 0");
    let mut arrived: Vec<String> = drain(&emulator, "work-filter-sub", 3)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    arrived.sort();
    assert_eq!(arrived, ["e1", "e2", "s1"]);
    // (That the skipped ones stay is checked at the end.)

    // 3. --dry-run lists what it would send, publishes nothing, acks nothing.
    let mut ids = Vec::new();
    for (data, job) in [("d1", "echo"), ("d22", "record")] {
        ids.push(publish(&emulator, "dead-dry", data.as_bytes(), &[("job", job)]).await);
    }
    let (code, stdout, stderr) = run(
        Some(&emulator),
        &[
            "--from",
            &from("dry"),
            "--to",
            &to("dry"),
            "--dry-run",
            "--idle-secs",
            "5",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        summary(&stdout).starts_with("dry run: would redrive 2, skipped 0"),
        "{stdout}"
    );
    let mut listed: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    listed.sort_by_key(|l| l["data_bytes"].as_u64());
    assert_eq!(listed.len(), 2, "{stdout}");
    for (line, (id, job, size)) in listed
        .iter()
        .zip([(&ids[0], "echo", 2), (&ids[1], "record", 3)])
    {
        assert_eq!(line["message_id"], id.as_str());
        assert_eq!(line["job"], job);
        assert_eq!(line["data_bytes"], size);
        assert_eq!(line["attributes"]["job"], job);
        assert_eq!(line["attributes"][REDRIVEN_FROM], from("dry"));
    }
    stays_empty(&emulator, "work-dry-sub", Duration::from_secs(3)).await;
    // (That both stay is checked at the end.)

    // 4. --limit stops after N; the rest stay.
    for i in 0..3 {
        publish(
            &emulator,
            "dead-limit",
            format!("l{i}").as_bytes(),
            &[("job", "echo")],
        )
        .await;
    }
    let started = Instant::now();
    let (code, stdout, stderr) = run(
        Some(&emulator),
        &[
            "--from",
            &from("limit"),
            "--to",
            &to("limit"),
            "--limit",
            "2",
            "--idle-secs",
            "60",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout), "redriven 2, skipped 0, failed 0");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the limit ends the run, not the idle wait"
    );
    assert_eq!(drain(&emulator, "work-limit-sub", 2).await.len(), 2);
    // (That the third stays is checked at the end.)

    // 5. A failed publish is nacked, so the message stays, and the run says so.
    //    (Called in the library: the binary checks the topic exists first.)
    publish(&emulator, "dead-fail", b"f1", &[("job", "echo")]).await;
    let args = RedriveArgs {
        from: from("fail"),
        to: topic("no-such-topic"),
        limit: None,
        filters: Vec::new(),
        dry_run: false,
        idle_secs: 5,
        concurrency: 1,
        publish_timeout_secs: 10,
        job_attribute: "job".to_owned(),
        emulator_host: Some(emulator.host.clone()),
    };
    let summary = redrive(&emulator.target(), &args).await.unwrap();
    assert_eq!(
        (summary.redriven, summary.failed.len()),
        (0, 1),
        "{summary:?}"
    );
    assert!(
        summary.failed[0].error.contains("does not exist"),
        "{summary:?}"
    );
    // (That it stays is checked at the end.)

    // 6. A missing subscription or topic, or a loop, is refused with what to check.
    let cases: &[(&str, String, String, &[&str])] = &[
        (
            "missing subscription",
            subscription("no-such-sub"),
            to("all"),
            &["subscription", "no-such-sub", "does not exist", "--from"],
        ),
        (
            "missing topic",
            from("all"),
            topic("no-such-topic"),
            &["topic", "no-such-topic", "does not exist", "--to"],
        ),
        (
            "back to its own topic",
            from("all"),
            topic("dead-all"),
            &["--to", "come straight back"],
        ),
    ];
    for (name, from, to, needles) in cases {
        let (code, stdout, stderr) = run(Some(&emulator), &["--from", from, "--to", to]);
        assert_eq!(code, Some(1), "{name}: {stdout}\n{stderr}");
        for needle in *needles {
            assert!(stderr.contains(needle), "{name}: {needle:?} in {stderr}");
        }
    }

    // 2 to 5, continued: what was skipped, listed, past the limit or not
    // published is still on its subscription, and only that. The emulator
    // has been seen to take longer than 90 s over one of them; the wait is
    // only spent when a message has not come back.
    let within = Duration::from_secs(180);
    let (skipped, listed, past_limit, failed) = tokio::join!(
        returns_within(&emulator, "dead-filter-sub", 2, within),
        returns_within(&emulator, "dead-dry-sub", 2, within),
        returns_within(&emulator, "dead-limit-sub", 1, within),
        returns_within(&emulator, "dead-fail-sub", 1, within),
    );
    assert_eq!(
        skipped,
        ["n1", "r1"],
        "the skipped ones stay, and only they"
    );
    assert_eq!(listed, ["d1", "d22"], "a dry run leaves every message");
    assert_eq!(past_limit.len(), 1, "the one past the limit stays");
    assert_eq!(failed, ["f1"], "the one whose publish failed stays");
}

/// Bad flags are usage errors (exit 2) that say what to fix; no Pub/Sub needed.
#[test]
fn bad_redrive_flags_are_refused() {
    let sub = "projects/pushworker-test/subscriptions/dead-sub";
    let top = "projects/pushworker-test/topics/work";
    let cases: &[(&str, Vec<&str>, &[&str])] = &[
        (
            "filter without =",
            vec!["--from", sub, "--to", top, "--filter", "echo"],
            &["--filter", "use job=NAME"],
        ),
        (
            "unknown filter key",
            vec!["--from", sub, "--to", top, "--filter", "status=failed"],
            &["unknown filter key `status`", "the only key is `job`"],
        ),
        (
            "filter without a name",
            vec!["--from", sub, "--to", top, "--filter", "job="],
            &["needs a job name"],
        ),
        (
            "short subscription name",
            vec!["--from", "dead-sub", "--to", top],
            &["--from", "projects/PROJECT/subscriptions/SUBSCRIPTION"],
        ),
        (
            "a topic as --from",
            vec!["--from", top, "--to", top],
            &["not a full subscription name"],
        ),
        (
            "short topic name",
            vec!["--from", sub, "--to", "work"],
            &["--to", "projects/PROJECT/topics/TOPIC"],
        ),
        (
            "zero limit",
            vec!["--from", sub, "--to", top, "--limit", "0"],
            &["--limit"],
        ),
        (
            "zero idle",
            vec!["--from", sub, "--to", top, "--idle-secs", "0"],
            &["--idle-secs"],
        ),
        ("no --from", vec!["--to", top], &["--from"]),
        ("no --to", vec!["--from", sub], &["--to"]),
    ];
    for (name, args, needles) in cases {
        let (code, stdout, stderr) = run(None, args);
        assert_eq!(code, Some(2), "{name}: {stdout}\n{stderr}");
        for needle in *needles {
            assert!(stderr.contains(needle), "{name}: {needle:?} in {stderr}");
        }
    }
}
