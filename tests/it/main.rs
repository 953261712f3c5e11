//! Integration tests: one binary, real Redis, real HTTP, the simulator standing in for Aircall.
//! Each test uses its own Redis key prefix and its own simulator, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod chaos;
mod client;
mod config;
mod console;
mod disruptive;
mod fuzz_corpus;
mod helpers;
mod hostile;
mod intake;
mod metrics;
mod proxy;
mod rate_limit;
mod reconcile;
mod retention;
mod s3;
mod scale;
mod security;
mod shutdown;
mod simulator;
mod spool;
mod worker;
