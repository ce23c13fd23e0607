//! The figures of a run: the table on stdout (docs/performance.md shows the latest) and
//! bench/results.json.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, ensure};
use pushworker::auth::dev::now_secs;
use serde_json::{Value, json};

use crate::{args::Args, load::WrkRun, worker::kib_field};

/// Two baselines around a scenario further apart than this (percent of
/// their mean) mark the run unsteady.
const MAX_BASELINE_DRIFT_PCT: f64 = 10.0;
/// CPU steal above this (percent of the machine's time) in any timed run
/// marks the run unsteady.
const MAX_STEAL_PCT: f64 = 3.0;

/// One timed scenario's figures.
pub struct ScenarioRun {
    pub name: &'static str,
    pub what: &'static str,
    /// The least share of the baseline's req/s it must reach, if any.
    pub min_ratio: Option<f64>,
    pub run: WrkRun,
    pub key_fetches: usize,
    pub key_fetch_limit: usize,
    pub rss_max_kib: u64,
    pub note: String,
    /// The baseline run measured right before it (an index into the
    /// report's baselines); the next one was measured right after it.
    pub baseline_before: usize,
}

pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    /// The median, least and greatest of `samples` (at least one), in ms.
    pub fn millis(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            median: ms[ms.len() / 2],
            min: ms[0],
            max: ms[ms.len() - 1],
            runs: ms.len(),
        }
    }
}

/// Exec → first 200 from /healthz, and exec → first acked push.
pub struct ColdStart {
    pub health: Stats,
    pub push: Stats,
}

/// Scenario 5: one large message to a fresh process.
pub struct Large {
    pub bytes: usize,
    pub body_bytes: usize,
    pub ack_ms: f64,
    pub idle_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
}

impl Large {
    /// Peak RSS over the message's size.
    fn peak_ratio(&self) -> f64 {
        (self.peak_kib * 1024) as f64 / self.bytes as f64
    }
}

/// Scenario 1 with the metrics listener on and off, interleaved.
#[derive(Default)]
pub struct MetricsCost {
    pub on: Vec<WrkRun>,
    pub off: Vec<WrkRun>,
}

impl MetricsCost {
    fn rps(runs: &[WrkRun]) -> f64 {
        runs.iter().map(WrkRun::rps).sum::<f64>() / runs.len().max(1) as f64
    }

    fn cpu_us(runs: &[WrkRun]) -> f64 {
        runs.iter().map(WrkRun::cpu_us_per_request).sum::<f64>() / runs.len().max(1) as f64
    }

    /// What metrics cost in throughput, in percent of the rate without them.
    pub fn cost_pct(&self) -> f64 {
        let off = Self::rps(&self.off);
        100.0 * (1.0 - Self::rps(&self.on) / off.max(1.0))
    }

    fn to_json(&self) -> Value {
        let side = |runs: &[WrkRun]| {
            json!({
                "rps": runs.iter().map(|r| r.rps().round()).collect::<Vec<_>>(),
                "rps_mean": Self::rps(runs).round(),
                "server_cpu_us_per_request": round(Self::cpu_us(runs), 1),
            })
        };
        json!({
            "on": side(&self.on),
            "off": side(&self.off),
            "cost_pct": round(self.cost_pct(), 1),
        })
    }
}

pub struct Report<'a> {
    pub args: &'a Args,
    /// In the order measured: one before each scenario, one after the last,
    /// and one after a scenario followed by a long preparation.
    pub baselines: Vec<WrkRun>,
    pub scenarios: Vec<ScenarioRun>,
    pub cold: ColdStart,
    pub idle_kib: u64,
    pub large: Large,
    /// Scenario 1 with metrics on and off.
    pub metrics: MetricsCost,
    /// The shared-ledger scenario, unless skipped (`--postgres none`).
    pub postgres: Option<crate::postgres::PgReport>,
}

struct Steadiness {
    /// The largest gap between the two baselines around a scenario.
    drift_pct: f64,
    steal_pct_max: f64,
    steady: bool,
}

struct Target {
    what: String,
    target: String,
    measured: String,
    met: bool,
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

impl Report<'_> {
    /// The mean of every baseline run's req/s, and the slowest and fastest.
    fn baseline_summary(&self) -> (f64, f64, f64) {
        let rps: Vec<f64> = self.baselines.iter().map(WrkRun::rps).collect();
        let mean = rps.iter().sum::<f64>() / rps.len().max(1) as f64;
        let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rps.iter().copied().fold(0.0, f64::max);
        (mean, min, max)
    }

    /// The req/s of the baseline runs just before and just after `s`.
    fn around(&self, s: &ScenarioRun) -> [f64; 2] {
        [s.baseline_before, s.baseline_before + 1].map(|i| self.baselines[i].rps())
    }

    /// The baseline a scenario is compared with: the mean of the two runs
    /// around it.
    fn baseline_rps(&self, s: &ScenarioRun) -> f64 {
        let [a, b] = self.around(s);
        (a + b) / 2.0
    }

    fn ratio(&self, s: &ScenarioRun) -> f64 {
        s.run.rps() / self.baseline_rps(s)
    }

    /// Whether the machine held still: the two baselines around each
    /// scenario should agree, and the hypervisor should not have taken much
    /// CPU time away. A ratio from an unsteady run says more about the
    /// neighbours than about the worker.
    fn steadiness(&self) -> Steadiness {
        let drift_pct = self
            .scenarios
            .iter()
            .map(|s| {
                let [a, b] = self.around(s);
                100.0 * (a - b).abs() / self.baseline_rps(s).max(1.0)
            })
            .fold(0.0, f64::max);
        let steal_pct_max = self
            .baselines
            .iter()
            .chain(self.scenarios.iter().map(|s| &s.run))
            .map(|r| r.steal_pct)
            .fold(0.0, f64::max);
        Steadiness {
            drift_pct,
            steal_pct_max,
            steady: drift_pct <= MAX_BASELINE_DRIFT_PCT && steal_pct_max <= MAX_STEAL_PCT,
        }
    }

    fn rss_load_kib(&self) -> u64 {
        self.scenarios
            .iter()
            .map(|s| s.rss_max_kib)
            .max()
            .unwrap_or(0)
    }

    /// A run whose answers were not the designed ones is not a benchmark.
    pub fn check_statuses(&self) -> Result<()> {
        for (i, b) in self.baselines.iter().enumerate() {
            ensure!(
                b.errors.status == 0 && b.socket_errors() == 0,
                "baseline run {} had errors: {:?}",
                i + 1,
                b.errors
            );
        }
        for s in &self.scenarios {
            // Each answer writes one request line (in-flight ones at the
            // ends add a few): fewer means lines were lost.
            let lines = s.run.log_lines.unwrap_or(0);
            ensure!(
                lines >= s.run.requests,
                "{}: {} requests answered but {} log lines written",
                s.name,
                s.run.requests,
                lines
            );
            ensure!(
                s.run.socket_errors() == 0,
                "{}: socket errors {:?}",
                s.name,
                s.run.errors
            );
            if s.run.statuses.is_empty() {
                ensure!(
                    s.run.errors.status == 0,
                    "{}: {} answers were not 2xx",
                    s.name,
                    s.run.errors.status
                );
            } else {
                let unexpected: u64 = s
                    .run
                    .statuses
                    .iter()
                    .filter(|(k, _)| *k != "204" && *k != "401")
                    .map(|(_, v)| v)
                    .sum();
                ensure!(
                    unexpected == 0,
                    "{}: unexpected statuses {:?}",
                    s.name,
                    s.run.statuses
                );
            }
        }
        Ok(())
    }

    fn targets(&self) -> Vec<Target> {
        let s = &self.scenarios;
        let mut t: Vec<Target> = s
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let min = s.min_ratio?;
                let ratio = self.ratio(s);
                Some(Target {
                    what: format!("scenario {} vs baseline", i + 1),
                    target: format!("≥ {min:.2}×"),
                    measured: format!("{ratio:.2}×"),
                    // A reused token could have been answered from a cache.
                    met: ratio >= min && s.run.wraps == 0,
                })
            })
            .collect();
        let worst = s.iter().map(|s| s.run.latency_us.p99).max().unwrap_or(0);
        t.push(Target {
            what: "p99 at 32 connections (worst of 1–4)".into(),
            target: "≤ 5 ms".into(),
            measured: format!("{:.2} ms", ms(worst)),
            met: worst <= 5_000,
        });
        t.push(Target {
            what: "RSS under load (max of 1–4)".into(),
            target: "≤ 25 MB".into(),
            measured: format!("{:.1} MB", mb(self.rss_load_kib())),
            met: mb(self.rss_load_kib()) <= 25.0,
        });
        t.push(Target {
            what: "cold start, exec → first response (median)".into(),
            target: "≤ 20 ms".into(),
            measured: format!("{:.1} ms", self.cold.health.median),
            met: self.cold.health.median <= 20.0,
        });
        t.push(Target {
            what: "key fetches (per scenario ≤ 1 per cache period; hostile ≤ 1 per cooldown)"
                .into(),
            target: "within limits".into(),
            measured: s
                .iter()
                .map(|s| format!("{}/{}", s.key_fetches, s.key_fetch_limit))
                .collect::<Vec<_>>()
                .join(", "),
            met: s.iter().all(|s| s.key_fetches <= s.key_fetch_limit),
        });
        let l = &self.large;
        t.push(Target {
            what: "10 MB message, peak RSS of the process".into(),
            target: "≤ 4× message".into(),
            measured: format!("{:.1} MB = {:.2}×", mb(l.peak_kib), l.peak_ratio()),
            met: l.peak_ratio() <= 4.0,
        });
        let cost = self.metrics.cost_pct();
        t.push(Target {
            what: "metrics' cost in scenario 1 (on against off)".into(),
            target: "≤ 5 %".into(),
            measured: format!("{cost:.1} %"),
            met: cost <= 5.0,
        });
        t
    }

    pub fn print(&self) {
        if let Some(pg) = &self.postgres {
            pg.print();
        }
        let a = self.args;
        println!(
            "\n| scenario | req/s | p50 ms | p99 ms | baseline req/s | × baseline | server CPU µs/req | key fetches | notes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for (i, b) in self.baselines.iter().enumerate() {
            println!(
                "| baseline {} | {:.0} | {:.2} | {:.2} | – | 1.00 | {:.1} | – | bare axum route, 204 |",
                i + 1,
                b.rps(),
                ms(b.latency_us.p50),
                ms(b.latency_us.p99),
                b.cpu_us_per_request(),
            );
        }
        for s in &self.scenarios {
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} ({} and {}) | {:.2} | {:.1} | {} | {} |",
                s.name,
                s.run.rps(),
                ms(s.run.latency_us.p50),
                ms(s.run.latency_us.p99),
                self.baseline_rps(s),
                s.baseline_before + 1,
                s.baseline_before + 2,
                self.ratio(s),
                s.run.cpu_us_per_request(),
                s.key_fetches,
                s.note
            );
        }
        let l = &self.large;
        println!(
            "| 5 one 10 MB message | – | – | – | – | – | – | 0 | acked in {:.0} ms; RSS {:.1} MB idle → peak {:.1} MB ({:.2}× the message), {:.1} MB after |",
            l.ack_ms,
            mb(l.idle_kib),
            mb(l.peak_kib),
            l.peak_ratio(),
            mb(l.after_kib)
        );
        println!(
            "\ncold start (exec → first 200 from /healthz): median {:.1} ms (min {:.1}, max {:.1}, {} runs); exec → first acked push (keys fetched): median {:.1} ms",
            self.cold.health.median,
            self.cold.health.min,
            self.cold.health.max,
            self.cold.health.runs,
            self.cold.push.median
        );
        println!(
            "RSS: {:.1} MB idle, {:.1} MB max under load ({} connections, {} s per scenario)",
            mb(self.idle_kib),
            mb(self.rss_load_kib()),
            a.connections,
            a.duration
        );
        let m = &self.metrics;
        println!(
            "metrics (scenario 1, on/off interleaved): on {:.0} req/s at {:.1} µs CPU, off {:.0} req/s at {:.1} µs CPU: a cost of {:.1} %",
            MetricsCost::rps(&m.on),
            MetricsCost::cpu_us(&m.on),
            MetricsCost::rps(&m.off),
            MetricsCost::cpu_us(&m.off),
            m.cost_pct()
        );
        let st = self.steadiness();
        let (_, min, max) = self.baseline_summary();
        println!(
            "steadiness: the two baselines around a scenario at most {:.1} % apart (at most {MAX_BASELINE_DRIFT_PCT} %; all {} runs {min:.0} to {max:.0} req/s), CPU steal at most {:.1} % in a timed run (at most {MAX_STEAL_PCT} %): {}",
            st.drift_pct,
            self.baselines.len(),
            st.steal_pct_max,
            if st.steady {
                "steady"
            } else {
                "UNSTEADY, the machine was busy: run again before reading the ratios"
            }
        );
        println!("\n| target | wanted | measured | |\n|---|---|---|---|");
        for t in self.targets() {
            println!(
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "met" } else { "MISSED" }
            );
        }
    }

    /// Writes [`Report::json`] to `path`, creating its folder.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.json())?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, json + "\n")?;
        println!("\nwrote {}", path.display());
        Ok(())
    }

    fn json(&self) -> Value {
        let st = self.steadiness();
        let (mean, min, max) = self.baseline_summary();
        let run = |r: &WrkRun| {
            json!({
                "requests": r.requests,
                "req_per_s": round(r.rps(), 0),
                "p50_ms": ms(r.latency_us.p50),
                "p90_ms": ms(r.latency_us.p90),
                "p99_ms": ms(r.latency_us.p99),
                "max_ms": ms(r.latency_us.max),
                "mean_ms": round(r.latency_us.mean / 1e3, 3),
                "non_2xx": r.errors.status,
                "server_cpu_us_per_request": round(r.cpu_us_per_request(), 1),
                "cpu_steal_pct": round(r.steal_pct, 1),
            })
        };
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|s| {
                let mut v = run(&s.run);
                v["name"] = json!(s.name);
                v["what"] = json!(s.what);
                v["baseline_req_per_s"] = json!(round(self.baseline_rps(s), 0));
                v["baseline_runs"] = json!([s.baseline_before + 1, s.baseline_before + 2]);
                v["ratio_to_baseline"] = json!(round(self.ratio(s), 3));
                v["key_fetches"] = json!(s.key_fetches);
                v["key_fetch_limit"] = json!(s.key_fetch_limit);
                v["rss_max_mb"] = json!(round(mb(s.rss_max_kib), 1));
                v["log_lines"] = json!(s.run.log_lines);
                if !s.run.statuses.is_empty() {
                    v["statuses"] = json!(s.run.statuses);
                }
                if !s.note.is_empty() {
                    v["note"] = json!(s.note);
                }
                v
            })
            .collect();
        let l = &self.large;
        json!({
            "command": "make bench",
            "date": now_secs(),
            "machine": machine(),
            "load": {
                "tool": command_line("wrk", &["-v"]),
                "connections": self.args.connections,
                "threads": self.args.threads,
                "seconds_per_scenario": self.args.duration,
            },
            "baseline": {
                "runs": self.baselines.iter().map(run).collect::<Vec<_>>(),
                "req_per_s_mean": round(mean, 0),
                "req_per_s_min": round(min, 0),
                "req_per_s_max": round(max, 0),
            },
            "scenarios": scenarios,
            "steadiness": {
                "baseline_drift_pct": round(st.drift_pct, 1),
                "baseline_drift_max_pct": MAX_BASELINE_DRIFT_PCT,
                "cpu_steal_pct_max": round(st.steal_pct_max, 1),
                "cpu_steal_max_pct": MAX_STEAL_PCT,
                "steady": st.steady,
            },
            "large_message": {
                "data_bytes": l.bytes,
                "request_bytes": l.body_bytes,
                "time_to_ack_ms": round(l.ack_ms, 1),
                "rss_idle_mb": round(mb(l.idle_kib), 1),
                "rss_peak_mb": round(mb(l.peak_kib), 1),
                "rss_after_mb": round(mb(l.after_kib), 1),
                "peak_over_message": round(l.peak_ratio(), 2),
            },
            "cold_start_ms": {
                "exec_to_first_response": {
                    "median": round(self.cold.health.median, 2),
                    "min": round(self.cold.health.min, 2),
                    "max": round(self.cold.health.max, 2),
                    "runs": self.cold.health.runs,
                },
                "exec_to_first_acked_push_median": round(self.cold.push.median, 2),
            },
            "rss_mb": {
                "idle": round(mb(self.idle_kib), 1),
                "under_load_max": round(mb(self.rss_load_kib()), 1),
            },
            "targets": self.targets().iter().map(|t| json!({
                "what": t.what, "target": t.target, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
            "metrics_cost": self.metrics.to_json(),
            "postgres_ledger": self.postgres.as_ref().map(crate::postgres::PgReport::to_json),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = kib_field(&meminfo, "MemTotal").unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": round(mem_kib as f64 / 1024.0 / 1024.0, 1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rustc": command_line("rustc", &["-V"]),
    })
}

/// The first line a program prints (stdout, or stderr if stdout is empty).
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}
