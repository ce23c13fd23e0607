//! The HTTP server: an accept loop under a bound on connections, hyper
//! serving each connection (HTTP/1.1, and HTTP/2 over cleartext when the
//! client opens with its preface), and a watchdog per connection that closes
//! the ones that stall.
//!
//! The watchdog's rules, the same as Go's `net/http` and nginx:
//! - a new connection must send its first request's whole header within
//!   `HTTP_HEADER_READ_TIMEOUT_SECS` of being accepted;
//! - between requests, a kept-alive connection may wait `HTTP_IDLE_TIMEOUT_SECS`
//!   for the next one; once that request's first byte arrives (HTTP/1), its
//!   header must be complete within the header timeout;
//! - a request in progress is never cut here (the job timeout and the front
//!   end's request timeout bound it).
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a
//! kept-alive connection waits for its next request, so it cannot be short
//! for slow headers and longer than the front end's idle timeout at once.
//!
//! Beyond `HTTP_MAX_CONNECTIONS`, new connections are not accepted: they wait
//! in the kernel's listen queue until a connection closes, and cost this
//! process no memory meanwhile. Accept errors (out of file descriptors) back
//! off instead of spinning, and are logged at most once per interval.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::bail;
use axum::{Router, body::Bytes, extract::ConnectInfo};
use clap::Args;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

/// Flags and environment variables of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct HttpServerArgs {
    /// Longest time a client may take to send a request's header, in
    /// seconds: counted from the accept for a connection's first request, and
    /// from the first byte for a later one. A connection that does not finish
    /// a header in time is closed (1 to 300).
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_read_timeout_secs: u64,

    /// How long a kept-alive connection may wait for its next request, in
    /// seconds, before it is closed (1 to 86400). Keep it above the front
    /// end's own idle timeout (600 s for Google's front ends): a server that
    /// closes an idle connection first races the front end reusing it, and
    /// that request fails with a 502.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 620)]
    pub http_idle_timeout_secs: u64,

    /// Most connections served at once (1 to 1000000); further connections
    /// wait in the listen queue until one closes. Keep it below the
    /// process's open-file limit (`ulimit -n`, often 1024), which the run
    /// ledger's pool and outbound HTTP share; an instance serves at most
    /// Cloud Run's concurrency in requests, so this bounds idle connections.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 768)]
    pub http_max_connections: usize,

    /// Serve the OpenAPI 3.1 document at `GET /openapi.json` (public: it
    /// holds no secret) and Swagger UI over it at `GET /docs`; `false`: both
    /// answer 404.
    #[arg(
        long,
        env = "OPENAPI_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub openapi_enabled: bool,
}

/// The validated settings of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerConfig {
    /// Longest time to receive a request's header.
    pub header_read_timeout: Duration,
    /// Longest wait of a kept-alive connection for its next request.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl Default for HttpServerConfig {
    /// 10 s for a header, 620 s idle, 768 connections.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(620),
            max_connections: 768,
        }
    }
}

impl HttpServerConfig {
    /// Validates the raw settings; an error names the variable.
    pub fn from_args(args: &HttpServerArgs) -> anyhow::Result<Self> {
        if !(1..=300).contains(&args.http_header_read_timeout_secs) {
            bail!(
                "HTTP_HEADER_READ_TIMEOUT_SECS: {} is out of range; use 1 to 300 (seconds a client may take to send a request header)",
                args.http_header_read_timeout_secs
            );
        }
        if !(1..=86_400).contains(&args.http_idle_timeout_secs) {
            bail!(
                "HTTP_IDLE_TIMEOUT_SECS: {} is out of range; use 1 to 86400, and above the front end's idle timeout (600 s on Cloud Run)",
                args.http_idle_timeout_secs
            );
        }
        if !(1..=1_000_000).contains(&args.http_max_connections) {
            bail!(
                "HTTP_MAX_CONNECTIONS: {} is out of range; use 1 to 1000000, below the open-file limit (ulimit -n)",
                args.http_max_connections
            );
        }
        Ok(Self {
            header_read_timeout: Duration::from_secs(args.http_header_read_timeout_secs),
            idle_timeout: Duration::from_secs(args.http_idle_timeout_secs),
            max_connections: args.http_max_connections,
        })
    }
}

/// How long a connection that is closing (idle timeout, or the server
/// stopping) may take to go once it has no request in progress.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// The longest pause after an accept error.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Least time between two warnings of the same kind.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting (the listener is closed), lets each connection finish its
/// requests in progress, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog below times headers; see the module docs for why not hyper.
    builder.http1().header_read_timeout(None);
    let builder = Arc::new(builder);
    let limits = Limits::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    let mut accept_errors = AcceptBackoff::default();
    let mut full = RateLimited::default();

    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(suppressed) = full.check(Instant::now()) {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        suppressed,
                        "HTTP_MAX_CONNECTIONS reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_errors.succeeded();
                accepted
            }
            Err(error) => {
                let pause = accept_errors.failed(&error, Instant::now());
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let connection = serve_connection(
            stream,
            peer,
            router.clone(),
            Arc::clone(&builder),
            limits,
            stop.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
    }

    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// The connection timeouts in milliseconds, as the watchdog counts.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_ms: u64,
    idle_ms: u64,
}

impl Limits {
    fn new(settings: &HttpServerConfig) -> Self {
        Self {
            header_ms: millis(settings.header_read_timeout),
            idle_ms: millis(settings.idle_timeout),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Not yet set (`ConnState::first_byte`).
const UNSET: u64 = u64::MAX;

/// What one connection has done, in milliseconds since it was accepted:
/// written by the IO wrapper and the request guards, read by the watchdog.
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    /// Requests whose header arrived and whose response is not yet written.
    in_flight: AtomicUsize,
    /// Whether a request has arrived at all.
    served: AtomicBool,
    /// Whether the connection speaks HTTP/2 (its streams are not timed).
    h2: AtomicBool,
    /// When the last request in progress finished.
    idle_since: AtomicU64,
    /// When the first byte after `idle_since` was read (HTTP/1), or UNSET.
    first_byte: AtomicU64,
}

/// What the watchdog does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Look again at this time (milliseconds since the accept).
    CheckAt(u64),
    /// Close gracefully: nothing is in progress and the connection has been
    /// idle too long (HTTP/2 gets a GOAWAY).
    Drain,
    /// Close now: a header was not received in time.
    Close,
}

impl ConnState {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(UNSET),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.accepted.elapsed())
    }

    /// A byte arrived: while idle between requests, the next header's clock
    /// starts.
    fn on_read(&self) {
        if self.first_byte.load(Ordering::Relaxed) == UNSET
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.served.load(Ordering::Relaxed)
        {
            self.first_byte.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The watchdog's rules (module docs) at `now`; `drain_until` is set once
    /// the connection is closing.
    fn verdict(&self, now: u64, limits: Limits, drain_until: Option<u64>) -> Verdict {
        let after = |deadline: u64, then: Verdict| {
            if now >= deadline {
                then
            } else {
                Verdict::CheckAt(deadline)
            }
        };
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Nothing to time; look again later (cheap: no request cut).
            return Verdict::CheckAt(now.saturating_add(limits.idle_ms));
        }
        if let Some(until) = drain_until {
            return after(until, Verdict::Close);
        }
        if !self.served.load(Ordering::Relaxed) {
            return after(limits.header_ms, Verdict::Close);
        }
        let first_byte = self.first_byte.load(Ordering::Relaxed);
        if first_byte != UNSET && !self.h2.load(Ordering::Relaxed) {
            return after(first_byte.saturating_add(limits.header_ms), Verdict::Close);
        }
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        after(idle_since.saturating_add(limits.idle_ms), Verdict::Drain)
    }
}

/// A request in progress on a connection, from its header to the end of
/// its response body.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: &Arc<ConnState>, version: axum::http::Version) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.served.store(true, Ordering::Relaxed);
        if version == axum::http::Version::HTTP_2 {
            state.h2.store(true, Ordering::Relaxed);
        }
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        // Set before the count reaches 0, so a read racing it sees no stale byte.
        state.first_byte.store(UNSET, Ordering::Relaxed);
        state.idle_since.store(state.now_ms(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until hyper has
/// written it (or dropped it).
struct GuardedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, telling the connection's state when bytes arrive.
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves one connection under its watchdog, until it closes, times out, or
/// `stop` drains it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::new());
    let service = {
        let state = Arc::clone(&state);
        hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
            let in_flight = InFlight::begin(&state, request.version());
            // What `into_make_service_with_connect_info` gave handlers.
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| GuardedBody {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let io = TokioIo::new(Watched {
        stream,
        state: Arc::clone(&state),
    });
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stopped = pin!(stop.cancelled());
    let mut sleep = pin!(tokio::time::sleep_until(
        (state.accepted + Duration::from_millis(limits.header_ms)).into()
    ));
    let mut armed = limits.header_ms;
    let mut drain_until: Option<u64> = None;

    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            let now = state.now_ms();
            if drain_until.is_none() && stopped.as_mut().poll(cx).is_ready() {
                conn.as_mut().graceful_shutdown();
                drain_until = Some(now.saturating_add(millis(DRAIN_LINGER)));
                continue;
            }
            match state.verdict(now, limits, drain_until) {
                Verdict::Close => {
                    tracing::debug!(%peer, "closing a connection that sent no complete header in time");
                    return Poll::Ready(());
                }
                Verdict::Drain => {
                    conn.as_mut().graceful_shutdown();
                    drain_until = Some(now.saturating_add(millis(DRAIN_LINGER)));
                    continue;
                }
                Verdict::CheckAt(at) => {
                    // Moving a tokio timer later is cheap; earlier re-registers it.
                    if at < armed || armed <= now {
                        sleep
                            .as_mut()
                            .reset((state.accepted + Duration::from_millis(at)).into());
                        armed = at;
                    }
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        }
    })
    .await;
}

/// A warning that is written at most once per [`WARN_EVERY`], with the
/// count of the ones it stood for.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// `Some(suppressed since the last one)` when a warning is due now.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The pause after accept errors: none for errors of one connection (reset
/// before it was accepted), else doubling from a few milliseconds up to
/// [`ACCEPT_BACKOFF_MAX`] while errors repeat (out of file descriptors
/// lasts until connections close).
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Duration,
    warned: RateLimited,
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }

    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            tracing::debug!(%error, "a connection was reset before it was accepted");
            return Duration::ZERO;
        }
        self.pause = (self.pause * 2).clamp(Duration::from_millis(5), ACCEPT_BACKOFF_MAX);
        if let Some(suppressed) = self.warned.check(now) {
            tracing::warn!(
                %error,
                suppressed,
                pause_ms = u64::try_from(self.pause.as_millis()).unwrap_or(u64::MAX),
                "accept failed; pausing before the next accept (too many open files: lower HTTP_MAX_CONNECTIONS or raise ulimit -n)"
            );
        }
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_ms: 10_000,
        idle_ms: 620_000,
    };

    #[test]
    fn a_new_connection_gets_the_header_timeout_from_its_accept() {
        let state = ConnState::new();
        assert_eq!(state.verdict(0, LIMITS, None), Verdict::CheckAt(10_000));
        assert_eq!(state.verdict(9_999, LIMITS, None), Verdict::CheckAt(10_000));
        assert_eq!(state.verdict(10_000, LIMITS, None), Verdict::Close);
    }

    #[test]
    fn a_request_in_progress_is_never_cut() {
        let state = Arc::new(ConnState::new());
        let guard = InFlight::begin(&state, axum::http::Version::HTTP_11);
        assert!(matches!(
            state.verdict(1_000_000, LIMITS, None),
            Verdict::CheckAt(_)
        ));
        assert!(matches!(
            state.verdict(1_000_000, LIMITS, Some(0)),
            Verdict::CheckAt(_)
        ));
        drop(guard);
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn idle_keep_alive_waits_the_idle_timeout_then_a_header_its_own() {
        let state = Arc::new(ConnState::new());
        drop(InFlight::begin(&state, axum::http::Version::HTTP_11));
        let idle = state.idle_since.load(Ordering::Relaxed);
        assert_eq!(
            state.verdict(idle + 60_000, LIMITS, None),
            Verdict::CheckAt(idle + 620_000)
        );
        assert_eq!(state.verdict(idle + 620_000, LIMITS, None), Verdict::Drain);
        // The next request's first byte starts its header clock.
        state.first_byte.store(idle + 100_000, Ordering::Relaxed);
        assert_eq!(
            state.verdict(idle + 100_001, LIMITS, None),
            Verdict::CheckAt(idle + 110_000)
        );
        assert_eq!(state.verdict(idle + 110_000, LIMITS, None), Verdict::Close);
        // HTTP/2 frames between streams (pings) are not a header.
        state.h2.store(true, Ordering::Relaxed);
        assert_eq!(
            state.verdict(idle + 110_000, LIMITS, None),
            Verdict::CheckAt(idle + 620_000)
        );
    }

    #[test]
    fn a_read_while_idle_marks_the_first_byte_once() {
        let state = Arc::new(ConnState::new());
        state.on_read();
        assert_eq!(
            state.first_byte.load(Ordering::Relaxed),
            UNSET,
            "not before a request"
        );
        let guard = InFlight::begin(&state, axum::http::Version::HTTP_11);
        state.on_read();
        assert_eq!(
            state.first_byte.load(Ordering::Relaxed),
            UNSET,
            "body bytes"
        );
        drop(guard);
        state.on_read();
        assert_ne!(state.first_byte.load(Ordering::Relaxed), UNSET);
    }

    #[test]
    fn draining_closes_after_the_linger() {
        let state = Arc::new(ConnState::new());
        drop(InFlight::begin(&state, axum::http::Version::HTTP_11));
        assert_eq!(
            state.verdict(5, LIMITS, Some(1_005)),
            Verdict::CheckAt(1_005)
        );
        assert_eq!(state.verdict(1_005, LIMITS, Some(1_005)), Verdict::Close);
    }

    #[test]
    fn accept_errors_back_off_and_warn_rarely() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let start = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed(&emfile, start)).collect();
        assert_eq!(pauses[0], Duration::from_millis(5));
        assert_eq!(pauses[1], Duration::from_millis(10));
        assert_eq!(pauses[9], ACCEPT_BACKOFF_MAX);
        assert_eq!(backoff.warned.suppressed, 9, "one warning for ten errors");
        assert_eq!(
            backoff.warned.check(start + WARN_EVERY),
            Some(9),
            "the next warning counts the suppressed ones"
        );
        backoff.succeeded();
        assert_eq!(
            backoff.failed(&emfile, start + WARN_EVERY),
            Duration::from_millis(5)
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&reset, start), Duration::ZERO);
    }

    #[test]
    fn zero_and_out_of_range_settings_name_the_variable() {
        let good = HttpServerArgs {
            http_header_read_timeout_secs: 10,
            http_idle_timeout_secs: 620,
            http_max_connections: 768,
            openapi_enabled: true,
        };
        assert_eq!(
            HttpServerConfig::from_args(&good).unwrap(),
            HttpServerConfig::default()
        );
        for (args, variable) in [
            (
                HttpServerArgs {
                    http_header_read_timeout_secs: 0,
                    ..good.clone()
                },
                "HTTP_HEADER_READ_TIMEOUT_SECS",
            ),
            (
                HttpServerArgs {
                    http_header_read_timeout_secs: 301,
                    ..good.clone()
                },
                "HTTP_HEADER_READ_TIMEOUT_SECS",
            ),
            (
                HttpServerArgs {
                    http_idle_timeout_secs: 0,
                    ..good.clone()
                },
                "HTTP_IDLE_TIMEOUT_SECS",
            ),
            (
                HttpServerArgs {
                    http_max_connections: 0,
                    ..good.clone()
                },
                "HTTP_MAX_CONNECTIONS",
            ),
        ] {
            let error = HttpServerConfig::from_args(&args).unwrap_err().to_string();
            assert!(error.starts_with(variable), "{error}");
            assert!(error.contains("out of range; use"), "{error}");
        }
    }
}
