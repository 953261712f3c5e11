//! The shared context of every role (Redis, the Aircall client factory) and the dispatcher that
//! runs the role the command line asked for.

use std::net::TcpListener;
use std::process::ExitCode;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aircall::{Aircall, CallStatus, Credentials, RateLimitSettings, RateLimiter};
use crate::cli::{Command, ProbeArgs, SimulateArgs};
use crate::config::Settings;
use crate::sim::RunningSimulator;

/// Exit code of a role that has not been built yet.
const NOT_AVAILABLE: u8 = 3;

/// A Redis connection that reconnects by itself. It connects lazily, so a role can start while
/// Redis is still coming up; every command is bounded by `redis_timeout_ms`.
pub fn redis(settings: &Settings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.redis_url.expose().as_str())
        .context("redis_url is not a Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.redis_timeout()))
        .set_response_timeout(Some(settings.redis_timeout()))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
        .context("cannot set up the Redis client")
}

/// The Aircall client factory, drawing on the per-company budgets kept in `redis`.
pub fn aircall(settings: &Settings, redis: ConnectionManager) -> anyhow::Result<Aircall> {
    let a = &settings.aircall;
    let limiter = RateLimiter::new(
        redis,
        &settings.redis_key_prefix,
        RateLimitSettings {
            default_limit: a.requests_per_window,
            window: a.rate_limit_window(),
            margin: a.rate_limit_margin(),
        },
    );
    Aircall::new(&settings.aircall_base_url, a, limiter)
        .context("cannot build the Aircall HTTP client")
}

/// Runs one command to its end; `cancel` fires on SIGTERM/SIGINT.
pub async fn run(
    command: Command,
    settings: Settings,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config => Ok(print_config(&settings)),
        Command::Simulate(args) => simulate(&args, cancel).await,
        Command::Probe(args) => probe(&settings, args, cancel).await,
        Command::Serve(_) => not_yet("serve", "webhook intake (issue 3)"),
        Command::Worker => not_yet("worker", "the import worker (issue 4)"),
        Command::Reconcile(_) => not_yet("reconcile", "reconciliation (issue 5)"),
        Command::All(_) => not_yet(
            "all",
            "webhook intake, the worker and reconciliation (issues 3-5)",
        ),
    }
}

fn not_yet(role: &str, waits_for: &str) -> anyhow::Result<ExitCode> {
    eprintln!("the `{role}` role is not available in this build yet: it arrives with {waits_for}");
    Ok(ExitCode::from(NOT_AVAILABLE))
}

/// Prints the effective configuration, then what production mode would still require.
fn print_config(settings: &Settings) -> ExitCode {
    print!("{}", settings.to_redacted_toml());
    match settings.secrets() {
        Ok(secrets) if secrets.using_development_defaults => {
            println!("# development mode: development defaults stand in for missing secrets");
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn simulate(args: &SimulateArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    let sim = RunningSimulator::start(args.settings(), listener)?;
    for index in 0..args.companies.max(1) {
        sim.state
            .add_company(args.company(index))
            .map_err(anyhow::Error::msg)?;
    }
    println!("Aircall simulator serving {}", sim.base_url);
    println!("  control API: {}_sim/companies", sim.base_url);
    for company in sim.state.companies() {
        let paying: Vec<&str> = company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.as_str())
            .collect();
        println!(
            "  company {} \"{}\": api_id={} api_token={} calls={} agents={} paying agents: {}",
            company.id,
            company.name,
            company.api_id,
            company.api_token,
            company.calls,
            company.agents.len(),
            paying.join(",")
        );
    }
    cancel.cancelled().await;
    sim.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Pings with the given credentials and summarizes the last days of calls, through the same
/// client, budget and paging the service uses.
async fn probe(
    settings: &Settings,
    args: ProbeArgs,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let aircall = aircall(settings, redis(settings)?)?;
    // The probe has no connection: its budget is named after the key it checks.
    let budget = format!("probe:{}", args.api_id);
    let credentials = Credentials {
        api_id: args.api_id,
        api_token: args.api_token,
    };
    let client = aircall.client(credentials, &budget, cancel);
    if let Err(e) = client.ping().await {
        eprintln!("credentials check failed: {e}");
        if matches!(e, crate::aircall::AircallError::InvalidCredentials { .. }) {
            eprintln!(
                "check that the API ID and token are the ones shown when the key was created, \
                 that the key was not revoked, and that an Aircall admin created it"
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    println!("credentials: valid");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let from = now - i64::from(args.days) * 24 * 3600;
    let calls = client
        .list_calls(from, now)
        .await
        .context("cannot list calls")?;
    let done = calls
        .iter()
        .filter(|c| c.status == Some(CallStatus::Done))
        .count();
    let recorded = calls.iter().filter(|c| c.recording.is_some()).count();
    let with_agent = calls
        .iter()
        .filter(|c| c.user.as_ref().and_then(|u| u.email.as_ref()).is_some())
        .count();
    let users = client.list_users().await.context("cannot list users")?;
    println!(
        "last {} days: {} calls, {done} finished, {recorded} with a recording, {with_agent} with an agent",
        args.days,
        calls.len()
    );
    println!("users: {}", users.len());
    let stats = client.stats();
    info!(
        requests = stats.requests,
        rate_limited = stats.rate_limited,
        "probe done"
    );
    if stats.rate_limited > 0 {
        warn!(
            rate_limited = stats.rate_limited,
            "Aircall rate-limited the probe"
        );
    }
    Ok(ExitCode::SUCCESS)
}
