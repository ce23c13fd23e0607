//! The `pushworker serve` child process under test, what /proc says about it
//! and the machine, and the one-shot HTTP request that probes it.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::keys::{AUDIENCE, AZP, CLERK_ISSUER, SERVICE_ACCOUNT};

/// A `pushworker serve` release binary, configured as in production: real
/// verifiers over the bench's key server, the in-memory run ledger, default
/// cache settings, JSON logs on a pipe that is drained and counted.
pub struct Worker {
    child: Child,
    port: u16,
    started: Instant,
    /// Lines the worker has written to stdout so far.
    log_lines: Arc<AtomicU64>,
}

impl Worker {
    pub fn spawn(keys: SocketAddr) -> Result<Self> {
        Self::spawn_with(keys, &[])
    }

    /// The same, with more environment (`DATABASE_URL` for the shared
    /// ledger).
    pub fn spawn_with(keys: SocketAddr, env: &[(&str, String)]) -> Result<Self> {
        let port = free_port()?;
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushworker"))
            .arg("serve")
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            // On, as in production, on a port of its own: workers run side by
            // side (`METRICS_ADDR=off` in `env` measures the cost).
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("GOOGLE_AUDIENCES", AUDIENCE)
            .env("GOOGLE_SERVICE_ACCOUNTS", SERVICE_ACCOUNT)
            .env("GOOGLE_JWKS_URL", format!("http://{keys}/google"))
            .env("CLERK_ISSUER", CLERK_ISSUER)
            .env("CLERK_JWKS_URL", format!("http://{keys}/clerk"))
            .env("CLERK_AUTHORIZED_PARTIES", AZP)
            .env("GOOGLE_CLOUD_PROJECT", "bench-project")
            .env("LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting target/release/pushworker")?;
        let log_lines = Arc::new(AtomicU64::new(0));
        let mut stdout = child.stdout.take().context("the worker's stdout")?;
        let lines = log_lines.clone();
        // Drains the pipe as a platform's log collector reads a container's
        // stdout, in large reads.
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

    /// A worker that answers `/readyz` and has settled, so its RSS reads as
    /// idle.
    pub fn spawn_ready(keys: SocketAddr) -> Result<Self> {
        Self::spawn_ready_with(keys, &[])
    }

    /// [`Worker::spawn_ready`] with more environment.
    pub fn spawn_ready_with(keys: SocketAddr, env: &[(&str, String)]) -> Result<Self> {
        let worker = Self::spawn_with(keys, env)?;
        worker.wait_for(&RawRequest::get("/readyz"), 200, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(worker)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_lines(&self) -> u64 {
        self.log_lines.load(Ordering::Relaxed)
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        proc_status_kib(self.pid(), field)
    }

    /// Resets the peak-RSS mark (`VmHWM`) to the current RSS.
    pub fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("resetting VmHWM through /proc/PID/clear_refs")
    }

    pub fn send(&self, request: &RawRequest) -> Result<u16> {
        raw_http(self.port, request)
    }

    /// Waits until `request` is answered `want`, polling every half
    /// millisecond; returns the time since exec.
    pub fn wait_for(&self, request: &RawRequest, want: u16, within: Duration) -> Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if self.send(request).is_ok_and(|status| status == want) {
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A one-shot HTTP/1.1 request over a fresh connection. Hand-written so that
/// no client library's pool, resolver or buffering sits in the timed path of
/// the cold start and the large message.
pub struct RawRequest {
    pub method: &'static str,
    pub path: String,
    pub token: Option<String>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            token: None,
            body: Vec::new(),
        }
    }

    pub fn push(token: String, body: Vec<u8>) -> Self {
        Self {
            method: "POST",
            path: "/pubsub/push".into(),
            token: Some(token),
            body,
        }
    }
}

/// Sends `request` and returns the answer's status, reading no further.
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

// The /proc readers are hand-written: each reads one or two fields of a
// Linux text file, less code than a crate's setup.

/// A `Field:   123 kB` line's value from /proc/PID/status or /proc/meminfo.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A field of /proc/PID/status in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kib_field(&status, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process, from /proc/PID/stat (fields 14 and
/// 15, in USER_HZ ticks, which Linux fixes at 100 per second).
pub fn proc_cpu_secs(pid: u32) -> Result<f64> {
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

/// The machine's CPU time so far, in ticks, from the `cpu` line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    pub steal: u64,
    /// Idle, not waiting for I/O.
    pub idle: u64,
    /// Idle while some I/O was outstanding (a commit's flush, say).
    pub iowait: u64,
    pub total: u64,
}

impl CpuTicks {
    /// Each share of the time from `before` to `self`, in percent.
    pub fn shares_since(&self, before: &Self) -> (f64, f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total;
        (
            pct(self.steal, before.steal),
            pct(self.idle, before.idle),
            pct(self.iowait, before.iowait),
        )
    }
}

pub fn machine_cpu_ticks() -> Result<CpuTicks> {
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
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Ok(CpuTicks {
        steal: at(7),
        idle: at(3),
        iowait: at(4),
        total: ticks.iter().take(8).sum(),
    })
}
