//! The command line: one subcommand per role, plus the simulator and operator tools. Parsing
//! only; `app.rs` runs what was asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use url::Url;

use crate::sim::{CallMix, CompanySpec, Faults, SimSettings};

/// Imports Aircall calls and recordings: webhooks, workers and a reconciliation poller.
#[derive(Debug, Parser)]
#[command(name = "aircall-ingest", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (settings not in it come from `AIRCALL_INGEST_*` variables or
    /// the defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The webhook endpoint, the admin API, health and metrics.
    Serve(ServeArgs),
    /// Consumes import jobs: applies the rules, downloads recordings, stores calls.
    Worker,
    /// Lists recent calls through the API and queues whatever the webhooks missed.
    Reconcile(ReconcileArgs),
    /// Every role in one process (the local default).
    All(ServeArgs),
    /// Runs the bundled Aircall simulator.
    Simulate(Box<SimulateArgs>),
    /// Prints the effective configuration (secrets redacted) and checks it.
    Config,
    /// Checks a pair of Aircall credentials and summarizes the company's recent calls.
    Probe(ProbeArgs),
    /// Prints queue depths, the spool, the connections and their import outcomes.
    Status,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind (overrides `serve.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Run every due connection once and exit (for a Kubernetes CronJob).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Aircall API ID.
    #[arg(long, env = "AIRCALL_API_ID")]
    pub api_id: String,
    /// Aircall API token. Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "AIRCALL_API_TOKEN", hide_env_values = true)]
    pub api_token: SecretString,
    /// How many days back to list.
    #[arg(long, default_value_t = 14)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve the simulated API on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Address written in links and recording URLs (default: http://{listen}/).
    #[arg(long)]
    pub public_url: Option<Url>,
    /// API ID of the first company.
    #[arg(long, default_value = "demo-api-id")]
    pub api_id: String,
    /// API token of the first company.
    #[arg(long, default_value = "demo-api-token")]
    pub api_token: String,
    /// Seed of every generated company.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Companies to serve; those after the first get generated credentials.
    #[arg(long, default_value_t = 1)]
    pub companies: usize,
    /// Agents per company.
    #[arg(long, default_value_t = 8)]
    pub agents: usize,
    /// Finished calls per company over the last `--history-days`.
    #[arg(long, default_value_t = 300)]
    pub history_calls: usize,
    #[arg(long, default_value_t = 21)]
    pub history_days: u32,
    /// New calls per minute per company.
    #[arg(long, default_value_t = 2.0)]
    pub live_calls_per_minute: f64,
    /// Seconds between a call's end and its `call.ended` webhook.
    #[arg(long, default_value_t = 30)]
    pub webhook_delay_secs: u64,
    /// Lifetime of signed recording URLs, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub recording_url_ttl_secs: u64,
    /// Requests per company per rate-limit window.
    #[arg(long, default_value_t = 60)]
    pub rate_limit: u32,
    #[arg(long, default_value_t = 60)]
    pub rate_window_secs: u64,
    /// Write `X-AircallApi-Reset` in milliseconds.
    #[arg(long)]
    pub reset_in_millis: bool,

    /// Share of API requests answered 5xx.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub error_5xx_share: f64,
    /// Share of API requests answered 429.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub rate_limit_429_share: f64,
    /// Latency added to every API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of recording downloads cut short.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub truncate_share: f64,
    /// Share of webhook deliveries dropped.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub drop_webhook_share: f64,
    /// Share of webhook deliveries sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub duplicate_webhook_share: f64,
    /// Up to this much extra delay per webhook delivery, in milliseconds (reorders them).
    #[arg(long, default_value_t = 0)]
    pub webhook_jitter_ms: u64,
    /// Address recording URLs point to (default: the API's address).
    #[arg(long)]
    pub recording_url: Option<Url>,

    /// Share of calls nobody answered.
    #[arg(long, value_parser = share)]
    pub missed_share: Option<f64>,
    /// Share of answered calls without a recording.
    #[arg(long, value_parser = share)]
    pub no_recording_share: Option<f64>,
    /// Share of agents who are not paying users of the platform.
    #[arg(long, value_parser = share)]
    pub unknown_agent_share: Option<f64>,
    /// Share of recordings over 200 MB.
    #[arg(long, value_parser = share)]
    pub oversized_share: Option<f64>,
    /// Share of recordings that appear late.
    #[arg(long, value_parser = share)]
    pub late_recording_share: Option<f64>,
}

/// A probability: a number from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not a share: write a number from 0 to 1"
        )),
    }
}

impl SimulateArgs {
    pub fn settings(&self) -> SimSettings {
        SimSettings {
            seed: self.seed,
            public_url: self.public_url.clone(),
            recording_url_ttl: Duration::from_secs(self.recording_url_ttl_secs),
            webhook_delay: Duration::from_secs(self.webhook_delay_secs),
            rate_limit: self.rate_limit,
            rate_window: Duration::from_secs(self.rate_window_secs.max(1)),
            reset_in_millis: self.reset_in_millis,
            faults: Faults {
                error_5xx_share: self.error_5xx_share,
                rate_limit_429_share: self.rate_limit_429_share,
                latency_ms: self.latency_ms,
                truncate_recording_share: self.truncate_share,
                drop_webhook_share: self.drop_webhook_share,
                duplicate_webhook_share: self.duplicate_webhook_share,
                webhook_jitter_ms: self.webhook_jitter_ms,
            },
            recording_url: self.recording_url.clone(),
            ..SimSettings::default()
        }
    }

    /// The spec of company `index` (0-based); the first uses the given credentials.
    pub fn company(&self, index: usize) -> CompanySpec {
        let defaults = CallMix::default();
        let mix = CallMix {
            missed: self.missed_share.unwrap_or(defaults.missed),
            no_recording: self.no_recording_share.unwrap_or(defaults.no_recording),
            unknown_agent: self.unknown_agent_share.unwrap_or(defaults.unknown_agent),
            oversized: self.oversized_share.unwrap_or(defaults.oversized),
            late_recording: self.late_recording_share.unwrap_or(defaults.late_recording),
            ..defaults
        };
        CompanySpec {
            name: Some(if index == 0 {
                "Demo Company".into()
            } else {
                format!("Company {}", index + 1)
            }),
            api_id: (index == 0).then(|| self.api_id.clone()),
            api_token: (index == 0).then(|| self.api_token.clone()),
            seed: self.seed.wrapping_add(index as u64),
            agents: self.agents,
            history_calls: self.history_calls,
            history_days: self.history_days,
            live_calls_per_minute: self.live_calls_per_minute,
            mix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fixed_points_parse() {
        let cli = Cli::parse_from([
            "aircall-ingest",
            "--config",
            "a.toml",
            "serve",
            "--listen",
            "0.0.0.0:9000",
        ]);
        assert!(matches!(
            cli.command,
            Command::Serve(ServeArgs { listen: Some(_) })
        ));
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("a.toml")));
        let cli = Cli::parse_from([
            "aircall-ingest",
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--api-id",
            "id",
            "--api-token",
            "tok",
            "--seed",
            "7",
        ]);
        let Command::Simulate(args) = cli.command else {
            panic!("not simulate")
        };
        assert_eq!(
            (args.api_id.as_str(), args.api_token.as_str(), args.seed),
            ("id", "tok", 7)
        );
        let cli = Cli::parse_from(["aircall-ingest", "reconcile", "--once"]);
        assert!(matches!(
            cli.command,
            Command::Reconcile(ReconcileArgs { once: true })
        ));
    }
}
