//! The one sequence every dispatch goes through, from the push endpoint and
//! from `POST /jobs/{name}` alike: record (and claim), run, record the end.
//!
//! [`Runner::run`] answers with an [`Outcome`]; the handlers only map it to
//! HTTP. The job runs in a task of its own, so that its end is recorded (and
//! its key released) even when the request goes away: the request's
//! cancellation still reaches the job through its token, and the job timeout
//! still applies. If the end cannot be recorded after a few tries, the run is
//! answered as a store failure (a 503, a nack): no push is acked without a
//! record. Its key then stays claimed until the lease expires, and the
//! redelivery after that runs the job again (at-least-once, as with any
//! crash).
//!
//! A run can be cancelled on request (`POST /runs/{id}/cancel`): the
//! request marks the run in the ledger and fires its token here at once if
//! this instance runs it; every instance polls the ledger for marks on the
//! runs it holds ([`RunControl::spawn_poller`]), so a cancel reaches a run
//! on another instance within [`CANCEL_POLL`]. The run then ends
//! `cancelled`, unless its job finished first.

use axum::body::Bytes;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use ::metrics::{Counter, Gauge, Histogram};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    events::EventContext,
    jobs::{DispatchError, JobContext, JobOutput, JobRegistry},
    principal::Principal,
    pubsub::MessageMeta,
    runs::{
        Claim, DedupKey, Finish, JsonText, NewRun, PayloadDigest, RunPrincipal, RunRecord,
        RunSource, RunStatus, RunStore, StoreError, digest, now_micros, truncate,
    },
    telemetry::metrics::{Metrics, OTHER, names},
};

/// Longest error text kept in a record.
const ERROR_CAP_BYTES: usize = 8 * 1024;

/// How often each instance asks the ledger whether a run it holds was
/// asked to stop.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Pauses between tries to record a run's end.
const FINISH_RETRIES: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];

/// Size limits and the job timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Longest a job may run.
    pub job_timeout: Duration,
    /// Largest payload kept in a record.
    pub payload_cap: usize,
    /// Largest output kept in a record.
    pub output_cap: usize,
}

/// What to run, for whom.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The job's name.
    pub job: String,
    /// Where the request came from.
    pub source: RunSource,
    /// Who asked.
    pub principal: Arc<Principal>,
    /// The Pub/Sub message, on the push path (and on a Pub/Sub event).
    pub message: Option<Arc<MessageMeta>>,
    /// The CloudEvent's context, on an event.
    pub event: Option<Arc<EventContext>>,
    /// Delivery attempt.
    pub attempt: u32,
    /// The caller's `Idempotency-Key`, on a manual trigger.
    pub idempotency_key: Option<String>,
    /// The key that makes repeats run once, if any.
    pub dedup: Option<DedupKey>,
    /// The payload bytes the job decodes (shared, not copied: the push path
    /// keeps them for dead-lettering).
    pub payload: Bytes,
    /// On a re-run: the run whose recorded payload this runs again.
    pub rerun_of: Option<Uuid>,
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// This request ran the job; its run is recorded with its end.
    Ran {
        /// The run.
        run_id: Uuid,
        /// The job's output or failure.
        result: Result<JobOutput, DispatchError>,
        /// How long the job took.
        duration_ms: u64,
    },
    /// The key's run already succeeded (or was dead-lettered): nothing ran;
    /// this request is recorded as a duplicate.
    Duplicate {
        /// This request's (duplicate) record.
        run_id: Uuid,
        /// The run that holds the key.
        original_run_id: Uuid,
        /// Its record, unless pruned.
        original: Option<Box<RunRecord>>,
    },
    /// The key's run is running now (here or on another instance): nothing
    /// ran; recorded as a duplicate.
    InProgress {
        /// This request's (duplicate) record.
        run_id: Uuid,
        /// The run that holds the key.
        original_run_id: Uuid,
        /// Its record, unless pruned.
        original: Option<Box<RunRecord>>,
    },
    /// The key is held (done or running) by a run of other content: nothing
    /// ran; recorded as a `conflict`. Never to be acked as a duplicate.
    Conflict {
        /// This request's (conflict) record.
        run_id: Uuid,
        /// The run that holds the key.
        original_run_id: Uuid,
        /// What that run claimed (this request's is its key's content).
        claimed: PayloadDigest,
    },
}

/// The payload as recorded: JSON within the cap, else left out.
fn capture_payload(bytes: &[u8], cap: usize) -> (Option<JsonText>, bool) {
    if bytes.len() > cap {
        return (None, true);
    }
    (JsonText::parse(bytes), false)
}

/// The output as recorded: JSON within the cap, else left out (written into
/// a buffer that stops at the cap: a large output must not be copied whole
/// just to be measured). An error means the output cannot be serialised at all.
fn capture_output(output: &JobOutput, cap: usize) -> serde_json::Result<(Option<JsonText>, bool)> {
    struct Capped {
        text: Vec<u8>,
        cap: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.text.len() + buf.len() > self.cap {
                // Stops the serialiser early: the answer is known.
                return Err(std::io::Error::other("over the cap"));
            }
            self.text.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped {
        // Most outputs fit: one allocation rather than one per doubling.
        text: Vec::with_capacity(cap.min(256)),
        cap,
    };
    match output.write_json(&mut capped) {
        Ok(()) => {
            let text = String::from_utf8(capped.text).map_err(serde::ser::Error::custom)?;
            Ok((Some(JsonText::from_text(text)?), false))
        }
        Err(e) if e.is_io() => Ok((None, true)),
        Err(e) => Err(e),
    }
}

/// The record of a finished dispatch; an output that cannot be serialised
/// turns the run into a permanent failure.
fn finish_for(
    result: Result<JobOutput, DispatchError>,
    duration_ms: u64,
    output_cap: usize,
) -> (Result<JobOutput, DispatchError>, Finish) {
    let mut finish = Finish::status(RunStatus::Succeeded);
    finish.finished_at = Some(now_micros());
    finish.duration_ms = Some(duration_ms);
    let result = result.and_then(|output| match capture_output(&output, output_cap) {
        Ok((recorded, truncated)) => {
            finish.output = recorded;
            finish.output_truncated = truncated;
            Ok(output)
        }
        Err(e) => Err(DispatchError::Permanent(format!(
            "output is not serialisable: {e}"
        ))),
    });
    match &result {
        Ok(_) => {}
        Err(e) => {
            finish.status = if matches!(e, DispatchError::Cancelled) {
                RunStatus::Cancelled
            } else if e.is_permanent() {
                RunStatus::FailedPermanent
            } else {
                RunStatus::FailedTransient
            };
            finish.error = Some(truncate(e.to_string(), ERROR_CAP_BYTES));
            finish.error_kind = Some(e.kind().to_owned());
        }
    }
    (result, finish)
}

/// Records a run's end, trying again briefly if the store fails.
async fn finish_with_retry(
    store: &dyn RunStore,
    run_id: Uuid,
    finish: Finish,
) -> Result<(), StoreError> {
    let mut pauses = FINISH_RETRIES.iter();
    loop {
        match store.finish(run_id, finish.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(error = %e, "recording the run's end failed; trying again");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(e),
            },
        }
    }
}

/// Every source, in the order of [`source_index`].
const SOURCES: [RunSource; 4] = [
    RunSource::Push,
    RunSource::Manual,
    RunSource::Service,
    RunSource::Event,
];

fn source_index(source: RunSource) -> usize {
    match source {
        RunSource::Push => 0,
        RunSource::Manual => 1,
        RunSource::Service => 2,
        RunSource::Event => 3,
    }
}

fn status_index(status: RunStatus) -> usize {
    RunStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

/// One job's series, each registered on its first use: a job that never
/// runs from a source exports nothing for it.
#[derive(Debug)]
struct JobSeries {
    name: &'static str,
    in_flight: OnceLock<Gauge>,
    /// By source.
    duration: [OnceLock<Histogram>; SOURCES.len()],
    /// By source, then status.
    runs: Vec<OnceLock<Counter>>,
}

impl JobSeries {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            in_flight: OnceLock::new(),
            duration: Default::default(),
            runs: (0..SOURCES.len() * RunStatus::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }
}

/// The runner's metrics: `pushworker_runs_total{job_name, source, status}`,
/// `pushworker_run_duration_seconds{job_name, source}` and
/// `pushworker_runs_in_flight{job_name}`, for the registry's jobs (any other
/// name is counted as [`OTHER`]). Empty when metrics are off.
#[derive(Debug, Default)]
pub struct RunMetrics {
    metrics: Metrics,
    jobs: HashMap<&'static str, JobSeries>,
    other: Option<JobSeries>,
}

impl RunMetrics {
    /// The series of `jobs`' jobs over `metrics`.
    pub fn new(metrics: &Metrics, jobs: &JobRegistry) -> Self {
        if !metrics.is_enabled() {
            return Self::default();
        }
        Self {
            metrics: metrics.clone(),
            jobs: jobs
                .list()
                .iter()
                .map(|j| (j.name, JobSeries::new(j.name)))
                .collect(),
            other: Some(JobSeries::new(OTHER)),
        }
    }

    fn job(&self, name: &str) -> Option<&JobSeries> {
        self.jobs.get(name).or(self.other.as_ref())
    }

    /// Counts a run of `job` from `source` that ended `status`.
    fn count(&self, job: &str, source: RunSource, status: RunStatus) {
        let Some(series) = self.job(job) else {
            return;
        };
        let slot = source_index(source) * RunStatus::ALL.len() + status_index(status);
        series.runs[slot]
            .get_or_init(|| {
                self.metrics.counter(
                    names::RUNS,
                    &[
                        ("job_name", series.name),
                        ("source", source.as_str()),
                        ("status", status.as_str()),
                    ],
                )
            })
            .increment(1);
    }

    /// Records how long a run of `job` from `source` ran.
    fn duration(&self, job: &str, source: RunSource, elapsed: Duration) {
        let Some(series) = self.job(job) else {
            return;
        };
        series.duration[source_index(source)]
            .get_or_init(|| {
                self.metrics.histogram(
                    names::RUN_DURATION,
                    &[("job_name", series.name), ("source", source.as_str())],
                )
            })
            .record(elapsed.as_secs_f64());
    }

    /// Counts `job` as running until the guard is dropped.
    fn running(&self, job: &str) -> InFlight {
        let gauge = self.job(job).map(|series| {
            series
                .in_flight
                .get_or_init(|| {
                    self.metrics
                        .gauge(names::RUNS_IN_FLIGHT, &[("job_name", series.name)])
                })
                .clone()
        });
        if let Some(g) = &gauge {
            g.increment(1.0);
        }
        InFlight(gauge)
    }
}

/// A job counted in `pushworker_runs_in_flight`, until dropped (even by a
/// task that is aborted).
struct InFlight(Option<Gauge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.decrement(1.0);
        }
    }
}

/// The runs in flight on this instance, each with the token a cancel request
/// fires.
#[derive(Debug, Default)]
pub struct RunControl {
    in_flight: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl RunControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CancellationToken>> {
        // The map holds no invariant a panic elsewhere could break.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `run_id` as in flight until the guard is dropped; the token
    /// fires on a cancel request.
    fn hold(self: &Arc<Self>, run_id: Uuid) -> (CancellationToken, Held) {
        let requested = CancellationToken::new();
        self.lock().insert(run_id, requested.clone());
        (
            requested,
            Held {
                control: Arc::clone(self),
                run_id,
            },
        )
    }

    /// Fires the cancel of `run_id` if it runs here; whether it does.
    pub fn cancel(&self, run_id: Uuid) -> bool {
        match self.lock().get(&run_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The runs in flight here.
    pub fn in_flight(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Every [`CANCEL_POLL`] while runs are in flight here, asks `store`
    /// which of them were asked to stop (by a request to any instance), and
    /// cancels those. Stops with `stop`.
    pub fn spawn_poller(
        self: &Arc<Self>,
        store: Arc<dyn RunStore>,
        stop: Arc<CancellationToken>,
    ) -> tokio::task::JoinHandle<()> {
        let control = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CANCEL_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let held = control.in_flight();
                if held.is_empty() {
                    continue;
                }
                match store.cancel_requests(held).await {
                    Ok(marked) => {
                        for run_id in marked {
                            control.cancel(run_id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading cancel requests failed; will try again");
                    }
                }
            }
        })
    }
}

/// A run held in [`RunControl`] until dropped (even by a task that is
/// aborted).
struct Held {
    control: Arc<RunControl>,
    run_id: Uuid,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.control.lock().remove(&self.run_id);
    }
}

/// Records, claims, runs and finishes. Cheap to build per request.
#[derive(Debug, Clone)]
pub struct Runner {
    store: Arc<dyn RunStore>,
    jobs: Arc<JobRegistry>,
    stop: Arc<CancellationToken>,
    limits: RunLimits,
    metrics: Arc<RunMetrics>,
    control: Arc<RunControl>,
}

impl Runner {
    /// A runner over these parts.
    pub fn new(
        store: Arc<dyn RunStore>,
        jobs: Arc<JobRegistry>,
        stop: Arc<CancellationToken>,
        limits: RunLimits,
        metrics: Arc<RunMetrics>,
        control: Arc<RunControl>,
    ) -> Self {
        Self {
            store,
            jobs,
            stop,
            limits,
            metrics,
            control,
        }
    }

    /// Runs `request` once per key: see [`Outcome`]. `Err` means the store
    /// could not record the run (nothing ran), or its end (the job ran).
    pub async fn run(&self, request: RunRequest) -> Result<Outcome, StoreError> {
        let run_id = Uuid::now_v7();
        let mut text = Uuid::encode_buffer();
        tracing::Span::current().record("run_id", &*run_id.hyphenated().encode_lower(&mut text));
        let (payload, payload_truncated) =
            capture_payload(&request.payload, self.limits.payload_cap);
        let meta = request.message.as_deref();
        let record = RunRecord {
            run_id,
            job: request.job.clone(),
            source: request.source,
            principal: RunPrincipal::from(&*request.principal),
            message_id: request
                .event
                .as_ref()
                .map(|e| e.id.clone())
                .or_else(|| meta.map(|m| m.message_id.clone())),
            subscription: meta.and_then(|m| m.subscription.clone()),
            idempotency_key: request.idempotency_key.clone(),
            event_source: request.event.as_ref().map(|e| e.source.clone()),
            event_type: request.event.as_ref().map(|e| e.event_type.clone()),
            event_subject: request.event.as_ref().and_then(|e| e.subject.clone()),
            attempt: request.attempt,
            payload_digest: digest(&request.payload),
            payload,
            payload_truncated,
            status: RunStatus::Running,
            started_at: now_micros(),
            finished_at: None,
            duration_ms: None,
            error: None,
            error_kind: None,
            output: None,
            output_truncated: false,
            duplicate_of: None,
            rerun_of: request.rerun_of,
            cancel_requested_at: None,
            cancelled_by: None,
            dedup_key: None,
        };
        let claim = self
            .store
            .begin(NewRun {
                record,
                dedup: request.dedup.clone(),
            })
            .await?;
        let not_run = match &claim {
            Claim::Started => None,
            Claim::Done { .. } | Claim::InProgress { .. } => Some(RunStatus::Duplicate),
            Claim::Conflict { .. } => Some(RunStatus::Conflict),
        };
        if let Some(status) = not_run {
            self.metrics.count(&request.job, request.source, status);
        }
        match claim {
            Claim::Started => {}
            Claim::Done {
                original_run_id,
                original,
            } => {
                return Ok(Outcome::Duplicate {
                    run_id,
                    original_run_id,
                    original,
                });
            }
            Claim::InProgress {
                original_run_id,
                original,
            } => {
                return Ok(Outcome::InProgress {
                    run_id,
                    original_run_id,
                    original,
                });
            }
            Claim::Conflict {
                original_run_id,
                claimed,
            } => {
                return Ok(Outcome::Conflict {
                    run_id,
                    original_run_id,
                    claimed,
                });
            }
        }

        // The request going away, or the end of the shutdown grace period,
        // cancels the job; the task still records how the job ended. The
        // run's token is a tree of its own, not a child of `stop`: creating
        // and dropping a child locks the parent's mutex, which every request
        // on every thread would contend for. The task watches `stop` instead,
        // and only while the job is pending.
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let stop = Arc::clone(&self.stop);
        let ctx = JobContext {
            run_id,
            source: request.source,
            principal: request.principal,
            message: request.message,
            event: request.event,
            attempt: request.attempt,
            cancel,
        };
        let store = Arc::clone(&self.store);
        let jobs = Arc::clone(&self.jobs);
        let limits = self.limits;
        let job = request.job;
        let source = request.source;
        let payload = request.payload;
        let metrics = Arc::clone(&self.metrics);
        let (requested, held) = self.control.hold(run_id);
        let task = tokio::spawn(
            async move {
                let _held = held;
                let in_flight = metrics.running(&job);
                let started = std::time::Instant::now();
                let cancel = ctx.cancel.clone();
                let dispatch = jobs.dispatch(&job, payload, ctx, limits.job_timeout);
                tokio::pin!(dispatch);
                let result = tokio::select! {
                    // The job first: one that finishes at once never looks
                    // at `stop` or a cancel request.
                    biased;
                    result = &mut dispatch => result,
                    () = stop.cancelled() => {
                        cancel.cancel();
                        dispatch.await
                    }
                    () = requested.cancelled() => {
                        cancel.cancel();
                        // A job that still finished within its grace ran.
                        dispatch.await.map_err(|_| DispatchError::Cancelled)
                    }
                };
                let elapsed = started.elapsed();
                drop(in_flight);
                let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                let (result, finish) = finish_for(result, duration_ms, limits.output_cap);
                metrics.duration(&job, source, elapsed);
                metrics.count(&job, source, finish.status);
                let recorded = finish_with_retry(&*store, run_id, finish).await;
                (result, duration_ms, recorded)
            }
            .instrument(tracing::Span::current()),
        );
        let (result, duration_ms, recorded) = task.await.map_err(|e| {
            StoreError::Unavailable(anyhow::anyhow!(e).context("the run's task failed"))
        })?;
        if let Err(e) = recorded {
            tracing::error!(
                error = %e,
                job_ok = result.is_ok(),
                "the job ran but its end could not be recorded; answering 503 (the key is released when its lease expires)"
            );
            return Err(e);
        }
        Ok(Outcome::Ran {
            run_id,
            result,
            duration_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_over_the_cap_are_left_out_but_flagged() {
        assert_eq!(
            capture_payload(br#" {"a":1}"#, 100),
            (JsonText::parse(br#"{"a":1}"#), false)
        );
        assert_eq!(capture_payload(br#"{"a":1}"#, 3), (None, true));
        assert_eq!(capture_payload(b"\xff not json", 100), (None, false));
    }

    /// The cap is on the serialised length, exactly at the boundary.
    #[test]
    fn outputs_are_measured_without_being_serialised_whole() {
        let value = serde_json::json!({ "m": "x".repeat(100) });
        let len = value.to_string().len();
        let output = JobOutput::new(value.clone());
        assert_eq!(
            capture_output(&output, len).ok(),
            Some((JsonText::of(&value).ok(), false))
        );
        assert_eq!(capture_output(&output, len - 1).ok(), Some((None, true)));
        assert_eq!(capture_output(&output, 0).ok(), Some((None, true)));
    }

    /// An output serde_json cannot write (a map with non-string keys) makes
    /// the run a permanent failure, recorded as such.
    #[test]
    fn unserialisable_outputs_fail_the_run_for_good() {
        let output = JobOutput::new(std::collections::HashMap::from([((1, 2), 3)]));
        let (result, f) = finish_for(Ok(output), 5, 1000);
        assert!(
            matches!(result, Err(DispatchError::Permanent(_))),
            "{result:?}"
        );
        assert_eq!(f.status, RunStatus::FailedPermanent);
    }

    #[test]
    fn failures_map_to_statuses() {
        let (_, f) = finish_for(Err(DispatchError::Timeout(Duration::from_secs(1))), 5, 10);
        assert_eq!(f.status, RunStatus::FailedTransient);
        assert_eq!(f.error_kind.as_deref(), Some("job_timeout"));
        let (_, f) = finish_for(Err(DispatchError::Permanent("no".into())), 5, 10);
        assert_eq!(f.status, RunStatus::FailedPermanent);
        let (_, f) = finish_for(Ok(JobOutput::new("x".repeat(20))), 5, 10);
        assert_eq!(
            (f.status, f.output, f.output_truncated),
            (RunStatus::Succeeded, None, true)
        );
    }
}
