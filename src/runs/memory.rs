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
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use futures::FutureExt as _;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ABANDONED, Claim, ClaimState, Finish, LEASE_EXPIRED, NewRun, RunPage, RunQuery, RunRecord,
    RunStatus, RunStore, StoreFuture, StoreSettings, now_micros,
};

#[derive(Debug)]
struct KeyClaim {
    run_id: Uuid,
    state: ClaimState,
    lease_until: Instant,
}

/// A record as kept: payload and output as compact JSON text rather than
/// `serde_json::Value` trees (a small object is then one allocation instead
/// of a B-tree node and its strings: about half the memory of a full
/// ledger; see `make bench`).
#[derive(Debug)]
struct Stored {
    /// The record, with `payload` and `output` always `None`.
    record: RunRecord,
    payload: Option<Box<str>>,
    output: Option<Box<str>>,
}

fn compact(value: Option<Value>) -> Option<Box<str>> {
    value.map(|v| v.to_string().into_boxed_str())
}

impl Stored {
    fn new(mut record: RunRecord) -> Self {
        let payload = compact(record.payload.take());
        let output = compact(record.output.take());
        Self {
            record,
            payload,
            output,
        }
    }

    fn to_record(&self) -> RunRecord {
        let expand = |text: &Option<Box<str>>| {
            text.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        };
        let mut record = self.record.clone();
        record.payload = expand(&self.payload);
        record.output = expand(&self.output);
        record
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// By run id: UUIDv7, so oldest first.
    runs: BTreeMap<Uuid, Stored>,
    claims: HashMap<String, KeyClaim>,
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
        record.dedup_key = new.dedup.as_ref().map(|k| k.as_str().to_owned());
        let claim = match new.dedup {
            None => Claim::Started,
            Some(key) => {
                let existing = inner
                    .claims
                    .get(key.as_str())
                    .map(|c| (c.run_id, c.state, c.lease_until));
                match existing {
                    Some((holder, ClaimState::Done, _)) => Claim::Done {
                        original_run_id: holder,
                        original: inner.runs.get(&holder).map(|s| Box::new(s.to_record())),
                    },
                    Some((holder, ClaimState::Running, until)) if until > now => {
                        Claim::InProgress {
                            original_run_id: holder,
                            original: inner.runs.get(&holder).map(|s| Box::new(s.to_record())),
                        }
                    }
                    previous => {
                        if let Some((holder, ClaimState::Running, _)) = previous {
                            mark_failed(&mut inner, holder, LEASE_EXPIRED);
                        }
                        inner.claims.insert(
                            key.as_str().to_owned(),
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
        inner.runs.insert(record.run_id, Stored::new(record));
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
                .is_some_and(|(_, r)| r.record.started_at < cutoff);
            if !(over_count || over_age) {
                break;
            }
            let Some((_, dropped)) = inner.runs.pop_first() else {
                break;
            };
            let dropped = dropped.record;
            if let Some(key) = &dropped.dedup_key {
                let forget = inner
                    .claims
                    .get(key)
                    .is_some_and(|c| c.run_id == dropped.run_id && c.state != ClaimState::Running);
                if forget {
                    inner.claims.remove(key);
                }
            }
        }
    }
}

/// Marks a running run as failed (its lease expired or it was abandoned).
fn mark_failed(inner: &mut Inner, run_id: Uuid, why: &str) {
    if let Some(run) = inner.runs.get_mut(&run_id).map(|s| &mut s.record)
        && run.status == RunStatus::Running
    {
        run.status = RunStatus::FailedTransient;
        run.error = Some(why.to_owned());
        run.error_kind = Some("lease_expired".to_owned());
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
            Some(stored) => {
                if finish.output.is_some() {
                    stored.output = compact(finish.output);
                }
                let run = &mut stored.record;
                run.status = finish.status;
                if finish.finished_at.is_some() {
                    run.finished_at = finish.finished_at;
                }
                if finish.duration_ms.is_some() {
                    run.duration_ms = finish.duration_ms;
                }
                if finish.error.is_some() {
                    run.error = finish.error;
                }
                if finish.error_kind.is_some() {
                    run.error_kind = finish.error_kind;
                }
                run.output_truncated |= finish.output_truncated;
                let key = run.dedup_key.clone();
                if let (Some(key), Some(state)) = (key, finish.status.claim_state())
                    && let Some(claim) = inner.claims.get_mut(&key)
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
        let run = self.lock().runs.get(&run_id).map(Stored::to_record);
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
            .map(|(_, r)| r)
            .filter(|r| query.job.as_ref().is_none_or(|j| &r.record.job == j))
            .filter(|r| query.status.is_none_or(|s| r.record.status == s))
            .filter(|r| query.source.is_none_or(|s| r.record.source == s));
        let runs: Vec<RunRecord> = matching
            .by_ref()
            .take(query.limit)
            .map(Stored::to_record)
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
            .values()
            .map(|s| &s.record)
            .filter(|r| r.status == RunStatus::Running && r.started_at < stale)
            .map(|r| r.run_id)
            .collect();
        for run_id in abandoned {
            mark_failed(&mut inner, run_id, ABANDONED);
            if let Some(run) = inner.runs.get_mut(&run_id).map(|s| &mut s.record) {
                run.error_kind = Some("abandoned".to_owned());
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
