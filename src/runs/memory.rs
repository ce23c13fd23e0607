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
    ops::Bound,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use futures::FutureExt as _;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ABANDONED, CancelRequest, Claim, ClaimState, Finish, LEASE_EXPIRED, NewRun, PayloadDigest,
    RunPage, RunPrincipal, RunQuery, RunRecord, RunSource, RunStatus, RunStore, StatsBucket,
    StatsQuery, StoreFuture, StoreSettings, conflict_error, now_micros, percentile_cont,
    run_id_range,
};

#[derive(Debug)]
struct KeyClaim {
    run_id: Uuid,
    state: ClaimState,
    lease_until: Instant,
    /// What the holder claimed (push keys): another content is a conflict.
    content: Option<PayloadDigest>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Records by run id: UUIDv7, so oldest first.
    runs: BTreeMap<Uuid, RunRecord>,
    /// Claims by dedup key.
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
            inner: Mutex::default(),
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
        record.dedup_key = new.dedup.map(|k| k.as_str().to_owned());
        let claim = match &record.dedup_key {
            None => Claim::Started,
            Some(key) => {
                let existing = inner
                    .claims
                    .get(key)
                    .map(|c| (c.run_id, c.state, c.lease_until, c.content));
                let held = |state, until| {
                    state == ClaimState::Done || (state == ClaimState::Running && until > now)
                };
                let original = |holder| inner.runs.get(&holder).cloned().map(Box::new);
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
                        original: original(holder),
                    },
                    Some((holder, ClaimState::Running, until, _)) if until > now => {
                        Claim::InProgress {
                            original_run_id: holder,
                            original: original(holder),
                        }
                    }
                    previous => {
                        if let Some((holder, ClaimState::Running, _, _)) = previous {
                            mark_failed(&mut inner, holder, LEASE_EXPIRED);
                        }
                        inner.claims.insert(
                            key.clone(),
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
        inner.runs.insert(record.run_id, record);
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

/// A stats group: the bucket's start (Unix nanoseconds), the job, the
/// status's name.
type GroupKey = (i128, String, &'static str);

impl MemoryStore {
    /// What PostgreSQL's `date_bin` and `percentile_cont` answer for the
    /// same runs (see [`super::postgres`]).
    fn stats_now(&self, query: &StatsQuery) -> Vec<StatsBucket> {
        let bucket_nanos = i128::try_from(query.bucket.as_nanos())
            .unwrap_or(i128::MAX)
            .max(1);
        let (low, high) = run_id_range(Some(query.since), Some(query.until));
        // Keyed by (bucket, job, status name): the order PostgreSQL sorts in.
        let mut groups: BTreeMap<GroupKey, (RunStatus, u64, Vec<u64>)> = BTreeMap::new();
        let since = query.since.unix_timestamp_nanos();
        {
            let inner = self.lock();
            for run in id_range(&inner.runs, low, high).map(|(_, r)| r) {
                if run.started_at < query.since || run.started_at >= query.until {
                    continue;
                }
                let offset = run.started_at.unix_timestamp_nanos() - since;
                let bucket = since + offset / bucket_nanos * bucket_nanos;
                let group = groups
                    .entry((bucket, run.job.clone(), run.status.as_str()))
                    .or_insert_with(|| (run.status, 0, Vec::new()));
                group.1 += 1;
                group.2.extend(run.duration_ms);
            }
        }
        groups
            .into_iter()
            .filter_map(|((bucket, job, _), (status, count, mut durations))| {
                durations.sort_unstable();
                Some(StatsBucket {
                    start: OffsetDateTime::from_unix_timestamp_nanos(bucket).ok()?,
                    job,
                    status,
                    count,
                    p50_ms: percentile_cont(&durations, 0.5),
                    p95_ms: percentile_cont(&durations, 0.95),
                })
            })
            .collect()
    }
}

/// The records whose ids are in `[start, end)` (each side open when
/// `None`); none when the range is empty (where `BTreeMap::range` panics).
fn id_range(
    runs: &BTreeMap<Uuid, RunRecord>,
    start: Option<Uuid>,
    end: Option<Uuid>,
) -> std::collections::btree_map::Range<'_, Uuid, RunRecord> {
    match (start, end) {
        (Some(s), Some(e)) if s >= e => runs.range(s..s),
        (s, e) => runs.range((
            s.map_or(Bound::Unbounded, Bound::Included),
            e.map_or(Bound::Unbounded, Bound::Excluded),
        )),
    }
}

/// Marks a running run as failed (its lease expired or it was abandoned).
fn mark_failed(inner: &mut Inner, run_id: Uuid, why: &str) {
    if let Some(run) = inner.runs.get_mut(&run_id)
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
                if finish.error.is_some() {
                    run.error = finish.error;
                }
                if finish.error_kind.is_some() {
                    run.error_kind = finish.error_kind;
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
        let run = self.lock().runs.get(&run_id).cloned();
        async move { Ok(run) }.boxed()
    }

    fn list(&self, query: RunQuery) -> StoreFuture<'_, RunPage> {
        let inner = self.lock();
        let (low, high) = run_id_range(query.since, query.until);
        let end = match (query.before, high) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut matching = id_range(&inner.runs, low, end)
            .rev()
            .map(|(_, r)| r)
            .filter(|r| query.job.as_deref().is_none_or(|j| r.job == j))
            .filter(|r| query.status.is_empty() || query.status.contains(&r.status))
            .filter(|r| query.source.is_none_or(|s| r.source == s))
            .filter(|r| {
                query.message_id.as_deref().is_none_or(|m| {
                    r.source == RunSource::Push && r.message_id.as_deref() == Some(m)
                })
            })
            .filter(|r| {
                query
                    .idempotency_key
                    .as_deref()
                    .is_none_or(|k| r.idempotency_key.as_deref() == Some(k))
            })
            .filter(|r| query.since.is_none_or(|t| r.started_at >= t))
            .filter(|r| query.until.is_none_or(|t| r.started_at < t))
            .filter(|r| query.run_ids.is_empty() || query.run_ids.contains(&r.run_id));
        let runs: Vec<RunRecord> = matching.by_ref().take(query.limit).cloned().collect();
        let more = matching.next().is_some();
        drop(inner);
        let next = if more {
            runs.last().map(|r| r.run_id)
        } else {
            None
        };
        async move { Ok(RunPage { runs, next }) }.boxed()
    }

    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Vec<StatsBucket>> {
        let buckets = self.stats_now(&query);
        async move { Ok(buckets) }.boxed()
    }

    fn request_cancel(&self, run_id: Uuid, by: RunPrincipal) -> StoreFuture<'_, CancelRequest> {
        let answer = match self.lock().runs.get_mut(&run_id) {
            None => CancelRequest::NotFound,
            Some(run) if run.status != RunStatus::Running => {
                CancelRequest::NotRunning(Box::new(run.clone()))
            }
            Some(run) => {
                if run.cancel_requested_at.is_none() {
                    run.cancel_requested_at = Some(now_micros());
                    run.cancelled_by = Some(by);
                }
                CancelRequest::Requested(Box::new(run.clone()))
            }
        };
        async move { Ok(answer) }.boxed()
    }

    fn cancel_requests(&self, run_ids: Vec<Uuid>) -> StoreFuture<'_, Vec<Uuid>> {
        let inner = self.lock();
        let marked = run_ids
            .into_iter()
            .filter(|id| {
                inner
                    .runs
                    .get(id)
                    .is_some_and(|r| r.cancel_requested_at.is_some())
            })
            .collect();
        drop(inner);
        async move { Ok(marked) }.boxed()
    }

    fn prune(&self) -> StoreFuture<'_, u64> {
        let mut inner = self.lock();
        let stale = OffsetDateTime::now_utc() - self.settings.lease;
        let abandoned: Vec<Uuid> = inner
            .runs
            .values()
            .filter(|r| r.status == RunStatus::Running && r.started_at < stale)
            .map(|r| r.run_id)
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
                event_source: None,
                event_type: None,
                event_subject: None,
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
                rerun_of: None,
                cancel_requested_at: None,
                cancelled_by: None,
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

    /// Pages are newest first whatever order the runs were begun in (two
    /// requests may take their ids and the lock in opposite orders), and the
    /// cursor continues where the last page ended.
    #[tokio::test]
    async fn pages_are_newest_first_past_out_of_order_inserts() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 100));
        let runs: Vec<NewRun> = (0..300).map(|_| new_run(None)).collect();
        let ids: Vec<Uuid> = runs.iter().map(|r| r.record.run_id).collect();
        let mut runs = runs.into_iter();
        while let (Some(a), Some(b)) = (runs.next(), runs.next()) {
            store.begin(b).await.unwrap();
            store.begin(a).await.unwrap();
        }
        let page = |before, limit| {
            store.list(RunQuery {
                before,
                limit,
                ..RunQuery::default()
            })
        };
        let all = page(None, 500).await.unwrap();
        let listed: Vec<Uuid> = all.runs.iter().map(|r| r.run_id).collect();
        let expected: Vec<Uuid> = ids[200..].iter().rev().copied().collect();
        assert_eq!(listed, expected);
        assert_eq!(all.next, None);

        let first = page(Some(ids[203]), 2).await.unwrap();
        let listed: Vec<Uuid> = first.runs.iter().map(|r| r.run_id).collect();
        assert_eq!(listed, vec![ids[202], ids[201]]);
        assert_eq!(first.next, Some(ids[201]));
        let last = page(first.next, 2).await.unwrap();
        let listed: Vec<Uuid> = last.runs.iter().map(|r| r.run_id).collect();
        assert_eq!(listed, vec![ids[200]]);
        assert_eq!(last.next, None);
    }

    /// A dropped record takes its finished key with it; a key whose run
    /// still runs stays held.
    #[tokio::test]
    async fn a_dropped_record_frees_its_key_unless_it_still_runs() {
        let store = MemoryStore::new(settings(Duration::from_secs(60), 1));
        let done = new_run(Some("m5"));
        let done_id = done.record.run_id;
        store.begin(done).await.unwrap();
        store
            .finish(done_id, Finish::status(RunStatus::Succeeded))
            .await
            .unwrap();
        store.begin(new_run(None)).await.unwrap();
        assert_eq!(store.get(done_id).await.unwrap(), None);
        assert_eq!(
            store.begin(new_run(Some("m5"))).await.unwrap(),
            Claim::Started
        );

        let running = new_run(Some("m6"));
        let running_id = running.record.run_id;
        store.begin(running).await.unwrap();
        store.begin(new_run(None)).await.unwrap();
        assert_eq!(store.get(running_id).await.unwrap(), None);
        assert_eq!(
            store.begin(new_run(Some("m6"))).await.unwrap(),
            Claim::InProgress {
                original_run_id: running_id,
                original: None,
            }
        );
    }
}
