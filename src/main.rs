//! The `pushworker` binary: parse the command line and hand over to the
//! library.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = pushworker::cli::Cli::parse();
    match pushworker::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Start-up errors name the variable and what to fix; print the
            // whole chain once, without a backtrace.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
