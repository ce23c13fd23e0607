//! pushworker: one Cloud Run service for background work.
//!
//! Pub/Sub delivers messages by HTTP push with a Google OIDC token; Cloud
//! Scheduler and Cloud Tasks call with their own OIDC tokens; people trigger
//! the same work by hand from an admin page, signed in with Clerk. All of them
//! reach one HTTP surface, pass one authentication core, and run the same
//! typed job handlers.
//!
//! # Layout
//!
//! Modules follow a request:
//!
//! - [`config`] — flags and environment, parsed and validated once at start-up.
//! - [`startup`] — [`startup::Application`] binds the listener and serves.
//! - [`http`] — the router, shared state, the one error type and one module per
//!   resource (health, whoami, jobs, push, and [`http::admin`], the admin page
//!   whose files live in `assets/admin/` and are embedded in the binary, and
//!   runs, the ledger's read API).
//! - [`auth`] — the bearer token, its routing by issuer, the Google and Clerk
//!   verifiers, the per-issuer key cache and the extractors; [`auth::dev`] is
//!   the local development identity.
//! - [`pubsub`] — the push envelope, wrapped and unwrapped.
//! - [`jobs`] — the [`jobs::Job`] trait, the registry and the example jobs.
//! - [`replay`] — `pushworker replay`: deliver messages from files or a
//!   subscription (real Pub/Sub or the emulator) exactly as a push would.
//! - [`cli`] — the `pushworker` command line (`serve`, `dev-token`, `replay`).
//! - [`runs`] — the run ledger: a record of every dispatch, the claim that
//!   makes a message or `Idempotency-Key` run once, the in-memory and
//!   PostgreSQL stores, and the runner both handlers call.
//! - [`telemetry`] — logging setup.
//!
//! Outside the crate: `tests/` (integration tests against real servers),
//! `benches/load.rs` (`make bench`), `fuzz/` (`make fuzz`, its own workspace)
//! and `infra/` (Terraform).

pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod jobs;
pub mod pubsub;
pub mod replay;
pub mod runs;
pub mod startup;
pub mod telemetry;
