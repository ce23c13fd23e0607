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
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use futures::FutureExt as _;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ABANDONED, Claim, ClaimState, Finish, JsonText, LEASE_EXPIRED, NewRun, PayloadDigest, RunPage,
    RunPrincipal, RunQuery, RunRecord, RunStatus, RunStore, StoreFuture, StoreSettings, now_micros,
};
use crate::jobs::RunSource;

#[derive(Debug)]
struct KeyClaim {
    run_id: Uuid,
    state: ClaimState,
    lease_until: Instant,
}

/// A record as kept, about 1 KB with its claim and the allocator's overhead
/// (1.8 KB when it held a whole [`RunRecord`]; measured as the RSS of 100
/// against 10,000 and 20,000 records under push load): payload and output
/// as their JSON text, the
/// digest as its 32 bytes, the dedup key shared with the claim that holds
/// it, and the job, principal and subscription (the same few over and over)
/// shared between records. [`RunRecord`]s are built only for readers.
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
    idempotency_key: Option<Box<str>>,
    dedup_key: Option<Arc<str>>,
    payload_digest: PayloadDigest,
    payload: Option<JsonText>,
    output: Option<JsonText>,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
    duration_ms: Option<u64>,
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
            idempotency_key: record.idempotency_key.map(String::into_boxed_str),
            dedup_key,
            payload_digest: record.payload_digest,
            payload: record.payload,
            output: record.output,
            started_at: record.started_at,
            finished_at: record.finished_at,
            duration_ms: record.duration_ms,
            error: record.error.map(String::into_boxed_str),
            error_kind: record.error_kind.map(String::into_boxed_str),
            duplicate_of: record.duplicate_of,
        }
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
            idempotency_key: text(&self.idempotency_key),
            attempt: self.attempt,
            payload_digest: self.payload_digest,
            payload: self.payload.clone(),
            payload_truncated: self.payload_truncated,
            status: self.status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            error: text(&self.error),
            error_kind: text(&self.error_kind),
            output: self.output.clone(),
            output_truncated: self.output_truncated,
            duplicate_of: self.duplicate_of,
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

/// foldhash, seeded per process: SipHash cost about 2k instructions per
/// push under callgrind (four to six hashes per run), and these keys come
/// from verified callers only.
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

#[derive(Debug, Default)]
struct Inner {
    /// By run id: UUIDv7, so oldest first.
    runs: BTreeMap<Uuid, Stored>,
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
            settings,
            inner: Mutex::new(Inner::default()),
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
        // One copy of the key, shared by the claim and the record.
        let dedup_key: Option<Arc<str>> = new.dedup.map(|k| k.as_str().into());
        let claim = match &dedup_key {
            None => Claim::Started,
            Some(key) => {
                let existing = inner
                    .claims
                    .get(key)
                    .map(|c| (c.run_id, c.state, c.lease_until));
                match existing {
                    Some((holder, ClaimState::Done, _)) => Claim::Done {
                        original_run_id: holder,
                        original: inner
                            .runs
                            .get(&holder)
                            .map(|s| Box::new(s.to_record(holder))),
                    },
                    Some((holder, ClaimState::Running, until)) if until > now => {
                        Claim::InProgress {
                            original_run_id: holder,
                            original: inner
                                .runs
                                .get(&holder)
                                .map(|s| Box::new(s.to_record(holder))),
                        }
                    }
                    previous => {
                        if let Some((holder, ClaimState::Running, _)) = previous {
                            mark_failed(&mut inner, holder, LEASE_EXPIRED);
                        }
                        inner.claims.insert(
                            Arc::clone(key),
                            KeyClaim {
                                run_id: record.run_id,
                                state: ClaimState::Running,
                                lease_until: now + self.settings.lease,
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
            let over_age = inner
                .runs
                .first_key_value()
                .is_some_and(|(_, r)| r.started_at < cutoff);
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
        run.error = Some(why.into());
        run.error_kind = Some("lease_expired".into());
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
                    run.error = Some(error.into_boxed_str());
                }
                if let Some(kind) = finish.error_kind {
                    run.error_kind = Some(kind.into_boxed_str());
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
        let upper = match query.before {
            Some(before) => std::ops::Bound::Excluded(before),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching = inner
            .runs
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
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
                run.error_kind = Some("abandoned".into());
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
    use crate::{
        jobs::RunSource,
        runs::{DedupKey, RunPrincipal},
    };

    fn settings(lease: Duration, max_records: usize) -> StoreSettings {
        StoreSettings {
            lease,
            retention: Duration::from_secs(3600),
            max_records,
        }
    }

    fn new_run(key: Option<&str>) -> NewRun {
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
            dedup: key.map(|k| DedupKey::push(None, k)),
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
}
