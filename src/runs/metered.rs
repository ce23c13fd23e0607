//! [`Metered`]: a [`RunStore`] that records how long each operation of the
//! store it wraps takes, in
//! `pushworker_ledger_operation_duration_seconds{operation, store}`. Failed
//! operations are timed too: a store that times out shows as slow, not as
//! missing samples.

use std::{sync::Arc, time::Instant};

use ::metrics::Histogram;
use uuid::Uuid;

use super::{
    CancelRequest, Claim, Finish, NewRun, RunPage, RunPrincipal, RunQuery, RunRecord, RunStore,
    StatsBucket, StatsQuery, StoreFuture,
};
use crate::telemetry::metrics::{Metrics, names};

/// The wrapped store and one histogram per operation, registered up front.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn RunStore>,
    begin: Histogram,
    finish: Histogram,
    get: Histogram,
    list: Histogram,
    prune: Histogram,
    stats: Histogram,
    cancel: Histogram,
    cancel_poll: Histogram,
}

impl Metered {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn RunStore>, metrics: &Metrics) -> Self {
        let store = inner.kind();
        let histogram = |operation| {
            metrics.histogram(
                names::LEDGER_OPERATION_DURATION,
                &[("operation", operation), ("store", store)],
            )
        };
        Self {
            begin: histogram("begin"),
            finish: histogram("finish"),
            get: histogram("get"),
            list: histogram("list"),
            prune: histogram("prune"),
            stats: histogram("stats"),
            cancel: histogram("request_cancel"),
            cancel_poll: histogram("cancel_requests"),
            inner,
        }
    }
}

/// Awaits `future`, recording its duration in `histogram`.
fn timed<'a, T: Send + 'a>(
    histogram: &'a Histogram,
    future: StoreFuture<'a, T>,
) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let started = Instant::now();
        let result = future.await;
        histogram.record(started.elapsed().as_secs_f64());
        result
    })
}

impl RunStore for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn begin(&self, new: NewRun) -> StoreFuture<'_, Claim> {
        timed(&self.begin, self.inner.begin(new))
    }

    fn finish(&self, run_id: Uuid, finish: Finish) -> StoreFuture<'_, bool> {
        timed(&self.finish, self.inner.finish(run_id, finish))
    }

    fn get(&self, run_id: Uuid) -> StoreFuture<'_, Option<RunRecord>> {
        timed(&self.get, self.inner.get(run_id))
    }

    fn list(&self, query: RunQuery) -> StoreFuture<'_, RunPage> {
        timed(&self.list, self.inner.list(query))
    }

    fn prune(&self) -> StoreFuture<'_, u64> {
        timed(&self.prune, self.inner.prune())
    }

    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Vec<StatsBucket>> {
        timed(&self.stats, self.inner.stats(query))
    }

    fn request_cancel(&self, run_id: Uuid, by: RunPrincipal) -> StoreFuture<'_, CancelRequest> {
        timed(&self.cancel, self.inner.request_cancel(run_id, by))
    }

    fn cancel_requests(&self, run_ids: Vec<Uuid>) -> StoreFuture<'_, Vec<Uuid>> {
        timed(&self.cancel_poll, self.inner.cancel_requests(run_ids))
    }
}
