//! The shared-ledger scenario: the push load of scenario 1 against workers
//! with `DATABASE_URL` set (a fresh database each), one instance and then
//! two sharing the database; and, in the same run, pgbench on the same
//! PostgreSQL running `bench/pg-reference.sql`, the least a deduplicating
//! ledger writes per push (two prepared autocommit statements). Reports
//! pushes/s and the ratio to the reference, p50/p99, worker CPU per push, and
//! commits per push (each hot-path statement is one autocommit transaction,
//! so this counts the ledger's round trips; read from `pg_stat_database`
//! after the workers have exited, when their backends have flushed it).

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
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct PgReport {
    pub reference_tps: f64,
    pub reference_latency_ms: f64,
    pub runs: Vec<PgRun>,
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
        });
        println!("{name}: {rps:.0} pushes/s");
    }
    // The reference, on a database the worker has migrated.
    let db = Database::create(inputs.host, "pushworker_bench_reference")?;
    drop(Worker::spawn_ready_with(
        inputs.keys,
        &[("DATABASE_URL", db.url())],
    )?);
    let (reference_tps, reference_latency_ms) =
        pgbench(&db, inputs.connections, inputs.threads, inputs.duration)?;
    println!("pgbench reference: {reference_tps:.0} pushes/s");
    Ok(PgReport {
        reference_tps,
        reference_latency_ms,
        runs,
    })
}

impl PgReport {
    pub fn print(&self) {
        println!(
            "\nPostgreSQL ledger (reference: pgbench bench/pg-reference.sql, {:.0}/s, mean {:.1} ms)",
            self.reference_tps, self.reference_latency_ms
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
    }

    pub fn to_json(&self) -> Value {
        json!({
            "reference": "pgbench -M prepared -f bench/pg-reference.sql",
            "reference_per_s": self.reference_tps.round(),
            "reference_latency_ms": self.reference_latency_ms,
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
            })).collect::<Vec<_>>(),
        })
    }
}
