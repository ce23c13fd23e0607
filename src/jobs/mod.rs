//! Typed jobs and the registry that dispatches to them by name.
//!
//! A job is a type implementing [`Job`]: a name, a description, a serde
//! payload with a JSON Schema, and an async `run` that returns an output or a
//! [`JobError`] saying whether a retry could help. The same handler runs for a
//! Pub/Sub push, a CloudEvent from Eventarc, a manual trigger from the admin
//! page, and a Cloud Scheduler / Cloud Tasks call; the [`JobContext`] says
//! which ([`storage_object`] is the example of an event job).
//!
//! Adding a job is one file and one line: write `src/jobs/my_job.rs`, then add
//! `.register(my_job::MyJob::new(..))` in [`JobRegistry::builtin`].
//!
//! [`JobRegistry::dispatch`] catches a job's panic, so it becomes a 500 for
//! that request and the server keeps serving; it enforces the job timeout and
//! cancels the job's [`CancellationToken`] when the timeout fires or the
//! runner cancels it (shutdown, or the request went away).

pub mod echo;
pub mod sleep;
pub mod storage_object;
pub mod webhook;

use std::{
    collections::{BTreeMap, btree_map::Entry},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::runs::RunSource;
use crate::{events::EventContext, principal::Principal, pubsub::MessageMeta};

/// What a job knows about its run.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// This run's id.
    pub run_id: Uuid,
    /// Where the run came from.
    pub source: RunSource,
    /// Who asked for it.
    pub principal: Arc<Principal>,
    /// The Pub/Sub message, on the push path and on a Pub/Sub event.
    pub message: Option<Arc<MessageMeta>>,
    /// The CloudEvent's context (id, source, type, subject, time), on an
    /// event from `POST /events`.
    pub event: Option<Arc<EventContext>>,
    /// Delivery attempt (1 on the first; Pub/Sub's `deliveryAttempt` when it
    /// sends one).
    pub attempt: u32,
    /// Cancelled when the job times out, the request goes away or the server
    /// shuts down past its grace period. Long jobs should watch it.
    pub cancel: CancellationToken,
}

/// A job's failure, classified for retry.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Could succeed on a later attempt (a dependency down, a timeout, 5xx):
    /// the push is nacked and Pub/Sub redelivers.
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time (bad input, 4xx from a dependency):
    /// never retried into success; dead-lettered.
    #[error("{0}")]
    Permanent(String),
}

/// A typed job.
pub trait Job: Send + Sync + 'static {
    /// The job's name: the `job` attribute, the path segment, the registry key.
    const NAME: &'static str;
    /// One line for the admin page and `GET /jobs`.
    const DESCRIPTION: &'static str;
    /// The payload, decoded from the message data or the request body.
    type Payload: DeserializeOwned + JsonSchema + Send + 'static;
    /// What a successful run returns (shown to manual callers).
    type Output: Serialize + Send + 'static;

    /// The JSON Schema of [`Job::Output`], when the job declares one: the
    /// API document gives it as the answer of `POST /jobs/{name}`, and
    /// `GET /jobs` lists it. Usually `Some(schemars::schema_for!(MyOutput))`.
    fn output_schema() -> Option<schemars::Schema> {
        None
    }

    /// Runs the job.
    fn run(
        &self,
        payload: Self::Payload,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// Why a dispatch did not produce an output.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No job of that name.
    #[error("unknown job `{0}`")]
    UnknownJob(String),
    /// The data is not JSON.
    #[error("payload is not valid JSON: {message}")]
    NotJson {
        /// The parser's message (with line and column).
        message: String,
    },
    /// The JSON does not fit the job's payload type.
    #[error("payload does not fit job `{job}` at `{path}`: {message}")]
    InvalidPayload {
        /// The job.
        job: String,
        /// Path of the failing field (`.` for the root).
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// The job failed and a retry may help.
    #[error("job failed (transient): {0}")]
    Transient(String),
    /// The job failed for good.
    #[error("job failed (permanent): {0}")]
    Permanent(String),
    /// The job ran past the timeout and was cancelled.
    #[error("job timed out after {0:?}")]
    Timeout(Duration),
    /// The job panicked.
    #[error("job panicked")]
    Panicked,
    /// An operator cancelled the run (`POST /runs/{id}/cancel`) before the
    /// job finished: done, never retried.
    #[error("the run was cancelled on request before the job finished")]
    Cancelled,
}

impl DispatchError {
    /// Whether a redelivery could succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::UnknownJob(_)
                | Self::NotJson { .. }
                | Self::InvalidPayload { .. }
                | Self::Permanent(_)
        )
    }

    /// Machine-readable kind, for bodies, logs and dead-letter attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownJob(_) => "unknown_job",
            Self::NotJson { .. } => "payload_not_json",
            Self::InvalidPayload { .. } => "invalid_payload",
            Self::Transient(_) => "job_failed_transient",
            Self::Permanent(_) => "job_failed_permanent",
            Self::Timeout(_) => "job_timeout",
            Self::Panicked => "job_panicked",
            Self::Cancelled => "run_cancelled",
        }
    }
}

/// How long a cancelled job may take to stop on its own before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_millis(500);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A job with its types erased, as the registry stores it.
trait ErasedJob: Send + Sync {
    fn description(&self) -> &'static str;
    fn schema(&self) -> serde_json::Value;
    fn output_schema(&self) -> Option<serde_json::Value>;
    fn start(
        &self,
        payload: &[u8],
        ctx: JobContext,
    ) -> Result<BoxFuture<Result<JobOutput, JobError>>, DispatchError>;
}

/// A job's successful output, kept typed: it becomes JSON only where it is
/// needed (the run record, within its cap; a manual caller's answer), so a
/// large output is never copied just to be measured or dropped.
pub struct JobOutput(Box<dyn ErasedOutput>);

trait ErasedOutput: Send {
    fn to_value(&self) -> serde_json::Result<serde_json::Value>;
    fn write_json(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()>;
}

impl<T: Serialize + Send> ErasedOutput for T {
    fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
    fn write_json(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()> {
        serde_json::to_writer(out, self)
    }
}

impl JobOutput {
    /// Wraps a job's output.
    pub fn new<T: Serialize + Send + 'static>(output: T) -> Self {
        Self(Box::new(output))
    }

    /// The output as a JSON value.
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        self.0.to_value()
    }

    /// Writes the output as JSON text, stopping at the writer's first error.
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()> {
        self.0.write_json(out)
    }
}

impl std::fmt::Debug for JobOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobOutput(..)")
    }
}

struct Erased<J: Job>(Arc<J>);

/// Deserialises `bytes` as `T`, naming the failing field's path.
pub fn decode_payload<T: DeserializeOwned>(job: &str, bytes: &[u8]) -> Result<T, DispatchError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match result {
        Ok(value) => {
            de.end().map_err(|e| DispatchError::NotJson {
                message: e.to_string(),
            })?;
            Ok(value)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(DispatchError::NotJson {
                    message: inner.to_string(),
                })
            } else {
                Err(DispatchError::InvalidPayload {
                    job: job.to_owned(),
                    path,
                    message: strip_position(&inner.to_string()),
                })
            }
        }
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

impl<J: Job> ErasedJob for Erased<J> {
    fn description(&self) -> &'static str {
        J::DESCRIPTION
    }

    fn schema(&self) -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(J::Payload)).unwrap_or(serde_json::Value::Null)
    }

    fn output_schema(&self) -> Option<serde_json::Value> {
        J::output_schema().and_then(|schema| serde_json::to_value(schema).ok())
    }

    fn start(
        &self,
        payload: &[u8],
        ctx: JobContext,
    ) -> Result<BoxFuture<Result<JobOutput, JobError>>, DispatchError> {
        let payload: J::Payload = decode_payload(J::NAME, payload)?;
        let job = Arc::clone(&self.0);
        Ok(Box::pin(async move {
            let output = job.run(payload, ctx).await?;
            Ok(JobOutput::new(output))
        }))
    }
}

/// A job's public description (`GET /jobs`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    /// The job's name.
    pub name: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// JSON Schema of its payload.
    pub payload_schema: serde_json::Value,
    /// JSON Schema of its output, when it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

/// The jobs by name.
#[derive(Clone, Default)]
pub struct JobRegistry {
    jobs: BTreeMap<&'static str, Arc<dyn ErasedJob>>,
    /// Names registered more than once, in order; [`JobRegistry::check`]
    /// refuses the registry while there is one.
    duplicates: Vec<&'static str>,
}

/// Two jobs were registered under one name: which of them a message meant
/// cannot be known, so start-up stops rather than pick one.
#[derive(Debug, thiserror::Error)]
#[error("job `{0}` is registered twice: give each job a name of its own (`Job::NAME`)")]
pub struct DuplicateJob(pub &'static str);

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.jobs.keys()).finish()
    }
}

/// What the built-in jobs need from the outside.
#[derive(Debug, Clone)]
pub struct JobDeps {
    /// Shared HTTP client. It follows redirects: not for caller-chosen URLs
    /// (the webhook job builds its own).
    pub http: reqwest::Client,
    /// The webhook job's settings.
    pub webhook: webhook::WebhookConfig,
}

impl JobRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The jobs that ship with pushworker (fails only if the webhook job's
    /// HTTP client cannot be built).
    pub fn builtin(deps: &JobDeps) -> anyhow::Result<Self> {
        Ok(Self::new()
            .register(echo::Echo)
            .register(sleep::Sleep)
            .register(storage_object::StorageObject)
            .register(webhook::Webhook::new(&deps.webhook)?))
    }

    /// Adds a job. A name already taken keeps its first job and makes
    /// [`check`](Self::check) fail, which `Application::build` calls, so a
    /// clash stops start-up instead of silently replacing a job.
    pub fn register<J: Job>(mut self, job: J) -> Self {
        match self.jobs.entry(J::NAME) {
            Entry::Occupied(_) => self.duplicates.push(J::NAME),
            Entry::Vacant(slot) => {
                slot.insert(Arc::new(Erased(Arc::new(job))));
            }
        }
        self
    }

    /// Fails, naming the job, when a name was registered more than once.
    pub fn check(&self) -> Result<(), DuplicateJob> {
        match self.duplicates.first() {
            Some(name) => Err(DuplicateJob(name)),
            None => Ok(()),
        }
    }

    /// Whether a job of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    /// The jobs, sorted by name.
    pub fn list(&self) -> Vec<JobInfo> {
        self.jobs
            .iter()
            .map(|(name, job)| JobInfo {
                name,
                description: job.description(),
                payload_schema: job.schema(),
                output_schema: job.output_schema(),
            })
            .collect()
    }

    /// Decodes `payload` for job `name` and runs it within `timeout`. A
    /// panic or a timeout is an error, not a crash. The job is polled in the
    /// caller's task (the runner gives each run a task of its own, so that
    /// its end is recorded even when the request goes away); cancelling
    /// `ctx.cancel` gives a job watching it [`CANCEL_GRACE`] to stop, then
    /// drops it.
    pub async fn dispatch(
        &self,
        name: &str,
        payload: axum::body::Bytes,
        ctx: JobContext,
        timeout: Duration,
    ) -> Result<JobOutput, DispatchError> {
        use futures::FutureExt as _;
        let job = self
            .jobs
            .get(name)
            .ok_or_else(|| DispatchError::UnknownJob(name.to_owned()))?;
        let cancel = ctx.cancel.clone();
        let future = job.start(&payload, ctx)?;
        // Decoded: the bytes are not needed while the job runs.
        drop(payload);
        let mut job = std::panic::AssertUnwindSafe(future).catch_unwind();
        let finished = tokio::select! {
            // The job first: one that finishes at once never registers with
            // the token.
            biased;
            finished = tokio::time::timeout(timeout, &mut job) => finished,
            () = cancel.cancelled() => {
                // Shutting down (or the caller left): a job watching its
                // token gets a moment to stop cleanly, then it is dropped.
                return match tokio::time::timeout(CANCEL_GRACE, job).await {
                    Ok(Ok(Ok(output))) => Ok(output),
                    _ => Err(DispatchError::Transient("cancelled before it finished (shutting down)".into())),
                };
            }
        };
        match finished {
            Ok(Ok(Ok(output))) => Ok(output),
            Ok(Ok(Err(JobError::Transient(e)))) => Err(DispatchError::Transient(e)),
            Ok(Ok(Err(JobError::Permanent(e)))) => Err(DispatchError::Permanent(e)),
            Ok(Err(_panic)) => Err(DispatchError::Panicked),
            Err(_) => {
                // Tells a job that spawned work of its own to stop it.
                cancel.cancel();
                Err(DispatchError::Timeout(timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another type under `echo`'s name.
    struct Impostor;

    impl Job for Impostor {
        const NAME: &'static str = "echo";
        const DESCRIPTION: &'static str = "Not the echo job.";
        type Payload = serde_json::Value;
        type Output = ();

        async fn run(&self, _: serde_json::Value, _: JobContext) -> Result<(), JobError> {
            Ok(())
        }
    }

    fn builtin() -> JobRegistry {
        JobRegistry::builtin(&JobDeps {
            http: reqwest::Client::new(),
            webhook: webhook::WebhookConfig::new(
                Vec::<String>::new(),
                webhook::settings::DEFAULT_MAX_RESPONSE_BYTES,
            )
            .expect("valid webhook settings"),
        })
        .expect("the built-in jobs build")
    }

    #[test]
    fn the_builtin_jobs_have_names_of_their_own() {
        assert!(builtin().check().is_ok());
    }

    #[test]
    fn a_taken_name_is_refused_and_keeps_its_first_job() {
        let jobs = builtin().register(Impostor);
        let err = jobs.check().unwrap_err();
        assert_eq!(err.0, "echo");
        assert!(
            err.to_string()
                .starts_with("job `echo` is registered twice")
        );
        let echo = jobs.list().into_iter().find(|j| j.name == "echo").unwrap();
        assert_eq!(echo.description, echo::Echo::DESCRIPTION);
    }
}
