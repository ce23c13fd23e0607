//! Load from `wrk` (Debian's package): its runs, the files it reads, and
//! the summary its Lua script prints. wrk already gives the latency
//! percentiles, so the bench keeps no histogram of its own.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::worker::{Worker, machine_cpu_ticks, proc_cpu_secs, proc_status_kib};

/// The script every load runs (see its header).
const SCRIPT: &str = include_str!("load.lua");
/// Appended to [`SCRIPT`] for a load that counts its answers' statuses.
const COUNT_STATUSES: &str = include_str!("count_statuses.lua");

/// What one wrk run measured.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    duration_us: u64,
    pub errors: WrkErrors,
    pub latency_us: Latency,
    /// Times a thread went through its token file and started over.
    pub wraps: u64,
    /// Answers by status, for a load with `count_statuses` (else empty).
    pub statuses: BTreeMap<String, u64>,
    /// CPU seconds the server process used during the run (set by
    /// `measured`): the worker, or this process for the baseline.
    #[serde(skip)]
    server_cpu_secs: f64,
    /// Log lines the worker wrote during the run (set by `measured`).
    #[serde(skip)]
    pub log_lines: Option<u64>,
    /// Share of the machine's CPU time the hypervisor gave to others during
    /// the run (`steal` in `/proc/stat`, set by `measured`), in percent.
    #[serde(skip)]
    pub steal_pct: f64,
    /// Share of the machine's CPU time left idle during the run, and idle
    /// waiting for I/O, in percent (set by `measured`).
    #[serde(skip)]
    pub idle_pct: f64,
    #[serde(skip)]
    pub iowait_pct: f64,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct WrkErrors {
    connect: u64,
    read: u64,
    write: u64,
    /// Answers that were not 2xx.
    pub status: u64,
    timeout: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl WrkRun {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Server CPU per request, in microseconds: what the ratio to the
    /// baseline is made of, without the load generator's share of the cores.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.requests.max(1) as f64
    }

    pub fn socket_errors(&self) -> u64 {
        let e = &self.errors;
        e.connect + e.read + e.write + e.timeout
    }
}

/// One load: what wrk sends where.
#[derive(Debug, Clone)]
pub struct Load {
    pub base: String,
    pub path: &'static str,
    /// The body, `@ID@` replaced by a unique id on every request.
    pub template: PathBuf,
    /// Token file, `{tid}` replaced by the wrk thread's number (1-based).
    pub tokens: PathBuf,
    /// A file of tokens sent instead on every Nth request.
    pub hostile: Option<(PathBuf, u32)>,
    pub count_statuses: bool,
}

impl Load {
    /// A wrapped push of the echo job.
    pub fn push(base: String, template: &Path, tokens: &Path) -> Self {
        Self {
            base,
            path: "/pubsub/push",
            template: template.to_owned(),
            tokens: tokens.to_owned(),
            hostile: None,
            count_statuses: false,
        }
    }
}

/// A prefix no other wrk run of this bench has used, for its message ids.
fn run_prefix() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    format!("b{}r{run}", std::process::id())
}

/// Runs wrk with the bench's threads and connections, its input files in
/// `dir`.
pub struct Wrk {
    dir: PathBuf,
    threads: u32,
    connections: u32,
    /// Seconds of a timed run.
    duration: u64,
}

impl Wrk {
    pub fn new(dir: PathBuf, threads: u32, connections: u32, duration: u64) -> Result<Self> {
        which("wrk").context("wrk is missing: apt-get install -y wrk")?;
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            threads,
            connections,
            duration,
        })
    }

    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// One token file per wrk thread, `contents(t)` in thread `t`'s (from 0);
    /// returns the `{tid}` pattern the script expands.
    fn thread_files(&self, name: &str, contents: impl Fn(usize) -> String) -> Result<PathBuf> {
        for t in 0..self.threads as usize {
            self.write(&format!("{name}-{}.txt", t + 1), contents(t).as_bytes())?;
        }
        Ok(self.dir.join(format!("{name}-{{tid}}.txt")))
    }

    /// The same token in every wrk thread's file.
    pub fn shared_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        self.thread_files(name, |_| format!("{token}\n"))
    }

    /// `tokens` dealt out over the wrk threads' files, none in two.
    pub fn dealt_tokens(&self, name: &str, tokens: &[String]) -> Result<PathBuf> {
        let threads = self.threads as usize;
        self.thread_files(name, |t| lines(tokens.iter().skip(t).step_by(threads)))
    }

    /// All of `tokens` in one file, read by every thread.
    pub fn token_list(&self, name: &str, tokens: &[String]) -> Result<PathBuf> {
        self.write(name, lines(tokens.iter()).as_bytes())
    }

    /// Runs `load` for `secs` seconds.
    pub fn run(&self, load: &Load, secs: u64) -> Result<WrkRun> {
        let mut script = SCRIPT.to_owned();
        if load.count_statuses {
            script.push_str(COUNT_STATUSES);
        }
        let script = self.write("load.lua", script.as_bytes())?;
        let mut cmd = Command::new("wrk");
        cmd.arg("-t")
            .arg(self.threads.to_string())
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-d")
            .arg(format!("{secs}s"))
            .args(["--timeout", "10s", "-s"])
            .arg(&script)
            .arg(&load.base)
            .arg("--")
            .arg(load.path)
            .arg(&load.template)
            .arg(&load.tokens)
            .arg(run_prefix());
        if let Some((file, every)) = &load.hostile {
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

    /// A timed run of `load` against `worker` (or, without one, the
    /// baseline this process serves), with the server's CPU time, the log
    /// lines written, the CPU steal, and the worker's RSS sampled every
    /// 100 ms; returns the run and that RSS's maximum.
    pub fn measured(&self, load: &Load, worker: Option<&Worker>) -> Result<(WrkRun, u64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = worker.map(|w| {
            let (pid, stop) = (w.pid(), stop.clone());
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
        let server = worker.map_or(std::process::id(), Worker::pid);
        let lines = || worker.map(Worker::log_lines);
        let lines_before = lines();
        let cpu_before = proc_cpu_secs(server)?;
        let machine_before = machine_cpu_ticks()?;
        let run = self.run(load, self.duration);
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
        (run.steal_pct, run.idle_pct, run.iowait_pct) = machine_after.shares_since(&machine_before);
        Ok((run, rss))
    }
}

/// One line per token.
fn lines<'a>(tokens: impl Iterator<Item = &'a String>) -> String {
    tokens.fold(String::new(), |mut file, token| {
        file.push_str(token);
        file.push('\n');
        file
    })
}

/// Whether `program` is on PATH: a clear message before any server starts,
/// rather than a spawn error minutes into the run.
fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    ensure!(found, "{program} not on PATH");
    Ok(())
}
