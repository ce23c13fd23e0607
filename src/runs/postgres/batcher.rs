//! Group commit: requests arriving together share one statement and one
//! commit.
//!
//! A task reads requests from a channel. When nothing is being written, it
//! writes what it has at once (an idle service waits for nobody). While
//! earlier batches are in flight, it gathers arrivals for up to the time cap
//! or until the size cap, then writes them when a write slot frees. Each
//! request gets its own answer through a oneshot; a request whose caller has
//! gone (its deadline passed, its client left) is dropped before the write,
//! as an abandoned transaction would have been rolled back.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use anyhow::anyhow;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::runs::StoreError;

/// The size and time caps of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most requests in one statement.
    pub max_rows: usize,
    /// Longest a request waits for others to join it, under load.
    pub max_wait: Duration,
    /// Batches written at the same time (each holds one connection).
    pub in_flight: usize,
}

/// Answers of one write, one per request and in order.
pub type Answers<O> = Vec<Result<O, StoreError>>;

/// Writes one batch.
pub type WriteFn<I, O> =
    Arc<dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Answers<O>> + Send>> + Send + Sync>;

struct Request<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Told of an answer whose caller had gone by the time it was ready.
pub type OrphanFn<O> = Arc<dyn Fn(O) + Send + Sync>;

/// The sending side; the task stops when every handle is dropped.
pub struct Batcher<I, O> {
    requests: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task (inside a Tokio runtime).
    pub fn spawn(limits: BatchLimits, write: WriteFn<I, O>, orphan: Option<OrphanFn<O>>) -> Self {
        let max_rows = limits.max_rows.max(1);
        let (requests, rx) = mpsc::channel(max_rows.saturating_mul(64));
        tokio::spawn(run(rx, limits, write, orphan));
        Self { requests }
    }

    /// Queues `item` and waits for its answer.
    pub async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { item, reply })
            .await
            .map_err(|_| StoreError::Unavailable(anyhow!("the ledger's batch writer stopped")))?;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(anyhow!(
                "the ledger's batch writer dropped the request"
            )))
        })
    }
}

/// Moves what is already queued into `batch`, up to `max_rows`.
fn drain<I, O>(rx: &mut mpsc::Receiver<Request<I, O>>, batch: &mut Vec<Request<I, O>>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

async fn run<I: Send + 'static, O: Send + 'static>(
    mut rx: mpsc::Receiver<Request<I, O>>,
    limits: BatchLimits,
    write: WriteFn<I, O>,
    orphan: Option<OrphanFn<O>>,
) {
    let max_rows = limits.max_rows.max(1);
    let slots = limits.in_flight.max(1);
    let free = Arc::new(Semaphore::new(slots));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        drain(&mut rx, &mut batch, max_rows);
        // Under load (a batch in flight), others may join for the time cap.
        if batch.len() < max_rows && free.available_permits() < slots {
            let until = tokio::time::Instant::now() + limits.max_wait;
            while batch.len() < max_rows {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(request)) => {
                        batch.push(request);
                        drain(&mut rx, &mut batch, max_rows);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // Waiting for a write slot: keep gathering meanwhile.
        let permit = loop {
            if batch.len() >= max_rows {
                break Arc::clone(&free).acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = Arc::clone(&free).acquire_owned() => break permit,
                request = rx.recv() => match request {
                    Some(request) => batch.push(request),
                    None => break Arc::clone(&free).acquire_owned().await,
                },
            }
        };
        let Ok(permit) = permit else { return };
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let write = Arc::clone(&write);
        let orphan = orphan.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (items, replies): (Vec<I>, Vec<_>) =
                batch.into_iter().map(|r| (r.item, r.reply)).unzip();
            let count = items.len();
            let mut answers = write(items).await.into_iter();
            for reply in replies {
                let answer = answers.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(anyhow!(
                        "a batch of {count} got fewer answers than requests"
                    )))
                });
                // The caller may have gone while its batch was written.
                if let (Err(Ok(answer)), Some(orphan)) = (reply.send(answer), &orphan) {
                    orphan(answer);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording(sizes: Arc<Mutex<Vec<usize>>>, pause: Duration) -> WriteFn<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            let sizes = Arc::clone(&sizes);
            Box::pin(async move {
                sizes.lock().unwrap().push(items.len());
                tokio::time::sleep(pause).await;
                items.into_iter().map(|i| Ok(i * 2)).collect()
            })
        })
    }

    /// Alone, a request is written at once, without waiting for the time cap.
    #[tokio::test]
    async fn an_idle_batcher_writes_at_once() {
        let sizes = Arc::default();
        let batcher = Batcher::spawn(
            BatchLimits {
                max_rows: 32,
                max_wait: Duration::from_secs(30),
                in_flight: 2,
            },
            recording(Arc::clone(&sizes), Duration::ZERO),
            None,
        );
        let start = std::time::Instant::now();
        assert_eq!(batcher.submit(21).await.unwrap(), 42);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }

    /// Under load requests share writes, within the size cap, and each gets
    /// its own answer.
    #[tokio::test]
    async fn concurrent_requests_share_writes_within_the_cap() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::spawn(
            BatchLimits {
                max_rows: 8,
                max_wait: Duration::from_millis(5),
                in_flight: 1,
            },
            recording(Arc::clone(&sizes), Duration::from_millis(20)),
            None,
        );
        let answers = futures::future::join_all((0..40).map(|i| batcher.submit(i))).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap(), u32::try_from(i).unwrap() * 2);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 40, "some requests shared a write: {sizes:?}");
    }

    /// A failed write fails each of its requests.
    #[tokio::test]
    async fn a_failed_write_fails_every_member() {
        let write: WriteFn<u32, u32> = Arc::new(|items: Vec<u32>| {
            Box::pin(async move {
                items
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(anyhow!("down"))))
                    .collect()
            })
        });
        let batcher = Batcher::spawn(
            BatchLimits {
                max_rows: 4,
                max_wait: Duration::from_millis(1),
                in_flight: 1,
            },
            write,
            None,
        );
        let answers = futures::future::join_all((0..10).map(|i| batcher.submit(i))).await;
        assert!(answers.iter().all(Result::is_err));
    }
}
