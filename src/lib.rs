//! aircall-ingest imports a sales team's Aircall calls — metadata and recording — into a
//! sales-analytics platform.
//!
//! Two paths bring calls in: Aircall's `call.ended` webhooks (fast path) and a reconciliation
//! poller that lists recent calls through the API (safety net). Roles are chosen by subcommand
//! (`serve`, `worker`, `reconcile`, `all`) so operators scale each on its own; `simulate` runs the
//! bundled Aircall simulator used by the local demo, the tests and the benchmarks.
//!
//! Everything lives in this library so the integration tests drive the real code; `main.rs` only
//! parses the command line, loads the configuration and starts the chosen role.

pub mod admin;
pub mod aircall;
pub mod app;
pub mod cli;
pub mod config;
pub mod connections;
pub mod console;
pub mod crypto;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod intake;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod serve;
pub mod shutdown;
pub mod sim;
pub mod telemetry;
pub mod web;
