//! Sustained load: the webhook intake at half its measured peak for `LOAD_SECONDS` (default
//! 600) while the worker imports the small recordings of a company's live calls. Does latency
//! hold, does memory stay flat, does the worker keep up, is every importable call imported, is
//! nothing refused or lost?
//!
//! **Set-up.** `serve` and `worker` run as separate release processes (`target/release/
//! aircall-ingest`, built by cargo with this bench), configured by `AIRCALL_INGEST_*`
//! variables: development mode, a Redis key prefix and a queue prefix of their own, storage
//! under Cargo's `target/tmp`, recordings fetched from `127.0.0.1`, `worker.concurrency` (and
//! prefetch) `LOAD_WORKER_CONCURRENCY`, default 32 (see below). The bundled Aircall simulator
//! runs in this process with one company of 8 agents, 6 of them paying users, connected through
//! the real admin API (`POST /api/connections` with its credentials and paying agents), which
//! registers the webhook on the simulator: its deliveries and the bench's requests carry the
//! webhook's real token.
//!
//! 1. **Peak** (`LOAD_PEAK_SECONDS`, default 12, after 2 s of warm-up): a closed loop of
//!    `LOAD_CONCURRENCY` (32) keep-alive clients on `POST /webhooks/aircall/{connection}`, each
//!    sending its next request when the last was answered; the peak is the 2xx answers per
//!    second. Unlike `benches/intake.rs` the worker consumes meanwhile, as deployed: the peak is
//!    the intake's with the worker competing for the same two cores, so that half of it is a
//!    rate the whole system may sustain. The bench then waits for the worker to drain this
//!    phase's jobs (their count over that time is its rate alone).
//! 2. **Sustained** (`LOAD_SECONDS`): an open loop at half that peak (or `LOAD_RATE` a second):
//!    request *n* is due at *n / rate* whatever the answers, each on its own task and
//!    connection when the keep-alive ones are busy, and its latency counts from its due time,
//!    so a stall shows in full (no coordinated omission). Meanwhile the company's calls go on
//!    (`LOAD_LIVE_CALLS_PER_MINUTE`, default 300); the simulator sends their real webhooks
//!    (`call.ended`, `call.comm_assets_generated`: what the connection subscribed to) to
//!    `serve`, and the worker imports their recordings.
//! 3. **Drain**: the live calls stop; the bench waits (at most `LOAD_DRAIN_SECONDS`, default
//!    180) until the calls in progress have ended (within 40 s), the import and retry queues and
//!    the spool are empty, and every importable call is imported.
//!
//! **What the flood describes.** Each flood request is a realistic `call.ended` (the body of
//! `benches/intake.rs`) of a distinct call, just ended, whose agent is not a paying user. The
//! intake does all its work for it (token, redelivery marker, job, confirmed publish, marker
//! written), and so does the worker up to the decision: the connection, the outcome, the
//! call's lease, the paying users, `user_not_matched` decided from the webhook's snapshot
//! (fresh, so no Aircall request), the outcome recorded, the lease released, the job acked: a
//! real company's typical webhook, short of a download. Flood calls by paying agents would each
//! cost an Aircall request at 60 a minute (the simulator has no such call) and a download; the
//! imports come from the live calls instead, whose content the simulator knows. So the worker
//! decides every job the intake stores, and the queue stays bounded exactly as long as the
//! worker keeps up, which the bench measures (jobs waiting every 10 s, drain times).
//! `worker.concurrency` is 32 here because at the default 8 the worker is bound by its
//! sequential Redis round trips (7 per decision), not by CPU, and falls behind half the peak
//! on two cores; more workers would do the same in a deployment. A worker that falls behind
//! anyway stops the flood once more than `LOAD_MAX_BACKLOG_SECONDS` (120) of it waits: past 5
//! minutes (`import.recording_url_fresh_ms`) every waiting job would be fetched from Aircall
//! at 60 a minute, and the rest of the run would measure that budget, not the service. Every
//! flood call leaves an outcome record in Redis, as any decided call does: most of Redis's
//! growth.
//!
//! **Why the bench makes the live calls.** The simulator's own stream
//! (`CompanySpec::live_calls_per_minute`) draws talk times of 20–900 s of real time: most calls
//! of a 10-minute run would still be going at its end, and the imports would climb for 15
//! minutes instead of being steady. The bench adds the calls itself, as they start (in
//! progress, 5–40 s long), with the simulator's kinds of cases: 15% unanswered, 10% of the
//! answered ones without a recording, 5% without an agent, the agent otherwise drawn from all 8
//! (2 not paying); recordings of 10–60 KB, a tenth of them without `Content-Length`. The
//! simulator ends each on time and sends its webhooks at once (Aircall waits about 30 s before
//! `call.ended`: a shift, not more load); signed recording URLs last an hour, so imports need
//! no Aircall request.
//!
//! **Figures** (Markdown tables, for BENCHMARKS.md): per minute and overall, requests sent,
//! answered 2xx (of which spooled to Redis because RabbitMQ did not confirm in time), non-2xx,
//! transport errors and timeouts (10 s), p50/p99/max latency, jobs waiting and both processes'
//! `VmRSS` at the minute's end; CPU of `serve`, `worker` and the bench; `VmRSS` of `serve` and
//! `worker` and Redis's `used_memory`, sampled every 10 s: first, last and largest sample, and
//! the least-squares slope in MB/min after a warm-up minute (a quarter of the run when under
//! 4 minutes); the worker's backlog and drain times; the live calls imported against the
//! simulator's truth of importable calls, the SHA-256 of every stored recording checked, and
//! the time from a call's end to its import.
//!
//! Exits 1 on any non-2xx answer or transport error in either phase, a webhook delivery the
//! simulator saw fail, an importable call not imported (or an import the rules exclude, or a
//! wrong SHA-256) after the drain, a dead letter or `failed` outcome, a flood job the worker
//! did not decide, a worker that fell behind, or a process that exited early or did not stop
//! cleanly.
//!
//! Run: `cargo bench --bench load` (RabbitMQ and Redis on their local default ports;
//! `deploy/local/bench.sh load` starts them first); `LOAD_SECONDS=30` for a short check.
//! `AIRCALL_INGEST_*` variables apply to both processes, for experiments, except those the
//! bench sets. Everything it made is removed at the end, failed or not: processes, queues,
//! Redis keys of its prefix (by SCAN, never KEYS), files.
// A benchmark may stop at the first broken assumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aircall_ingest::aircall::{CallId, Direction};
use aircall_ingest::app::Context;
use aircall_ingest::config::{DEVELOPMENT_ADMIN_TOKEN, Mode, Settings};
use aircall_ingest::connections::{ConnectionId, Outcome, OutcomeRecord};
use aircall_ingest::sim::{
    CallSpec, CallTruth, CompanyInfo, CompanySpec, RunningSimulator, SimSettings, SimState,
};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use common::{CallEnded, Process, env_number, now_ms, percentile_ms};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The connection's id, in the webhook path.
const CONNECTION: &str = "load";
/// The flood's agent: not a paying user of the connection.
const FLOOD_AGENT: &str = "john.doe@example.com";
/// Flood call ids start above this: far from the simulator's (from 5·10^9).
const FLOOD_FIRST_ID: u64 = 1_000_000_000_000;
/// An answer later than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory, queue depth and Redis are sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples before this are left out of the memory slope (shorter runs: a quarter of the run).
const WARM_UP: Duration = Duration::from_secs(60);
/// The closed loop's warm-up before the peak is measured.
const PEAK_WARM_UP: Duration = Duration::from_secs(2);
/// Most the worker gets to drain the peak phase's jobs.
const PEAK_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Length of a live call, in seconds.
const LIVE_CALL_SECONDS: std::ops::RangeInclusive<i64> = 5..=40;
/// Size of a live call's recording, in bytes.
const LIVE_RECORDING_BYTES: std::ops::RangeInclusive<u64> = 10_000..=60_000;
const MB: f64 = (1 << 20) as f64;

/// What the bench was asked to do.
struct Knobs {
    sustained: Duration,
    peak: Duration,
    concurrency: u64,
    /// Requests per second of the sustained phase; 0: half the peak.
    rate: f64,
    live_per_minute: f64,
    drain: Duration,
    /// The worker's `worker.concurrency` (and prefetch).
    worker_concurrency: u64,
    /// The flood stops early when more jobs wait than this many seconds of it.
    max_backlog: Duration,
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            sustained: Duration::from_secs(env_number("LOAD_SECONDS", 600).max(1)),
            peak: Duration::from_secs(env_number("LOAD_PEAK_SECONDS", 12).max(1)),
            concurrency: env_number("LOAD_CONCURRENCY", 32).max(1),
            rate: env_number("LOAD_RATE", 0) as f64,
            live_per_minute: env_number("LOAD_LIVE_CALLS_PER_MINUTE", 300) as f64,
            drain: Duration::from_secs(env_number("LOAD_DRAIN_SECONDS", 180)),
            worker_concurrency: env_number("LOAD_WORKER_CONCURRENCY", 32).clamp(1, 1024),
            max_backlog: Duration::from_secs(env_number("LOAD_MAX_BACKLOG_SECONDS", 120)),
        }
    }

    /// Samples before this are the warm-up.
    fn warm_up(&self) -> Duration {
        WARM_UP.min(self.sustained / 4)
    }
}

// ------------------------------------------------------------------ requests and their tally

/// How the intake answered one request.
#[derive(Debug, Clone)]
enum Answer {
    Queued,
    Spooled,
    /// 2xx with another status (`duplicate`, `ignored`): not expected of distinct calls.
    Other2xx(String),
    Non2xx(u16),
    Error(&'static str),
}

/// Requests of one minute (or of a whole phase) and their latencies.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    queued: u64,
    spooled: u64,
    other_2xx: u64,
    non_2xx: u64,
    errors: u64,
    /// Non-2xx statuses, other 2xx answers and error kinds, counted.
    problems: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn add(&mut self, answer: &Answer, latency: Duration) {
        self.sent += 1;
        self.latencies_us.push(latency.as_micros() as u64);
        match answer {
            Answer::Queued => self.queued += 1,
            Answer::Spooled => self.spooled += 1,
            Answer::Other2xx(status) => {
                self.other_2xx += 1;
                *self.problems.entry(format!("200 {status}")).or_default() += 1;
            }
            Answer::Non2xx(status) => {
                self.non_2xx += 1;
                *self.problems.entry(format!("HTTP {status}")).or_default() += 1;
            }
            Answer::Error(kind) => {
                self.errors += 1;
                *self.problems.entry((*kind).to_string()).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.queued += other.queued;
        self.spooled += other.spooled;
        self.other_2xx += other.other_2xx;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        for (problem, n) in &other.problems {
            *self.problems.entry(problem.clone()).or_default() += n;
        }
        self.latencies_us.extend_from_slice(&other.latencies_us);
    }

    fn answered_2xx(&self) -> u64 {
        self.queued + self.spooled + self.other_2xx
    }

    /// Jobs the intake stored: each becomes one decision of the worker.
    fn jobs(&self) -> u64 {
        self.queued + self.spooled
    }

    fn failed(&self) -> u64 {
        self.other_2xx + self.non_2xx + self.errors
    }

    /// `p50 | p99 | max` in ms.
    fn latency_cells(&mut self) -> String {
        self.latencies_us.sort_unstable();
        format!(
            "{:.2} | {:.2} | {:.2}",
            percentile_ms(&self.latencies_us, 0.50),
            percentile_ms(&self.latencies_us, 0.99),
            percentile_ms(&self.latencies_us, 1.0)
        )
    }
}

/// The webhook endpoint and what flood bodies carry.
#[derive(Clone)]
struct Target {
    url: String,
    token: String,
    next_id: Arc<AtomicU64>,
}

impl Target {
    /// A `call.ended` of a new call, just ended, by an agent who is not a paying user.
    fn next_body(&self) -> Vec<u8> {
        common::call_ended(CallEnded {
            call_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token: &self.token,
            ended_at: now_ms() / 1000 - 5,
            agent_email: FLOOD_AGENT,
        })
    }
}

fn http_client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle_per_host)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

async fn send(client: &reqwest::Client, target: &Target) -> Answer {
    let response = client
        .post(&target.url)
        .header("content-type", "application/json")
        .body(target.next_body())
        .send()
        .await;
    let error_kind = |e: &reqwest::Error| {
        if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect error"
        } else {
            "transport error"
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => return Answer::Error(error_kind(&e)),
    };
    let status = response.status();
    match response.text().await {
        Err(e) => Answer::Error(error_kind(&e)),
        Ok(_) if !status.is_success() => Answer::Non2xx(status.as_u16()),
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .as_deref()
        {
            Some("queued") => Answer::Queued,
            Some("spooled") => Answer::Spooled,
            other => Answer::Other2xx(other.unwrap_or("unreadable").to_string()),
        },
    }
}

/// Closed loop: `concurrency` clients, each sending its next request when the last answered.
async fn closed_loop(target: &Target, concurrency: u64, duration: Duration) -> (Tally, Duration) {
    let client = http_client(concurrency as usize);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let answer = send(&client, &target).await;
                tally.add(&answer, sent.elapsed());
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(&task.await.unwrap());
    }
    (tally, started.elapsed())
}

/// Open loop: request `n` is due at `n / rate` whatever the answers; its latency counts from
/// then. One tally per minute of due times (those after an early `stop` left out).
async fn open_loop(
    target: &Target,
    rate: f64,
    duration: Duration,
    stop: CancellationToken,
) -> Vec<Tally> {
    let client = http_client(1024);
    let minutes = duration.as_secs().div_ceil(60).max(1) as usize;
    let tallies = Arc::new(Mutex::new(
        (0..minutes).map(|_| Tally::default()).collect::<Vec<_>>(),
    ));
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let total = (duration.as_secs_f64() * rate) as u64;
    let tracker = TaskTracker::new();
    let started = Instant::now();
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = stop.cancelled() => break,
        }
        let minute = ((due - started).as_secs() / 60).min(minutes as u64 - 1) as usize;
        let (client, target, tallies) = (client.clone(), target.clone(), tallies.clone());
        tracker.spawn(async move {
            let answer = send(&client, &target).await;
            let latency = due.elapsed();
            tallies.lock().unwrap()[minute].add(&answer, latency);
        });
    }
    tracker.close();
    tracker.wait().await;
    let mut tallies = Arc::try_unwrap(tallies)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default();
    while tallies.len() > 1 && tallies.last().is_some_and(|t| t.sent == 0) {
        tallies.pop();
    }
    tallies
}

// ------------------------------------------------------------------ the company's live calls

/// Adds calls to the simulator as they start, one every `60 / per_minute` s, until `stop`;
/// returns their ids. The simulator ends each on time and sends its webhooks.
async fn live_calls(
    sim: Arc<SimState>,
    company: CompanyInfo,
    per_minute: f64,
    stop: CancellationToken,
) -> Vec<u64> {
    let mut ids = Vec::new();
    if per_minute <= 0.0 {
        return ids;
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let interval = Duration::from_secs_f64(60.0 / per_minute);
    let started = Instant::now();
    for n in 0u32.. {
        let due = started + interval * n;
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = stop.cancelled() => break,
        }
        let answered = rng.f64() >= 0.15;
        let agent = if rng.f64() < 0.05 {
            None
        } else {
            Some(
                company.agents[rng.usize(..company.agents.len())]
                    .email
                    .clone(),
            )
        };
        let spec = CallSpec {
            direction: if rng.f64() < 0.4 {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            started_at: Some(now_ms() / 1000),
            duration: rng.i64(LIVE_CALL_SECONDS),
            answered,
            agent_email: agent,
            recording_bytes: (answered && rng.f64() >= 0.1).then(|| rng.u64(LIVE_RECORDING_BYTES)),
            without_content_length: rng.f64() < 0.1,
            in_progress: true,
            notify: true,
            with_contact: rng.bool(),
            ..CallSpec::default()
        };
        match sim.add_call(company.id, &spec) {
            Some(id) => ids.push(id),
            None => panic!("the simulator lost the company"),
        }
    }
    ids
}

/// Whether the service must import this call by now, as the simulator knows it.
fn importable(call: &CallTruth, now_s: i64) -> bool {
    call.ended_at.is_some()
        && call.agent_paying
        && call.recording_bytes.is_some()
        && call.recording_ready_at.is_some_and(|at| at <= now_s)
}

// ------------------------------------------------------------------ processes and sampling

/// `serve` and `worker`, the release binary, configured by `AIRCALL_INGEST_*` variables.
fn spawn_role(role: &str, args: &[&str], env: &[(&str, String)], log: &Path) -> Process {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_aircall-ingest"));
    command
        .arg(role)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    let name = if role == "serve" {
        "aircall-ingest serve"
    } else {
        "aircall-ingest worker"
    };
    Process::new(
        name,
        command.spawn().expect("target/release/aircall-ingest"),
    )
}

/// Lines of a log at WARN and at ERROR level, and the first few of them; the start-up notice
/// of development mode left out.
fn log_warnings(path: &Path) -> (usize, usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut warnings, mut errors, mut first) = (0, 0, Vec::new());
    for line in text.lines().filter(|l| !l.contains("development mode")) {
        let error = line.contains("ERROR");
        if error || line.contains("WARN") {
            if error {
                errors += 1;
            } else {
                warnings += 1;
            }
            if first.len() < 5 {
                first.push(line.chars().take(300).collect());
            }
        }
    }
    (warnings, errors, first)
}

/// The last `lines` lines of a log, for a failed run.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Messages ready in a queue, and its consumers (passive: never creates it).
async fn queue_state(ctx: &Context, queue: &str) -> Option<(u32, u32)> {
    let channel = ctx.broker.channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
    declared
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()))
}

/// Jobs waiting: the import queue, every retry queue, and the Redis spool (jobs RabbitMQ did
/// not confirm in time, on their way to the import queue). `None` while RabbitMQ cannot tell.
async fn jobs_waiting(ctx: &Context) -> Option<u64> {
    let names = ctx.broker.names().clone();
    let mut total = u64::from(queue_state(ctx, &names.import).await?.0);
    for retry in &names.retries {
        total += u64::from(queue_state(ctx, retry).await?.0);
    }
    Some(total + spooled(ctx).await)
}

/// Jobs in the Redis spool.
async fn spooled(ctx: &Context) -> u64 {
    redis::cmd("LLEN")
        .arg(format!("{}:spool", ctx.settings.redis_key_prefix))
        .query_async(&mut ctx.redis.clone())
        .await
        .unwrap_or(0)
}

async fn redis_used_memory(redis: &ConnectionManager) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis.clone())
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time a process has used (user + system), in clock ticks (`/proc/<pid>/stat`).
fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces): state is the 1st field, utime the 12th.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)
}

/// The machine's CPU time, all cores: `(busy, total)` in clock ticks (`/proc/stat`).
fn machine_cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .take(8)
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// One look at the processes, the queues and Redis.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the sustained phase started.
    at_s: f64,
    serve_rss: Option<u64>,
    worker_rss: Option<u64>,
    jobs_waiting: Option<u64>,
    redis_used: Option<u64>,
    /// Cumulative CPU ticks: serve, worker, this process, the machine (busy, total).
    cpu: [u64; 5],
}

async fn sample(ctx: &Context, pids: (u32, u32), started: Instant) -> Sample {
    let (busy, total) = machine_cpu_ticks();
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        serve_rss: common::proc_status_bytes(pids.0, "VmRSS"),
        worker_rss: common::proc_status_bytes(pids.1, "VmRSS"),
        jobs_waiting: jobs_waiting(ctx).await,
        redis_used: redis_used_memory(&ctx.redis).await,
        cpu: [
            process_cpu_ticks(pids.0),
            process_cpu_ticks(pids.1),
            process_cpu_ticks(std::process::id()),
            busy,
            total,
        ],
    }
}

/// CPU used between two samples, in % of one core: serve, worker, this bench process (load
/// generator and simulator), and the machine's busy share of all cores in %.
fn cpu_shares(from: &Sample, to: &Sample) -> [f64; 4] {
    // /proc counts in USER_HZ, 100 per second on Linux.
    let seconds = (to.at_s - from.at_s).max(0.001);
    let core = |i: usize| to.cpu[i].saturating_sub(from.cpu[i]) as f64 / seconds;
    let total = to.cpu[4].saturating_sub(from.cpu[4]).max(1) as f64;
    [
        core(0),
        core(1),
        core(2),
        100.0 * to.cpu[3].saturating_sub(from.cpu[3]) as f64 / total,
    ]
}

/// When the worker has fallen too far behind: more than `max_jobs` waiting stops the flood.
struct BacklogGuard {
    max_jobs: u64,
    stop_flood: CancellationToken,
}

/// Samples every [`SAMPLE_EVERY`] until `stop`, then once more; progress on stderr. Returns
/// the samples and when (s) the guard stopped the flood, if it did.
async fn sampler(
    ctx: Context,
    pids: (u32, u32),
    started: Instant,
    stop: CancellationToken,
    guard: BacklogGuard,
) -> (Vec<Sample>, Option<f64>) {
    let mut samples = Vec::new();
    let mut tripped = None;
    let mut n = 0u32;
    loop {
        let s = sample(&ctx, pids, started).await;
        let cpu = samples
            .last()
            .map_or(String::new(), |previous: &Sample| {
                let [serve, worker, bench, machine] = cpu_shares(previous, &s);
                format!("; CPU serve {serve:.0}%, worker {worker:.0}%, bench {bench:.0}%, machine {machine:.0}%")
            });
        eprintln!(
            "  {:>4.0} s: jobs waiting {}, serve {} MB, worker {} MB, Redis {} MB{cpu}",
            s.at_s,
            s.jobs_waiting.map_or("?".into(), |d| d.to_string()),
            mb_cell(s.serve_rss),
            mb_cell(s.worker_rss),
            mb_cell(s.redis_used),
        );
        samples.push(s);
        if tripped.is_none() && s.jobs_waiting.is_some_and(|d| d > guard.max_jobs) {
            eprintln!(
                "  more than {} jobs waiting: the worker fell behind; stopping the flood",
                guard.max_jobs
            );
            tripped = Some(s.at_s);
            guard.stop_flood.cancel();
        }
        if stop.is_cancelled() {
            return (samples, tripped);
        }
        n += 1;
        tokio::select! {
            () = tokio::time::sleep_until((started + SAMPLE_EVERY * n).into()) => {}
            () = stop.cancelled() => {
                // The last sample closes the phase, unless one was just taken.
                if started.elapsed().as_secs_f64() - s.at_s < 1.0 {
                    return (samples, tripped);
                }
            }
        }
    }
}

fn mb_cell(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.1}", b as f64 / MB))
}

/// Least-squares slope of `(minutes, MB)` points, in MB per minute; `None` under 3 points.
fn slope_mb_per_min(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

/// `| first | last | max | slope |` of one series of samples.
fn memory_row(
    name: &str,
    samples: &[Sample],
    pick: impl Fn(&Sample) -> Option<u64>,
    warm_up_s: f64,
) -> String {
    let values: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| pick(s).map(|v| (s.at_s, v as f64 / MB)))
        .collect();
    let first = values.first().map_or(0.0, |v| v.1);
    let last = values.last().map_or(0.0, |v| v.1);
    let max = values.iter().map(|v| v.1).fold(0.0, f64::max);
    let after: Vec<(f64, f64)> = values
        .iter()
        .filter(|v| v.0 >= warm_up_s)
        .map(|v| (v.0 / 60.0, v.1))
        .collect();
    let slope = slope_mb_per_min(&after).map_or("n/a".into(), |s| format!("{s:+.3}"));
    format!(
        "| {name} | {first:.1} | {last:.1} | {max:.1} | {slope} | {} |",
        after.len()
    )
}

/// The last sample taken at or before `at_s`.
fn sample_at(samples: &[Sample], at_s: f64) -> Option<&Sample> {
    samples.iter().rev().find(|s| s.at_s <= at_s + 0.5)
}

// ------------------------------------------------------------------ clean-up

/// Removes what the bench made, when dropped (a failed bench too): queues and exchanges, Redis
/// keys of its prefix, its files. The processes are stopped before (they are dropped first).
struct Traces {
    ctx: Context,
    scratch: PathBuf,
    cancel: CancellationToken,
    cleaned: bool,
}

impl Traces {
    /// Removes everything; `(redelivery markers, other keys)` deleted from Redis.
    async fn remove(&mut self) -> (u64, u64) {
        self.cleaned = true;
        self.cancel.cancel();
        let names = self.ctx.broker.names().clone();
        if let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            aircall_ingest::queue::topology::delete(&channel, &names).await;
            let _ = connection.close(200, "done".into()).await;
        }
        let deleted = delete_keys(&self.ctx.redis, &self.ctx.settings.redis_key_prefix).await;
        let _ = std::fs::remove_dir_all(&self.scratch);
        deleted
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if !self.cleaned
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            tokio::task::block_in_place(|| handle.block_on(self.remove()));
        }
    }
}

/// Deletes every key of `prefix` with SCAN and UNLINK (never KEYS, which would stall a Redis
/// holding a million markers for everyone else on it).
async fn delete_keys(redis: &ConnectionManager, prefix: &str) -> (u64, u64) {
    let mut redis = redis.clone();
    let (mut markers, mut others) = (0, 0);
    let mut cursor: u64 = 0;
    loop {
        let scanned: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await;
        let Ok((next, keys)) = scanned else {
            eprintln!("  cannot scan Redis; keys of {prefix}:* may be left");
            break;
        };
        if !keys.is_empty() {
            let intake_markers = keys.iter().filter(|k| k.contains(":intake:seen:")).count();
            markers += intake_markers as u64;
            others += (keys.len() - intake_markers) as u64;
            let _: Result<(), _> = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut redis)
                .await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    (markers, others)
}

// ------------------------------------------------------------------ the run

#[tokio::main]
async fn main() -> ExitCode {
    let knobs = Knobs::from_env();
    let tag = format!("bench-load-{:08x}", fastrand::u32(..));
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&tag);
    let storage = scratch.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let (serve_log, worker_log) = (scratch.join("serve.log"), scratch.join("worker.log"));
    let mut problems: Vec<String> = Vec::new();

    // This process's view of the service's Redis keys and queues, for sampling and checks.
    let mut settings = Settings::load(None).expect("configuration");
    settings.mode = Mode::Development;
    settings.redis_key_prefix = tag.clone();
    settings.queue.prefix = tag.clone();
    let ctx = Context::new(settings).unwrap();
    let cancel = CancellationToken::new();
    let mut traces = Traces {
        ctx: ctx.clone(),
        scratch: scratch.clone(),
        cancel: cancel.clone(),
        cleaned: false,
    };
    ctx.broker
        .connect()
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (deploy/local/services.sh starts it)");
    tokio::spawn(ctx.broker.clone().run(cancel.clone()));
    let redis_before = redis_used_memory(&ctx.redis)
        .await
        .expect("Redis on 127.0.0.1:6379");

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sim = RunningSimulator::start(
        SimSettings {
            webhook_delay: Duration::ZERO,
            workers: cores,
            ..SimSettings::default()
        },
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let company = sim
        .state
        .add_company(CompanySpec {
            agents: 8,
            ..CompanySpec::default()
        })
        .unwrap();

    // serve and worker, as operators run them.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!("http://{addr}");
    let env: Vec<(&str, String)> = vec![
        ("AIRCALL_INGEST_MODE", "development".into()),
        ("AIRCALL_INGEST_REDIS_KEY_PREFIX", tag.clone()),
        ("AIRCALL_INGEST_QUEUE__PREFIX", tag.clone()),
        (
            "AIRCALL_INGEST_STORAGE__ROOT",
            storage.display().to_string(),
        ),
        ("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1".into()),
        ("AIRCALL_INGEST_AIRCALL_BASE_URL", sim.base_url.to_string()),
        ("AIRCALL_INGEST_PUBLIC_URL", format!("{base}/")),
        ("AIRCALL_INGEST_LOG__LEVEL", "warn".into()),
        (
            "AIRCALL_INGEST_WORKER__CONCURRENCY",
            knobs.worker_concurrency.to_string(),
        ),
        (
            "AIRCALL_INGEST_WORKER__PREFETCH",
            knobs.worker_concurrency.to_string(),
        ),
    ];
    let mut serve = spawn_role("serve", &["--listen", &addr.to_string()], &env, &serve_log);
    let mut worker = spawn_role("worker", &[], &env, &worker_log);
    let http = reqwest::Client::new();
    let ready = Instant::now();
    loop {
        let answer = http.get(format!("{base}/readyz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        serve.assert_running();
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "serve was not ready within 30 s:\n{}",
            log_tail(&serve_log, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let consumers = queue_state(&ctx, &ctx.broker.names().import)
            .await
            .map_or(0, |q| q.1);
        if consumers > 0 {
            break;
        }
        worker.assert_running();
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the worker did not consume within 30 s:\n{}",
            log_tail(&worker_log, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pids = (serve.pid(), worker.pid());

    // The company, connected through the admin API with its paying agents.
    let paying: Vec<String> = company
        .agents
        .iter()
        .filter(|a| a.paying)
        .map(|a| a.email.clone())
        .collect();
    let connected = http
        .post(format!("{base}/api/connections"))
        .bearer_auth(DEVELOPMENT_ADMIN_TOKEN)
        .json(&serde_json::json!({
            "id": CONNECTION,
            "api_id": company.api_id,
            "api_token": company.api_token,
            "users": paying,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        connected.status(),
        201,
        "POST /api/connections: {}",
        connected.text().await.unwrap_or_default()
    );
    let webhook = sim.state.webhooks(company.id).unwrap().remove(0);
    let target = Target {
        url: format!("{base}/webhooks/aircall/{CONNECTION}"),
        token: webhook.token.clone(),
        next_id: Arc::new(AtomicU64::new(
            FLOOD_FIRST_ID + fastrand::u64(..1 << 36) * 1000,
        )),
    };
    let id = ConnectionId::parse(CONNECTION).unwrap();
    eprintln!(
        "serve (pid {}) on {base}, worker (pid {}); company {} connected ({} paying agents of {})",
        pids.0,
        pids.1,
        company.id,
        paying.len(),
        company.agents.len()
    );

    // 1. Peak.
    eprintln!(
        "peak: closed loop, {} clients, {} s (+{} s warm-up)…",
        knobs.concurrency,
        knobs.peak.as_secs(),
        PEAK_WARM_UP.as_secs()
    );
    let (warm_up, _) = closed_loop(&target, knobs.concurrency, PEAK_WARM_UP).await;
    let (mut peak, peak_elapsed) = closed_loop(&target, knobs.concurrency, knobs.peak).await;
    let peak_rate = peak.answered_2xx() as f64 / peak_elapsed.as_secs_f64();
    let peak_ended = Instant::now();
    let backlog = jobs_waiting(&ctx).await.unwrap_or(0);
    eprintln!("  {peak_rate:.0}/s; {backlog} jobs waiting; draining…");
    loop {
        if jobs_waiting(&ctx).await == Some(0) {
            break;
        }
        worker.assert_running();
        if peak_ended.elapsed() > PEAK_DRAIN_TIMEOUT {
            problems.push(format!(
                "the worker did not drain the peak phase's jobs within {} s",
                PEAK_DRAIN_TIMEOUT.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_drain = peak_ended.elapsed();

    // 2. Sustained.
    let rate = if knobs.rate > 0.0 {
        knobs.rate
    } else {
        peak_rate / 2.0
    };
    eprintln!(
        "sustained: open loop at {rate:.0}/s for {} s, {} live calls a minute…",
        knobs.sustained.as_secs(),
        knobs.live_per_minute
    );
    let redis_start = redis_used_memory(&ctx.redis).await;
    let started = Instant::now();
    let stop_sampling = CancellationToken::new();
    let stop_flood = CancellationToken::new();
    let max_backlog_jobs = (rate * knobs.max_backlog.as_secs_f64()) as u64;
    let sampling = tokio::spawn(sampler(
        ctx.clone(),
        pids,
        started,
        stop_sampling.clone(),
        BacklogGuard {
            max_jobs: max_backlog_jobs,
            stop_flood: stop_flood.clone(),
        },
    ));
    let stop_calls = CancellationToken::new();
    let calls = tokio::spawn(live_calls(
        sim.state.clone(),
        company.clone(),
        knobs.live_per_minute,
        stop_calls.clone(),
    ));
    let mut minutes = open_loop(&target, rate, knobs.sustained, stop_flood).await;
    let sustained_elapsed = started.elapsed();
    stop_calls.cancel();
    stop_sampling.cancel();
    let live_ids = calls.await.unwrap();
    let (samples, fell_behind_at) = sampling.await.unwrap();
    let redis_end = redis_used_memory(&ctx.redis).await;

    // 3. Drain: the calls in progress end, the queues empty, the importable calls imported.
    eprintln!("drain: at most {} s…", knobs.drain.as_secs());
    let drain_started = Instant::now();
    let live: HashSet<u64> = live_ids.iter().copied().collect();
    let live_call_ids: Vec<CallId> = live_ids.iter().map(|&c| CallId(c)).collect();
    let mut backlog_gone_after: Option<Duration> = None;
    let mut queue_empty_after: Option<Duration> = None;
    let mut all_imported_after: Option<Duration> = None;
    let (truth, records) = loop {
        let waiting = jobs_waiting(&ctx).await;
        let import_queue = queue_state(&ctx, &ctx.broker.names().import).await;
        if import_queue.is_some_and(|q| q.0 == 0) && backlog_gone_after.is_none() {
            backlog_gone_after = Some(drain_started.elapsed());
        }
        let truth: Vec<CallTruth> = sim
            .state
            .calls_truth(company.id, true)
            .unwrap()
            .into_iter()
            .filter(|c| live.contains(&c.id))
            .collect();
        let records = ctx
            .outcomes
            .get_many(&id, &live_call_ids)
            .await
            .unwrap_or_default();
        let by_id: HashMap<u64, &OutcomeRecord> =
            records.iter().flatten().map(|r| (r.call_id.0, r)).collect();
        let now_s = now_ms() / 1000;
        let all_ended = truth.iter().all(|c| c.ended_at.is_some());
        let done = truth.iter().filter(|c| importable(c, now_s)).all(|c| {
            by_id
                .get(&c.id)
                .is_some_and(|r| r.outcome == Outcome::Imported && r.announced)
        });
        if all_ended && done && all_imported_after.is_none() {
            all_imported_after = Some(drain_started.elapsed());
        }
        if all_ended && done && waiting == Some(0) {
            queue_empty_after = Some(drain_started.elapsed());
            break (truth, records);
        }
        if drain_started.elapsed() > knobs.drain {
            break (truth, records);
        }
        worker.assert_running();
        serve.assert_running();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drained = sample(&ctx, pids, started).await;

    // What the worker decided, what the simulator saw.
    let now_s = now_ms() / 1000;
    let by_id: HashMap<u64, &OutcomeRecord> =
        records.iter().flatten().map(|r| (r.call_id.0, r)).collect();
    let mut live_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut importable_calls, mut imported, mut missing, mut unexpected, mut wrong_sha) =
        (0u64, 0u64, Vec::new(), Vec::new(), Vec::new());
    let mut import_latencies_us = Vec::new();
    let mut imported_bytes = 0u64;
    for call in &truth {
        let record = by_id.get(&call.id);
        let label = record.map_or("none yet".to_string(), |r| match &r.reason {
            Some(reason) => format!("{} {reason}", r.outcome.as_str()),
            None => r.outcome.as_str().to_string(),
        });
        *live_outcomes.entry(label).or_default() += 1;
        let is_imported = record.is_some_and(|r| r.outcome == Outcome::Imported);
        let must = importable(call, now_s);
        importable_calls += u64::from(must);
        match (must, is_imported) {
            (true, false) => missing.push(call.id),
            (false, true) => unexpected.push(call.id),
            _ => {}
        }
        if let Some(r) = record.filter(|_| is_imported) {
            imported += 1;
            let stored = r.stored.as_ref();
            imported_bytes += stored.map_or(0, |s| s.bytes);
            if stored.map(|s| s.sha256.as_str()) != call.recording_sha256.as_deref() {
                wrong_sha.push(call.id);
            }
            if let Some(end) = call.ended_at {
                import_latencies_us.push(((r.decided_at_ms - end * 1000).max(0) * 1000) as u64);
            }
        }
    }
    import_latencies_us.sort_unstable();
    let mut slowest: Vec<(i64, u64, String)> = truth
        .iter()
        .filter_map(|c| {
            let r = by_id
                .get(&c.id)
                .filter(|r| r.outcome == Outcome::Imported)?;
            let latency_ms = r.decided_at_ms - c.ended_at? * 1000;
            Some((latency_ms, c.id, format!("{:?}", r.trigger)))
        })
        .collect();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    for (latency_ms, call, trigger) in slowest.iter().take(3) {
        eprintln!("  slowest import: call {call}, {latency_ms} ms after its end ({trigger})");
    }
    let serve_warnings = log_warnings(&serve_log);
    let worker_warnings = log_warnings(&worker_log);
    for (name, (_, _, first)) in [("serve", &serve_warnings), ("worker", &worker_warnings)] {
        for line in first {
            eprintln!("  {name}: {line}");
        }
    }
    let counts = ctx.outcomes.counts(&id).await.unwrap_or_default();
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    let live_not_matched = live_outcomes
        .get("skipped user_not_matched")
        .copied()
        .unwrap_or(0);
    let flood_decided = count("reason:user_not_matched").saturating_sub(live_not_matched);
    let mut sustained = Tally::default();
    for minute in &minutes {
        sustained.merge(minute);
    }
    let flood_jobs = warm_up.jobs() + peak.jobs() + sustained.jobs();
    let names = ctx.broker.names().clone();
    let dead = queue_state(&ctx, &names.dead).await.map_or(0, |q| q.0);
    let events = queue_state(&ctx, &names.unrouted).await.map_or(0, |q| q.0);
    let spool = spooled(&ctx).await;
    let records_kept: u64 = redis::cmd("HLEN")
        .arg(format!("{tag}:calls:{{{CONNECTION}}}"))
        .query_async(&mut ctx.redis.clone())
        .await
        .unwrap_or(0);
    let stats = sim.state.stats(company.id).unwrap_or_default();
    let api_requests: u64 = stats
        .by_endpoint
        .iter()
        .filter(|(endpoint, _)| !endpoint.starts_with("download_"))
        .map(|(_, n)| n)
        .sum();
    let webhooks = sim.state.webhooks(company.id).unwrap_or_default();
    let delivered: u64 = webhooks.iter().map(|w| w.delivered).sum();
    let failed_deliveries: u64 = webhooks.iter().map(|w| w.failed_attempts).sum();

    // Judge.
    for (phase, tally) in [
        ("peak warm-up", &warm_up),
        ("peak", &peak),
        ("sustained", &sustained),
    ] {
        if tally.failed() > 0 {
            problems.push(format!(
                "{phase}: {} of {} requests not answered 2xx queued/spooled: {:?}",
                tally.failed(),
                tally.sent,
                tally.problems
            ));
        }
    }
    if failed_deliveries > 0 {
        problems.push(format!(
            "{failed_deliveries} webhook deliveries of the live calls failed (the simulator retries them)"
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} importable calls not imported after the drain, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} calls imported that the rules exclude, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)]
        ));
    }
    if !wrong_sha.is_empty() {
        problems.push(format!(
            "{} imports whose SHA-256 is not the recording's, e.g. {:?}",
            wrong_sha.len(),
            &wrong_sha[..wrong_sha.len().min(5)]
        ));
    }
    if dead > 0 || count("outcome:failed") > 0 {
        problems.push(format!(
            "{dead} dead letters, {} calls recorded failed",
            count("outcome:failed")
        ));
    }
    if flood_decided != flood_jobs {
        problems.push(format!(
            "{flood_jobs} flood jobs stored by the intake, {flood_decided} decided by the worker"
        ));
    }
    if spool > 0 {
        problems.push(format!("{spool} jobs left in the Redis spool"));
    }
    if let Some(at) = fell_behind_at {
        problems.push(format!(
            "the worker fell behind: more than {max_backlog_jobs} jobs ({} s of the flood) waited at {at:.0} s; the flood stopped there",
            knobs.max_backlog.as_secs()
        ));
    }
    for process in [&mut serve, &mut worker] {
        if let Err(e) = process.check_running() {
            problems.push(e);
        }
    }

    // Report.
    let rate_source = if knobs.rate > 0.0 {
        format!("LOAD_RATE; peak {peak_rate:.0}/s")
    } else {
        format!("half the peak of {peak_rate:.0}/s")
    };
    let warm_up_s = knobs.warm_up().as_secs_f64();
    println!(
        "\n{}; sustained {:.0} s at {rate:.0}/s ({rate_source}), {} live calls a minute; worker.concurrency {}\n",
        common::machine(),
        sustained_elapsed.as_secs_f64(),
        knobs.live_per_minute,
        knobs.worker_concurrency
    );
    let peak_latency = peak.latency_cells().replace(" |", " /");
    println!(
        "Peak: closed loop, {} keep-alive clients, {} s: **{peak_rate:.0}/s** answered 2xx ({} sent, {} failed; p50 / p99 / max {} ms). The worker then drained the {backlog} jobs left in {:.1} s.\n",
        knobs.concurrency,
        knobs.peak.as_secs(),
        peak.sent,
        peak.failed(),
        peak_latency,
        peak_drain.as_secs_f64()
    );
    println!(
        "| minute | sent | 2xx | of which spooled | non-2xx | errors | p50 ms | p99 ms | max ms | jobs waiting at its end | serve RSS MB | worker RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let minute_count = minutes.len();
    for (m, tally) in minutes.iter_mut().enumerate() {
        let end_s = (((m + 1) * 60) as f64).min(sustained_elapsed.as_secs_f64());
        let at = sample_at(&samples, end_s);
        let latency = tally.latency_cells();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m + 1,
            tally.sent,
            tally.answered_2xx(),
            tally.spooled,
            tally.non_2xx + tally.other_2xx,
            tally.errors,
            latency,
            at.and_then(|s| s.jobs_waiting)
                .map_or("?".into(), |d| d.to_string()),
            mb_cell(at.and_then(|s| s.serve_rss)),
            mb_cell(at.and_then(|s| s.worker_rss)),
        );
    }
    let last = samples.last();
    let latency = sustained.latency_cells().replace(" | ", "** | **");
    println!(
        "| **all {minute_count}** | **{}** | **{}** | {} | **{}** | **{}** | **{}** | {} | {} | {} |",
        sustained.sent,
        sustained.answered_2xx(),
        sustained.spooled,
        sustained.non_2xx + sustained.other_2xx,
        sustained.errors,
        latency,
        last.and_then(|s| s.jobs_waiting)
            .map_or("?".into(), |d| d.to_string()),
        mb_cell(last.and_then(|s| s.serve_rss)),
        mb_cell(last.and_then(|s| s.worker_rss)),
    );

    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let [serve_cpu, worker_cpu, bench_cpu, machine_cpu] = cpu_shares(first, last);
        println!(
            "\nCPU over the sustained phase, in % of one core: serve {serve_cpu:.0}, worker {worker_cpu:.0}, the bench process (load generator and simulator) {bench_cpu:.0}; the machine was {machine_cpu:.0}% busy (all {} cores, other processes included).",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    println!(
        "\nMemory, sampled every {} s ({} samples); slope by least squares over the samples after the first {warm_up_s:.0} s:\n",
        SAMPLE_EVERY.as_secs(),
        samples.len()
    );
    println!("| | first MB | last MB | max MB | slope MB/min | samples in slope |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        memory_row("serve `VmRSS`", &samples, |s| s.serve_rss, warm_up_s)
    );
    println!(
        "{}",
        memory_row("worker `VmRSS`", &samples, |s| s.worker_rss, warm_up_s)
    );
    println!(
        "{}",
        memory_row("Redis `used_memory`", &samples, |s| s.redis_used, warm_up_s)
    );
    let redis_growth = match (redis_start, redis_end) {
        (Some(a), Some(b)) => b as f64 - a as f64,
        _ => 0.0,
    };
    println!(
        "\nRedis `used_memory` (the whole instance, whatever else uses it): {:.1} MB before the bench, {} MB at the start of the sustained phase, {} MB at its end ({:+.0} bytes per flood job stored); {records_kept} outcome records kept at the end. After the drain: serve {} MB, worker {} MB.",
        redis_before as f64 / MB,
        mb_cell(redis_start),
        mb_cell(redis_end),
        redis_growth / sustained.jobs().max(1) as f64,
        mb_cell(drained.serve_rss),
        mb_cell(drained.worker_rss),
    );

    let depths: Vec<u64> = samples.iter().filter_map(|s| s.jobs_waiting).collect();
    println!("\n| worker | value |");
    println!("|---|---|");
    println!(
        "| peak phase's backlog, drained with the intake idle | {backlog} jobs in {:.1} s ({:.0}/s) |",
        peak_drain.as_secs_f64(),
        backlog as f64 / peak_drain.as_secs_f64()
    );
    println!(
        "| jobs waiting (import and retry queues, spool), sustained phase: max / at its end | {} / {} |",
        depths.iter().max().copied().unwrap_or(0),
        depths.last().copied().unwrap_or(0)
    );
    let after = |d: Option<Duration>| {
        d.map_or("not within the drain".to_string(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    println!(
        "| after the sustained phase: import queue empty / every importable call imported / every queue empty and the live calls settled | {} / {} / {} |",
        after(backlog_gone_after),
        after(all_imported_after),
        after(queue_empty_after),
    );
    println!(
        "| flood jobs stored by the intake / decided `user_not_matched` by the worker | {flood_jobs} / {flood_decided} |"
    );
    println!(
        "| dead letters / `failed` outcomes / spool left | {dead} / {} / {spool} |",
        count("outcome:failed")
    );

    println!("\n| live calls (small recordings) | value |");
    println!("|---|---|");
    println!(
        "| calls made / ended | {} / {} |",
        truth.len(),
        truth.iter().filter(|c| c.ended_at.is_some()).count()
    );
    println!(
        "| importable by the simulator's truth / **imported** | {importable_calls} / **{imported}** |"
    );
    println!(
        "| missing / imported though excluded / wrong SHA-256 | {} / {} / {} |",
        missing.len(),
        unexpected.len(),
        wrong_sha.len()
    );
    println!(
        "| recordings stored | {:.1} MB, {:.0} KB each on average |",
        imported_bytes as f64 / MB,
        imported_bytes as f64 / 1024.0 / imported.max(1) as f64
    );
    println!(
        "| call end → imported: p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        percentile_ms(&import_latencies_us, 0.50),
        percentile_ms(&import_latencies_us, 0.99),
        percentile_ms(&import_latencies_us, 1.0)
    );
    let outcomes: Vec<String> = live_outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("| outcomes | {} |", outcomes.join(", "));
    println!(
        "| webhooks delivered by the simulator / failed attempts | {delivered} / {failed_deliveries} |"
    );
    println!("| `call.imported` events (unrouted queue) | {events} |");
    println!("| Aircall API requests (connect and first import included) | {api_requests} |");
    println!(
        "| log lines at WARN / ERROR: serve, worker | {} / {}, {} / {} |",
        serve_warnings.0, serve_warnings.1, worker_warnings.0, worker_warnings.1
    );

    // Clean up, then the verdict.
    if !problems.is_empty() {
        eprintln!("\nserve's log, last lines:\n{}", log_tail(&serve_log, 20));
        eprintln!("\nworker's log, last lines:\n{}", log_tail(&worker_log, 20));
    }
    let serve_clean = serve.stop().await;
    let worker_clean = worker.stop().await;
    if !serve_clean || !worker_clean {
        problems.push("a process did not stop cleanly on SIGTERM".into());
    }
    sim.stop().await;
    let (markers, others) = traces.remove().await;
    eprintln!(
        "cleaned up: {markers} redelivery markers and {others} other Redis keys, queues, files"
    );
    if problems.is_empty() {
        println!("\nNo error.");
        ExitCode::SUCCESS
    } else {
        println!("\n**Problems:**");
        for problem in &problems {
            println!("- {problem}");
        }
        ExitCode::FAILURE
    }
}
