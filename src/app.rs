//! The shared context of every role (settings, Redis, RabbitMQ, the Aircall client factory, the
//! keys) and the dispatcher that runs the role the command line asked for.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aircall::{Aircall, CallStatus, Credentials, RateLimitSettings, RateLimiter};
use crate::cli::{Command, ProbeArgs, ServeArgs, SimulateArgs};
use crate::config::Settings;
use crate::connections::{self, ConnectionStore, OutcomeStore};
use crate::crypto::{AdminToken, Keys};
use crate::import::download::Downloader;
use crate::import::lease::Leases;
use crate::import::rules::Rules;
use crate::import::{Importer, Storage};
use crate::intake::Intake;
use crate::queue::{Broker, Spool};
use crate::serve::{self, Readiness};
use crate::sim::RunningSimulator;

/// Everything the service roles share, built once per process. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub redis: ConnectionManager,
    pub broker: Broker,
    pub spool: Spool,
    pub connections: ConnectionStore,
    pub outcomes: OutcomeStore,
    pub aircall: Aircall,
    pub keys: Arc<Keys>,
    pub admin_token: Arc<AdminToken>,
}

impl Context {
    /// Builds the context; connects nothing yet (Redis lazily, RabbitMQ through
    /// [`Broker::run`]). Fails when production secrets are missing.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let secrets = settings.secrets()?;
        if secrets.using_development_defaults {
            warn!("development mode: well-known development secrets stand in for missing ones");
        }
        let redis = redis(&settings)?;
        Ok(Self {
            broker: Broker::new(&settings.amqp_url, &settings.queue),
            spool: Spool::new(redis.clone(), &settings.redis_key_prefix),
            connections: ConnectionStore::new(
                redis.clone(),
                &settings.redis_key_prefix,
                settings.intake.connection_cache_ttl(),
            ),
            outcomes: OutcomeStore::new(redis.clone(), &settings.redis_key_prefix),
            aircall: aircall(&settings, redis.clone())?,
            keys: Arc::new(Keys::derive(&secrets.secret_key)),
            admin_token: Arc::new(AdminToken::new(&secrets.admin_token)),
            redis,
            settings: Arc::new(settings),
        })
    }

    /// The webhook endpoint's share of the context.
    pub fn intake(&self) -> Intake {
        Intake {
            connections: self.connections.clone(),
            keys: self.keys.clone(),
            broker: self.broker.clone(),
            spool: self.spool.clone(),
            redis: self.redis.clone(),
            settings: self.settings.intake.clone(),
            key_prefix: self.settings.redis_key_prefix.clone(),
        }
    }

    /// Starts the background work of the `serve` role: the RabbitMQ supervisor and the spool
    /// drainer. Both end when `cancel` fires.
    pub fn start_background(&self, cancel: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let intake = &self.settings.intake;
        vec![
            tokio::spawn(self.broker.clone().run(cancel.clone())),
            tokio::spawn(self.spool.clone().run_drainer(
                self.broker.clone(),
                intake.spool_drain_interval(),
                intake.spool_drain_batch,
                intake.broker_confirm_timeout(),
                cancel.clone(),
            )),
        ]
    }

    /// What the `worker` role runs for each job. Fails when the storage settings do not work.
    pub fn importer(&self, cancel: &CancellationToken) -> anyhow::Result<Importer> {
        let settings = &self.settings;
        let https_only = settings.mode == crate::config::Mode::Production;
        Ok(Importer {
            connections: self.connections.clone(),
            outcomes: self.outcomes.clone(),
            leases: Leases::new(
                self.redis.clone(),
                &settings.redis_key_prefix,
                settings.worker.lease(),
            ),
            storage: Storage::from_settings(&settings.storage).context("storage")?,
            downloader: Downloader::new(&settings.import, https_only)
                .context("cannot build the recording download client")?,
            aircall: self.aircall.clone(),
            keys: self.keys.clone(),
            broker: self.broker.clone(),
            rules: Rules::new(&settings.import),
            import: settings.import.clone(),
            recording_url_fresh: settings.import.recording_url_fresh(),
            confirm_timeout: settings.queue.connect_timeout(),
            cancel: cancel.clone(),
        })
    }

    /// What the `reconcile` role runs.
    pub fn reconciler(&self) -> crate::reconcile::Reconciler {
        let settings = &self.settings;
        crate::reconcile::Reconciler {
            connections: self.connections.clone(),
            outcomes: self.outcomes.clone(),
            state: crate::reconcile::StateStore::new(
                self.redis.clone(),
                &settings.redis_key_prefix,
            ),
            aircall: self.aircall.clone(),
            keys: self.keys.clone(),
            broker: self.broker.clone(),
            locks: Leases::new(
                self.redis.clone(),
                &settings.redis_key_prefix,
                settings.reconcile.lock(),
            ),
            rules: Rules::new(&settings.import),
            import: settings.import.clone(),
            settings: settings.reconcile.clone(),
            retention: settings.retention.clone(),
            public_url: settings.public_url.clone(),
            confirm_timeout: settings.queue.connect_timeout(),
            clock: crate::reconcile::Clock::system(),
        }
    }

    /// Starts the `worker` role's consumer; it drains and ends when `cancel` fires.
    pub fn start_worker(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let importer = self.importer(cancel)?;
        Ok(tokio::spawn(crate::import::worker::run(
            importer,
            self.broker.clone(),
            self.settings.worker.clone(),
            cancel.clone(),
        )))
    }

    fn readiness(&self, either_suffices: bool) -> Readiness {
        Readiness {
            redis: self.redis.clone(),
            broker: self.broker.clone(),
            either_suffices,
        }
    }

    /// The process's metrics; `with_spool` for a role that drains the spool.
    fn metrics(&self, with_spool: bool) -> serve::Metrics {
        serve::Metrics {
            handle: crate::metrics::install(),
            sampler: crate::metrics::Sampler {
                spool: with_spool.then(|| self.spool.clone()),
                broker: self.broker.clone(),
            },
        }
    }

    /// Starts the `metrics_listen` listener of `worker` and `reconcile`, when one is set.
    pub fn start_probes(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<serve::HttpServerHandle>> {
        let listen = &self.settings.metrics_listen;
        if listen.is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = listen.parse().context("metrics_listen")?;
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot bind {addr} (metrics_listen)"))?;
        let server = serve::start_probes(
            listener,
            self.readiness(false),
            self.metrics(false),
            cancel.clone(),
        )?;
        info!(addr = %server.addr, "serving /metrics, /healthz and /readyz");
        Ok(Some(server))
    }

    /// Starts the HTTP server of the `serve` role on `listener`: webhooks, the admin API,
    /// health, metrics.
    pub fn serve(
        &self,
        listener: TcpListener,
        cancel: &CancellationToken,
    ) -> anyhow::Result<serve::HttpServerHandle> {
        serve::start(
            listener,
            serve::Parts {
                intake: self.intake(),
                readiness: self.readiness(true),
                admin: crate::admin::Admin::new(self.clone(), cancel.clone())?,
                metrics: self.metrics(true),
            },
            self.settings.serve.worker_threads(),
            self.settings.serve.shutdown_timeout(),
            cancel.clone(),
        )
    }
}

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
        Command::Status => status(settings).await,
        Command::Serve(args) => run_serve(settings, args, false, cancel).await,
        Command::Worker => run_worker(settings, cancel).await,
        Command::Reconcile(args) => run_reconcile(settings, args.once, cancel).await,
        Command::All(args) => run_serve(settings, args, true, cancel).await,
    }
}

/// The `worker` role: the broker supervisor and the consumer, until SIGTERM.
async fn run_worker(settings: Settings, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(settings)?;
    // The broker outlives the consumer, so imports finishing during the drain still publish
    // their events and retries.
    let broker_cancel = CancellationToken::new();
    let broker = tokio::spawn(ctx.broker.clone().run(broker_cancel.clone()));
    // The listener outlives the consumer too: /readyz and /metrics answer during the drain.
    let probes = ctx.start_probes(&broker_cancel)?;
    let worker = ctx.start_worker(&cancel)?;
    let _ = worker.await;
    broker_cancel.cancel();
    if let Some(probes) = probes {
        probes.stopped().await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), broker).await;
    Ok(ExitCode::SUCCESS)
}

/// The `reconcile` role: passes over every due connection until SIGTERM, or one round
/// (`--once`, for a CronJob: exit 0 when every pass succeeded).
async fn run_reconcile(
    settings: Settings,
    once: bool,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(settings)?;
    let broker_cancel = CancellationToken::new();
    if once {
        // One round needs the broker at once: connect before starting.
        ctx.broker
            .connect()
            .await
            .context("cannot reach RabbitMQ")?;
    }
    let broker = tokio::spawn(ctx.broker.clone().run(broker_cancel.clone()));
    let code = if once {
        let round = ctx.reconciler().run_due(true, &cancel).await;
        info!(
            succeeded = round.succeeded,
            failed = round.failed,
            skipped = round.skipped,
            "reconciliation round done"
        );
        // A round cut short by SIGTERM did not run every due connection.
        if round.failed == 0 && !cancel.is_cancelled() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    } else {
        // A CronJob's round is not scraped; the loop is.
        let probes = ctx.start_probes(&broker_cancel)?;
        ctx.reconciler().run(cancel).await;
        broker_cancel.cancel();
        if let Some(probes) = probes {
            probes.stopped().await;
        }
        ExitCode::SUCCESS
    };
    broker_cancel.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), broker).await;
    Ok(code)
}

/// The HTTP listener of `serve` and `all`: `--listen`, else `serve.listen`.
fn bind(ctx: &Context, args: &ServeArgs) -> anyhow::Result<TcpListener> {
    let listen = match args.listen {
        Some(addr) => addr,
        None => ctx.settings.serve.listen.parse().context("serve.listen")?,
    };
    TcpListener::bind(listen).with_context(|| format!("cannot bind {listen}"))
}

/// The `serve` role (HTTP, the broker supervisor and the spool drainer) until SIGTERM; with
/// `every_role` (`all`, the local default) the worker and the reconciler run beside it.
async fn run_serve(
    settings: Settings,
    args: ServeArgs,
    every_role: bool,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(settings)?;
    let listener = bind(&ctx, &args)?;
    check_redis_durability(&ctx).await;
    // The broker and the drainer outlive the other roles, so requests and imports in flight
    // at shutdown still publish instead of being spooled or retried.
    let background_cancel = CancellationToken::new();
    let background = ctx.start_background(&background_cancel);
    let mut roles = Vec::new();
    if every_role {
        roles.push(ctx.start_worker(&cancel)?);
        roles.push(tokio::spawn(ctx.reconciler().run(cancel.clone())));
    }
    let server = ctx.serve(listener, &cancel)?;
    info!(addr = %server.addr, importing = every_role, reconciling = every_role, "serving webhooks at /webhooks/aircall/{{connection}}");
    server.stopped().await;
    for role in roles {
        let _ = role.await;
    }
    background_cancel.cancel();
    for task in background {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A 200 to Aircall promises the spool survives a Redis restart and never gets evicted: say so
/// when the Redis in use does not look like it.
async fn check_redis_durability(ctx: &Context) {
    async fn setting(redis: &ConnectionManager, name: &str) -> Option<String> {
        let pair: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut redis.clone())
            .await;
        pair.ok().and_then(|p| p.get(1).cloned())
    }
    let appendonly = setting(&ctx.redis, "appendonly").await;
    let policy = setting(&ctx.redis, "maxmemory-policy").await;
    let production = ctx.settings.mode == crate::config::Mode::Production;
    match (appendonly.as_deref(), policy.as_deref()) {
        (Some("yes"), Some("noeviction")) => {}
        (None, _) | (_, None) => {
            info!(
                "cannot read Redis's persistence settings (CONFIG may be disabled); the spool needs appendonly and noeviction"
            )
        }
        (appendonly, policy) if production => warn!(
            appendonly,
            maxmemory_policy = policy,
            "Redis may lose spooled webhooks: run it with appendonly yes and maxmemory-policy noeviction"
        ),
        (appendonly, policy) => info!(
            appendonly,
            maxmemory_policy = policy,
            "Redis keeps nothing across restarts (fine for development)"
        ),
    }
}

/// Prints the state operators look at first: queues, spool, connections.
async fn status(settings: Settings) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(settings)?;
    ctx.broker
        .connect()
        .await
        .context("cannot reach RabbitMQ")?;
    let names = ctx.broker.names().clone();
    for queue in names.all_queues() {
        let depth = ctx
            .broker
            .queue_depth(queue)
            .await
            .with_context(|| format!("cannot read {queue}"))?;
        println!("queue {queue}: {depth} messages");
    }
    println!(
        "spool: {} jobs",
        ctx.spool.depth().await.context("cannot reach Redis")?
    );
    for id in ctx.connections.ids().await.context("cannot reach Redis")? {
        if let Some(record) = ctx.connections.get(&id).await? {
            let users = ctx.connections.paying_users(&id).await?;
            let counts = ctx.outcomes.counts(&id).await?;
            let counts: Vec<String> = counts
                .iter()
                .map(|(name, count)| format!("{name}={count}"))
                .collect();
            println!(
                "connection {}: {:?}, webhook {}, {} paying users; calls: {}",
                record.id,
                record.status,
                record.webhook_id,
                users.len(),
                if counts.is_empty() {
                    "none yet".to_string()
                } else {
                    counts.join(" ")
                }
            );
            let reconciler = ctx.reconciler();
            match reconciler.state.reports(&id, 1).await?.first() {
                Some(report) => println!(
                    "  last sync: {:?} pass, {} calls seen, {} queued, {} Aircall requests{}",
                    report.kind,
                    report.calls_seen,
                    report.queued,
                    report.aircall_requests,
                    report
                        .error
                        .as_deref()
                        .map(|e| format!(", failed: {e}"))
                        .unwrap_or_default()
                ),
                None => println!("  last sync: none yet"),
            }
            let recent = ctx
                .outcomes
                .list(
                    &id,
                    &connections::OutcomeQuery {
                        limit: 10,
                        ..Default::default()
                    },
                )
                .await?;
            for record in recent.items {
                println!(
                    "  call {} {}{}: {}",
                    record.call_id,
                    record.outcome.as_str(),
                    record
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    record.explanation()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
