//! The run ledger: a record of every dispatch, and the claim that makes a
//! Pub/Sub message (or a manual trigger's `Idempotency-Key`) run its job once.
//!
//! Pub/Sub push is at-least-once: the same message arrives twice, sometimes at
//! two instances at the same moment, and people double-click. So every
//! dispatch, from any source, first goes through [`RunStore::begin`], which
//! records the run and, when the request carries a [`DedupKey`], claims that
//! key atomically:
//!
//! - nobody holds the key, or the last run failed, or the holder's lease has
//!   expired (its instance died mid-run): the key is ours, the run is recorded
//!   as `running` and the job runs ([`Claim::Started`]);
//! - the key's run succeeded (or was dead-lettered or cancelled, which are
//!   also acks): the request is recorded as a `duplicate` and not run again
//!   ([`Claim::Done`]);
//! - the key's run is running now, lease not expired: recorded as a
//!   `duplicate` and answered "in progress" ([`Claim::InProgress`]), which on
//!   the push path is a nack so the message comes back if that run dies;
//! - on the push path, the key is held (done or running) by a run of other
//!   content: recorded as a `conflict` ([`Claim::Conflict`]) and never acked
//!   as a duplicate. A push key carries a digest of the job and data it
//!   claims ([`message_digest`]); Pub/Sub redelivers a message unchanged, so
//!   a second content under one message id is something to look at, not a
//!   repeat to drop.
//!
//! The lease ([`StoreSettings::lease`], `RUN_LEASE_SECS`) outlives the job
//! timeout, so a live run never loses its key; a crashed instance blocks its
//! message only until the lease expires.
//!
//! [`crate::runner`] holds the one sequence both handlers use: begin, run the
//! job, [`RunStore::finish`]. Two stores implement the trait: [`memory`] (the
//! default, bounded in count and age, for one instance and `make run`) and
//! [`postgres`] (when `DATABASE_URL` is set, shared by many instances).
//!
//! No run is ever acknowledged without a record: when the store cannot be
//! reached, [`StoreError::Unavailable`] becomes a 503 and nothing runs.

pub mod memory;
pub mod metered;
pub mod postgres;
pub mod settings;

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::principal::Principal;

/// Where a run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    /// A Pub/Sub push delivery.
    Push,
    /// A person, from the admin page or the API.
    Manual,
    /// A service (Cloud Scheduler, Cloud Tasks) calling `POST /jobs/{name}`.
    Service,
    /// A CloudEvent delivered to `POST /events` (Eventarc).
    Event,
}

impl RunSource {
    /// The source's name in logs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Manual => "manual",
            Self::Service => "service",
            Self::Event => "event",
        }
    }

    /// Parses a source's name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Push, Self::Manual, Self::Service, Self::Event]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The job is running (or its instance died and the lease will tell).
    Running,
    /// The job returned an output.
    Succeeded,
    /// The job failed in a way a retry may fix (error, timeout, panic); the
    /// key may run again.
    FailedTransient,
    /// The job (or its payload) will fail the same way every time; the key
    /// may still run again, as Pub/Sub redelivers until its dead-letter policy
    /// takes the message.
    FailedPermanent,
    /// Published to the dead-letter topic and acked: done, like a success.
    DeadLettered,
    /// A repeat of a key that was done or running; the job did not run.
    Duplicate,
    /// A delivery of a message id held by a run of other content (job or
    /// data); the job did not run, and the delivery is dead-lettered or
    /// nacked, never acked as a duplicate.
    Conflict,
    /// Stopped by an operator (`POST /runs/{id}/cancel`): done, like a
    /// success, so a redelivery is a duplicate and never runs it again.
    Cancelled,
}

impl RunStatus {
    /// Every status, in the order the API documents them.
    pub const ALL: [Self; 8] = [
        Self::Running,
        Self::Succeeded,
        Self::FailedTransient,
        Self::FailedPermanent,
        Self::DeadLettered,
        Self::Duplicate,
        Self::Conflict,
        Self::Cancelled,
    ];

    /// The status's name in JSON, SQL and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::FailedTransient => "failed_transient",
            Self::FailedPermanent => "failed_permanent",
            Self::DeadLettered => "dead_lettered",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a status name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// What a finished run of this status does to its key: `Done` (repeats
    /// are duplicates), `Failed` (the key may run again), or nothing.
    pub fn claim_state(self) -> Option<ClaimState> {
        match self {
            Self::Succeeded | Self::DeadLettered | Self::Cancelled => Some(ClaimState::Done),
            Self::FailedTransient | Self::FailedPermanent => Some(ClaimState::Failed),
            Self::Running | Self::Duplicate | Self::Conflict => None,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a claimed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// A run holds the key until it finishes or its lease expires.
    Running,
    /// Its run succeeded or was dead-lettered: repeats are duplicates.
    Done,
    /// Its run failed: the next request may claim it.
    Failed,
}

impl ClaimState {
    /// The state's name in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Who asked for a run, as recorded: a kind and an id, never a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
pub struct RunPrincipal {
    /// `google` or `clerk`.
    pub kind: String,
    /// A service account's email or a Clerk user id.
    pub id: String,
}

impl From<&Principal> for RunPrincipal {
    fn from(p: &Principal) -> Self {
        Self {
            kind: p.kind().to_owned(),
            id: p.id().to_owned(),
        }
    }
}

/// The key that makes repeats of one request run once.
///
/// Push deliveries are keyed by (subscription, message id); events by
/// (source, id), CloudEvents' own rule of uniqueness; manual triggers
/// by (job, principal id, `Idempotency-Key`), so two people's keys never
/// collide and a key is not shared across jobs. The parts are joined with a
/// unit separator, which none of them can contain.
///
/// A push key also carries the digest of what it claims
/// ([`message_digest`]): a delivery under a held key with another digest is a
/// [`Claim::Conflict`]. Manual keys carry none (`POST /jobs/{name}` compares
/// the payloads itself and answers 422).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    key: String,
    content: Option<PayloadDigest>,
}

impl DedupKey {
    /// The key of a Pub/Sub message, claiming `content` (see
    /// [`message_digest`]).
    pub fn push(subscription: Option<&str>, message_id: &str, content: PayloadDigest) -> Self {
        Self {
            key: format!(
                "push\u{1f}{}\u{1f}{message_id}",
                subscription.unwrap_or_default()
            ),
            content: Some(content),
        }
    }

    /// The key of a CloudEvent, claiming `content` as a push key does.
    pub fn event(source: &str, id: &str, content: PayloadDigest) -> Self {
        Self {
            key: format!("event\u{1f}{source}\u{1f}{id}"),
            content: Some(content),
        }
    }

    /// The key of a manual (or service) trigger with an `Idempotency-Key`.
    pub fn manual(job: &str, principal_id: &str, key: &str) -> Self {
        Self {
            key: format!("manual\u{1f}{job}\u{1f}{principal_id}\u{1f}{key}"),
            content: None,
        }
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The digest of what the key claims, on the push path.
    pub fn content(&self) -> Option<PayloadDigest> {
        self.content
    }
}

/// What a push claims: SHA-256 of the job it routes to and the decoded
/// data, the job's name length-prefixed so that no two pairs share a digest.
/// Attributes other than the job are left out: on an unwrapped delivery they
/// are headers, which proxies may add to or change between deliveries.
pub fn message_digest(job: &str, data: &[u8]) -> PayloadDigest {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"pushworker message v1\0");
    context.update(&(job.len() as u64).to_be_bytes());
    context.update(job.as_bytes());
    context.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    PayloadDigest(out)
}

/// One run, as recorded and as `GET /runs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// The run's id (UUIDv7: ordered by time).
    pub run_id: Uuid,
    /// The job's name.
    pub job: String,
    /// `push`, `manual`, `service` or `event`.
    pub source: RunSource,
    /// Who asked.
    pub principal: RunPrincipal,
    /// The Pub/Sub message id, on the push path; the CloudEvent's `id` on
    /// an event.
    pub message_id: Option<String>,
    /// The subscription, on the push path when Pub/Sub sent it.
    pub subscription: Option<String>,
    /// The caller's `Idempotency-Key`, on a manual trigger that sent one.
    pub idempotency_key: Option<String>,
    /// The CloudEvent's `source`, on an event.
    pub event_source: Option<String>,
    /// The CloudEvent's `type`, on an event.
    pub event_type: Option<String>,
    /// The CloudEvent's `subject`, on an event that has one.
    pub event_subject: Option<String>,
    /// Delivery attempt (1 on the first).
    pub attempt: u32,
    /// `sha256:<hex>` of the payload bytes, whatever their size.
    #[schema(value_type = String, pattern = "^sha256:[0-9a-f]{64}$")]
    pub payload_digest: PayloadDigest,
    /// The payload, when it is JSON and within `RUN_PAYLOAD_CAP_BYTES`.
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<JsonText>,
    /// Whether the payload was left out for its size.
    pub payload_truncated: bool,
    /// Where the run stands.
    pub status: RunStatus,
    /// When the request reached the worker.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the run finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// How long the job took.
    pub duration_ms: Option<u64>,
    /// What went wrong, for operators (the full text, unlike the HTTP answer).
    pub error: Option<String>,
    /// The machine-readable kind of the failure (`job_timeout`,
    /// `invalid_payload`, `run_in_progress`, …).
    pub error_kind: Option<String>,
    /// The job's output, when within `RUN_OUTPUT_CAP_BYTES`.
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<JsonText>,
    /// Whether the output was left out for its size.
    pub output_truncated: bool,
    /// On a `duplicate` or a `conflict`: the run that held the key.
    pub duplicate_of: Option<Uuid>,
    /// On a re-run (`POST /runs/{id}/rerun`, `POST /runs/rerun`): the run
    /// whose payload it ran again.
    pub rerun_of: Option<Uuid>,
    /// When someone asked to cancel the run (it ends `cancelled` if the job
    /// had not finished by then).
    #[serde(with = "time::serde::rfc3339::option")]
    pub cancel_requested_at: Option<OffsetDateTime>,
    /// Who asked to cancel it.
    pub cancelled_by: Option<RunPrincipal>,
    /// The claimed key, if any (internal: the parts above are public).
    #[serde(skip)]
    pub dedup_key: Option<String>,
}

/// What [`RunStore::begin`] is asked to record.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The record, with status `running`; the store makes it a `duplicate`
    /// (with `duplicate_of`) when the key is taken.
    pub record: RunRecord,
    /// The key to claim, if the request is idempotent.
    pub dedup: Option<DedupKey>,
}

/// The answer of [`RunStore::begin`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Recorded as `running`: run the job, then [`RunStore::finish`].
    Started,
    /// The key's run succeeded (or was dead-lettered); recorded as a
    /// duplicate. `original` is that run, unless it was pruned.
    Done {
        /// The run that holds the key.
        original_run_id: Uuid,
        /// Its record.
        original: Option<Box<RunRecord>>,
    },
    /// The key's run is running now with a live lease; recorded as a
    /// duplicate.
    InProgress {
        /// The run that holds the key.
        original_run_id: Uuid,
        /// Its record.
        original: Option<Box<RunRecord>>,
    },
    /// The key is held (done or running) by a run whose content digest is
    /// not this request's; recorded as a `conflict`, nothing ran.
    Conflict {
        /// The run that holds the key.
        original_run_id: Uuid,
        /// The digest that run claimed.
        claimed: PayloadDigest,
    },
}

/// The error text of a `conflict` record.
pub fn conflict_error(holder: Uuid, claimed: PayloadDigest, content: PayloadDigest) -> String {
    format!(
        "message already claimed by run {holder} with other content ({claimed}; this delivery: {content}); not run"
    )
}

/// How a run ended, for [`RunStore::finish`].
///
/// `status` is always set; every other field is set only when `Some`, so a
/// second call can change the status alone (the dead-letter path turns a
/// `failed_permanent` run into `dead_lettered` with
/// `Finish::status(RunStatus::DeadLettered)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The final status (not `running`, `duplicate` or `conflict`).
    pub status: RunStatus,
    /// When it ended.
    pub finished_at: Option<OffsetDateTime>,
    /// How long the job took.
    pub duration_ms: Option<u64>,
    /// What went wrong.
    pub error: Option<String>,
    /// The failure's kind.
    pub error_kind: Option<String>,
    /// The output (already capped).
    pub output: Option<JsonText>,
    /// Whether the output was left out for its size.
    pub output_truncated: bool,
}

impl Finish {
    /// A change of status alone.
    pub fn status(status: RunStatus) -> Self {
        Self {
            status,
            finished_at: None,
            duration_ms: None,
            error: None,
            error_kind: None,
            output: None,
            output_truncated: false,
        }
    }
}

/// A `GET /runs` query, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only this job.
    pub job: Option<String>,
    /// Only these statuses (any, when empty).
    pub status: Vec<RunStatus>,
    /// Only this source.
    pub source: Option<RunSource>,
    /// Only runs older than this one (the cursor).
    pub before: Option<Uuid>,
    /// At most this many (1 to 200).
    pub limit: usize,
    /// Only push runs of this Pub/Sub message id.
    pub message_id: Option<String>,
    /// Only runs of this `Idempotency-Key` (manual and service triggers).
    pub idempotency_key: Option<String>,
    /// Only runs started at or after this moment.
    pub since: Option<OffsetDateTime>,
    /// Only runs started before this moment.
    pub until: Option<OffsetDateTime>,
    /// Only these runs (any, when empty).
    pub run_ids: Vec<Uuid>,
}

/// How far a run's id (taken first) and its `started_at` (taken just after,
/// from the same clock) may lie apart: a time range is searched on the
/// primary key widened by this much, then on `started_at` exactly.
pub const RUN_ID_MARGIN: Duration = Duration::from_secs(1);

/// The smallest UUIDv7 of the millisecond of `at` (clamped to what a UUIDv7
/// can hold): run ids are UUIDv7, so "started from `at` on" is a range of
/// run ids.
pub fn run_id_floor(at: OffsetDateTime) -> Uuid {
    let millis = (at.unix_timestamp_nanos() / 1_000_000).clamp(0, (1 << 48) - 1);
    let millis = u128::try_from(millis).unwrap_or(0);
    Uuid::from_u128(millis << 80 | 0x7 << 76)
}

/// The run-id range that holds every run started in `[since, until)`
/// (each side open when `None`), widened by [`RUN_ID_MARGIN`].
pub fn run_id_range(
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
) -> (Option<Uuid>, Option<Uuid>) {
    (
        since.map(|t| run_id_floor(t - RUN_ID_MARGIN)),
        until.map(|t| run_id_floor(t + RUN_ID_MARGIN)),
    )
}

/// A `GET /runs/stats` query, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    /// The first bucket's start (a multiple of `bucket` since the epoch).
    pub since: OffsetDateTime,
    /// Runs started before this moment (now, when asked).
    pub until: OffsetDateTime,
    /// Each bucket's length, whole seconds.
    pub bucket: Duration,
}

/// The runs of one job with one status that started in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatsBucket {
    /// When the bucket starts (it lasts `bucket_secs`).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// The job.
    pub job: String,
    /// The runs' status now.
    pub status: RunStatus,
    /// How many runs.
    pub count: u64,
    /// The median `duration_ms` of those that have one (linear
    /// interpolation, as PostgreSQL's `percentile_cont`); `null` when none
    /// has (runs still running).
    pub p50_ms: Option<f64>,
    /// The 95th percentile of `duration_ms`, as `p50_ms`.
    pub p95_ms: Option<f64>,
}

/// The `p`-th percentile (0 to 1) of `sorted` (ascending), interpolated
/// linearly between the two nearest values, as `percentile_cont` does.
pub fn percentile_cont(sorted: &[u64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = p.clamp(0.0, 1.0) * last as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    let value = |i: usize| sorted.get(i.min(last)).map_or(0.0, |&v| v as f64);
    let (a, b) = (value(low), value(high));
    Some(a + (b - a) * (at - low as f64))
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// The last run's id when more runs match.
    pub next: Option<Uuid>,
}

/// Settings shared by both stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// How long a claim holds its key without finishing.
    pub lease: Duration,
    /// How long records are kept.
    pub retention: Duration,
    /// The memory store's bound on records.
    pub max_records: usize,
    /// The PostgreSQL store's pool and batching.
    pub postgres: postgres::PgSettings,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is unreachable or failed: 503, and nothing runs unrecorded.
    /// The cause (with its chain) is for the log only.
    #[error("run store unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// A boxed store future (the trait is used as `dyn RunStore`).
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Where runs are recorded and keys claimed.
pub trait RunStore: Send + Sync + fmt::Debug + 'static {
    /// `memory` or `postgres`, for logs.
    fn kind(&self) -> &'static str;

    /// Records `new` and, with a key, claims it atomically (see the module
    /// docs and [`Claim`]). With no key, the run is simply recorded as
    /// running.
    fn begin(&self, new: NewRun) -> StoreFuture<'_, Claim>;

    /// Records how run `run_id` ended and releases its key (done or failed)
    /// if it still holds it. Returns whether the run exists.
    fn finish(&self, run_id: Uuid, finish: Finish) -> StoreFuture<'_, bool>;

    /// One run.
    fn get(&self, run_id: Uuid) -> StoreFuture<'_, Option<RunRecord>>;

    /// Runs matching `query`, newest first.
    fn list(&self, query: RunQuery) -> StoreFuture<'_, RunPage>;

    /// Per bucket of `query.bucket` from `query.since`, per job and status:
    /// how many runs started, and their median and 95th percentile
    /// duration. Ordered by bucket, job, status; a combination with no run
    /// is left out.
    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Vec<StatsBucket>>;

    /// Marks run `run_id` as asked to be cancelled by `by`, if it is
    /// running; the runner that holds it sees the mark through
    /// [`RunStore::cancel_requests`]. A second request keeps the first one's
    /// time and author.
    fn request_cancel(&self, run_id: Uuid, by: RunPrincipal) -> StoreFuture<'_, CancelRequest>;

    /// Which of `run_ids` someone asked to cancel.
    fn cancel_requests(&self, run_ids: Vec<Uuid>) -> StoreFuture<'_, Vec<Uuid>>;

    /// Marks runs left `running` past the lease as failed, and deletes
    /// records past the retention. Returns how many records were deleted.
    fn prune(&self) -> StoreFuture<'_, u64>;
}

/// The answer of [`RunStore::request_cancel`].
#[derive(Debug, Clone, PartialEq)]
pub enum CancelRequest {
    /// The run is running and now marked; its record as marked.
    Requested(Box<RunRecord>),
    /// The run has already ended; its record.
    NotRunning(Box<RunRecord>),
    /// No such run.
    NotFound,
}

/// The error text of a run whose lease expired while it was running.
pub const LEASE_EXPIRED: &str = "lease expired before the run finished (its instance stopped or lost the store); another delivery took over";

/// The error text of a run found still `running` past the lease by pruning.
pub const ABANDONED: &str =
    "still running past the lease: its instance stopped before recording an end";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> PayloadDigest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    PayloadDigest(out)
}

/// The SHA-256 of a payload: 32 bytes in memory, `sha256:<hex>` in the API
/// and in PostgreSQL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadDigest([u8; 32]);

impl PayloadDigest {
    /// Reads `sha256:<64 lowercase or uppercase hex digits>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let nibble = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for PayloadDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 7 + 64];
        text[..7].copy_from_slice(b"sha256:");
        for (i, &b) in self.0.iter().enumerate() {
            text[7 + 2 * i] = HEX[usize::from(b >> 4)];
            text[8 + 2 * i] = HEX[usize::from(b & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PayloadDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PayloadDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A JSON value kept as its text, checked once when it is made: a recorded
/// payload or output costs one allocation of its own length, and is written
/// out (API, PostgreSQL) without being parsed or built again.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The bytes, if they are one JSON value (surrounding whitespace aside).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Self)
    }

    /// The JSON text of `value`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Text known to be JSON (serde_json wrote it); checked all the same.
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

/// Same text, same value (texts are compared as written).
impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// `now`, at the microsecond precision PostgreSQL keeps, so both stores
/// answer the same timestamps.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Spawns the periodic pruning of `store` (every `every`), logging what it
/// did. Several instances pruning at once is harmless.
pub fn spawn_pruner(store: std::sync::Arc<dyn RunStore>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, store = store.kind(), "pruned old runs"),
                Err(e) => {
                    tracing::warn!(error = %e, store = store.kind(), "pruning runs failed; will try again")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_names() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(RunStatus::parse("timed_out"), None);
    }

    #[test]
    fn digest_is_sha256_hex() {
        let text = digest(b"abc").to_string();
        assert_eq!(PayloadDigest::parse(&text), Some(digest(b"abc")));
        assert_eq!(PayloadDigest::parse(&text[1..]), None);
        assert_eq!(
            text,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The interpolation PostgreSQL's `percentile_cont` does.
    #[test]
    fn percentiles_interpolate_like_percentile_cont() {
        assert_eq!(percentile_cont(&[], 0.5), None);
        assert_eq!(percentile_cont(&[7], 0.95), Some(7.0));
        assert_eq!(percentile_cont(&[100, 200], 0.5), Some(150.0));
        let tens: Vec<u64> = (1..=10).map(|i| i * 10).collect();
        assert_eq!(percentile_cont(&tens, 0.5), Some(55.0));
        let p95 = percentile_cont(&tens, 0.95).unwrap();
        assert!((p95 - 95.5).abs() < 1e-9, "{p95}");
        assert_eq!(percentile_cont(&tens, 1.0), Some(100.0));
    }

    /// A run's id is at or above the floor of its millisecond, and below the
    /// floor of the next one.
    #[test]
    fn run_id_floors_bound_the_ids_of_their_millisecond() {
        let id = Uuid::now_v7();
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        let at = OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap()).unwrap()
            + Duration::from_nanos(u64::from(nanos));
        assert!(run_id_floor(at) <= id);
        assert!(id < run_id_floor(at + Duration::from_millis(1)));
        assert_eq!(run_id_floor(at).get_version_num(), 7);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h…");
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }

    #[test]
    fn dedup_keys_of_different_sources_never_collide() {
        let content = message_digest("echo", b"{}");
        assert_ne!(
            DedupKey::push(Some("s"), "1", content).as_str(),
            DedupKey::manual("s", "1", "").as_str()
        );
        assert_ne!(
            DedupKey::push(None, "1", content).as_str(),
            DedupKey::push(Some("x"), "1", content).as_str()
        );
        assert_ne!(
            DedupKey::event("s", "1", content).as_str(),
            DedupKey::push(Some("s"), "1", content).as_str()
        );
        assert_ne!(
            DedupKey::event("a", "1", content).as_str(),
            DedupKey::event("b", "1", content).as_str()
        );
    }

    /// The key is the message alone; its content is carried beside it.
    #[test]
    fn push_keys_carry_their_content_beside_the_key() {
        let a = DedupKey::push(Some("s"), "1", message_digest("echo", b"a"));
        let b = DedupKey::push(Some("s"), "1", message_digest("echo", b"b"));
        assert_eq!(a.as_str(), b.as_str());
        assert_ne!(a.content(), b.content());
        assert_eq!(DedupKey::manual("j", "u", "k").content(), None);
    }

    /// Job and data both count, and their boundary cannot be moved.
    #[test]
    fn message_digests_tell_job_and_data_apart() {
        let d = message_digest;
        assert_eq!(d("echo", b"{}"), d("echo", b"{}"));
        assert_ne!(d("echo", b"{}"), d("count", b"{}"));
        assert_ne!(d("echo", b"{\"a\":1}"), d("echo", b"{\"a\":2}"));
        assert_ne!(d("ab", b"c"), d("a", b"bc"));
        assert_ne!(d("echo", b"{}"), digest(b"{}"));
    }
}
