//! The embedded run store: in memory, for one instance, so `make run` and a
//! single Cloud Run instance need nothing else.
//!
//! Claims are exact within the process: one mutex guards records and keys,
//! and it is never held across an await. Records are bounded by count
//! (`RUNS_MAX_RECORDS`: the oldest go first) and by age
//! (`RUNS_RETENTION_HOURS`); a key is forgotten with its run's record, unless
//! that run is still running. Nothing survives a restart, and two instances
//! do not see each other's keys: that is what [`super::postgres`] is for.

use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet, VecDeque, vec_deque},
    iter::Rev,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use futures::FutureExt as _;
use time::OffsetDateTime;
use uuid::Uuid;

use super::RunSource;
use super::{
    ABANDONED, Claim, ClaimState, Finish, JsonText, LEASE_EXPIRED, NewRun, PayloadDigest, RunPage,
    RunPrincipal, RunQuery, RunRecord, RunStatus, RunStore, StoreFuture, StoreSettings,
    conflict_error, now_micros,
};

#[derive(Debug)]
struct KeyClaim {
    run_id: Uuid,
    state: ClaimState,
    lease_until: Instant,
    /// What the holder claimed (push keys): another content is a conflict.
    content: Option<PayloadDigest>,
}

/// A record as kept: 200 bytes inline, with payload and output as their
/// JSON text, the digest as its 32 bytes, the dedup key shared with the
/// claim that holds it, the job, principal and subscription (the same few
/// over and over) shared between records, and what a succeeding push lacks
/// behind one pointer ([`Rare`]). [`RunRecord`]s are built only for readers.
///
/// Why so compact: a full ledger is most of the worker's memory under load,
/// so every byte a record keeps inline counts once per record
/// (`scripts/bench-ab.sh` with the ledger full shows what a change costs).
#[derive(Debug)]
struct Stored {
    job: Arc<str>,
    source: RunSource,
    status: RunStatus,
    attempt: u32,
    payload_truncated: bool,
    output_truncated: bool,
    principal: Arc<RunPrincipal>,
    subscription: Option<Arc<str>>,
    message_id: Option<Box<str>>,
    dedup_key: Option<Arc<str>>,
    payload_digest: PayloadDigest,
    payload: Option<JsonText>,
    output: Option<JsonText>,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
    duration_ms: Option<u64>,
    /// What most runs (a push that succeeds) do not have: 8 bytes instead of
    /// 72 when absent.
    rare: Option<Box<Rare>>,
}

/// The parts of a [`Stored`] record that most runs leave empty.
#[derive(Debug, Default)]
struct Rare {
    idempotency_key: Option<Box<str>>,
    error: Option<Box<str>>,
    error_kind: Option<Box<str>>,
    duplicate_of: Option<Uuid>,
}

impl Stored {
    fn new(record: RunRecord, dedup_key: Option<Arc<str>>, shared: &mut Shared) -> Self {
        Self {
            job: shared.text(record.job),
            source: record.source,
            status: record.status,
            attempt: record.attempt,
            payload_truncated: record.payload_truncated,
            output_truncated: record.output_truncated,
            principal: shared.principal(record.principal),
            subscription: record.subscription.map(|s| shared.text(s)),
            message_id: record.message_id.map(String::into_boxed_str),
            dedup_key,
            payload_digest: record.payload_digest,
            payload: record.payload,
            output: record.output,
            started_at: record.started_at,
            finished_at: record.finished_at,
            duration_ms: record.duration_ms,
            rare: {
                let rare = Rare {
                    idempotency_key: record.idempotency_key.map(String::into_boxed_str),
                    error: record.error.map(String::into_boxed_str),
                    error_kind: record.error_kind.map(String::into_boxed_str),
                    duplicate_of: record.duplicate_of,
                };
                let empty = rare.idempotency_key.is_none()
                    && rare.error.is_none()
                    && rare.error_kind.is_none()
                    && rare.duplicate_of.is_none();
                (!empty).then(|| Box::new(rare))
            },
        }
    }

    fn rare(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    fn set_error(&mut self, error: impl Into<Box<str>>, kind: impl Into<Box<str>>) {
        let rare = self.rare_mut();
        rare.error = Some(error.into());
        rare.error_kind = Some(kind.into());
    }

    fn to_record(&self, run_id: Uuid) -> RunRecord {
        let text = |t: &Option<Box<str>>| t.as_deref().map(str::to_owned);
        RunRecord {
            run_id,
            job: self.job.to_string(),
            source: self.source,
            principal: RunPrincipal::clone(&self.principal),
            message_id: text(&self.message_id),
            subscription: self.subscription.as_deref().map(str::to_owned),
            idempotency_key: self.rare().and_then(|r| text(&r.idempotency_key)),
            attempt: self.attempt,
            payload_digest: self.payload_digest,
            payload: self.payload.clone(),
            payload_truncated: self.payload_truncated,
            status: self.status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            error: self.rare().and_then(|r| text(&r.error)),
            error_kind: self.rare().and_then(|r| text(&r.error_kind)),
            output: self.output.clone(),
            output_truncated: self.output_truncated,
            duplicate_of: self.rare().and_then(|r| r.duplicate_of),
            dedup_key: self.dedup_key.as_deref().map(str::to_owned),
        }
    }
}

/// Texts and principals that recur from record to record, kept once. At
/// most [`Shared::MAX`] of each: past that (many distinct users, say) new
/// ones are simply not shared.
#[derive(Debug, Default)]
struct Shared {
    texts: HashSet<Arc<str>, Hasher>,
    principals: HashSet<Arc<RunPrincipal>, Hasher>,
}

/// foldhash, seeded per process: SipHash showed among a push's heaviest
/// functions under callgrind (four to six hashes per run), and these keys
/// come from verified callers only.
type Hasher = foldhash::fast::RandomState;

impl Shared {
    const MAX: usize = 4096;

    fn text(&mut self, text: String) -> Arc<str> {
        if let Some(known) = self.texts.get(text.as_str()) {
            return Arc::clone(known);
        }
        let text: Arc<str> = text.into();
        if self.texts.len() < Self::MAX {
            self.texts.insert(Arc::clone(&text));
        }
        text
    }

    fn principal(&mut self, principal: RunPrincipal) -> Arc<RunPrincipal> {
        if let Some(known) = self.principals.get(&principal) {
            return Arc::clone(known);
        }
        let principal = Arc::new(principal);
        if self.principals.len() < Self::MAX {
            self.principals.insert(Arc::clone(&principal));
        }
        principal
    }
}

/// Records by run id, oldest first: a deque kept sorted by id.
///
/// Not a `BTreeMap`: run ids are UUIDv7 taken just before the insert, so
/// nearly every insert lands at the back (or a few places from it) and the
/// oldest leave from the front. A B-tree fed in order leaves its nodes about
/// half full, so the same records take far more memory than in a deque. The
/// deque grows to at most one past the count bound, never to the next power
/// of two.
#[derive(Debug)]
struct Runs {
    sorted: VecDeque<(Uuid, Stored)>,
    /// The count bound plus one: a record is inserted before the oldest goes.
    max_len: usize,
}

impl Runs {
    fn new(max_records: usize) -> Self {
        Self {
            sorted: VecDeque::new(),
            max_len: max_records.saturating_add(1),
        }
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Where `run_id` is (`Ok`) or would go (`Err`). Galloping from the back,
    /// then a binary search in the last stride: the runs being begun and
    /// finished are the newest, a few places from the end, and a plain binary
    /// search over a full ledger touches a cold cache line at every probe (it
    /// showed under `perf` on a push load).
    fn position(&self, run_id: &Uuid) -> Result<usize, usize> {
        // Every index at or past `upper` holds a greater id.
        let mut upper = self.sorted.len();
        let mut stride = 1;
        let mut lower = 0;
        while upper > 0 {
            let probe = upper.saturating_sub(stride);
            match self.sorted[probe].0.cmp(run_id) {
                Ordering::Equal => return Ok(probe),
                Ordering::Less => {
                    lower = probe + 1;
                    break;
                }
                Ordering::Greater => {
                    upper = probe;
                    stride = stride.saturating_mul(2);
                }
            }
        }
        while lower < upper {
            let mid = lower + (upper - lower) / 2;
            match self.sorted[mid].0.cmp(run_id) {
                Ordering::Equal => return Ok(mid),
                Ordering::Less => lower = mid + 1,
                Ordering::Greater => upper = mid,
            }
        }
        Err(lower)
    }

    fn get(&self, run_id: &Uuid) -> Option<&Stored> {
        let at = self.position(run_id).ok()?;
        self.sorted.get(at).map(|(_, r)| r)
    }

    fn get_mut(&mut self, run_id: &Uuid) -> Option<&mut Stored> {
        let at = self.position(run_id).ok()?;
        self.sorted.get_mut(at).map(|(_, r)| r)
    }

    /// Inserts in order, replacing a record with the same id.
    fn insert(&mut self, run_id: Uuid, stored: Stored) {
        match self.position(&run_id) {
            Ok(at) => self.sorted[at].1 = stored,
            Err(at) => {
                if self.sorted.len() == self.sorted.capacity() {
                    // Doubling, but never past the bound.
                    let len = self.sorted.len();
                    let target = len.saturating_mul(2).max(16).min(self.max_len).max(len + 1);
                    self.sorted.reserve_exact(target - len);
                }
                self.sorted.insert(at, (run_id, stored));
            }
        }
    }

    fn first(&self) -> Option<&Stored> {
        self.sorted.front().map(|(_, r)| r)
    }

    fn pop_first(&mut self) -> Option<(Uuid, Stored)> {
        self.sorted.pop_front()
    }

    /// Newest first, from just before `before` (or from the newest).
    fn newest_before(&self, before: Option<Uuid>) -> Rev<vec_deque::Iter<'_, (Uuid, Stored)>> {
        let end = match before {
            Some(before) => self.sorted.partition_point(|(id, _)| *id < before),
            None => self.sorted.len(),
        };
        self.sorted.range(..end).rev()
    }

    fn iter(&self) -> vec_deque::Iter<'_, (Uuid, Stored)> {
        self.sorted.iter()
    }
}

#[derive(Debug)]
struct Inner {
    runs: Runs,
    claims: HashMap<Arc<str>, KeyClaim, Hasher>,
    shared: Shared,
}

/// Runs and keys in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    settings: StoreSettings,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(settings: StoreSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                runs: Runs::new(settings.max_records),
                claims: HashMap::default(),
                shared: Shared::default(),
            }),
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the ledger would.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_now(&self, new: NewRun) -> Claim {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut record = new.record;
        let content = new.dedup.as_ref().and_then(|k| k.content());
        // One copy of the key, shared by the claim and the record.
        let dedup_key: Option<Arc<str>> = new.dedup.map(|k| k.as_str().into());
        let claim = match &dedup_key {
            None => Claim::Started,
            Some(key) => {
                let existing = inner
                    .claims
                    .get(key)
                    .map(|c| (c.run_id, c.state, c.lease_until, c.content));
                let held = |state, until| {
                    state == ClaimState::Done || (state == ClaimState::Running && until > now)
                };
                match existing {
                    Some((holder, state, until, Some(claimed)))
                        if held(state, until) && content.is_some_and(|c| c != claimed) =>
                    {
                        Claim::Conflict {
                            original_run_id: holder,
                            claimed,
                        }
                    }
                    Some((holder, ClaimState::Done, _, _)) => Claim::Done {
                        original_run_id: holder,
                        original: inner
                            .runs
                            .get(&holder)
                            .map(|s| Box::new(s.to_record(holder))),
                    },
                    Some((holder, ClaimState::Running, until, _)) if until > now => {
                        Claim::InProgress {
                            original_run_id: holder,
                            original: inner
                                .runs
                                .get(&holder)
                                .map(|s| Box::new(s.to_record(holder))),
                        }
                    }
                    previous => {
                        if let Some((holder, ClaimState::Running, _, _)) = previous {
                            mark_failed(&mut inner, holder, LEASE_EXPIRED);
                        }
                        inner.claims.insert(
                            Arc::clone(key),
                            KeyClaim {
                                run_id: record.run_id,
                                state: ClaimState::Running,
                                lease_until: now + self.settings.lease,
                                content,
                            },
                        );
                        Claim::Started
                    }
                }
            }
        };
        match &claim {
            Claim::Started => record.status = RunStatus::Running,
            Claim::Done {
                original_run_id, ..
            }
            | Claim::InProgress {
                original_run_id, ..
            } => {
                record.status = RunStatus::Duplicate;
                record.duplicate_of = Some(*original_run_id);
                record.finished_at = Some(record.started_at);
                record.duration_ms = Some(0);
                if matches!(claim, Claim::InProgress { .. }) {
                    record.error_kind = Some("run_in_progress".to_owned());
                    record.error = Some(format!(
                        "run {original_run_id} was in progress; answered 409 so the delivery comes back"
                    ));
                }
            }
            Claim::Conflict {
                original_run_id,
                claimed,
            } => {
                record.status = RunStatus::Conflict;
                record.duplicate_of = Some(*original_run_id);
                record.finished_at = Some(record.started_at);
                record.duration_ms = Some(0);
                record.error_kind = Some("message_conflict".to_owned());
                record.error = content.map(|c| conflict_error(*original_run_id, *claimed, c));
            }
        }
        let run_id = record.run_id;
        let stored = Stored::new(record, dedup_key, &mut inner.shared);
        inner.runs.insert(run_id, stored);
        self.enforce_bounds(&mut inner);
        claim
    }

    /// Drops the oldest records past the count and age bounds, and each
    /// dropped run's key unless that run still runs.
    fn enforce_bounds(&self, inner: &mut Inner) {
        let cutoff = OffsetDateTime::now_utc() - self.settings.retention;
        loop {
            let over_count = inner.runs.len() > self.settings.max_records;
            let over_age = inner.runs.first().is_some_and(|r| r.started_at < cutoff);
            if !(over_count || over_age) {
                break;
            }
            let Some((run_id, dropped)) = inner.runs.pop_first() else {
                break;
            };
            if let Some(key) = &dropped.dedup_key {
                let forget = inner
                    .claims
                    .get(key)
                    .is_some_and(|c| c.run_id == run_id && c.state != ClaimState::Running);
                if forget {
                    inner.claims.remove(key);
                }
            }
        }
    }
}

/// Marks a running run as failed (its lease expired or it was abandoned).
fn mark_failed(inner: &mut Inner, run_id: Uuid, why: &str) {
    if let Some(run) = inner.runs.get_mut(&run_id)
        && run.status == RunStatus::Running
    {
        run.status = RunStatus::FailedTransient;
        run.set_error(why, "lease_expired");
        run.finished_at = Some(now_micros());
    }
}

impl RunStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn begin(&self, new: NewRun) -> StoreFuture<'_, Claim> {
        let claim = self.begin_now(new);
        async move { Ok(claim) }.boxed()
    }

    fn finish(&self, run_id: Uuid, finish: Finish) -> StoreFuture<'_, bool> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let found = match inner.runs.get_mut(&run_id) {
            None => false,
            Some(run) => {
                if finish.output.is_some() {
                    run.output = finish.output;
                }
                run.status = finish.status;
                if finish.finished_at.is_some() {
                    run.finished_at = finish.finished_at;
                }
                if finish.duration_ms.is_some() {
                    run.duration_ms = finish.duration_ms;
                }
                if let Some(error) = finish.error {
                    run.rare_mut().error = Some(error.into_boxed_str());
                }
                if let Some(kind) = finish.error_kind {
                    run.rare_mut().error_kind = Some(kind.into_boxed_str());
                }
                run.output_truncated |= finish.output_truncated;
                if let (Some(key), Some(state)) = (&run.dedup_key, finish.status.claim_state())
                    && let Some(claim) = inner.claims.get_mut(key)
                    && claim.run_id == run_id
                {
                    claim.state = state;
                }
                true
            }
        };
        drop(guard);
        async move { Ok(found) }.boxed()
    }

    fn get(&self, run_id: Uuid) -> StoreFuture<'_, Option<RunRecord>> {
        let run = self.lock().runs.get(&run_id).map(|s| s.to_record(run_id));
        async move { Ok(run) }.boxed()
    }

    fn list(&self, query: RunQuery) -> StoreFuture<'_, RunPage> {
        let inner = self.lock();
        let mut matching = inner
            .runs
            .newest_before(query.before)
            .filter(|(_, r)| query.job.as_deref().is_none_or(|j| &*r.job == j))
            .filter(|(_, r)| query.status.is_none_or(|s| r.status == s))
            .filter(|(_, r)| query.source.is_none_or(|s| r.source == s));
        let runs: Vec<RunRecord> = matching
            .by_ref()
            .take(query.limit)
            .map(|(id, r)| r.to_record(*id))
            .collect();
        let more = matching.next().is_some();
        drop(inner);
        let next = if more {
            runs.last().map(|r| r.run_id)
        } else {
            None
        };
        async move { Ok(RunPage { runs, next }) }.boxed()
    }

    fn prune(&self) -> StoreFuture<'_, u64> {
        let mut inner = self.lock();
        let stale = OffsetDateTime::now_utc() - self.settings.lease;
        let abandoned: Vec<Uuid> = inner
            .runs
            .iter()
            .filter(|(_, r)| r.status == RunStatus::Running && r.started_at < stale)
            .map(|(id, _)| *id)
            .collect();
        for run_id in abandoned {
            mark_failed(&mut inner, run_id, ABANDONED);
            if let Some(run) = inner.runs.get_mut(&run_id) {
                run.rare_mut().error_kind = Some("abandoned".into());
            }
        }
        let before = inner.runs.len();
        self.enforce_bounds(&mut inner);
        let deleted = (before - inner.runs.len()) as u64;
        drop(inner);
        async move { Ok(deleted) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runs::{DedupKey, RunPrincipal, RunSource};

    fn settings(lease: Duration, max_records: usize) -> StoreSettings {
        StoreSettings {
            lease,
            retention: Duration::from_secs(3600),
            max_records,
            postgres: Default::default(),
        }
    }

    fn new_run(key: Option<&str>) -> NewRun {
        new_run_of(key, b"{}")
    }

    /// A push run of `key` whose message carries `data`.
    fn new_run_of(key: Option<&str>, data: &[u8]) -> NewRun {
        NewRun {
            record: RunRecord {
                run_id: Uuid::now_v7(),
                job: "echo".into(),
                source: RunSource::Push,
                principal: RunPrincipal {
                    kind: "google".into(),
                    id: "a@b".into(),
                },
                message_id: key.map(str::to_owned),
                subscription: None,
                idempotency_key: None,
                attempt: 1,
                payload_digest: crate::runs::digest(b"{}"),
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
                dedup_key: None,
            },
            dedup: key.map(|k| DedupKey::push(None, k, crate::runs::message_digest("echo", data))),
        }
    }

    #[tokio::test]
    async fn a_key_runs_once_then_is_a_duplicate() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 100));
        let first = new_run(Some("m1"));
        let first_id = first.record.run_id;
        assert_eq!(store.begin(first).await.unwrap(), Claim::Started);
        assert!(matches!(
            store.begin(new_run(Some("m1"))).await.unwrap(),
            Claim::InProgress { original_run_id, .. } if original_run_id == first_id
        ));
        store
            .finish(first_id, Finish::status(RunStatus::Succeeded))
            .await
            .unwrap();
        assert!(matches!(
            store.begin(new_run(Some("m1"))).await.unwrap(),
            Claim::Done { original_run_id, .. } if original_run_id == first_id
        ));
    }

    /// Another content under a held key is a conflict, recorded as such,
    /// whether the holder runs or is done; the same content stays a plain
    /// duplicate, and a failed holder still frees the key for any content.
    #[tokio::test]
    async fn other_content_under_a_held_key_is_a_conflict() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 100));
        let first = new_run_of(Some("m3"), b"A");
        let first_id = first.record.run_id;
        let claimed = first.dedup.as_ref().and_then(DedupKey::content).unwrap();
        assert_eq!(store.begin(first).await.unwrap(), Claim::Started);
        let expected = Claim::Conflict {
            original_run_id: first_id,
            claimed,
        };
        assert_eq!(
            store.begin(new_run_of(Some("m3"), b"B")).await.unwrap(),
            expected
        );
        store
            .finish(first_id, Finish::status(RunStatus::Succeeded))
            .await
            .unwrap();
        let late = new_run_of(Some("m3"), b"B");
        let late_id = late.record.run_id;
        assert_eq!(store.begin(late).await.unwrap(), expected);
        let late = store.get(late_id).await.unwrap().unwrap();
        assert_eq!(late.status, RunStatus::Conflict);
        assert_eq!(late.duplicate_of, Some(first_id));
        assert_eq!(late.error_kind.as_deref(), Some("message_conflict"));
        assert!(late.error.unwrap().contains(&first_id.to_string()));
        assert!(matches!(
            store.begin(new_run_of(Some("m3"), b"A")).await.unwrap(),
            Claim::Done { original_run_id, .. } if original_run_id == first_id
        ));

        let failed = new_run_of(Some("m4"), b"A");
        let failed_id = failed.record.run_id;
        store.begin(failed).await.unwrap();
        store
            .finish(failed_id, Finish::status(RunStatus::FailedTransient))
            .await
            .unwrap();
        assert_eq!(
            store.begin(new_run_of(Some("m4"), b"B")).await.unwrap(),
            Claim::Started
        );
    }

    #[tokio::test]
    async fn a_failed_run_and_an_expired_lease_free_the_key() {
        let store = MemoryStore::new(settings(Duration::from_millis(50), 100));
        let first = new_run(Some("m2"));
        let first_id = first.record.run_id;
        store.begin(first).await.unwrap();
        store
            .finish(first_id, Finish::status(RunStatus::FailedTransient))
            .await
            .unwrap();
        let second = new_run(Some("m2"));
        let second_id = second.record.run_id;
        assert_eq!(store.begin(second).await.unwrap(), Claim::Started);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            store.begin(new_run(Some("m2"))).await.unwrap(),
            Claim::Started
        );
        let second = store.get(second_id).await.unwrap().unwrap();
        assert_eq!(second.status, RunStatus::FailedTransient);
        assert_eq!(second.error.as_deref(), Some(LEASE_EXPIRED));
    }

    #[tokio::test]
    async fn the_count_bound_drops_the_oldest() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 3));
        let mut ids = Vec::new();
        for _ in 0..5 {
            let run = new_run(None);
            ids.push(run.record.run_id);
            store.begin(run).await.unwrap();
        }
        let page = store
            .list(RunQuery {
                limit: 10,
                ..RunQuery::default()
            })
            .await
            .unwrap();
        let listed: Vec<Uuid> = page.runs.iter().map(|r| r.run_id).collect();
        assert_eq!(listed, vec![ids[4], ids[3], ids[2]]);
    }

    #[test]
    fn runs_stay_sorted_and_within_one_past_the_bound() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 100));
        let stored = |store: &MemoryStore| {
            let record = new_run(None).record;
            let mut inner = store.lock();
            Stored::new(record, None, &mut inner.shared)
        };
        let ids: Vec<Uuid> = (0..300).map(|_| Uuid::now_v7()).collect();
        let mut runs = Runs::new(100);
        // Out of order, as two requests may take their ids and the lock in
        // opposite orders; then one id again, which replaces.
        for pair in ids.chunks(2) {
            for id in [pair[1], pair[0]] {
                runs.insert(id, stored(&store));
                if runs.len() > 100 {
                    runs.pop_first();
                }
            }
        }
        runs.insert(ids[299], stored(&store));
        let held: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
        assert_eq!(held, ids[200..]);
        assert!(runs.sorted.capacity() <= 101, "{}", runs.sorted.capacity());
        for (at, id) in ids.iter().enumerate() {
            let expected = if at < 200 { Err(0) } else { Ok(at - 200) };
            assert_eq!(runs.position(id), expected, "id {at}");
        }
        // Absent ids between and around the held ones land where a plain
        // binary search puts them.
        let between = |a: &Uuid, b: &Uuid| {
            let (a, b) = (a.as_u128(), b.as_u128());
            Uuid::from_u128(a + (b - a) / 2)
        };
        let mut absent: Vec<Uuid> = ids.windows(2).map(|w| between(&w[0], &w[1])).collect();
        absent.extend([Uuid::nil(), Uuid::max()]);
        for id in &absent {
            assert_eq!(
                runs.position(id),
                runs.sorted.binary_search_by(|(held, _)| held.cmp(id)),
                "{id}"
            );
        }
        let newest: Vec<Uuid> = runs
            .newest_before(Some(ids[203]))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(newest, vec![ids[202], ids[201], ids[200]]);
        assert_eq!(
            runs.newest_before(None).next().map(|(id, _)| *id),
            Some(ids[299])
        );
    }
}
