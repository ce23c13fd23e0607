//! `make bench`: pushworker's throughput, latency, memory and cold start,
//! measured side by side with a bare axum route in one run.
//!
//! Why a baseline: absolute requests per second on a shared 2-core machine
//! swing by tens of percent from one run to the next. The same load against a
//! bare axum route answering 204 (same framework and HTTP stack, no auth, no
//! work), in the same run, turns every figure into a ratio that survives a
//! noisy machine. The baseline is measured right before each of scenarios
//! 1–4 and once after the last, and each scenario's ratio uses the mean of
//! the two baseline runs around it: a machine's speed drifts over the
//! minutes a whole run takes (minting scenario 2's tokens alone took 140 s
//! of one on a 2-core AMD VM), and a ratio to a baseline measured minutes
//! away carries that drift. A run is reported **unsteady** when the two baselines around any
//! scenario are more than 10 % apart or the hypervisor took more than 3 % of
//! the machine's CPU time (`steal` in `/proc/stat`) during a timed run: on a
//! shared VM a neighbour's load can halve the baseline for a minute, and
//! ratios from that minute mean little.
//!
//! What runs, all on loopback:
//! - a key server (JWKS for a Google-like and a Clerk-like issuer, real RSA
//!   keys, `Cache-Control: max-age=3600`) that counts every fetch;
//! - the baseline route, served by this process;
//! - the real `pushworker serve` release binary as a child process, configured
//!   as in production: real verifiers over the key server, the in-memory run
//!   ledger, JSON logs on a pipe that this process drains and counts, as a
//!   platform's log collector reads a container's stdout (every answered
//!   request must have written its line), default cache settings;
//! - load from `wrk` (Debian's package), `--connections` connections, fixed
//!   duration per scenario, a Lua script generated here that gives every push
//!   its own message id (so the ledger runs each one, as Pub/Sub's would).
//!
//! Scenarios: (1) wrapped push of an `echo` job with one valid Google token
//! repeated, as Pub/Sub sends them; (2) the same with a distinct valid token on
//! every request (minted beforehand, never reused, so no cache can help);
//! (3) a Clerk user's `POST /jobs/echo`; (4) scenario 1 with every tenth
//! request carrying a hostile token (unknown `kid` or bad signature, which must
//! get 401); (5) one 10 MB message on a fresh process (peak memory, time to
//! ack). Plus cold start (exec to first successful response, median of
//! `--cold-runs`), RSS idle and under load, and key fetches per scenario.
//!
//! Output: a table on stdout (docs/performance.md shows the latest) and
//! `bench/results.json`. Options after `--`: `--duration SECS` (10),
//! `--connections N` (32), `--threads N` (2), `--cold-runs N` (15),
//! `--out PATH`.
//!
//! Built (not run) by `cargo test --all-targets`: without cargo bench's
//! `--bench` argument it exits at once.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use axum::{
    Router,
    http::{StatusCode, header},
    routing::{get, post},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header};
use pushworker::{
    auth::dev::{SigningKey, encode_v2_permissions, now_secs},
    pubsub::{MessageMeta, wrap},
};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://pushworker.bench/pubsub/push";
const SERVICE_ACCOUNT: &str = "pusher@bench-project.iam.gserviceaccount.com";
const CLERK_ISSUER: &str = "https://clerk.pushworker.bench";
const AZP: &str = "https://admin.pushworker.bench";
const TRIGGER: &str = "org:jobs:trigger";
/// The key server's `max-age`: the "cache period" of the fetch target.
const KEY_MAX_AGE_SECS: u64 = 3600;
/// pushworker's default `JWKS_REFRESH_COOLDOWN_MS`.
const REFRESH_COOLDOWN_SECS: u64 = 10;
/// Scenario 5's message: Pub/Sub's largest.
const LARGE_MESSAGE_BYTES: usize = 10_000_000;
const WARMUP_SECS: u64 = 2;

struct Options {
    duration: u64,
    connections: u32,
    threads: u32,
    cold_runs: usize,
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut opts = Self {
            duration: 10,
            connections: 32,
            threads: 2,
            cold_runs: 15,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.json"),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--bench" => {}
                "--duration" => opts.duration = value(arg)?.parse().context("--duration")?,
                "--connections" => {
                    opts.connections = value(arg)?.parse().context("--connections")?;
                }
                "--threads" => opts.threads = value(arg)?.parse().context("--threads")?,
                "--cold-runs" => opts.cold_runs = value(arg)?.parse().context("--cold-runs")?,
                "--out" => opts.out = PathBuf::from(value(arg)?),
                other => bail!(
                    "unknown option `{other}` (known: --duration SECS, --connections N, --threads N, --cold-runs N, --out PATH)"
                ),
            }
        }
        ensure!(opts.duration >= 2, "--duration must be at least 2 seconds");
        ensure!(
            opts.threads >= 1 && opts.connections >= opts.threads,
            "--connections must be at least --threads (wrk gives each thread its connections)"
        );
        ensure!(opts.cold_runs >= 1, "--cold-runs must be at least 1");
        Ok(opts)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("benches/load.rs: not under `cargo bench`; run `make bench`");
        return Ok(());
    }
    let opts = Options::parse(&args)?;
    Bench::new(opts)?.run()
}

// --- The key server and the baseline, served by this process -------------

/// A JWKS server that counts fetches.
struct KeyServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks_route(jwks: Value, fetches: Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let body = jwks.to_string();
    get(move || {
        fetches.fetch_add(1, Ordering::SeqCst);
        let body = body.clone();
        async move {
            (
                [
                    (
                        header::CACHE_CONTROL,
                        format!("public, max-age={KEY_MAX_AGE_SECS}"),
                    ),
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                ],
                body,
            )
        }
    })
}

// --- The worker process -----------------------------------------------------

/// A `pushworker serve` child process.
struct Worker {
    child: Child,
    port: u16,
    started: Instant,
    /// Lines the worker has written to stdout so far.
    log_lines: Arc<AtomicU64>,
}

impl Worker {
    fn spawn(keys: SocketAddr) -> Result<Self> {
        let port = free_port()?;
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushworker"))
            .arg("serve")
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("GOOGLE_AUDIENCES", AUDIENCE)
            .env("GOOGLE_SERVICE_ACCOUNTS", SERVICE_ACCOUNT)
            .env("GOOGLE_JWKS_URL", format!("http://{keys}/google"))
            .env("CLERK_ISSUER", CLERK_ISSUER)
            .env("CLERK_JWKS_URL", format!("http://{keys}/clerk"))
            .env("CLERK_AUTHORIZED_PARTIES", AZP)
            .env("GOOGLE_CLOUD_PROJECT", "bench-project")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting target/release/pushworker")?;
        let log_lines = Arc::new(AtomicU64::new(0));
        let mut stdout = child.stdout.take().context("the worker's stdout")?;
        let lines = log_lines.clone();
        // Drains the pipe as a log collector would, in large reads.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                lines.fetch_add(newlines as u64, Ordering::Relaxed);
            }
        });
        Ok(Self {
            child,
            port,
            started,
            log_lines,
        })
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> Result<u64> {
        proc_status_kib(self.child.id(), field)
    }

    /// Resets the peak-RSS mark (`VmHWM`) to the current RSS.
    fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .context("resetting VmHWM through /proc/PID/clear_refs")
    }

    /// Waits until `path` answers `want`, polling every half millisecond;
    /// returns the time since exec.
    fn wait_for(&self, request: &RawRequest, want: u16, within: Duration) -> Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if raw_http(self.port, request).is_ok_and(|status| status == want) {
                return Ok(self.started.elapsed());
            }
            ensure!(
                Instant::now() < deadline,
                "{} {} did not answer {want} within {within:?}",
                request.method,
                request.path
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process, from /proc/PID/stat (fields 14 and
/// 15, in USER_HZ ticks, which Linux fixes at 100 per second).
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat is short"))?
            .parse::<f64>()?)
    };
    // After `)`: field 3 is at index 0, so utime (14) is 11, stime (15) 12.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The machine's CPU time so far, in ticks: `(steal, total)` from the `cpu`
/// line of `/proc/stat`.
fn machine_cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already counted in user.
    let total = ticks.iter().take(8).sum();
    Ok((ticks.get(7).copied().unwrap_or(0), total))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A one-shot HTTP/1.1 request over a fresh connection (no client library in
/// the timed path of the cold start and the large message).
struct RawRequest {
    method: &'static str,
    path: String,
    token: Option<String>,
    body: Vec<u8>,
}

fn raw_http(port: u16, request: &RawRequest) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        request.method,
        request.path,
        request.body.len()
    );
    if let Some(token) = &request.token {
        let _ = write!(head, "Authorization: Bearer {token}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&request.body)?;
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line)?;
    let text = std::str::from_utf8(&status_line)?;
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {text:?}"))
}

// --- wrk ---------------------------------------------------------------------

/// The Lua script wrk runs: per-thread token files, an optional hostile token
/// every `every` requests, `@ID@` in the body template replaced by a unique
/// id, and a JSON summary line from `done`.
const WRK_SCRIPT: &str = r#"
threads = {}
counter = 0
wraps = 0
statuses = {}
local tokens, hostile = {}, {}
local next_token, next_hostile, every = 1, 1, 0
local path, template

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function read_lines(file)
  local t = {}
  for line in io.lines(file) do
    if #line > 0 then t[#t + 1] = line end
  end
  return t
end

function init(args)
  path = args[1]
  local f = assert(io.open(args[2], "rb"))
  template = f:read("*a")
  f:close()
  tokens = read_lines((string.gsub(args[3], "{tid}", tostring(tid))))
  if args[4] ~= nil and args[4] ~= "" then
    hostile = read_lines(args[4])
    every = tonumber(args[5])
  end
end

function request()
  counter = counter + 1
  local token
  if every > 0 and counter % every == 0 then
    token = hostile[next_hostile]
    next_hostile = next_hostile % #hostile + 1
  else
    token = tokens[next_token]
    if #tokens > 1 then
      next_token = next_token + 1
      if next_token > #tokens then
        next_token = 1
        wraps = wraps + 1
      end
    end
  end
  local body = (string.gsub(template, "@ID@", tid .. "-" .. counter))
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local counts, total_wraps = {}, 0
  for _, t in ipairs(threads) do
    total_wraps = total_wraps + (t:get("wraps") or 0)
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do
        counts[tostring(k)] = (counts[tostring(k)] or 0) + v
      end
    end
  end
  local parts = {}
  for k, v in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"wraps":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    total_wraps, table.concat(parts, ",")))
end
"#;

/// Appended to count every response's status (costs wrk some speed, so only
/// the hostile mix uses it, where 204 and 401 must be told apart).
const WRK_COUNT_STATUSES: &str = r#"
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
"#;

/// What one wrk run measured.
#[derive(Debug, Clone, serde::Deserialize)]
struct WrkRun {
    requests: u64,
    duration_us: u64,
    errors: WrkErrors,
    latency_us: Latency,
    wraps: u64,
    statuses: std::collections::BTreeMap<String, u64>,
    /// CPU seconds the server process used during the run (set by
    /// `measured`): the worker, or this process for the baseline.
    #[serde(skip)]
    server_cpu_secs: f64,
    /// Log lines the worker wrote during the run (set by `measured`).
    #[serde(skip)]
    log_lines: Option<u64>,
    /// Share of the machine's CPU time the hypervisor gave to others during
    /// the run (`steal` in `/proc/stat`, set by `measured`), in percent.
    #[serde(skip)]
    steal_pct: f64,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct WrkErrors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

impl WrkRun {
    fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Server CPU per request, in microseconds: what the ratio to the
    /// baseline is made of, without the load generator's share of the cores.
    fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.requests.max(1) as f64
    }

    fn socket_errors(&self) -> u64 {
        let e = &self.errors;
        e.connect + e.read + e.write + e.timeout
    }
}

/// One load: what wrk sends where.
struct Load<'a> {
    base: String,
    path: &'a str,
    template: &'a Path,
    /// Token file, `{tid}` replaced by the wrk thread's number (1-based).
    tokens: &'a Path,
    hostile: Option<(&'a Path, u32)>,
    count_statuses: bool,
}

/// A wrapped push of the echo job.
fn push_load<'a>(base: String, template: &'a Path, tokens: &'a Path) -> Load<'a> {
    Load {
        base,
        path: "/pubsub/push",
        template,
        tokens,
        hostile: None,
        count_statuses: false,
    }
}

// --- The bench -------------------------------------------------------------------

struct Bench {
    opts: Options,
    dir: PathBuf,
    /// Serves the key server and the baseline for the whole run.
    _rt: tokio::runtime::Runtime,
    keys: KeyServer,
    baseline: SocketAddr,
    google: SigningKey,
    clerk: SigningKey,
    stranger: SigningKey,
}

/// One scenario's figures.
struct Scenario {
    name: &'static str,
    what: &'static str,
    run: WrkRun,
    key_fetches: usize,
    key_fetch_limit: usize,
    rss_max_kib: u64,
    note: String,
    /// The baseline run measured right before it (an index into the
    /// report's baselines); the next one was measured right after it.
    baseline_before: usize,
}

impl Bench {
    fn new(opts: Options) -> Result<Self> {
        which("wrk").context("wrk is missing: apt-get install -y wrk")?;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir)?;
        // The bench's own servers: the same runtime shape as the worker's.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let google = SigningKey::generate("bench-google-1")?;
        let clerk = SigningKey::generate("bench-clerk-1")?;
        let stranger = SigningKey::generate("bench-stranger")?;
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys_app = Router::new()
            .route(
                "/google",
                jwks_route(json!({ "keys": [google.public_jwk()?] }), fetches.clone()),
            )
            .route(
                "/clerk",
                jwks_route(json!({ "keys": [clerk.public_jwk()?] }), fetches.clone()),
            );
        let baseline_app =
            Router::new().route("/pubsub/push", post(|| async { StatusCode::NO_CONTENT }));
        let (keys_addr, baseline) = rt.block_on(async {
            let keys = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addrs = (keys.local_addr()?, base.local_addr()?);
            tokio::spawn(async move { axum::serve(keys, keys_app).await });
            tokio::spawn(async move { axum::serve(base, baseline_app).await });
            anyhow::Ok(addrs)
        })?;
        Ok(Self {
            opts,
            dir,
            _rt: rt,
            keys: KeyServer {
                addr: keys_addr,
                fetches,
            },
            baseline,
            google,
            clerk,
            stranger,
        })
    }

    fn google_claims(&self) -> Value {
        json!({
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "112233445566778899000",
            "sub": "112233445566778899000",
            "email": SERVICE_ACCOUNT,
            "email_verified": true,
            "iat": now_secs() - 10,
            "exp": now_secs() + 3600,
        })
    }

    fn clerk_token(&self) -> Result<String> {
        let (fea, per, fpm) = encode_v2_permissions(&[TRIGGER.to_owned()]);
        let now = now_secs();
        self.clerk.sign(&json!({
            "iss": CLERK_ISSUER,
            "sub": "user_bench",
            "sid": "sess_bench",
            "azp": AZP,
            "iat": now - 1,
            "nbf": now - 5,
            "exp": now + 300,
            "v": 2,
            "fea": fea,
            "o": { "id": "org_bench", "slg": "bench", "rol": "admin", "per": per, "fpm": fpm },
        }))
    }

    fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The same token in every wrk thread's file.
    fn token_files(&self, name: &str, token: &str) -> Result<PathBuf> {
        for t in 1..=self.opts.threads {
            self.write(&format!("{name}-{t}.txt"), format!("{token}\n").as_bytes())?;
        }
        Ok(self.dir.join(format!("{name}-{{tid}}.txt")))
    }

    fn wrk(&self, load: &Load<'_>, secs: u64) -> Result<WrkRun> {
        let mut script = WRK_SCRIPT.to_owned();
        if load.count_statuses {
            script.push_str(WRK_COUNT_STATUSES);
        }
        let script = self.write("load.lua", script.as_bytes())?;
        let mut cmd = Command::new("wrk");
        cmd.arg("-t")
            .arg(self.opts.threads.to_string())
            .arg("-c")
            .arg(self.opts.connections.to_string())
            .arg("-d")
            .arg(format!("{secs}s"))
            .args(["--timeout", "10s", "-s"])
            .arg(&script)
            .arg(&load.base)
            .arg("--")
            .arg(load.path)
            .arg(load.template)
            .arg(load.tokens);
        if let Some((file, every)) = load.hostile {
            cmd.arg(file).arg(every.to_string());
        }
        let out = cmd.output().context("running wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_JSON "))
            .with_context(|| format!("wrk printed no summary: {stdout}"))?;
        serde_json::from_str(line).with_context(|| format!("wrk summary {line}"))
    }

    /// Runs a load while sampling the worker's RSS every 100 ms.
    fn measured(&self, load: &Load<'_>, worker: Option<&Worker>) -> Result<(WrkRun, u64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = worker.map(|w| {
            let (pid, stop) = (w.child.id(), stop.clone());
            std::thread::spawn(move || {
                let mut max = 0;
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(kib) = proc_status_kib(pid, "VmRSS") {
                        max = max.max(kib);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                max
            })
        });
        // The baseline is served by this process (the key server idles).
        let server = worker.map_or(std::process::id(), |w| w.child.id());
        let lines = || worker.map(|w| w.log_lines.load(Ordering::Relaxed));
        let lines_before = lines();
        let cpu_before = proc_cpu_secs(server)?;
        let machine_before = machine_cpu_ticks()?;
        let run = self.wrk(load, self.opts.duration);
        let machine_after = machine_cpu_ticks()?;
        let cpu_after = proc_cpu_secs(server)?;
        // Lines a worker still held are written once it goes idle.
        std::thread::sleep(Duration::from_millis(200));
        let lines_after = lines();
        stop.store(true, Ordering::SeqCst);
        let rss = sampler.map(|s| s.join().unwrap_or(0)).unwrap_or_default();
        let mut run = run?;
        run.server_cpu_secs = cpu_after - cpu_before;
        run.log_lines = lines_after.zip(lines_before).map(|(a, b)| a - b);
        let (steal, total) = (
            machine_after.0 - machine_before.0,
            machine_after.1 - machine_before.1,
        );
        run.steal_pct = 100.0 * steal as f64 / total.max(1) as f64;
        Ok((run, rss))
    }

    fn push_template(&self, data: &[u8]) -> Result<PathBuf> {
        let meta = MessageMeta {
            message_id: "@ID@".into(),
            publish_time: Some("2026-11-28T12:00:00.000Z".into()),
            subscription: Some("projects/bench-project/subscriptions/work-push".into()),
            attributes: [("job".to_owned(), "echo".to_owned())].into(),
            ..MessageMeta::default()
        };
        self.write("push.json", wrap(&meta, data).to_string().as_bytes())
    }

    /// Distinct valid Google tokens, split over the wrk threads' files,
    /// signed on every core.
    fn mint_distinct(&self, count: usize) -> Result<PathBuf> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per = count.div_ceil(threads);
        let google = &self.google;
        let minted: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    s.spawn(move || -> Result<Vec<String>> {
                        (0..per)
                            .map(|j| {
                                let mut claims = self.google_claims();
                                // Distinct claims, so distinct tokens.
                                claims["jti"] = json!(format!("bench-{i}-{j}"));
                                google.sign(&claims)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("minting panicked"))?)
                .collect::<Result<_>>()
        })?;
        let all: Vec<String> = minted.into_iter().flatten().collect();
        let wrk_threads = self.opts.threads as usize;
        for t in 0..wrk_threads {
            let mut file = String::new();
            for token in all.iter().skip(t).step_by(wrk_threads) {
                file.push_str(token);
                file.push('\n');
            }
            self.write(&format!("distinct-{}.txt", t + 1), file.as_bytes())?;
        }
        Ok(self.dir.join("distinct-{tid}.txt"))
    }

    /// Tokens that must be refused with 401: half signed by a key the server
    /// does not know under ever new kids (each one a reason to look for new
    /// keys, which the cooldown must bound), half a valid token with its
    /// signature altered.
    fn hostile_tokens(&self, count: usize) -> Result<PathBuf> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut file = String::new();
        for i in 0..count {
            let token = if i % 2 == 0 {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(format!("unknown-kid-{i}"));
                self.stranger
                    .sign_with_header(&header, &self.google_claims())?
            } else {
                let token = self.google.sign(&self.google_claims())?;
                let (signed, signature) = token.rsplit_once('.').context("a JWT")?;
                let mut sig = b64.decode(signature)?;
                let at = i % sig.len();
                sig[at] ^= 0x5a;
                format!("{signed}.{}", b64.encode(sig))
            };
            file.push_str(&token);
            file.push('\n');
        }
        self.write("hostile.txt", file.as_bytes())
    }

    fn run(&self) -> Result<()> {
        let o = &self.opts;
        println!(
            "pushworker bench: {}s per scenario, {} connections, {} wrk threads",
            o.duration, o.connections, o.threads
        );
        let cold = self.cold_start()?;

        let worker = Worker::spawn(self.keys.addr)?;
        worker.wait_for(&get_request("/readyz"), 200, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(1));
        let idle_kib = worker.status_kib("VmRSS")?;

        let token = self.google.sign(&self.google_claims())?;
        let push_body = self.push_template(br#"{"message":"hello from the bench"}"#)?;
        let one_token = self.token_files("one-google", &token)?;
        let push = |base: String, tokens| push_load(base, &push_body, tokens);
        let baseline_base = format!("http://{}", self.baseline);

        // Warm both servers (connections, allocator, caches) before timing.
        self.wrk(&push(baseline_base.clone(), &one_token), WARMUP_SECS)?;
        self.wrk(&push(worker.base(), &one_token), WARMUP_SECS)?;
        // A baseline run, by its index: one before each scenario, one after
        // the last (see the module docs).
        let mut baselines: Vec<WrkRun> = Vec::new();
        let mut baseline = || -> Result<usize> {
            let (run, _) = self.measured(&push(baseline_base.clone(), &one_token), None)?;
            println!("baseline {}: {:.0} req/s", baselines.len() + 1, run.rps());
            baselines.push(run);
            Ok(baselines.len() - 1)
        };

        let mut scenarios = Vec::new();
        let before = baseline()?;
        let fetches = self.keys.fetches();
        let (run, rss) = self.measured(&push(worker.base(), &one_token), Some(&worker))?;
        scenarios.push(Scenario {
            name: "1 push, one token",
            what: "wrapped push, echo job, one valid Google token repeated",
            key_fetches: self.keys.fetches() - fetches,
            key_fetch_limit: 1,
            rss_max_kib: rss,
            note: String::new(),
            run,
            baseline_before: before,
        });
        println!("scenario 1: {:.0} req/s", scenarios[0].run.rps());
        baseline()?;

        // Enough distinct tokens for scenario 1's pace and then some: a
        // scenario that reuses one is reported as invalid.
        let needed = (scenarios[0].run.rps() * o.duration as f64 * 1.2) as usize + 1000;
        let t = Instant::now();
        let distinct = self.mint_distinct(needed)?;
        println!(
            "minted {needed} distinct tokens in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let before = baseline()?;
        let fetches = self.keys.fetches();
        let (run, rss) = self.measured(&push(worker.base(), &distinct), Some(&worker))?;
        let note = if run.wraps > 0 {
            format!("INVALID: ran out of distinct tokens ({} minted)", needed)
        } else {
            format!("{} distinct tokens, none reused", run.requests)
        };
        scenarios.push(Scenario {
            name: "2 push, distinct tokens",
            what: "as 1, every request a distinct valid token",
            key_fetches: self.keys.fetches() - fetches,
            key_fetch_limit: 1,
            rss_max_kib: rss,
            note,
            run,
            baseline_before: before,
        });
        println!("scenario 2: {:.0} req/s", scenarios[1].run.rps());

        let clerk = self.token_files("one-clerk", &self.clerk_token()?)?;
        let jobs_body = self.write("jobs.json", br#"{"message":"hello from the bench @ID@"}"#)?;
        let jobs = Load {
            base: worker.base(),
            path: "/jobs/echo",
            template: &jobs_body,
            tokens: &clerk,
            hostile: None,
            count_statuses: false,
        };
        self.wrk(&jobs, WARMUP_SECS)?;
        let before = baseline()?;
        let fetches = self.keys.fetches();
        let (run, rss) = self.measured(&jobs, Some(&worker))?;
        scenarios.push(Scenario {
            name: "3 manual, Clerk",
            what: "POST /jobs/echo, one Clerk session token",
            key_fetches: self.keys.fetches() - fetches,
            key_fetch_limit: 1,
            rss_max_kib: rss,
            note: String::new(),
            run,
            baseline_before: before,
        });
        println!("scenario 3: {:.0} req/s", scenarios[2].run.rps());

        let hostile = self.hostile_tokens(1000)?;
        let mix = Load {
            hostile: Some((&hostile, 10)),
            count_statuses: true,
            ..push(worker.base(), &one_token)
        };
        let before = baseline()?;
        let fetches = self.keys.fetches();
        let (run, rss) = self.measured(&mix, Some(&worker))?;
        let refused = run.statuses.get("401").copied().unwrap_or(0);
        let answered: u64 = run.statuses.values().sum();
        scenarios.push(Scenario {
            name: "4 push, 10% hostile",
            what: "as 1, every 10th token unknown-kid or bad-signature (must be 401)",
            key_fetches: self.keys.fetches() - fetches,
            key_fetch_limit: (o.duration / REFRESH_COOLDOWN_SECS) as usize + 1,
            rss_max_kib: rss,
            note: format!(
                "{refused} of {answered} refused with 401 ({:.1}%)",
                100.0 * refused as f64 / answered.max(1) as f64
            ),
            run,
            baseline_before: before,
        });
        println!("scenario 4: {:.0} req/s", scenarios[3].run.rps());
        baseline()?;
        drop(worker);

        let large = self.large_message()?;
        let report = Report {
            opts: o,
            baselines,
            scenarios,
            cold,
            idle_kib,
            large,
        };
        report.check_statuses()?;
        report.print();
        let json = serde_json::to_string_pretty(&report.json())?;
        if let Some(parent) = o.out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&o.out, json + "\n")?;
        println!("\nwrote {}", o.out.display());
        Ok(())
    }

    /// Exec → first 200 from /healthz, and exec → first acked push (which
    /// includes fetching the keys), each on a fresh process.
    fn cold_start(&self) -> Result<ColdStart> {
        let mut health = Vec::new();
        let mut push = Vec::new();
        let token = self.google.sign(&self.google_claims())?;
        for i in 0..self.opts.cold_runs {
            let worker = Worker::spawn(self.keys.addr)?;
            health.push(worker.wait_for(&get_request("/healthz"), 200, Duration::from_secs(10))?);
            let meta = MessageMeta {
                message_id: format!("cold-{i}"),
                attributes: [("job".to_owned(), "echo".to_owned())].into(),
                ..MessageMeta::default()
            };
            let request = RawRequest {
                method: "POST",
                path: "/pubsub/push".into(),
                token: Some(token.clone()),
                body: wrap(&meta, br#"{"message":"cold"}"#)
                    .to_string()
                    .into_bytes(),
            };
            push.push(worker.wait_for(&request, 204, Duration::from_secs(10))?);
        }
        Ok(ColdStart {
            health: millis(&health),
            push: millis(&push),
        })
    }

    /// Scenario 5: one 10 MB message to a fresh, idle process.
    fn large_message(&self) -> Result<Large> {
        let worker = Worker::spawn(self.keys.addr)?;
        worker.wait_for(&get_request("/readyz"), 200, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(1));
        let overhead = br#"{"message":""}"#.len();
        let mut data = Vec::with_capacity(LARGE_MESSAGE_BYTES);
        data.extend_from_slice(br#"{"message":""#);
        data.resize(LARGE_MESSAGE_BYTES - overhead + 12, b'x');
        data.extend_from_slice(br#""}"#);
        ensure!(data.len() == LARGE_MESSAGE_BYTES);
        let meta = MessageMeta {
            message_id: "large-1".into(),
            attributes: [("job".to_owned(), "echo".to_owned())].into(),
            subscription: Some("projects/bench-project/subscriptions/work-push".into()),
            ..MessageMeta::default()
        };
        let request = RawRequest {
            method: "POST",
            path: "/pubsub/push".into(),
            token: Some(self.google.sign(&self.google_claims())?),
            body: wrap(&meta, &data).to_string().into_bytes(),
        };
        drop(data);
        let idle_kib = worker.status_kib("VmRSS")?;
        worker.reset_peak()?;
        let start = Instant::now();
        let status = raw_http(worker.port, &request)?;
        let ack = start.elapsed();
        ensure!(status == 204, "the 10 MB message was answered {status}");
        let peak_kib = worker.status_kib("VmHWM")?;
        let after_kib = worker.status_kib("VmRSS")?;
        Ok(Large {
            bytes: LARGE_MESSAGE_BYTES,
            body_bytes: request.body.len(),
            ack_ms: ack.as_secs_f64() * 1e3,
            idle_kib,
            peak_kib,
            after_kib,
        })
    }
}

fn get_request(path: &str) -> RawRequest {
    RawRequest {
        method: "GET",
        path: path.into(),
        token: None,
        body: Vec::new(),
    }
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    ensure!(found, "{program} not on PATH");
    Ok(())
}

fn millis(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    Stats {
        median: ms[ms.len() / 2],
        min: ms[0],
        max: ms[ms.len() - 1],
        runs: ms.len(),
    }
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

struct ColdStart {
    health: Stats,
    push: Stats,
}

struct Large {
    bytes: usize,
    body_bytes: usize,
    ack_ms: f64,
    idle_kib: u64,
    peak_kib: u64,
    after_kib: u64,
}

// --- The report -------------------------------------------------------------------

struct Report<'a> {
    opts: &'a Options,
    /// In the order measured: before scenario 1, after it, then before each
    /// of 2–4, and after 4.
    baselines: Vec<WrkRun>,
    scenarios: Vec<Scenario>,
    cold: ColdStart,
    idle_kib: u64,
    large: Large,
}

/// Two baselines around a scenario further apart than this (percent of
/// their mean) mark the run unsteady.
const MAX_BASELINE_DRIFT_PCT: f64 = 10.0;
/// CPU steal above this (percent of the machine's time) in any timed run
/// marks the run unsteady.
const MAX_STEAL_PCT: f64 = 3.0;

struct Steadiness {
    /// The largest gap between the two baselines around a scenario.
    drift_pct: f64,
    steal_pct_max: f64,
    steady: bool,
}

struct Target {
    what: &'static str,
    target: String,
    measured: String,
    met: bool,
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report<'_> {
    /// The mean of every baseline run's req/s, and the slowest and fastest.
    fn baseline_summary(&self) -> (f64, f64, f64) {
        let rps: Vec<f64> = self.baselines.iter().map(WrkRun::rps).collect();
        let mean = rps.iter().sum::<f64>() / rps.len().max(1) as f64;
        let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rps.iter().copied().fold(0.0, f64::max);
        (mean, min, max)
    }

    /// The req/s of the baseline runs just before and just after `s`.
    fn around(&self, s: &Scenario) -> [f64; 2] {
        [s.baseline_before, s.baseline_before + 1].map(|i| self.baselines[i].rps())
    }

    /// The baseline a scenario is compared with: the mean of the two runs
    /// around it.
    fn baseline_rps(&self, s: &Scenario) -> f64 {
        let [a, b] = self.around(s);
        (a + b) / 2.0
    }

    fn ratio(&self, s: &Scenario) -> f64 {
        s.run.rps() / self.baseline_rps(s)
    }

    /// Whether the machine held still: the two baselines around each
    /// scenario should agree, and the hypervisor should not have taken much
    /// CPU time away. A ratio from an unsteady run says more about the
    /// neighbours than about the worker.
    fn steadiness(&self) -> Steadiness {
        let drift_pct = self
            .scenarios
            .iter()
            .map(|s| {
                let [a, b] = self.around(s);
                100.0 * (a - b).abs() / self.baseline_rps(s).max(1.0)
            })
            .fold(0.0, f64::max);
        let steal_pct_max = self
            .baselines
            .iter()
            .chain(self.scenarios.iter().map(|s| &s.run))
            .map(|r| r.steal_pct)
            .fold(0.0, f64::max);
        Steadiness {
            drift_pct,
            steal_pct_max,
            steady: drift_pct <= MAX_BASELINE_DRIFT_PCT && steal_pct_max <= MAX_STEAL_PCT,
        }
    }

    fn rss_load_kib(&self) -> u64 {
        self.scenarios
            .iter()
            .map(|s| s.rss_max_kib)
            .max()
            .unwrap_or(0)
    }

    /// A run whose answers were not the designed ones is not a benchmark.
    fn check_statuses(&self) -> Result<()> {
        for (i, b) in self.baselines.iter().enumerate() {
            ensure!(
                b.errors.status == 0 && b.socket_errors() == 0,
                "baseline run {} had errors: {:?}",
                i + 1,
                b.errors
            );
        }
        for s in &self.scenarios {
            // Each answer writes one request line (in-flight ones at the
            // ends add a few): fewer means lines were lost.
            let lines = s.run.log_lines.unwrap_or(0);
            ensure!(
                lines >= s.run.requests,
                "{}: {} requests answered but {} log lines written",
                s.name,
                s.run.requests,
                lines
            );
            ensure!(
                s.run.socket_errors() == 0,
                "{}: socket errors {:?}",
                s.name,
                s.run.errors
            );
            if s.run.statuses.is_empty() {
                ensure!(
                    s.run.errors.status == 0,
                    "{}: {} answers were not 2xx",
                    s.name,
                    s.run.errors.status
                );
            } else {
                let unexpected: u64 = s
                    .run
                    .statuses
                    .iter()
                    .filter(|(k, _)| *k != "204" && *k != "401")
                    .map(|(_, v)| v)
                    .sum();
                ensure!(
                    unexpected == 0,
                    "{}: unexpected statuses {:?}",
                    s.name,
                    s.run.statuses
                );
            }
        }
        Ok(())
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let s = &self.scenarios;
        t.push(Target {
            what: "scenario 1 vs baseline",
            target: "≥ 0.80×".into(),
            measured: format!("{:.2}×", self.ratio(&s[0])),
            met: self.ratio(&s[0]) >= 0.80,
        });
        t.push(Target {
            what: "scenario 2 vs baseline",
            target: "≥ 0.40×".into(),
            measured: format!("{:.2}×", self.ratio(&s[1])),
            met: self.ratio(&s[1]) >= 0.40 && s[1].run.wraps == 0,
        });
        let worst = s
            .iter()
            .max_by_key(|s| s.run.latency_us.p99)
            .map_or(0, |s| s.run.latency_us.p99);
        t.push(Target {
            what: "p99 at 32 connections (worst of 1–4)",
            target: "≤ 5 ms".into(),
            measured: format!("{:.2} ms", worst as f64 / 1e3),
            met: worst <= 5_000,
        });
        t.push(Target {
            what: "RSS under load (max of 1–4)",
            target: "≤ 25 MB".into(),
            measured: format!("{:.1} MB", mb(self.rss_load_kib())),
            met: mb(self.rss_load_kib()) <= 25.0,
        });
        t.push(Target {
            what: "cold start, exec → first response (median)",
            target: "≤ 20 ms".into(),
            measured: format!("{:.1} ms", self.cold.health.median),
            met: self.cold.health.median <= 20.0,
        });
        let fetches_ok = s.iter().all(|s| s.key_fetches <= s.key_fetch_limit);
        t.push(Target {
            what: "key fetches (per scenario ≤ 1 per cache period; hostile ≤ 1 per cooldown)",
            target: "within limits".into(),
            measured: s
                .iter()
                .map(|s| format!("{}/{}", s.key_fetches, s.key_fetch_limit))
                .collect::<Vec<_>>()
                .join(", "),
            met: fetches_ok,
        });
        let l = &self.large;
        let ratio = (l.peak_kib * 1024) as f64 / l.bytes as f64;
        t.push(Target {
            what: "10 MB message, peak RSS of the process",
            target: "≤ 4× message".into(),
            measured: format!("{:.1} MB = {ratio:.2}×", mb(l.peak_kib)),
            met: ratio <= 4.0,
        });
        t
    }

    fn print(&self) {
        let o = self.opts;
        println!(
            "\n| scenario | req/s | p50 ms | p99 ms | baseline req/s | × baseline | server CPU µs/req | key fetches | notes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for (i, b) in self.baselines.iter().enumerate() {
            println!(
                "| baseline {} | {:.0} | {:.2} | {:.2} | – | 1.00 | {:.1} | – | bare axum route, 204 |",
                i + 1,
                b.rps(),
                b.latency_us.p50 as f64 / 1e3,
                b.latency_us.p99 as f64 / 1e3,
                b.cpu_us_per_request(),
            );
        }
        for s in &self.scenarios {
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} ({} and {}) | {:.2} | {:.1} | {} | {} |",
                s.name,
                s.run.rps(),
                s.run.latency_us.p50 as f64 / 1e3,
                s.run.latency_us.p99 as f64 / 1e3,
                self.baseline_rps(s),
                s.baseline_before + 1,
                s.baseline_before + 2,
                self.ratio(s),
                s.run.cpu_us_per_request(),
                s.key_fetches,
                s.note
            );
        }
        let l = &self.large;
        println!(
            "| 5 one 10 MB message | – | – | – | – | – | – | 0 | acked in {:.0} ms; RSS {:.1} MB idle → peak {:.1} MB ({:.2}× the message), {:.1} MB after |",
            l.ack_ms,
            mb(l.idle_kib),
            mb(l.peak_kib),
            (l.peak_kib * 1024) as f64 / l.bytes as f64,
            mb(l.after_kib)
        );
        println!(
            "\ncold start (exec → first 200 from /healthz): median {:.1} ms (min {:.1}, max {:.1}, {} runs); exec → first acked push (keys fetched): median {:.1} ms",
            self.cold.health.median,
            self.cold.health.min,
            self.cold.health.max,
            self.cold.health.runs,
            self.cold.push.median
        );
        println!(
            "RSS: {:.1} MB idle, {:.1} MB max under load ({} connections, {} s per scenario)",
            mb(self.idle_kib),
            mb(self.rss_load_kib()),
            o.connections,
            o.duration
        );
        let st = self.steadiness();
        let (_, min, max) = self.baseline_summary();
        println!(
            "steadiness: the two baselines around a scenario at most {:.1} % apart (at most {MAX_BASELINE_DRIFT_PCT} %; all {} runs {min:.0} to {max:.0} req/s), CPU steal at most {:.1} % in a timed run (at most {MAX_STEAL_PCT} %): {}",
            st.drift_pct,
            self.baselines.len(),
            st.steal_pct_max,
            if st.steady {
                "steady"
            } else {
                "UNSTEADY, the machine was busy: run again before reading the ratios"
            }
        );
        println!("\n| target | wanted | measured | |\n|---|---|---|---|");
        for t in self.targets() {
            println!(
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "met" } else { "MISSED" }
            );
        }
    }

    fn json(&self) -> Value {
        let st = self.steadiness();
        let (mean, min, max) = self.baseline_summary();
        let run = |r: &WrkRun| {
            json!({
                "requests": r.requests,
                "req_per_s": round(r.rps(), 0),
                "p50_ms": r.latency_us.p50 as f64 / 1e3,
                "p90_ms": r.latency_us.p90 as f64 / 1e3,
                "p99_ms": r.latency_us.p99 as f64 / 1e3,
                "max_ms": r.latency_us.max as f64 / 1e3,
                "mean_ms": round(r.latency_us.mean / 1e3, 3),
                "non_2xx": r.errors.status,
                "server_cpu_us_per_request": round(r.cpu_us_per_request(), 1),
                "cpu_steal_pct": round(r.steal_pct, 1),
            })
        };
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|s| {
                let mut v = run(&s.run);
                v["name"] = json!(s.name);
                v["what"] = json!(s.what);
                v["baseline_req_per_s"] = json!(round(self.baseline_rps(s), 0));
                v["baseline_runs"] = json!([s.baseline_before + 1, s.baseline_before + 2]);
                v["ratio_to_baseline"] = json!(round(self.ratio(s), 3));
                v["key_fetches"] = json!(s.key_fetches);
                v["key_fetch_limit"] = json!(s.key_fetch_limit);
                v["rss_max_mb"] = json!(round(mb(s.rss_max_kib), 1));
                v["log_lines"] = json!(s.run.log_lines);
                if !s.run.statuses.is_empty() {
                    v["statuses"] = json!(s.run.statuses);
                }
                if !s.note.is_empty() {
                    v["note"] = json!(s.note);
                }
                v
            })
            .collect();
        let l = &self.large;
        json!({
            "command": "make bench",
            "date": now_secs(),
            "machine": machine(),
            "load": {
                "tool": wrk_version(),
                "connections": self.opts.connections,
                "threads": self.opts.threads,
                "seconds_per_scenario": self.opts.duration,
            },
            "baseline": {
                "runs": self.baselines.iter().map(run).collect::<Vec<_>>(),
                "req_per_s_mean": round(mean, 0),
                "req_per_s_min": round(min, 0),
                "req_per_s_max": round(max, 0),
            },
            "scenarios": scenarios,
            "steadiness": {
                "baseline_drift_pct": round(st.drift_pct, 1),
                "baseline_drift_max_pct": MAX_BASELINE_DRIFT_PCT,
                "cpu_steal_pct_max": round(st.steal_pct_max, 1),
                "cpu_steal_max_pct": MAX_STEAL_PCT,
                "steady": st.steady,
            },
            "large_message": {
                "data_bytes": l.bytes,
                "request_bytes": l.body_bytes,
                "time_to_ack_ms": round(l.ack_ms, 1),
                "rss_idle_mb": round(mb(l.idle_kib), 1),
                "rss_peak_mb": round(mb(l.peak_kib), 1),
                "rss_after_mb": round(mb(l.after_kib), 1),
                "peak_over_message": round((l.peak_kib * 1024) as f64 / l.bytes as f64, 2),
            },
            "cold_start_ms": {
                "exec_to_first_response": {
                    "median": round(self.cold.health.median, 2),
                    "min": round(self.cold.health.min, 2),
                    "max": round(self.cold.health.max, 2),
                    "runs": self.cold.health.runs,
                },
                "exec_to_first_acked_push_median": round(self.cold.push.median, 2),
            },
            "rss_mb": {
                "idle": round(mb(self.idle_kib), 1),
                "under_load_max": round(mb(self.rss_load_kib()), 1),
            },
            "targets": self.targets().iter().map(|t| json!({
                "what": t.what, "target": t.target, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let mem_kib = proc_meminfo_kib("MemTotal").unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": round(mem_kib as f64 / 1024.0 / 1024.0, 1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rustc": command_line("rustc", &["-V"]),
    })
}

fn proc_meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn wrk_version() -> String {
    command_line("wrk", &["-v"])
}
