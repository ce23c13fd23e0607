//! The shared-ledger scenario: the push load of scenario 1 against workers
//! with `DATABASE_URL` set (a fresh database each), one instance and then
//! two sharing the database; and, in the same run, pgbench on the same
//! PostgreSQL running `bench/pg-reference.sql`, the least a deduplicating
//! ledger writes per push (two prepared autocommit statements). Reports
//! pushes/s and the ratio to the reference, p50/p99, worker CPU per push, and
//! commits per push (each hot-path statement is one autocommit transaction,
//! so this counts the ledger's round trips; read from `pg_stat_database`
//! after the workers have exited, when their backends have flushed it).
//! After the two-instance run, the database is asked whether any message ran
//! more than once.
//!
//! Then the pruning pair: the one-instance load for `--prune-secs`, once with
//! the pruner deleting every second and once with it idle, each on tables
//! seeded with records that pass the retention during the run at the pace
//! the load writes new ones, as a ledger in steady service does. With pruning
//! the table should hold its size; the throughput of the two is compared.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    load::{Load, Wrk, WrkRun},
    worker::Worker,
};

/// One measured shape.
#[derive(Debug, Clone)]
pub struct PgRun {
    pub name: &'static str,
    pub pushes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_push: f64,
    pub commits_per_push: f64,
    pub non_2xx: u64,
    /// The machine's CPU left idle (of both cores), and idle waiting for
    /// I/O, in percent: near 0 idle means the run was CPU-bound.
    pub idle_pct: f64,
    pub iowait_pct: f64,
    /// Messages with more than one succeeded run (must be 0).
    pub ran_twice: u64,
    /// Distinct messages with a succeeded run.
    pub messages_run: u64,
}

/// One run of the pruning pair.
#[derive(Debug, Clone)]
pub struct PruneRun {
    pub name: &'static str,
    pub pushes_per_s: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    /// Records in `runs` when the load started and when it ended.
    pub rows_before: u64,
    pub rows_after: u64,
    /// Seeded records deleted while it ran.
    pub pruned: u64,
    /// `runs` and `run_claims` with their indexes, in bytes.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct PgReport {
    pub reference_tps: f64,
    pub reference_latency_ms: f64,
    /// The machine's idle and I/O-wait shares while pgbench ran.
    pub reference_idle_pct: f64,
    pub reference_iowait_pct: f64,
    pub runs: Vec<PgRun>,
    pub pruning: Vec<PruneRun>,
    pub prune_secs: u64,
}

fn psql(host: &str, database: &str, sql: &str) -> Result<String> {
    let (h, p) = host.rsplit_once(':').unwrap_or((host, "5432"));
    let out = Command::new("psql")
        .args([
            "-h", h, "-p", p, "-U", "postgres", "-d", database, "-Atq", "-c", sql,
        ])
        .output()
        .context("running psql (apt-get install postgresql-client)")?;
    ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Database {
    host: String,
    name: String,
}

impl Database {
    fn create(host: &str, name: &str) -> Result<Self> {
        psql(
            host,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(host, "postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            host: host.to_owned(),
            name: name.to_owned(),
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@{}/{}", self.host, self.name)
    }

    fn commits(&self) -> Result<f64> {
        let text = psql(
            &self.host,
            "postgres",
            &format!(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = '{}'",
                self.name
            ),
        )?;
        text.parse().context("reading xact_commit")
    }

    fn number(&self, sql: &str) -> Result<u64> {
        let text = psql(&self.host, &self.name, sql)?;
        text.parse()
            .with_context(|| format!("reading a number from {sql}: {text:?}"))
    }

    /// Messages run more than once, and messages run.
    fn run_counts(&self) -> Result<(u64, u64)> {
        let twice = self.number(
            "SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'succeeded' \
             GROUP BY subscription, message_id HAVING count(*) > 1) t",
        )?;
        let once = self.number(
            "SELECT count(DISTINCT (subscription, message_id)) FROM runs WHERE status = 'succeeded'",
        )?;
        Ok((twice, once))
    }

    fn rows(&self) -> Result<u64> {
        self.number("SELECT count(*) FROM runs")
    }

    fn bytes(&self) -> Result<u64> {
        self.number("SELECT pg_total_relation_size('runs') + pg_total_relation_size('run_claims')")
    }

    /// `count` finished records (with their released keys) whose run ids
    /// pass a one-hour retention from `after_secs` seconds from now on, at
    /// `per_sec` a second: what a ledger in service holds at its far end.
    fn seed_aging(&self, count: u64, per_sec: u64, after_secs: u64) -> Result<()> {
        let sql = format!(
            "WITH base AS (SELECT (extract(epoch FROM now() - interval '1 hour') * 1000)::bigint \
                 + {after_ms} AS t0), \
             s AS (SELECT g, t0 + g * 1000 / {per_sec} AS ms FROM base, generate_series(0::bigint, {last}) g) \
             INSERT INTO runs (run_id, job, source, principal_kind, principal_id, message_id, \
                 subscription, dedup_key, attempt, payload_digest, payload, status, started_at, \
                 finished_at, duration_ms) \
             SELECT (lpad(to_hex(ms), 12, '0') || '7' || lpad(to_hex(g), 19, '0'))::uuid, 'echo', \
                 'push', 'service_account', 'seed@bench-project.iam.gserviceaccount.com', \
                 'seed-' || g, 'projects/bench-project/subscriptions/work-push', \
                 'push' || chr(31) || 'projects/bench-project/subscriptions/work-push' || chr(31) \
                 || 'seed-' || g, 1, repeat('0', 64), '{{\"message\":\"hello from the bench\"}}', \
                 'succeeded', to_timestamp(ms / 1000.0), to_timestamp(ms / 1000.0), 0 FROM s; \
             INSERT INTO run_claims (dedup_key, run_id, state, lease_until, content_digest) \
             SELECT dedup_key, run_id, 'done', started_at, payload_digest FROM runs \
             WHERE message_id LIKE 'seed-%'",
            after_ms = after_secs * 1000,
            last = count.saturating_sub(1),
            per_sec = per_sec.max(1),
        );
        psql(&self.host, &self.name, &sql)?;
        // VACUUM cannot share a transaction with the inserts.
        for table in ["runs", "run_claims"] {
            psql(&self.host, &self.name, &format!("VACUUM ANALYZE {table}"))?;
        }
        Ok(())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.host,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// pgbench's `tps = …` and `latency average = … ms`.
fn pgbench(db: &Database, connections: u32, threads: u32, secs: u64) -> Result<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pg-reference.sql");
    let (h, p) = db.host.rsplit_once(':').unwrap_or((&db.host, "5432"));
    let out = Command::new("pgbench")
        .args(["-h", h, "-p", p, "-U", "postgres", "-n", "-M", "prepared"])
        .args(["-c", &connections.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(&script)
        .arg(&db.name)
        .output()
        .context("running pgbench (apt-get install postgresql-contrib)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    match (field("tps = "), field("latency average = ")) {
        (Some(tps), Some(latency)) => Ok((tps, latency)),
        _ => bail!("pgbench printed no tps: {text}"),
    }
}

/// Runs `load` against each worker at once (a wrk per worker, the
/// connections split between them) and sums what they measured.
fn run_split(wrks: &[Wrk], loads: &[Load], workers: &[Worker]) -> Result<Vec<WrkRun>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = wrks
            .iter()
            .zip(loads)
            .zip(workers)
            .map(|((wrk, load), worker)| scope.spawn(move || wrk.measured(load, Some(worker))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a wrk thread panicked"))?
                    .map(|r| r.0)
            })
            .collect()
    })
}

pub struct Inputs<'a> {
    pub keys: std::net::SocketAddr,
    pub host: &'a str,
    pub dir: &'a Path,
    pub template: &'a Path,
    pub token: &'a Path,
    pub threads: u32,
    pub connections: u32,
    pub duration: u64,
    pub warmup: u64,
    /// Seconds of each run of the pruning pair.
    pub prune_secs: u64,
}

/// The scenario: one instance, two instances, then the reference.
pub fn run(inputs: &Inputs<'_>) -> Result<PgReport> {
    let mut runs = Vec::new();
    for (name, instances) in [
        ("pg ledger, 1 instance", 1u32),
        ("pg ledger, 2 instances", 2),
    ] {
        let db = Database::create(inputs.host, &format!("pushworker_bench_{instances}"))?;
        let env = [("DATABASE_URL", db.url())];
        let workers = (0..instances)
            .map(|_| Worker::spawn_ready_with(inputs.keys, &env))
            .collect::<Result<Vec<_>>>()?;
        let per = (inputs.connections / instances).max(inputs.threads);
        let wrks = (0..instances)
            .map(|_| Wrk::new(inputs.dir.to_owned(), inputs.threads, per, inputs.duration))
            .collect::<Result<Vec<_>>>()?;
        let loads: Vec<Load> = workers
            .iter()
            .map(|w| Load::push(w.base(), inputs.template, inputs.token))
            .collect();
        for (wrk, load) in wrks.iter().zip(&loads) {
            wrk.run(load, inputs.warmup)?;
        }
        // Backends flush their counters at most once a second while busy.
        std::thread::sleep(Duration::from_millis(1500));
        let commits_before = db.commits()?;
        let measured = run_split(&wrks, &loads, &workers)?;
        drop(workers);
        // Exited backends have flushed their counters.
        std::thread::sleep(Duration::from_millis(1500));
        let commits = db.commits()? - commits_before;
        let (ran_twice, messages_run) = db.run_counts()?;
        let pushes: u64 = measured.iter().map(|r| r.requests).sum();
        let rps: f64 = measured.iter().map(WrkRun::rps).sum();
        let cpu_us: f64 = measured
            .iter()
            .map(|r| r.cpu_us_per_request() * r.requests as f64)
            .sum::<f64>()
            / pushes.max(1) as f64;
        let worst = |f: fn(&WrkRun) -> u64| measured.iter().map(f).max().unwrap_or(0) as f64 / 1e3;
        runs.push(PgRun {
            name,
            pushes_per_s: rps,
            p50_ms: worst(|r| r.latency_us.p50),
            p99_ms: worst(|r| r.latency_us.p99),
            cpu_us_per_push: cpu_us,
            commits_per_push: commits / pushes.max(1) as f64,
            non_2xx: measured.iter().map(|r| r.errors.status).sum(),
            ran_twice,
            messages_run,
            idle_pct: measured.iter().map(|r| r.idle_pct).sum::<f64>()
                / measured.len().max(1) as f64,
            iowait_pct: measured.iter().map(|r| r.iowait_pct).sum::<f64>()
                / measured.len().max(1) as f64,
        });
        println!("{name}: {rps:.0} pushes/s, {ran_twice} messages ran twice");
    }
    // Records age out at least as fast as the fastest run wrote new ones, so
    // a pruner that keeps up holds the table's size.
    let pace = runs
        .iter()
        .map(|r| r.pushes_per_s)
        .fold(1000.0, f64::max)
        .round() as u64;
    let pruning = [
        ("pg ledger, pruning every 1 s", "1"),
        ("pg ledger, no pruning", "86400"),
    ]
    .into_iter()
    .map(|(name, every)| prune_run(inputs, name, every, pace))
    .collect::<Result<Vec<_>>>()?;
    // The reference, on a database the worker has migrated.
    let db = Database::create(inputs.host, "pushworker_bench_reference")?;
    drop(Worker::spawn_ready_with(
        inputs.keys,
        &[("DATABASE_URL", db.url())],
    )?);
    let ticks = crate::worker::machine_cpu_ticks()?;
    let (reference_tps, reference_latency_ms) =
        pgbench(&db, inputs.connections, inputs.threads, inputs.duration)?;
    let (_, reference_idle_pct, reference_iowait_pct) =
        crate::worker::machine_cpu_ticks()?.shares_since(&ticks);
    println!("pgbench reference: {reference_tps:.0} pushes/s");
    Ok(PgReport {
        reference_tps,
        reference_latency_ms,
        reference_idle_pct,
        reference_iowait_pct,
        runs,
        pruning,
        prune_secs: inputs.prune_secs,
    })
}

/// One run of the pruning pair (see the module docs), the pruner running
/// every `every` seconds, with records seeded to age out at `pace` a second.
fn prune_run(inputs: &Inputs<'_>, name: &'static str, every: &str, pace: u64) -> Result<PruneRun> {
    let db = Database::create(inputs.host, "pushworker_bench_prune")?;
    let env = [
        ("DATABASE_URL", db.url()),
        ("RUNS_RETENTION_HOURS", "1".to_owned()),
        ("RUNS_PRUNE_INTERVAL_SECS", every.to_owned()),
    ];
    let worker = Worker::spawn_ready_with(inputs.keys, &env)?;
    // Seeding takes a few seconds; the first records age out as the load starts.
    let lead = 5;
    let span = inputs.warmup + inputs.prune_secs;
    db.seed_aging(pace * span, pace, lead)?;
    let wrk = Wrk::new(
        inputs.dir.to_owned(),
        inputs.threads,
        inputs.connections,
        inputs.prune_secs,
    )?;
    let load = Load::push(worker.base(), inputs.template, inputs.token);
    let (rows_before, bytes_before) = (db.rows()?, db.bytes()?);
    let seeded = pace * span;
    wrk.run(&load, inputs.warmup)?;
    let (run, _) = wrk.measured(&load, Some(&worker))?;
    drop(worker);
    let (rows_after, bytes_after) = (db.rows()?, db.bytes()?);
    let left = db.number("SELECT count(*) FROM runs WHERE message_id LIKE 'seed-%'")?;
    println!("{name}: {:.0} pushes/s", run.rps());
    Ok(PruneRun {
        name,
        pushes_per_s: run.rps(),
        p99_ms: run.latency_us.p99 as f64 / 1e3,
        non_2xx: run.errors.status,
        rows_before,
        rows_after,
        pruned: seeded - left,
        bytes_before,
        bytes_after,
    })
}

impl PgReport {
    pub fn print(&self) {
        println!(
            "\nPostgreSQL ledger (reference: pgbench bench/pg-reference.sql, {:.0}/s, mean {:.1} ms; machine CPU idle {:.0} %, in I/O wait {:.0} %)",
            self.reference_tps,
            self.reference_latency_ms,
            self.reference_idle_pct,
            self.reference_iowait_pct
        );
        println!(
            "{:<24} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10}",
            "shape", "pushes/s", "ratio", "p50 ms", "p99 ms", "CPU µs", "commits"
        );
        for r in &self.runs {
            println!(
                "{:<24} {:>10.0} {:>8.2} {:>8.1} {:>8.1} {:>10.1} {:>10.3}",
                r.name,
                r.pushes_per_s,
                r.pushes_per_s / self.reference_tps.max(1.0),
                r.p50_ms,
                r.p99_ms,
                r.cpu_us_per_push,
                r.commits_per_push
            );
        }
        for r in &self.runs {
            println!(
                "{}: {} messages run, {} more than once; machine CPU idle {:.0} %, in I/O wait {:.0} %",
                r.name, r.messages_run, r.ran_twice, r.idle_pct, r.iowait_pct
            );
        }
        println!("\nPruning under load ({} s each)", self.prune_secs);
        println!(
            "{:<30} {:>10} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9}",
            "shape",
            "pushes/s",
            "p99 ms",
            "rows at 0",
            "rows at end",
            "pruned",
            "MB at 0",
            "MB at end"
        );
        for r in &self.pruning {
            println!(
                "{:<30} {:>10.0} {:>8.1} {:>10} {:>10} {:>9} {:>9.1} {:>9.1}",
                r.name,
                r.pushes_per_s,
                r.p99_ms,
                r.rows_before,
                r.rows_after,
                r.pruned,
                r.bytes_before as f64 / 1e6,
                r.bytes_after as f64 / 1e6
            );
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "reference": "pgbench -M prepared -f bench/pg-reference.sql",
            "reference_per_s": self.reference_tps.round(),
            "reference_latency_ms": self.reference_latency_ms,
            "reference_machine_idle_pct": (self.reference_idle_pct * 10.0).round() / 10.0,
            "reference_machine_iowait_pct": (self.reference_iowait_pct * 10.0).round() / 10.0,
            "target": "at least 1.0x the reference at the bench's connections, p99 at most 15 ms",
            "runs": self.runs.iter().map(|r| json!({
                "name": r.name,
                "pushes_per_s": r.pushes_per_s.round(),
                "ratio_to_reference": (r.pushes_per_s / self.reference_tps.max(1.0) * 1000.0).round() / 1000.0,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "cpu_us_per_push": (r.cpu_us_per_push * 10.0).round() / 10.0,
                "commits_per_push": (r.commits_per_push * 1000.0).round() / 1000.0,
                "non_2xx": r.non_2xx,
                "messages_run": r.messages_run,
                "messages_run_more_than_once": r.ran_twice,
                "machine_idle_pct": (r.idle_pct * 10.0).round() / 10.0,
                "machine_iowait_pct": (r.iowait_pct * 10.0).round() / 10.0,
            })).collect::<Vec<_>>(),
            "pruning": {
                "seconds": self.prune_secs,
                "target": "with pruning every second, at least 0.9x the pushes/s without, and the table's rows bounded",
                "ratio_with_to_without": match self.pruning.as_slice() {
                    [with, without] => (with.pushes_per_s / without.pushes_per_s.max(1.0) * 1000.0).round() / 1000.0,
                    _ => 0.0,
                },
                "runs": self.pruning.iter().map(|r| json!({
                    "name": r.name,
                    "pushes_per_s": r.pushes_per_s.round(),
                    "p99_ms": r.p99_ms,
                    "non_2xx": r.non_2xx,
                    "rows_before": r.rows_before,
                    "rows_after": r.rows_after,
                    "seeded_rows_pruned": r.pruned,
                    "bytes_before": r.bytes_before,
                    "bytes_after": r.bytes_after,
                })).collect::<Vec<_>>(),
            },
        })
    }
}
