//! Scale: thousands of connected companies, and what each one costs. For each N of
//! `BENCH_SCALE_COMPANIES` (1,000 and 10,000), against the simulator in this process holding N
//! companies — 99% quiet (2 agents, no calls), 1% busy (8 agents, 30 calls over the last three
//! days, all eligible, recordings of a few kB):
//!
//! 1. **the simulator's memory**: its RSS before and after the N companies are added, measured
//!    in a fresh child process (this binary again) so that no freed memory of an earlier run
//!    hides the growth;
//! 2. **connecting** all N through the library's connect flow (Aircall ping, webhook registered,
//!    credentials sealed and stored with the paying users), 32 at a time, each then made due;
//! 3. **one reconcile cycle on one replica**: `Reconciler::run_due` over every connection with
//!    the default `reconcile.concurrency` (16): round 1 is every first import (the worker
//!    imports the busy companies' 30 calls meanwhile); then each busy company gets 5 new calls
//!    (no webhook: the listing finds them), every connection is made due again and round 2, the
//!    steady state, is timed — the "one 15-minute cycle" figure. Baselines in the same run:
//!    concurrency 1, on a sample (every k-th connection) extrapolated to N; and both again with
//!    `BENCH_SCALE_LATENCY_MS` (150) added to every Aircall answer, on samples, since the
//!    simulator answers in microseconds and Aircall does not;
//! 4. **Aircall requests per connection per cycle**, counted by the simulator per company,
//!    quiet and busy apart (recording downloads are not API requests and are left out);
//! 5. **Redis memory**: `MEMORY USAGE … SAMPLES 0` summed over a `SCAN` of the run's prefix
//!    (exact, this run's keys only: the server is shared), grouped by the connection each key
//!    belongs to; per connection after connecting and after each round; per imported call from
//!    the difference between a busy and a quiet connection after round 1, divided by the 30
//!    calls each busy one imported;
//! 6. **intake throughput with N connections vs 10**: the same closed loop of
//!    `BENCH_CONCURRENCY` (32) clients posting realistic `call.ended` webhooks with each
//!    connection's real token for `BENCH_SECONDS` (10) s, to `serve` of a service holding N
//!    connections (spread over all of them) and to one holding 10, in the order 10, N, N, 10
//!    (`BENCH_SCALE_INTAKE_REPEATS` times, 2), each phase from an empty import queue; the
//!    worker is stopped meanwhile so both measure the door alone.
//!
//! Run: `cargo bench --bench scale` (RabbitMQ and Redis on their local default ports;
//! `deploy/local/bench.sh scale` starts them first). `BENCH_SCALE_COMPANIES` (`1000,10000`),
//! `BENCH_SCALE_SAMPLE` (connections of the concurrency-1 and latency samples, 1000),
//! `BENCH_SCALE_LATENCY_MS` (150), `BENCH_SCALE_INTAKE_REPEATS` (2), `BENCH_SECONDS` (10),
//! `BENCH_CONCURRENCY` (32);
//! `BENCH_LOG=info` shows the service's logs; `AIRCALL_INGEST_*` variables apply to the service.
//! Prints Markdown tables.
// A benchmark may stop at the first broken assumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aircall_ingest::aircall::Credentials;
use aircall_ingest::app::Context;
use aircall_ingest::config::Settings;
use aircall_ingest::connections::{self, ConnectionId};
use aircall_ingest::import::rules::PayingUsers;
use aircall_ingest::reconcile::{Reconciler, Round};
use aircall_ingest::sim::{
    CallMix, CallSpec, CompanyInfo, CompanySpec, Faults, RunningSimulator, SimSettings,
};
use futures_util::{StreamExt as _, stream};
use lapin::options::QueuePurgeOptions;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

use common::{CallEnded, KeyMemory, Leftovers, Traces, env_number, now_ms};

/// Recording size per second of talk: a few kB per call.
const RECORDING_BYTES_PER_SECOND: u64 = 10;
/// One company in this many is busy (1%).
const BUSY_EVERY: usize = 100;
const QUIET_AGENTS: usize = 2;
const BUSY_AGENTS: usize = 8;
/// Calls of a busy company before it connects (its first import takes them all).
const BUSY_HISTORY_CALLS: usize = 30;
/// Calls of a busy company between round 1 and round 2.
const BUSY_NEW_CALLS: usize = 5;
/// Connections made at once.
const CONNECT_AT_ONCE: usize = 32;
/// The cycle the goal is about.
const CYCLE: Duration = Duration::from_secs(15 * 60);
/// The child process measuring the simulator's memory reads N here.
const CHILD_ENV: &str = "BENCH_SCALE_SIM_MEMORY_OF";
/// Longest wait for the worker to import what a round queued.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|n| n.trim().replace('_', "").parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

fn is_busy(index: usize) -> bool {
    index.is_multiple_of(BUSY_EVERY)
}

/// Every call eligible: answered, a paying agent, a recording ready at the end.
fn eligible_mix() -> CallMix {
    CallMix {
        missed: 0.0,
        voicemail: 0.0,
        no_recording: 0.0,
        unknown_agent: 0.0,
        oversized: 0.0,
        late_recording: 0.0,
        without_content_length: 0.0,
        ..CallMix::default()
    }
}

fn spec(index: usize) -> CompanySpec {
    if is_busy(index) {
        CompanySpec {
            agents: BUSY_AGENTS,
            history_calls: BUSY_HISTORY_CALLS,
            history_days: 3,
            mix: eligible_mix(),
            ..CompanySpec::default()
        }
    } else {
        CompanySpec {
            agents: QUIET_AGENTS,
            ..CompanySpec::default()
        }
    }
}

fn sim_settings() -> SimSettings {
    SimSettings {
        bytes_per_second: RECORDING_BYTES_PER_SECOND,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        ..SimSettings::default()
    }
}

fn connection_name(index: usize) -> String {
    format!("scale-{index:05}")
}

fn mb(bytes: f64) -> String {
    if bytes.abs() < 1e6 {
        return kb(bytes);
    }
    format!("{:.1} MB", bytes / 1e6)
}

fn kb(bytes: f64) -> String {
    format!("{:.2} kB", bytes / 1e3)
}

// ---------------------------------------------------------------- the simulator's memory

/// What the child process measured.
#[derive(Debug, Clone, Copy, Default)]
struct SimMemory {
    rss_before: u64,
    rss_after: u64,
    add: Duration,
}

/// The child's work: a simulator, N companies, RSS before and after. Prints one line.
async fn child_measure(n: usize) {
    let sim =
        RunningSimulator::start(sim_settings(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = common::own_rss_bytes();
    let started = Instant::now();
    for i in 0..n {
        sim.state.add_company(spec(i)).unwrap();
    }
    let add = started.elapsed();
    let after = common::own_rss_bytes();
    println!("SIM-MEMORY {before} {after} {}", add.as_micros());
    sim.stop().await;
}

/// Runs this binary again as the child measuring the simulator's memory with `n` companies.
fn sim_memory(n: usize) -> Option<SimMemory> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .env(CHILD_ENV, n.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("SIM-MEMORY "))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Some(SimMemory {
        rss_before: *numbers.first()?,
        rss_after: *numbers.get(1)?,
        add: Duration::from_micros(*numbers.get(2)?),
    })
}

// ---------------------------------------------------------------- the service

/// `serve` on port 0 (webhooks, admin API, broker supervisor, spool drainer), its own Redis
/// prefix and queue names, storage under the bench's scratch directory; the worker once started.
struct Service {
    ctx: Context,
    public_url: Url,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    traces: Traces,
    leftovers: Leftovers,
}

impl Service {
    async fn start(sim: &RunningSimulator, leftovers: &Leftovers, root: PathBuf) -> Service {
        let (mut settings, _) = common::bench_settings("scale");
        settings.aircall_base_url = sim.base_url.clone();
        settings.import.recording_hosts = vec!["127.0.0.1".into()];
        settings.storage.root = root.clone();
        settings.serve.workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (ctx, public_url, traces) = common::start_service(settings, root, leftovers).await;
        Service {
            ctx,
            public_url,
            worker: None,
            traces,
            leftovers: leftovers.clone(),
        }
    }

    fn start_worker(&mut self) {
        let cancel = self.traces.cancel.child_token();
        let task = self.ctx.start_worker(&cancel).unwrap();
        self.worker = Some((cancel, task));
    }

    async fn stop_worker(&mut self) {
        if let Some((cancel, task)) = self.worker.take() {
            cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// Connects `company` as the admin API does (ping, webhook registered at `serve`,
    /// credentials sealed, paying users stored in the same step), then makes it due. The
    /// webhook's token, as the simulator holds it.
    async fn connect(&self, sim: &RunningSimulator, company: &CompanyInfo, name: &str) -> String {
        let id = ConnectionId::parse(name).unwrap();
        let api_token = SecretString::from(company.api_token.clone());
        let client = self.ctx.aircall.client(
            Credentials {
                api_id: company.api_id.clone(),
                api_token: api_token.clone(),
            },
            name,
            self.traces.cancel.clone(),
        );
        let users = PayingUsers::new(
            company
                .agents
                .iter()
                .filter(|a| a.paying)
                .map(|a| a.email.clone()),
        );
        let reconciler = self.ctx.reconciler();
        connections::connect(connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &api_token,
            public_url: &self.public_url,
            store: &self.ctx.connections,
            outcomes: &self.ctx.outcomes,
            state: &reconciler.state,
            keys: &self.ctx.keys,
            users: &users,
            now_ms: now_ms(),
        })
        .await
        .expect("Redis on 127.0.0.1:6379, and the simulator");
        reconciler.state.make_due(&id).await.unwrap();
        let url = connections::webhook_url(&self.public_url, &id);
        sim.state
            .webhooks(company.id)
            .unwrap()
            .into_iter()
            .find(|w| w.url == url)
            .expect("the webhook just registered")
            .token
    }

    /// Empties the import queue (the intake's jobs, no worker consuming them), so every intake
    /// phase starts from an empty queue.
    async fn purge_import_queue(&self) {
        let channel = self.ctx.broker.channel().await.unwrap();
        channel
            .queue_purge(
                self.ctx.broker.names().import.as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
    }

    /// Makes every one of `names` due now (outside any timing).
    async fn make_due(&self, names: &[String]) {
        let state = self.ctx.reconciler().state;
        stream::iter(names)
            .map(|name| {
                let state = state.clone();
                async move {
                    state
                        .make_due(&ConnectionId::parse(name).unwrap())
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }

    /// Calls imported so far by these connections.
    async fn imported(&self, names: &[String]) -> u64 {
        let mut total = 0;
        for name in names {
            let id = ConnectionId::parse(name).unwrap();
            total += self
                .ctx
                .outcomes
                .counts(&id)
                .await
                .unwrap()
                .get("outcome:imported")
                .copied()
                .unwrap_or(0);
        }
        total
    }

    /// Waits until `names` have imported `expected` calls in all; how long it took, or `None`
    /// past [`IMPORT_TIMEOUT`] (reported, not fatal).
    async fn wait_imported(&self, names: &[String], expected: u64) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let imported = self.imported(names).await;
            if imported >= expected {
                return Some(started.elapsed());
            }
            if started.elapsed() > IMPORT_TIMEOUT {
                eprintln!(
                    "  only {imported} of {expected} calls imported after {IMPORT_TIMEOUT:?}"
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// This run's Redis keys, grouped by connection (`""`: keys of no one connection).
    async fn memory(&self) -> KeyMemory {
        let prefix = self.traces.prefix.clone();
        common::redis_key_memory(&mut self.ctx.redis.clone(), &prefix, |key| {
            connection_of(&prefix, key)
        })
        .await
        .unwrap()
    }

    /// This run's Redis keys, grouped by kind (see [`kind_of`]).
    async fn kinds(&self) -> KeyMemory {
        let prefix = self.traces.prefix.clone();
        common::redis_key_memory(&mut self.ctx.redis.clone(), &prefix, |key| {
            kind_of(&prefix, key)
        })
        .await
        .unwrap()
    }

    async fn clean_up(mut self) {
        self.stop_worker().await;
        self.traces.remove().await;
        self.leftovers.forget(&self.traces.prefix);
    }
}

/// The connection a key belongs to: the hash tag (`{id}`) of `calls`, `reconcile` and
/// `ratelimit` keys, the segment after `connection:` of the connection's own keys; else `""`.
fn connection_of(prefix: &str, key: &str) -> String {
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) else {
        return String::new();
    };
    if let (Some(open), Some(close)) = (rest.find('{'), rest.find('}'))
        && open < close
    {
        return rest[open + 1..close].to_string();
    }
    rest.strip_prefix("connection:")
        .and_then(|r| r.split(':').next())
        .unwrap_or_default()
        .to_string()
}

/// A key's kind: the key without the prefix, its connection id written `*` and numbers `#`.
fn kind_of(prefix: &str, key: &str) -> String {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(key);
    let connection = connection_of(prefix, key);
    rest.split(':')
        .map(|segment| {
            if !connection.is_empty() && segment.trim_matches(['{', '}']) == connection {
                segment.replace(&connection, "*")
            } else if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                "#".to_string()
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------- Aircall requests

/// API requests per company, by endpoint (recording downloads left out).
#[derive(Clone, Default)]
struct Requests(Vec<BTreeMap<String, u64>>);

impl Requests {
    fn of(sim: &RunningSimulator, companies: &[CompanyInfo]) -> Self {
        Self(
            companies
                .iter()
                .map(|c| {
                    sim.state
                        .stats(c.id)
                        .unwrap_or_default()
                        .by_endpoint
                        .into_iter()
                        .filter(|(endpoint, _)| !endpoint.starts_with("download_"))
                        .collect()
                })
                .collect(),
        )
    }

    /// Per company: what was counted since `before`.
    fn since(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .zip(&before.0)
                .map(|(now, then)| {
                    now.iter()
                        .map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0)))
                        .filter(|(_, v)| *v > 0)
                        .collect()
                })
                .collect(),
        )
    }

    /// Over the companies `pick` keeps: mean, min and max of their totals, and the endpoints'
    /// totals.
    fn summary(&self, pick: impl Fn(usize) -> bool) -> RequestSummary {
        let mut summary = RequestSummary {
            min: u64::MAX,
            ..RequestSummary::default()
        };
        for (_, endpoints) in self.0.iter().enumerate().filter(|(i, _)| pick(*i)) {
            let total: u64 = endpoints.values().sum();
            summary.companies += 1;
            summary.total += total;
            summary.min = summary.min.min(total);
            summary.max = summary.max.max(total);
            for (endpoint, n) in endpoints {
                *summary.by_endpoint.entry(endpoint.clone()).or_default() += n;
            }
        }
        if summary.companies == 0 {
            summary.min = 0;
        }
        summary
    }
}

#[derive(Debug, Clone, Default)]
struct RequestSummary {
    companies: u64,
    total: u64,
    min: u64,
    max: u64,
    by_endpoint: BTreeMap<String, u64>,
}

impl RequestSummary {
    fn cell(&self) -> String {
        if self.companies == 0 {
            return "—".into();
        }
        let mean = self.total as f64 / self.companies as f64;
        let per_endpoint: Vec<String> = self
            .by_endpoint
            .iter()
            .map(|(e, n)| format!("{e} {:.2}", *n as f64 / self.companies as f64))
            .collect();
        let spread = if self.min == self.max {
            String::new()
        } else {
            format!(" ({}–{})", self.min, self.max)
        };
        format!("**{mean:.2}**{spread}: {}", per_endpoint.join(", "))
    }
}

// ---------------------------------------------------------------- rounds

/// One timed round.
#[derive(Debug, Clone, Copy)]
struct Timed {
    connections: usize,
    round: Round,
    wall: Duration,
}

impl Timed {
    fn per_second(&self) -> f64 {
        self.round.succeeded as f64 / self.wall.as_secs_f64()
    }

    /// The wall time of `n` connections at this pace.
    fn extrapolated(&self, n: usize) -> Duration {
        self.wall.mul_f64(n as f64 / self.connections.max(1) as f64)
    }

    fn cell(&self, n: usize) -> String {
        let failed = if self.round.failed + self.round.skipped > 0 {
            format!(
                ", {} failed, {} skipped",
                self.round.failed, self.round.skipped
            )
        } else {
            String::new()
        };
        if self.connections == n {
            format!(
                "**{:.1} s** ({:.0} passes/s{failed})",
                self.wall.as_secs_f64(),
                self.per_second()
            )
        } else {
            format!(
                "**{:.1} s** extrapolated ({} passes in {:.1} s, {:.0}/s{failed})",
                self.extrapolated(n).as_secs_f64(),
                self.connections,
                self.wall.as_secs_f64(),
                self.per_second()
            )
        }
    }
}

/// `run_due` over whatever is due, at `concurrency`, timed; every due connection must pass.
async fn timed_round(
    reconciler: &Reconciler,
    concurrency: usize,
    connections: usize,
    once: bool,
) -> Timed {
    let mut reconciler = reconciler.clone();
    reconciler.settings.concurrency = concurrency;
    let started = Instant::now();
    let round = reconciler.run_due(once, &CancellationToken::new()).await;
    let wall = started.elapsed();
    if round.succeeded != connections {
        eprintln!("  round at concurrency {concurrency}: {round:?}, {connections} expected");
    }
    Timed {
        connections,
        round,
        wall,
    }
}

/// The step between two sampled connections: `sample` of `n` at most.
fn stride(n: usize, sample: usize) -> usize {
    n.div_ceil(sample.max(1)).max(1)
}

/// Every `stride`-th of `names`, `sample` of them at most.
fn sample(names: &[String], sample: usize) -> Vec<String> {
    names
        .iter()
        .step_by(stride(names.len(), sample))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- intake

/// One closed-loop phase against a `serve`.
struct Phase {
    label: String,
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        common::percentile_ms(&self.latencies_us, p)
    }
}

/// `concurrency` clients, each posting its next `call.ended` when the last was answered, to
/// the connections of `targets` (`(url, token)`) in turn.
async fn closed_loop(
    label: String,
    targets: Arc<Vec<(String, String)>>,
    concurrency: u64,
    duration: Duration,
) -> Phase {
    let request = Arc::new(move |call_id: u64| {
        let (url, token) = &targets[(call_id % targets.len() as u64) as usize];
        let body = common::call_ended(CallEnded {
            call_id,
            token,
            ended_at: 1_735_733_025,
            agent_email: "john.doe@example.com",
        });
        (url.clone(), body)
    });
    let looped = common::closed_loop(concurrency, duration, "queued", request).await;
    Phase {
        label,
        ok: looped.ok,
        failed: looped.failed,
        elapsed: looped.elapsed,
        latencies_us: looped.latencies_us,
    }
}

/// The same load to a service of 10 connections and to the one of N, alternated twice.
async fn intake_part(
    sim: &RunningSimulator,
    leftovers: &Leftovers,
    scratch: &Path,
    companies: &[CompanyInfo],
    big: &Service,
    big_tokens: &[String],
    names: &[String],
) -> Vec<(bool, Phase)> {
    let n = names.len();
    let seconds = env_number("BENCH_SECONDS", 10);
    let concurrency = env_number("BENCH_CONCURRENCY", 32);
    let small = Service::start(sim, leftovers, scratch.join("intake-10")).await;
    let mut small_targets = Vec::new();
    for (i, company) in companies.iter().take(10).enumerate() {
        let name = connection_name(i);
        let token = small.connect(sim, company, &name).await;
        let id = ConnectionId::parse(&name).unwrap();
        small_targets.push((connections::webhook_url(&small.public_url, &id), token));
    }
    let big_targets: Vec<(String, String)> = names
        .iter()
        .zip(big_tokens)
        .map(|(name, token)| {
            let id = ConnectionId::parse(name).unwrap();
            (
                connections::webhook_url(&big.public_url, &id),
                token.clone(),
            )
        })
        .collect();
    let (small_targets, big_targets) = (Arc::new(small_targets), Arc::new(big_targets));
    eprintln!("  intake: warming up…");
    for targets in [&small_targets, &big_targets] {
        let _ = closed_loop(
            "warm-up".into(),
            targets.clone(),
            concurrency,
            Duration::from_secs(2),
        )
        .await;
    }
    // 10, N, N, 10: a drift of the machine over the four phases weighs on both alike.
    let mut phases = Vec::new();
    let repeats = env_number("BENCH_SCALE_INTAKE_REPEATS", 2).max(1);
    let order = (0..repeats).flat_map(|r| {
        [
            (2 * r + 1, false),
            (2 * r + 1, true),
            (2 * r + 2, true),
            (2 * r + 2, false),
        ]
    });
    for (run, big_one) in order {
        let (label, targets, service) = if big_one {
            (format!("{n} connections, run {run}"), &big_targets, big)
        } else {
            (format!("10 connections, run {run}"), &small_targets, &small)
        };
        service.purge_import_queue().await;
        eprintln!("  intake: {label} ({seconds} s)…");
        let phase = closed_loop(
            label,
            targets.clone(),
            concurrency,
            Duration::from_secs(seconds),
        )
        .await;
        phases.push((big_one, phase));
    }
    small.clean_up().await;
    phases
}

// ---------------------------------------------------------------- one size

/// Everything measured with N companies.
struct SizeRun {
    n: usize,
    busy: usize,
    sim_memory: Option<SimMemory>,
    add_companies: Duration,
    connect: Duration,
    requests_connect: Requests,
    memory_empty: KeyMemory,
    memory_connected: KeyMemory,
    memory_first: KeyMemory,
    memory_steady: KeyMemory,
    used_memory: [u64; 4],
    first: Timed,
    first_imports: Option<Duration>,
    requests_first: Requests,
    steady: Timed,
    steady_imports: Option<Duration>,
    requests_steady: Requests,
    baseline: Timed,
    latency_ms: u64,
    latency: Timed,
    latency_baseline: Timed,
    requests_latency: Requests,
    /// Every how many connections one was in the latency sample.
    latency_stride: usize,
    /// After round 2, by kind of key.
    kinds: KeyMemory,
    /// `(N connections, phase)`.
    intake: Vec<(bool, Phase)>,
}

async fn size_run(n: usize, leftovers: &Leftovers, scratch: &Path) -> SizeRun {
    let sample_size = env_number("BENCH_SCALE_SAMPLE", 1_000) as usize;
    let latency_ms = env_number("BENCH_SCALE_LATENCY_MS", 150);

    eprintln!("N = {n}: the simulator's memory (child process)…");
    let sim_memory = sim_memory(n);
    if sim_memory.is_none() {
        eprintln!("  the child process measuring the simulator's memory failed");
    }

    let sim =
        RunningSimulator::start(sim_settings(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let started = Instant::now();
    let companies: Vec<CompanyInfo> = (0..n)
        .map(|i| sim.state.add_company(spec(i)).unwrap())
        .collect();
    let add_companies = started.elapsed();
    let names: Vec<String> = (0..n).map(connection_name).collect();
    let busy_names: Vec<String> = (0..n)
        .filter(|i| is_busy(*i))
        .map(connection_name)
        .collect();
    let busy = busy_names.len();

    let mut service = Service::start(&sim, leftovers, scratch.join(format!("service-{n}"))).await;
    service.start_worker();
    let mut redis = service.ctx.redis.clone();
    let memory_empty = service.memory().await;
    let used_empty = common::redis_used_memory(&mut redis).await;

    eprintln!("N = {n}: connecting…");
    let before = Requests::of(&sim, &companies);
    let started = Instant::now();
    let tokens: Vec<String> = stream::iter(companies.iter().zip(&names))
        .map(|(company, name)| service.connect(&sim, company, name))
        .buffered(CONNECT_AT_ONCE)
        .collect()
        .await;
    let connect = started.elapsed();
    let requests_connect = Requests::of(&sim, &companies).since(&before);
    let memory_connected = service.memory().await;
    let used_connected = common::redis_used_memory(&mut redis).await;

    let reconciler = service.ctx.reconciler();
    let concurrency = reconciler.settings.concurrency;

    eprintln!("N = {n}: round 1, first imports…");
    let before = Requests::of(&sim, &companies);
    let first = timed_round(&reconciler, concurrency, n, true).await;
    let expected = (busy * BUSY_HISTORY_CALLS) as u64;
    let first_imports = service.wait_imported(&busy_names, expected).await;
    let requests_first = Requests::of(&sim, &companies).since(&before);
    let memory_first = service.memory().await;
    let used_first = common::redis_used_memory(&mut redis).await;

    eprintln!("N = {n}: round 2, steady state…");
    let now_s = sim.state.clock.now_s();
    for company in companies
        .iter()
        .enumerate()
        .filter(|(i, _)| is_busy(*i))
        .map(|(_, c)| c)
    {
        let agent = company
            .agents
            .iter()
            .find(|a| a.paying)
            .expect("a paying agent");
        for k in 0..BUSY_NEW_CALLS {
            // Ended over a minute ago (the listing stops at `lag_s`), after round 1.
            let spec = CallSpec {
                started_at: Some(now_s - 75 - k as i64),
                duration: 10,
                agent_email: Some(agent.email.clone()),
                recording_bytes: Some(4_000),
                notify: false,
                ..CallSpec::default()
            };
            sim.state.add_call(company.id, &spec).unwrap();
        }
    }
    service.make_due(&names).await;
    let before = Requests::of(&sim, &companies);
    let steady = timed_round(&reconciler, concurrency, n, true).await;
    let expected = (busy * (BUSY_HISTORY_CALLS + BUSY_NEW_CALLS)) as u64;
    let steady_imports = service.wait_imported(&busy_names, expected).await;
    let requests_steady = Requests::of(&sim, &companies).since(&before);
    let memory_steady = service.memory().await;
    let kinds = service.kinds().await;
    let used_steady = common::redis_used_memory(&mut redis).await;

    eprintln!("N = {n}: concurrency 1 on a sample…");
    let picked = sample(&names, sample_size);
    service.make_due(&picked).await;
    let baseline = timed_round(&reconciler, 1, picked.len(), false).await;

    eprintln!("N = {n}: {latency_ms} ms per Aircall answer, on samples…");
    sim.state.set_faults(
        None,
        Faults {
            latency_ms,
            ..Faults::default()
        },
    );
    let before = Requests::of(&sim, &companies);
    service.make_due(&picked).await;
    let latency = timed_round(&reconciler, concurrency, picked.len(), false).await;
    let requests_latency = Requests::of(&sim, &companies).since(&before);
    let small_sample = sample(&names, (sample_size / 10).max(1));
    service.make_due(&small_sample).await;
    let latency_baseline = timed_round(&reconciler, 1, small_sample.len(), false).await;
    sim.state.set_faults(None, Faults::default());

    eprintln!("N = {n}: intake, 10 connections vs {n}…");
    service.stop_worker().await;
    let intake = intake_part(
        &sim, leftovers, scratch, &companies, &service, &tokens, &names,
    )
    .await;

    service.clean_up().await;
    sim.stop().await;
    SizeRun {
        n,
        busy,
        sim_memory,
        add_companies,
        connect,
        requests_connect,
        memory_empty,
        memory_connected,
        memory_first,
        memory_steady,
        used_memory: [used_empty, used_connected, used_first, used_steady],
        first,
        first_imports,
        requests_first,
        steady,
        steady_imports,
        requests_steady,
        baseline,
        latency_ms,
        latency,
        latency_baseline,
        requests_latency,
        latency_stride: stride(n, sample_size),
        kinds,
        intake,
    }
}

// ---------------------------------------------------------------- report

/// Per connection of a kind, from a memory snapshot: mean bytes over the connections `pick`
/// keeps.
fn per_connection(memory: &KeyMemory, n: usize, pick: impl Fn(usize) -> bool) -> f64 {
    let (mut bytes, mut count) = (0u64, 0u64);
    for i in (0..n).filter(|i| pick(*i)) {
        bytes += memory.group(&connection_name(i)).1;
        count += 1;
    }
    bytes as f64 / count.max(1) as f64
}

fn print_report(runs: &[SizeRun]) {
    let columns: Vec<String> = runs.iter().map(|r| format!("N = {}", r.n)).collect();
    let header = format!("| | {} |", columns.join(" | "));
    let rule = format!("|---|{}", "---|".repeat(runs.len()));
    let row = |name: &str, cell: &dyn Fn(&SizeRun) -> String| {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };

    println!(
        "\n### Setup: {}% quiet companies (2 agents, no calls), 1 in {BUSY_EVERY} busy ({BUSY_AGENTS} agents, {BUSY_HISTORY_CALLS} calls over 3 days, then {BUSY_NEW_CALLS} more)\n",
        100 - 100 / BUSY_EVERY
    );
    println!("{header}\n{rule}");
    row("busy companies", &|r| r.busy.to_string());
    row("adding the companies to the simulator", &|r| {
        format!("{:.2} s", r.add_companies.as_secs_f64())
    });
    row("simulator RSS growth (fresh child process)", &|r| {
        r.sim_memory.map_or("—".into(), |m| {
            let growth = m.rss_after.saturating_sub(m.rss_before) as f64;
            format!(
                "{} ({} → {}), **{} per company**; adding took {:.2} s",
                mb(growth),
                mb(m.rss_before as f64),
                mb(m.rss_after as f64),
                kb(growth / r.n as f64),
                m.add.as_secs_f64()
            )
        })
    });
    row(
        &format!(
            "connecting all, {CONNECT_AT_ONCE} at a time (ping, webhook, store, users, made due)"
        ),
        &|r| {
            format!(
                "**{:.1} s** ({:.0}/s)",
                r.connect.as_secs_f64(),
                r.n as f64 / r.connect.as_secs_f64()
            )
        },
    );
    row("Aircall requests per connect", &|r| {
        r.requests_connect.summary(|_| true).cell()
    });

    println!("\n### One reconcile cycle on one replica (`Reconciler::run_due`)\n");
    println!("{header}\n{rule}");
    row("round 1: every first import, concurrency 16", &|r| {
        r.first.cell(r.n)
    });
    row(
        "… the worker's imports of the busy companies' calls, all done (after the round's end)",
        &|r| {
            r.first_imports.map_or("not done in time".into(), |d| {
                format!(
                    "{:.1} s ({} calls)",
                    d.as_secs_f64(),
                    r.busy * BUSY_HISTORY_CALLS
                )
            })
        },
    );
    row(
        "**round 2: steady state, every connection due, concurrency 16**",
        &|r| r.steady.cell(r.n),
    );
    row(
        "… the worker's imports of the new calls, all done (after the round's end)",
        &|r| {
            r.steady_imports.map_or("not done in time".into(), |d| {
                format!(
                    "{:.1} s ({} calls)",
                    d.as_secs_f64(),
                    r.busy * BUSY_NEW_CALLS
                )
            })
        },
    );
    row("baseline: steady state, concurrency 1", &|r| {
        r.baseline.cell(r.n)
    });
    row("share of a 15-minute cycle (concurrency 16 / 1)", &|r| {
        format!(
            "{:.1}% / {:.1}%",
            100.0 * r.steady.wall.as_secs_f64() / CYCLE.as_secs_f64(),
            100.0 * r.baseline.extrapolated(r.n).as_secs_f64() / CYCLE.as_secs_f64()
        )
    });
    let latency_ms = runs.first().map_or(0, |r| r.latency_ms);
    row(
        &format!("with {latency_ms} ms per Aircall answer, concurrency 16"),
        &|r| r.latency.cell(r.n),
    );
    row(
        &format!("with {latency_ms} ms per Aircall answer, concurrency 1"),
        &|r| r.latency_baseline.cell(r.n),
    );
    row(
        &format!("share of a 15-minute cycle with {latency_ms} ms (concurrency 16 / 1)"),
        &|r| {
            format!(
                "{:.1}% / {:.1}%",
                100.0 * r.latency.extrapolated(r.n).as_secs_f64() / CYCLE.as_secs_f64(),
                100.0 * r.latency_baseline.extrapolated(r.n).as_secs_f64() / CYCLE.as_secs_f64()
            )
        },
    );
    row(
        &format!(
            "connections one replica passes over in 15 min with {latency_ms} ms, concurrency 16"
        ),
        &|r| format!("{:.0}", CYCLE.as_secs_f64() * r.latency.per_second()),
    );

    println!("\n### Aircall requests per connection per cycle (mean (min–max): per endpoint)\n");
    println!("| N | pass | quiet connections | busy connections |");
    println!("|---|---|---|---|");
    for r in runs {
        let cells = [
            ("connect", &r.requests_connect),
            (
                "round 1: first import (+ the worker's requests)",
                &r.requests_first,
            ),
            (
                "round 2: steady state (busy: 5 new calls; + the worker's requests)",
                &r.requests_steady,
            ),
        ];
        for (pass, requests) in cells {
            println!(
                "| {} | {pass} | {} | {} |",
                r.n,
                requests.summary(|i| !is_busy(i)).cell(),
                requests.summary(is_busy).cell()
            );
        }
        let picked = r
            .requests_latency
            .summary(|i| i.is_multiple_of(r.latency_stride));
        println!(
            "| {} | sample with {} ms latency ({} passes) | {} | |",
            r.n,
            r.latency_ms,
            picked.companies,
            picked.cell()
        );
    }

    println!(
        "\n### Redis memory (`MEMORY USAGE key SAMPLES 0` summed over a `SCAN` of the run's prefix, grouped by connection)\n"
    );
    println!("{header}\n{rule}");
    row("before connecting: keys, bytes", &|r| {
        format!(
            "{}, {}",
            r.memory_empty.keys,
            kb(r.memory_empty.bytes as f64)
        )
    });
    row("after connecting: keys, total", &|r| {
        format!(
            "{}, {}",
            r.memory_connected.keys,
            mb(r.memory_connected.bytes as f64)
        )
    });
    row(
        "**per connection, after connecting** (all of it / its own keys)",
        &|r| {
            format!(
                "**{}** / {}",
                kb(r.memory_connected
                    .bytes
                    .saturating_sub(r.memory_empty.bytes) as f64
                    / r.n as f64),
                kb(per_connection(&r.memory_connected, r.n, |_| true))
            )
        },
    );
    row(
        "shared keys (connection index, due index…) after connecting",
        &|r| {
            let (keys, bytes) = r.memory_connected.group("");
            format!("{keys} keys, {}", kb(bytes as f64))
        },
    );
    row("after round 1 + imports: per quiet connection", &|r| {
        kb(per_connection(&r.memory_first, r.n, |i| !is_busy(i)))
    });
    row("after round 1 + imports: per busy connection", &|r| {
        kb(per_connection(&r.memory_first, r.n, is_busy))
    });
    row("**per imported call**: (busy − quiet) / 30", &|r| {
        let busy = per_connection(&r.memory_first, r.n, is_busy);
        let quiet = per_connection(&r.memory_first, r.n, |i| !is_busy(i));
        format!("**{}**", kb((busy - quiet) / BUSY_HISTORY_CALLS as f64))
    });
    row(
        "after round 2: per quiet connection (2 run reports)",
        &|r| kb(per_connection(&r.memory_steady, r.n, |i| !is_busy(i))),
    );
    row(
        "one quiet pass adds (round 2 − round 1, per quiet connection)",
        &|r| {
            kb(per_connection(&r.memory_steady, r.n, |i| !is_busy(i))
                - per_connection(&r.memory_first, r.n, |i| !is_busy(i)))
        },
    );
    let kept = Settings::default().reconcile.reports_kept;
    row(
        &format!(
            "projected per quiet connection once {kept} run reports are kept (`reconcile.reports_kept`)"
        ),
        &|r| {
            let (keys, bytes) = r.kinds.group("reconcile:{*}:reports");
            // Two reports in each list after round 2.
            let per_report = bytes as f64 / keys.max(1) as f64 / 2.0;
            let now = per_connection(&r.memory_steady, r.n, |i| !is_busy(i));
            format!(
                "{} (one report: {:.0} B) → {} for N",
                kb(now + per_report * (kept as f64 - 2.0)),
                per_report,
                mb((now + per_report * (kept as f64 - 2.0)) * r.n as f64)
            )
        },
    );
    row("after round 2: total", &|r| {
        format!(
            "{} keys, {}",
            r.memory_steady.keys,
            mb(r.memory_steady.bytes as f64)
        )
    });
    row(
        "cross-check: the server's `used_memory` growth, connect / round 1 / round 2",
        &|r| {
            let [empty, connected, first, steady] = r.used_memory;
            format!(
                "{} / {} / {}",
                mb(connected as f64 - empty as f64),
                mb(first as f64 - connected as f64),
                mb(steady as f64 - first as f64)
            )
        },
    );

    if let Some(r) = runs.last() {
        println!(
            "\n### Redis keys by kind after round 2, N = {} (`*` a connection id, `#` a number)\n",
            r.n
        );
        println!("| key | keys | bytes | per key |");
        println!("|---|---|---|---|");
        let mut kinds: Vec<(&String, &(u64, u64))> = r.kinds.groups.iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1.1));
        for (kind, (keys, bytes)) in kinds {
            println!(
                "| `{kind}` | {keys} | {} | {:.0} B |",
                mb(*bytes as f64),
                *bytes as f64 / (*keys).max(1) as f64
            );
        }
    }

    let seconds = env_number("BENCH_SECONDS", 10);
    let concurrency = env_number("BENCH_CONCURRENCY", 32);
    println!(
        "\n### Intake: the same webhook load to a service of 10 connections and to one of N ({concurrency} clients, {seconds} s per phase)\n"
    );
    println!("| N | phase | ok/s | failed | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for r in runs {
        for (_, phase) in &r.intake {
            println!(
                "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} |",
                r.n,
                phase.label,
                phase.rate(),
                phase.failed,
                phase.percentile_ms(0.50),
                phase.percentile_ms(0.99),
                phase.percentile_ms(1.0)
            );
        }
        let mean = |big: bool| {
            let rates: Vec<f64> = r
                .intake
                .iter()
                .filter(|(n, _)| *n == big)
                .map(|(_, p)| p.rate())
                .collect();
            rates.iter().sum::<f64>() / rates.len().max(1) as f64
        };
        println!(
            "| {} | **N connections vs 10 (mean of the runs)** | **{:.0}%** | | | | |",
            r.n,
            100.0 * mean(true) / mean(false).max(1e-9)
        );
        // Each N phase against the 10-connection phase next to it (10, N | N, 10).
        let ratios: Vec<String> = r
            .intake
            .chunks(2)
            .map(|pair| {
                let (big, small) = if pair[0].0 {
                    (&pair[0].1, &pair[1].1)
                } else {
                    (&pair[1].1, &pair[0].1)
                };
                format!("{:.0}%", 100.0 * big.rate() / small.rate().max(1e-9))
            })
            .collect();
        println!(
            "| {} | N vs 10, each pair of neighbouring phases | {} | | | | |",
            r.n,
            ratios.join(", ")
        );
    }
}

/// The bench's output directory, removed when dropped (a failed bench too).
#[tokio::main]
async fn main() {
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|n| n.parse().ok()) {
        child_measure(n).await;
        return;
    }
    common::run_cleaning_up("scale", |leftovers, scratch| async move {
        run(&leftovers, &scratch).await;
    })
    .await;
}

async fn run(leftovers: &Leftovers, scratch: &Path) {
    let sizes = env_list("BENCH_SCALE_COMPANIES", "1000,10000");
    let started = Instant::now();
    let mut runs = Vec::new();
    for n in sizes {
        runs.push(size_run(n, leftovers, scratch).await);
    }
    println!(
        "\n{}; whole bench {:.0} s",
        common::machine(),
        started.elapsed().as_secs_f64()
    );
    print_report(&runs);
}
