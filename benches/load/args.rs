//! The bench's options, given after `--` (`make bench BENCH_ARGS='…'`).

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Parser;

/// pushworker's throughput, latency, memory and cold start, side by side
/// with a bare axum route (see benches/load/main.rs).
#[derive(Debug, Clone, Parser)]
#[command(name = "load")]
pub struct Args {
    /// Seconds of load in every timed run (each baseline and scenario).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    pub duration: u64,

    /// Connections wrk keeps open; at least --threads.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,

    /// wrk threads; each gets its share of the connections.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,

    /// Fresh processes started to measure the cold start (median reported).
    #[arg(long, default_value_t = 15, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub cold_runs: usize,

    /// Where the results are written as JSON.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.json"))]
    pub out: PathBuf,

    /// PostgreSQL for the shared-ledger scenario (`host:port`, user
    /// `postgres`, trust auth; fresh databases are created and dropped);
    /// `none` skips it.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub postgres: String,

    /// Seconds of each run of the PostgreSQL pruning pair (pruning on, then
    /// off).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..))]
    pub prune_secs: u64,

    /// Passed by `cargo bench`; without it the bench exits at once.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    /// Parses the command line, with the checks one flag alone cannot make.
    pub fn parse_checked() -> Result<Self> {
        let args = Self::parse();
        ensure!(
            args.connections >= args.threads,
            "--connections must be at least --threads (wrk gives each thread its connections)"
        );
        Ok(args)
    }
}
