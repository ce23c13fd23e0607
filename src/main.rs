//! The `pushworker` binary: parse the command line and hand over to the
//! library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = pushworker::cli::Cli::parse();
    // Dropped last: every line logged until then is written.
    let logs = pushworker::telemetry::LogGuard::default();
    let result = match pushworker::startup::runtime() {
        Ok(runtime) => {
            let result = runtime.block_on(pushworker::cli::run(cli, &logs));
            runtime.shutdown_timeout(pushworker::startup::RUNTIME_STOP);
            result
        }
        Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
    };
    drop(logs);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Start-up errors name the variable and what to fix; print the
            // whole chain once, without a backtrace.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
