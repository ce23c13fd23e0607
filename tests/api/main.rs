//! Integration tests: the real worker on port 0, a real key server on
//! loopback, real RS256 tokens, and the machine's real PostgreSQL for the run
//! ledger (a database per test). One module per area; `helpers` holds one
//! helper per endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod auth;
mod binary;
mod emulator;
mod events;
mod hardening;
mod helpers;
mod jobs;
mod keys;
mod ledger;
mod lifecycle;
mod logs;
mod metrics;
mod openapi;
mod push;
mod redrive;
mod reliability;
mod run_control;
mod run_stats;
mod runs;
mod token_cache;
mod webhook;
