//! Log lines to stdout in batches, lossless.
//!
//! Hand-written in place of `tracing-appender`'s non-blocking writer: that
//! one wakes its thread for every line and writes whenever its queue runs
//! dry, so under load the system calls cost more than the lines themselves.
//! Here a request appends its line to a shared buffer and wakes the writer
//! only when the buffer was empty; the writer lets a short window fill, then
//! writes it all in one call.
//!
//! Nothing is dropped: a buffer grown past [`MAX_PENDING`] (stdout slower
//! than the requests) is written by the request that finds it so, which
//! waits for stdout as a synchronous writer would. [`StdoutGuard`] stops the
//! thread and writes what is left.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first one: the most a
/// line waits on an idle service.
const WINDOW: Duration = Duration::from_millis(1);
/// Bytes held before a request writes them itself.
const MAX_PENDING: usize = 1 << 20;

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when `pending` stops being empty, or closes.
    filled: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines: keep going.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` for the fmt layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BatchedStdout(Arc<Shared>);

/// Owns the writer thread; dropping it writes every pending line.
#[derive(Debug)]
pub struct StdoutGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread.
pub fn batched_stdout() -> io::Result<(BatchedStdout, StdoutGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_batches(&shared))?
    };
    Ok((
        BatchedStdout(shared.clone()),
        StdoutGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && !pending.closed {
                pending = shared
                    .filled
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.bytes.is_empty() {
                return;
            }
            if !pending.closed {
                drop(pending);
                std::thread::sleep(WINDOW);
                pending = shared.lock();
            }
            std::mem::swap(&mut batch, &mut pending.bytes);
        }
        // A closed or full stdout has nowhere to report to.
        let _ = write_out(&batch);
        batch.clear();
        // Keep a burst's capacity, not a flood's.
        batch.shrink_to(MAX_PENDING);
    }
}

fn write_out(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

impl Drop for StdoutGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's line: the fmt layer formats it whole, then writes it once.
#[derive(Debug)]
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = self.0.lock();
        if pending.closed {
            drop(pending);
            write_out(buf)?;
            return Ok(buf.len());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(buf);
        if pending.bytes.len() >= MAX_PENDING {
            // Written under the lock, so lines keep their order.
            let result = write_out(&pending.bytes);
            pending.bytes.clear();
            result?;
        } else if was_empty {
            self.0.filled.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_reaches_the_buffer_in_order_and_the_guard_drains_it() {
        let shared = Arc::new(Shared::default());
        let writer = BatchedStdout(shared.clone());
        for i in 0..3 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(shared.lock().bytes, b"line 0\nline 1\nline 2\n");
    }

    #[test]
    fn a_closed_writer_still_accepts_lines() {
        let (writer, guard) = batched_stdout().unwrap();
        drop(guard);
        assert!(writer.0.lock().closed);
        writeln!(writer.make_writer(), "after the guard").unwrap();
        assert!(writer.0.lock().bytes.is_empty());
    }
}
