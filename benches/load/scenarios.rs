//! What runs, in order: the cold start, the timed scenarios against one
//! worker with baselines between them, then the large message.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use axum::{Router, http::StatusCode, routing::post};
use pushworker::pubsub::{MessageMeta, wrap};

use crate::{
    args::Args,
    keys::{self, KeyServer, Signers},
    load::{Load, Wrk, WrkRun},
    report::{ColdStart, Large, MetricsCost, Report, ScenarioRun, Stats},
    worker::{RawRequest, Worker},
};

/// pushworker's default `JWKS_REFRESH_COOLDOWN_MS`.
const REFRESH_COOLDOWN_SECS: u64 = 10;
/// Scenario 5's message: Pub/Sub's largest.
const LARGE_MESSAGE_BYTES: usize = 10_000_000;
const WARMUP_SECS: u64 = 2;
const SUBSCRIPTION: &str = "projects/bench-project/subscriptions/work-push";

/// A timed scenario. Adding one: an entry here, and its [`Kind`] with an
/// arm in [`Bench::prepare`].
struct Spec {
    name: &'static str,
    what: &'static str,
    kind: Kind,
    /// The least share of the baseline's req/s it must reach, if any.
    min_ratio: Option<f64>,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Wrapped pushes with one valid Google token repeated.
    OneToken,
    /// Wrapped pushes, every one with a distinct valid token.
    DistinctTokens,
    /// A Clerk user's `POST /jobs/echo`.
    Clerk,
    /// Wrapped pushes, every tenth with a token that must get 401.
    Hostile,
}

impl Kind {
    /// Preparing it takes long (minting tokens): the scenario before gets
    /// its own baseline after it, rather than one measured minutes later.
    fn slow_to_prepare(self) -> bool {
        matches!(self, Self::DistinctTokens)
    }
}

/// The timed scenarios, in the order they run.
const SCENARIOS: &[Spec] = &[
    Spec {
        name: "1 push, one token",
        what: "wrapped push, echo job, one valid Google token repeated",
        kind: Kind::OneToken,
        min_ratio: Some(0.80),
    },
    Spec {
        name: "2 push, distinct tokens",
        what: "as 1, every request a distinct valid token",
        kind: Kind::DistinctTokens,
        min_ratio: Some(0.40),
    },
    Spec {
        name: "3 manual, Clerk",
        what: "POST /jobs/echo, one Clerk session token",
        kind: Kind::Clerk,
        min_ratio: None,
    },
    Spec {
        name: "4 push, 10% hostile",
        what: "as 1, every 10th token unknown-kid or bad-signature (must be 401)",
        kind: Kind::Hostile,
        min_ratio: None,
    },
];

/// A scenario's load, ready to run.
struct Prepared {
    load: Load,
    /// Its route has not been warmed yet: one untimed run first.
    warm_up: bool,
    key_fetch_limit: usize,
    /// The report's note on its run.
    note: Box<dyn Fn(&WrkRun) -> String>,
}

impl Prepared {
    fn new(load: Load) -> Self {
        Self {
            load,
            warm_up: false,
            key_fetch_limit: 1,
            note: Box::new(|_| String::new()),
        }
    }
}

/// What every push load shares.
struct PushInputs {
    template: PathBuf,
    one_token: PathBuf,
}

pub struct Bench {
    args: Args,
    wrk: Wrk,
    /// Serves the key server and the baseline for the whole run.
    _rt: tokio::runtime::Runtime,
    keys: KeyServer,
    baseline: SocketAddr,
    signers: Signers,
}

impl Bench {
    pub fn new(args: Args) -> Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        let wrk = Wrk::new(dir, args.threads, args.connections, args.duration)?;
        // The bench's own servers: the same runtime shape as the worker's.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let signers = Signers::generate()?;
        let keys = KeyServer::start(&rt, &signers)?;
        // Same framework and HTTP stack as the worker, no auth, no work.
        let baseline = keys::serve(
            &rt,
            Router::new().route("/pubsub/push", post(|| async { StatusCode::NO_CONTENT })),
        )?;
        Ok(Self {
            args,
            wrk,
            _rt: rt,
            keys,
            baseline,
            signers,
        })
    }

    pub fn run(&self) -> Result<Report<'_>> {
        let a = &self.args;
        println!(
            "pushworker bench: {}s per scenario, {} connections, {} wrk threads",
            a.duration, a.connections, a.threads
        );
        let cold = self.cold_start()?;

        let worker = Worker::spawn_ready(self.keys.addr)?;
        let idle_kib = worker.status_kib("VmRSS")?;

        let inputs = PushInputs {
            template: self.push_template(br#"{"message":"hello from the bench"}"#)?,
            one_token: self
                .wrk
                .shared_token("one-google", &self.signers.google_token()?)?,
        };
        let baseline_load = Load::push(
            format!("http://{}", self.baseline),
            &inputs.template,
            &inputs.one_token,
        );

        // Warm both servers (connections, allocator, caches) before timing.
        self.wrk.run(&baseline_load, WARMUP_SECS)?;
        self.wrk.run(
            &Load::push(worker.base(), &inputs.template, &inputs.one_token),
            WARMUP_SECS,
        )?;
        // A baseline run, by its index (see the module docs of main.rs).
        let mut baselines: Vec<WrkRun> = Vec::new();
        let mut baseline = || -> Result<usize> {
            let (run, _) = self.wrk.measured(&baseline_load, None)?;
            println!("baseline {}: {:.0} req/s", baselines.len() + 1, run.rps());
            baselines.push(run);
            Ok(baselines.len() - 1)
        };

        let mut scenarios: Vec<ScenarioRun> = Vec::new();
        for (i, spec) in SCENARIOS.iter().enumerate() {
            if spec.kind.slow_to_prepare() && i > 0 {
                baseline()?;
            }
            let prepared = self.prepare(spec.kind, &worker, &inputs, &scenarios)?;
            if prepared.warm_up {
                self.wrk.run(&prepared.load, WARMUP_SECS)?;
            }
            let before = baseline()?;
            let fetches = self.keys.fetches();
            let (run, rss) = self.wrk.measured(&prepared.load, Some(&worker))?;
            println!("scenario {}: {:.0} req/s", i + 1, run.rps());
            scenarios.push(ScenarioRun {
                name: spec.name,
                what: spec.what,
                min_ratio: spec.min_ratio,
                key_fetches: self.keys.fetches() - fetches,
                key_fetch_limit: prepared.key_fetch_limit,
                rss_max_kib: rss,
                note: (prepared.note)(&run),
                run,
                baseline_before: before,
            });
        }
        baseline()?;
        let metrics = self.metrics_cost(&worker, &inputs)?;
        drop(worker);
        let postgres = if a.postgres == "none" {
            None
        } else {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
            Some(crate::postgres::run(&crate::postgres::Inputs {
                keys: self.keys.addr,
                host: &a.postgres,
                dir: &dir,
                template: &inputs.template,
                token: &inputs.one_token,
                threads: a.threads,
                connections: a.connections,
                duration: a.duration,
                warmup: WARMUP_SECS,
                prune_secs: a.prune_secs,
            })?)
        };

        Ok(Report {
            metrics,
            postgres,
            args: a,
            baselines,
            scenarios,
            cold,
            idle_kib,
            large: self.large_message()?,
        })
    }

    /// Writes the files a scenario's load reads; `done` are the scenarios
    /// measured so far.
    fn prepare(
        &self,
        kind: Kind,
        worker: &Worker,
        inputs: &PushInputs,
        done: &[ScenarioRun],
    ) -> Result<Prepared> {
        let push = Load::push(worker.base(), &inputs.template, &inputs.one_token);
        Ok(match kind {
            Kind::OneToken => Prepared::new(push),
            Kind::DistinctTokens => {
                // Enough distinct tokens for the fastest pace so far and then
                // some: a scenario that reuses one is reported as invalid.
                let fastest = done.iter().map(|s| s.run.rps()).fold(0.0, f64::max);
                let needed = (fastest * self.args.duration as f64 * 1.2) as usize + 1000;
                let t = Instant::now();
                let tokens = self.signers.distinct_google_tokens(needed)?;
                println!(
                    "minted {needed} distinct tokens in {:.1}s",
                    t.elapsed().as_secs_f64()
                );
                Prepared {
                    note: Box::new(move |run| {
                        if run.wraps > 0 {
                            format!("INVALID: ran out of distinct tokens ({needed} minted)")
                        } else {
                            format!("{} distinct tokens, none reused", run.requests)
                        }
                    }),
                    ..Prepared::new(Load {
                        tokens: self.wrk.dealt_tokens("distinct", &tokens)?,
                        ..push
                    })
                }
            }
            Kind::Clerk => Prepared {
                warm_up: true,
                ..Prepared::new(Load {
                    path: "/jobs/echo",
                    template: self
                        .wrk
                        .write("jobs.json", br#"{"message":"hello from the bench @ID@"}"#)?,
                    tokens: self
                        .wrk
                        .shared_token("one-clerk", &self.signers.clerk_token()?)?,
                    ..push
                })
            },
            Kind::Hostile => Prepared {
                key_fetch_limit: (self.args.duration / REFRESH_COOLDOWN_SECS) as usize + 1,
                note: Box::new(|run| {
                    let refused = run.statuses.get("401").copied().unwrap_or(0);
                    let answered: u64 = run.statuses.values().sum();
                    format!(
                        "{refused} of {answered} refused with 401 ({:.1}%)",
                        100.0 * refused as f64 / answered.max(1) as f64
                    )
                }),
                ..Prepared::new(Load {
                    hostile: Some((
                        self.wrk
                            .token_list("hostile.txt", &self.signers.hostile_tokens(1000)?)?,
                        10,
                    )),
                    count_statuses: true,
                    ..push
                })
            },
        })
    }

    /// Scenario 1 against `on` (metrics served, as in production) and a
    /// second worker with `METRICS_ADDR=off`, interleaved on, off, off, on so
    /// that a drift of the machine falls on both alike.
    fn metrics_cost(&self, on: &Worker, inputs: &PushInputs) -> Result<MetricsCost> {
        let off = Worker::spawn_ready_with(self.keys.addr, &[("METRICS_ADDR", "off".into())])?;
        let load = |w: &Worker| Load::push(w.base(), &inputs.template, &inputs.one_token);
        self.wrk.run(&load(&off), WARMUP_SECS)?;
        let mut runs = MetricsCost::default();
        for metrics_on in [true, false, false, true] {
            let worker = if metrics_on { on } else { &off };
            let (run, _) = self.wrk.measured(&load(worker), Some(worker))?;
            println!(
                "scenario 1, metrics {}: {:.0} req/s",
                if metrics_on { "on" } else { "off" },
                run.rps()
            );
            if metrics_on {
                &mut runs.on
            } else {
                &mut runs.off
            }
            .push(run);
        }
        Ok(runs)
    }

    /// The body of the push loads, `@ID@` for wrk to replace.
    fn push_template(&self, data: &[u8]) -> Result<PathBuf> {
        let meta = MessageMeta {
            message_id: "@ID@".into(),
            publish_time: Some("2026-11-28T12:00:00.000Z".into()),
            subscription: Some(SUBSCRIPTION.into()),
            attributes: [("job".to_owned(), "echo".to_owned())].into(),
            ..MessageMeta::default()
        };
        self.wrk
            .write("push.json", wrap(&meta, data).to_string().as_bytes())
    }

    /// Exec → first 200 from /healthz, and exec → first acked push (which
    /// includes fetching the keys), each on a fresh process.
    fn cold_start(&self) -> Result<ColdStart> {
        let mut health = Vec::new();
        let mut push = Vec::new();
        let token = self.signers.google_token()?;
        for i in 0..self.args.cold_runs {
            let worker = Worker::spawn(self.keys.addr)?;
            health.push(worker.wait_for(
                &RawRequest::get("/healthz"),
                200,
                Duration::from_secs(10),
            )?);
            let meta = MessageMeta {
                message_id: format!("cold-{i}"),
                attributes: [("job".to_owned(), "echo".to_owned())].into(),
                ..MessageMeta::default()
            };
            let body = wrap(&meta, br#"{"message":"cold"}"#).to_string();
            let request = RawRequest::push(token.clone(), body.into_bytes());
            push.push(worker.wait_for(&request, 204, Duration::from_secs(10))?);
        }
        Ok(ColdStart {
            health: Stats::millis(&health),
            push: Stats::millis(&push),
        })
    }

    /// Scenario 5: one 10 MB message to a fresh, idle process.
    fn large_message(&self) -> Result<Large> {
        let worker = Worker::spawn_ready(self.keys.addr)?;
        let overhead = br#"{"message":""}"#.len();
        let mut data = Vec::with_capacity(LARGE_MESSAGE_BYTES);
        data.extend_from_slice(br#"{"message":""#);
        data.resize(LARGE_MESSAGE_BYTES - overhead + 12, b'x');
        data.extend_from_slice(br#""}"#);
        ensure!(data.len() == LARGE_MESSAGE_BYTES);
        let meta = MessageMeta {
            message_id: "large-1".into(),
            attributes: [("job".to_owned(), "echo".to_owned())].into(),
            subscription: Some(SUBSCRIPTION.into()),
            ..MessageMeta::default()
        };
        let request = RawRequest::push(
            self.signers.google_token()?,
            wrap(&meta, &data).to_string().into_bytes(),
        );
        drop(data);
        let idle_kib = worker.status_kib("VmRSS")?;
        worker.reset_peak()?;
        let start = Instant::now();
        let status = worker.send(&request)?;
        let ack = start.elapsed();
        ensure!(status == 204, "the 10 MB message was answered {status}");
        let peak_kib = worker.status_kib("VmHWM")?;
        let after_kib = worker.status_kib("VmRSS")?;
        Ok(Large {
            bytes: LARGE_MESSAGE_BYTES,
            body_bytes: request.body.len(),
            ack_ms: ack.as_secs_f64() * 1e3,
            idle_kib,
            peak_kib,
            after_kib,
        })
    }
}
