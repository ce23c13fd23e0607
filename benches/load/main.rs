//! `make bench`: pushworker's throughput, latency, memory and cold start,
//! measured side by side with a bare axum route in one run.
//!
//! Why a baseline: absolute requests per second on a shared 2-core machine
//! swing by tens of percent from one run to the next. The same load against a
//! bare axum route answering 204 (same framework and HTTP stack, no auth, no
//! work), in the same run, turns every figure into a ratio that survives a
//! noisy machine. The baseline is measured right before each timed scenario
//! and once after the last, and each scenario's ratio uses the mean of the
//! two baseline runs around it: a machine's speed drifts over the minutes a
//! whole run takes, and a ratio to a baseline measured minutes away carries
//! that drift. For the same reason a scenario followed by a long preparation
//! (minting scenario 2's tokens) gets its own baseline right after it. A run
//! is reported **unsteady** when the two baselines around any scenario are
//! more than 10 % apart or the hypervisor took more than 3 % of the machine's
//! CPU time (`steal` in `/proc/stat`) during a timed run: on a shared VM a
//! neighbour's load can halve the baseline for a minute, and ratios from that
//! minute mean little.
//!
//! What runs, all on loopback:
//! - a key server (`keys.rs`: JWKS for a Google-like and a Clerk-like
//!   issuer, real RSA keys, `Cache-Control: max-age=3600`) that counts every
//!   fetch;
//! - the baseline route, served by this process;
//! - the real `pushworker serve` release binary as a child process
//!   (`worker.rs`), configured as in production: real verifiers over the key
//!   server, the in-memory run ledger, JSON logs on a pipe that this process
//!   drains and counts, as a platform's log collector reads a container's
//!   stdout (every answered request must have written its line), default
//!   cache settings;
//! - load from `wrk` (`load.rs`, Debian's package), `--connections`
//!   connections, fixed duration per scenario, the Lua script `load.lua` that
//!   gives every push its own message id (so the ledger runs each one, as
//!   Pub/Sub's would).
//!
//! Scenarios (`scenarios.rs`): (1) wrapped push of an `echo` job with one
//! valid Google token repeated, as Pub/Sub sends them; (2) the same with a
//! distinct valid token on every request (minted beforehand, never reused, so
//! no cache can help); (3) a Clerk user's `POST /jobs/echo`; (4) scenario 1
//! with every tenth request carrying a hostile token (unknown `kid` or bad
//! signature, which must get 401); (5) one 10 MB message on a fresh process
//! (peak memory, time to ack). Plus cold start (exec to first successful
//! response, median of `--cold-runs`), RSS idle and under load, and key
//! fetches per scenario.
//!
//! Output (`report.rs`): a table on stdout (docs/performance.md shows the latest) and
//! `bench/results.json`. Options after `--`: see
//! `cargo bench --bench load -- --help`.
//!
//! Built (not run) by `cargo test --all-targets`: without cargo bench's
//! `--bench` argument it exits at once.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod keys;
mod load;
mod postgres;
mod report;
mod scenarios;
mod worker;

use anyhow::Result;

fn main() -> Result<()> {
    // Looked for before parsing: `cargo test` may pass its own arguments.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benches/load: not under `cargo bench`; run `make bench`");
        return Ok(());
    }
    let args = args::Args::parse_checked()?;
    let bench = scenarios::Bench::new(args.clone())?;
    let report = bench.run()?;
    report.check_statuses()?;
    report.print();
    report.write(&args.out)
}
