//! The `pushworker` command line.
//!
//! - `pushworker serve`: run the worker (configuration from flags and env).
//! - `pushworker dev-token google|clerk`: mint a token from the development
//!   identity, for `curl` and the replay tools.
//! - `pushworker replay`: deliver messages from files or a subscription as a
//!   push would.
//! - `pushworker redrive`: republish dead-lettered messages to a topic.
//! - `pushworker openapi`: print the OpenAPI document (`make openapi` writes
//!   it to `docs/openapi.json`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    auth::dev::{DevClerkUser, DevIdentity},
    config::{Config, ServeArgs},
    jobs::{
        JobDeps, JobRegistry,
        webhook::{WebhookConfig, settings::DEFAULT_MAX_RESPONSE_BYTES},
    },
    startup::Application,
    telemetry,
};

/// pushworker: Pub/Sub push, Scheduler/Tasks calls and Clerk-signed manual
/// triggers, in one Cloud Run service.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP.
    Serve(Box<ServeArgs>),
    /// Mint a token signed by the development identity (dev mode only trusts it).
    DevToken(DevTokenArgs),
    /// Deliver messages from files or a subscription as Pub/Sub push would.
    Replay(Box<crate::replay::ReplayArgs>),
    /// Print the OpenAPI 3.1 document that `GET /openapi.json` serves (with
    /// the built-in jobs).
    Openapi,
    /// Republish messages from a dead-letter subscription to a topic, each
    /// acked once its publish is confirmed.
    Redrive(Box<crate::redrive::RedriveArgs>),
}

/// `dev-token` options.
#[derive(Debug, clap::Args)]
pub struct DevTokenArgs {
    /// Which kind of token.
    #[command(subcommand)]
    pub kind: DevTokenKind,
    /// Folder of the development key (the one `make run` uses).
    #[arg(
        long,
        env = "DEV_DIR",
        default_value = ".pushworker-dev",
        global = true
    )]
    pub dev_dir: PathBuf,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, global = true)]
    pub lifetime: i64,
}

/// Token kinds.
#[derive(Debug, Subcommand)]
pub enum DevTokenKind {
    /// A Google-shaped OIDC token, as Pub/Sub push or Cloud Scheduler send.
    Google {
        /// The service account (`email`).
        #[arg(long, default_value = DevIdentity::SERVICE_ACCOUNT)]
        email: String,
        /// The audience (`aud`).
        #[arg(long, default_value = DevIdentity::GOOGLE_AUDIENCE)]
        audience: String,
    },
    /// A Clerk-shaped session token, as the admin page sends.
    Clerk {
        /// User id (`sub`).
        #[arg(long, default_value = "user_dev")]
        user: String,
        /// Session id (`sid`).
        #[arg(long, default_value = "sess_dev")]
        session: String,
        /// Active organization id; `none` for no organization.
        #[arg(long, default_value = "org_dev")]
        org: String,
        /// Role in the organization, without `org:`.
        #[arg(long, default_value = "admin")]
        role: String,
        /// Permissions (`org:<feature>:<perm>`), repeatable.
        #[arg(long = "permission", default_values_t = vec!["org:jobs:trigger".to_owned()])]
        permissions: Vec<String>,
        /// No permissions at all.
        #[arg(long, conflicts_with = "permissions")]
        no_permissions: bool,
        /// Emit v1 organization claims instead of v2.
        #[arg(long)]
        v1: bool,
        /// Authorized party (`azp`): the admin page's origin.
        #[arg(long, env = "DEV_AZP", default_value = "http://localhost:8080")]
        azp: String,
    },
}

/// Runs the command line; `logs` keeps the log writer (drop it last).
pub async fn run(cli: Cli, logs: &telemetry::LogGuard) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args, logs).await,
        Command::DevToken(args) => dev_token(args),
        Command::Replay(args) => {
            telemetry::init(logs, telemetry::LogFormat::Text, None);
            crate::replay::run(*args).await
        }
        Command::Openapi => openapi(),
        Command::Redrive(args) => {
            telemetry::init(logs, telemetry::LogFormat::Text, None);
            crate::redrive::run(*args).await
        }
    }
}

/// The document of a server with the built-in jobs: the webhook job's
/// settings change nothing in it, so their defaults do.
#[allow(clippy::print_stdout)]
fn openapi() -> anyhow::Result<()> {
    let jobs = JobRegistry::builtin(&JobDeps {
        http: crate::startup::http_client()?,
        webhook: WebhookConfig::new(Vec::<String>::new(), DEFAULT_MAX_RESPONSE_BYTES)?,
    })?;
    let doc = crate::http::document(&jobs)?;
    print!("{}", crate::http::openapi::to_pretty_json(&doc)?);
    Ok(())
}

async fn serve(args: ServeArgs, logs: &telemetry::LogGuard) -> anyhow::Result<()> {
    let config = Config::from_args(&args)?;
    telemetry::init(logs, config.log_format, config.project_id.clone());
    if config.dev_mode {
        tracing::warn!(
            dev_dir = %args.dev.dir.display(),
            "DEVELOPMENT MODE: a local signing key is trusted as Google and Clerk issuer; never use this in production"
        );
    }
    let app = Application::build(config.clone()).await?;
    tracing::info!(
        port = app.port(),
        google = config.google.is_some(),
        clerk = config.clerk.is_some(),
        jobs = ?app.state().jobs,
        runs = app.state().runs.kind(),
        "pushworker listening"
    );
    app.run(shutdown_signal()).await
}

/// Completes on SIGTERM (Cloud Run) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[allow(clippy::print_stdout)]
fn dev_token(args: DevTokenArgs) -> anyhow::Result<()> {
    let identity = DevIdentity::load_or_create(&args.dev_dir).with_context(|| {
        format!(
            "DEV_DIR: cannot use the development key in `{}`",
            args.dev_dir.display()
        )
    })?;
    let token = match args.kind {
        DevTokenKind::Google { email, audience } => {
            identity.google_token(&email, &audience, args.lifetime)?
        }
        DevTokenKind::Clerk {
            user,
            session,
            org,
            role,
            permissions,
            no_permissions,
            v1,
            azp,
        } => identity.clerk_token(
            &DevClerkUser {
                user_id: user,
                session_id: session,
                org_id: (org != "none").then_some(org),
                role,
                permissions: if no_permissions {
                    Vec::new()
                } else {
                    permissions
                },
                v1,
                authorized_party: azp,
            },
            args.lifetime,
        )?,
    };
    println!("{token}");
    Ok(())
}
