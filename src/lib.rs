//! pushworker: one Cloud Run service for background work.
//!
//! Pub/Sub delivers messages by HTTP push with a Google OIDC token, and
//! Eventarc delivers CloudEvents the same way; Cloud Scheduler and Cloud
//! Tasks call with their own OIDC tokens; people trigger the same work by
//! hand from an admin page, signed in with Clerk. All of them reach one HTTP
//! surface, pass one authentication core, and run the same typed job
//! handlers.
//!
//! # Layout
//!
//! A request goes down through the layers, and each uses only the ones below
//! it: route → extractor → auth → envelope → runner → job → ledger.
//!
//! - [`cli`] and `main.rs` — the `pushworker` command line (`serve`,
//!   `dev-token`, `replay`, `redrive`, `openapi`).
//! - [`startup`] — [`startup::Application`] builds the parts from a
//!   [`config::Config`], binds the listener and serves.
//! - [`config`] — flags and environment, parsed and validated once at
//!   start-up: `ServeArgs` flattens the flag groups the modules below own,
//!   and `config` turns them into those modules' settings types and checks
//!   the rules that span them.
//! - [`server`] — the accept loop under the router: header and idle timeouts,
//!   the connection bound, graceful shutdown.
//! - [`telemetry`] — metrics (a Prometheus recorder per application, served
//!   on `METRICS_ADDR`); logging: Cloud Logging JSON or escaped text, written
//!   by a lossless writer thread; trace-header parsing.
//! - [`http`] — the router, [`http::AppState`], the one [`http::Error`], the
//!   extractors over auth ([`http::extract`]), the CORS layer, the request log,
//!   and one module per resource (health, whoami, jobs, push, events, runs,
//!   run stats, run control, and
//!   [`http::admin`], the admin page whose files live in `assets/admin/` and
//!   are embedded in the binary); [`http::openapi`] gathers the routes' parts
//!   of the OpenAPI document, adds one operation per job, and serves it with
//!   Swagger UI (`assets/docs/`, embedded too).
//! - [`auth`] — the bearer token, its routing by issuer, the Google and Clerk
//!   verifiers with their settings, the per-issuer key cache and the
//!   verified-token cache; no HTTP framework, no configuration parsing.
//!   [`auth::dev`] is the local development identity, used by start-up, the
//!   command line, replay and the admin page's development sign-in only.
//! - [`pubsub`] — the push envelope, wrapped and unwrapped, the dead-letter
//!   publisher and the Pub/Sub client settings.
//! - [`events`] — CloudEvents 1.0 over HTTP (binary and structured mode), as
//!   Eventarc delivers them to `POST /events`, and `EVENT_ROUTES`, which
//!   routes them to jobs by type and subject.
//! - [`replay`] — `pushworker replay`: deliver messages from files or a
//!   subscription (real Pub/Sub or the emulator) exactly as a push would,
//!   each with a bearer token.
//! - [`redrive`] — `pushworker redrive`: republish the messages of a
//!   dead-letter subscription to a topic, each acked once its publish is
//!   confirmed.
//! - [`runner`] — the one sequence both handlers call: record and claim, run
//!   the job, record its end; the runs in flight, which a cancel request
//!   stops.
//! - [`jobs`] — the [`jobs::Job`] trait, the registry and one file a job.
//! - [`runs`] — the run ledger: a record of every dispatch, the claim that
//!   makes a message, an event or an `Idempotency-Key` run once, the
//!   in-memory and PostgreSQL stores, and the metered wrapper.
//! - [`principal`] — who a verified caller is: plain data that auth makes and
//!   the jobs and the ledger read.
//!
//! Outside the crate: `tests/` (integration tests against real servers),
//! `benches/load/` (`make bench`), `fuzz/` (`make fuzz`, its own workspace)
//! and `infra/` (Terraform).

pub mod auth;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod jobs;
pub mod principal;
pub mod pubsub;
pub mod redrive;
pub mod replay;
pub mod runner;
pub mod runs;
pub mod server;
pub mod startup;
pub mod telemetry;
