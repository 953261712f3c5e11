//! Recording import throughput and a worker's peak memory, beside baselines measured in the
//! same run, against the bundled simulator over loopback:
//!
//! 1. **raw download**: reqwest streaming each recording URL into a file with tokio (the same
//!    256 KiB write buffer as local storage), no hash, no fsync, no Redis, no broker — the
//!    ceiling of moving the bytes on this machine, and the figure the import is compared to;
//! 2. **raw + fsync**: the same download, each file (and its directory) fsynced before it
//!    counts — what durable local storage alone costs on this disk;
//! 3. **import**: [`Importer::process`] on jobs carrying fresh snapshots, so no Aircall API
//!    call: outcome check, lease, rules, download + SHA-256 + durable store, metadata document,
//!    outcome in Redis, confirmed `call.imported` (routed to a bound quorum queue, as a
//!    downstream consumer would have), outcome marked announced.
//!
//! Each runs with 8 downloads or imports at once, for 1 MB and 50 MB recordings (MB = 2^20
//! bytes, as `import.max_recording_bytes` counts), in `BENCH_IMPORT_ROUNDS` rounds (default 5)
//! whose phase order rotates; the median round is reported. Every round imports new calls, and
//! the raw phases download the very URLs the import jobs carry. Then:
//!
//! 4. **worker memory**: the real `aircall-ingest worker` process, configured by
//!    `AIRCALL_INGEST_*` variables, importing 8 recordings of 200 MB (exactly the size limit) at
//!    once from its queue; its `VmHWM` idle (connected and consuming) and after the imports.
//!
//! Every phase opens its 8 connections to the simulator afresh, writes under Cargo's
//! `target/tmp` (one disk for all), removes what it wrote, and is followed by a `sync` outside
//! its timing, so none pays for another's writeback.
//!
//! Run: `cargo bench --bench import` (RabbitMQ and Redis on their local default ports;
//! `deploy/local/bench.sh` starts them first); cargo builds the `aircall-ingest` binary it
//! starts. `BENCH_IMPORT_SMALL_CALLS` (default 200) and `BENCH_IMPORT_LARGE_CALLS` (32, 0 skips
//! a size), `BENCH_IMPORT_ROUNDS` (5) and `BENCH_IMPORT_PHASES` (`raw,fsync,import`, e.g. one
//! phase alone under `perf`) shape the throughput phases; `BENCH_IMPORT_MEMORY=0` skips the
//! memory phase. `AIRCALL_INGEST_*` variables apply to the service, for experiments. Prints
//! Markdown tables.
// A benchmark may stop at the first broken assumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aircall_ingest::aircall::{AircallClient, CallId, Credentials};
use aircall_ingest::app::Context;
use aircall_ingest::connections::{self, ConnectionId, Outcome};
use aircall_ingest::import::rules::PayingUsers;
use aircall_ingest::import::{Handled, Importer, Report};
use aircall_ingest::queue::topology::CALL_IMPORTED;
use aircall_ingest::queue::{ImportJob, Message, Trigger};
use aircall_ingest::sim::recording::AudioSource;
use aircall_ingest::sim::{
    AudioKind, CallSpec, CompanyInfo, CompanySpec, RunningSimulator, SimSettings,
};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use secrecy::SecretString;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use common::{Process, Scratch, env_number, machine, now_ms};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const CONNECTION: &str = "bench";
/// The unit of every size here, as `import.max_recording_bytes` counts a megabyte.
const MB: u64 = 1 << 20;
/// Imports (or raw downloads) at once: the worker's default `worker.concurrency`.
const CONCURRENCY: usize = 8;
/// The raw download's write buffer: the same as local storage's.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// The memory phase's recordings: exactly the default `import.max_recording_bytes`.
const LARGEST_RECORDING_BYTES: u64 = 200 * MB;
/// How long the worker process gets for its 8 imports before the bench gives up.
const MEMORY_PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Cumulative CPU ticks of the whole machine (`/proc/stat`) and of this process
/// (`/proc/self/stat`), to say how busy a phase kept the two cores.
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    total: u64,
    idle: u64,
    iowait: u64,
    /// Time the hypervisor gave the virtual CPUs to someone else.
    steal: u64,
    process: u64,
}

impl CpuTicks {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let machine: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is 3rd, utime 14th.
        let after_name: Vec<u64> = own
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let field = |fields: &[u64], i: usize| fields.get(i).copied().unwrap_or(0);
        Self {
            total: machine.iter().take(8).sum(),
            idle: field(&machine, 3),
            iowait: field(&machine, 4),
            steal: field(&machine, 7),
            process: field(&after_name, 10) + field(&after_name, 11),
        }
    }
}

/// One phase of one round.
#[derive(Debug, Clone, Copy)]
struct Run {
    calls: usize,
    failed: usize,
    bytes: u64,
    elapsed: Duration,
    /// Shares of the machine's CPU time (all cores): busy, waiting on I/O, stolen.
    busy: f64,
    iowait: f64,
    steal: f64,
    /// This process's CPU time (simulator, client, importer) per MB moved, in ms.
    cpu_ms_per_mb: f64,
}

impl Run {
    fn measure(
        started: Instant,
        before: CpuTicks,
        calls: usize,
        failed: usize,
        bytes: u64,
    ) -> Self {
        let elapsed = started.elapsed();
        let after = CpuTicks::now();
        let total = after.total.saturating_sub(before.total).max(1) as f64;
        let idle = after.idle.saturating_sub(before.idle) as f64;
        let iowait = after.iowait.saturating_sub(before.iowait) as f64;
        let steal = after.steal.saturating_sub(before.steal) as f64;
        // /proc counts in USER_HZ, 100 per second on Linux.
        let process_ms = after.process.saturating_sub(before.process) as f64 * 10.0;
        Self {
            calls,
            failed,
            bytes,
            elapsed,
            busy: (total - idle - iowait - steal) / total,
            iowait: iowait / total,
            steal: steal / total,
            cpu_ms_per_mb: process_ms / (bytes as f64 / MB as f64).max(f64::MIN_POSITIVE),
        }
    }
    fn calls_per_s(&self) -> f64 {
        (self.calls - self.failed) as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Raw,
    RawFsync,
    Import,
}

impl Phase {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "raw" => Some(Self::Raw),
            "fsync" => Some(Self::RawFsync),
            "import" => Some(Self::Import),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw download (no hash, no fsync)",
            Self::RawFsync => "raw download + fsync",
            Self::Import => "import: Importer::process",
        }
    }
}

/// The service side of the bench: a context with its own Redis prefix and queue names, the
/// company connected through the real flow, and a queue bound to `call.imported`.
struct Service {
    ctx: Context,
    id: ConnectionId,
    client: AircallClient,
    events_queue: String,
    cancel: CancellationToken,
    root: PathBuf,
    cleaned: bool,
}

/// A failed bench still removes its queues, keys and files.
impl Drop for Service {
    fn drop(&mut self) {
        if !self.cleaned
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            tokio::task::block_in_place(|| handle.block_on(self.remove_traces()));
        }
    }
}

impl Service {
    async fn start(sim: &RunningSimulator, company: &CompanyInfo, root: PathBuf) -> Service {
        let (mut settings, _) = common::bench_settings("import");
        settings.aircall_base_url = sim.base_url.clone();
        settings.aircall.requests_per_window = 100_000;
        settings.import.recording_hosts = vec!["127.0.0.1".into()];
        settings.storage.root = root.clone();
        let ctx = Context::new(settings).unwrap();
        ctx.broker
            .connect()
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (deploy/local/services.sh starts it)");
        let cancel = CancellationToken::new();
        tokio::spawn(ctx.broker.clone().run(cancel.clone()));

        let id = ConnectionId::parse(CONNECTION).unwrap();
        let api_token = SecretString::from(company.api_token.clone());
        let client = ctx.aircall.client(
            Credentials {
                api_id: company.api_id.clone(),
                api_token: api_token.clone(),
            },
            CONNECTION,
            cancel.clone(),
        );
        connections::connect(connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &api_token,
            public_url: &ctx.settings.public_url,
            store: &ctx.connections,
            outcomes: &ctx.outcomes,
            state: &ctx.reconciler().state,
            keys: &ctx.keys,
            users: &Default::default(),
            now_ms: now_ms(),
        })
        .await
        .expect("Redis on 127.0.0.1:6379, and the simulator");
        let paying = company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.clone());
        assert!(
            ctx.connections
                .set_paying_users(&id, &PayingUsers::new(paying), now_ms())
                .await
                .unwrap()
        );

        // A downstream consumer's queue, so events are stored like in production rather than
        // returned unroutable.
        let events_queue = format!("{}.bench-events", ctx.broker.names().import);
        let channel = ctx.broker.channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(events_queue.as_str().into(), durable, args)
            .await
            .unwrap();
        channel
            .queue_bind(
                events_queue.as_str().into(),
                ctx.broker.names().events.as_str().into(),
                CALL_IMPORTED.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
        Service {
            ctx,
            id,
            client,
            events_queue,
            cancel,
            root,
            cleaned: false,
        }
    }

    /// Import jobs for `calls`, each with a snapshot fetched now (as a webhook would carry):
    /// fresh, so importing them asks Aircall nothing.
    async fn jobs(&self, calls: &[u64]) -> Vec<ImportJob> {
        let mut jobs = Vec::with_capacity(calls.len());
        for &call in calls {
            let snapshot = self.client.get_call(CallId(call)).await.unwrap();
            assert!(snapshot.recording.is_some(), "call {call} has no recording");
            let mut job = ImportJob::new(CONNECTION, CallId(call), Trigger::Webhook, now_ms());
            job.event = Some("call.ended".into());
            job.snapshot = Some(snapshot);
            jobs.push(job);
        }
        jobs
    }

    /// Stops the broker supervisor; removes the queues, the exchanges, the Redis keys of this
    /// service's prefixes and the storage root.
    async fn clean_up(mut self) {
        self.remove_traces().await;
        self.cleaned = true;
    }

    async fn remove_traces(&self) {
        self.cancel.cancel();
        let names = self.ctx.broker.names().clone();
        if let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            let _ = channel
                .queue_delete(
                    self.events_queue.as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
            aircall_ingest::queue::topology::delete(&channel, &names).await;
            let _ = connection.close(200, "done".into()).await;
        }
        let mut redis = self.ctx.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.ctx.settings.redis_key_prefix))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Calls by a paying agent with a recording of `bytes`, without webhooks (jobs are made here).
fn add_calls(sim: &RunningSimulator, company: &CompanyInfo, count: usize, bytes: u64) -> Vec<u64> {
    let agent = company
        .agents
        .iter()
        .find(|a| a.paying)
        .expect("a paying agent")
        .email
        .clone();
    let spec = CallSpec {
        agent_email: Some(agent),
        recording_bytes: Some(bytes),
        notify: false,
        ..CallSpec::default()
    };
    (0..count)
        .map(|_| sim.state.add_call(company.id, &spec).unwrap())
        .collect()
}

/// API requests the simulator has answered for `company`, recording downloads aside.
fn api_requests(sim: &RunningSimulator, company: &CompanyInfo) -> u64 {
    sim.state.stats(company.id).map_or(0, |s| {
        s.by_endpoint
            .iter()
            .filter(|(endpoint, _)| !endpoint.starts_with("download_"))
            .map(|(_, n)| n)
            .sum()
    })
}

/// Streams `url` into `path`; with `durable`, fsyncs the file and its directory.
async fn raw_download(
    http: &reqwest::Client,
    url: &str,
    path: &Path,
    durable: bool,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut response = http.get(url).send().await?.error_for_status()?;
    let file = tokio::fs::File::create(path).await?;
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await? {
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if durable {
        file.get_ref().sync_all().await?;
        if let Some(dir) = path.parent() {
            tokio::fs::File::open(dir).await?.sync_all().await?;
        }
    }
    Ok(bytes)
}

/// A download client with an empty connection pool, like the importer's. Each phase opens its
/// `CONCURRENCY` connections afresh, in one burst, so the simulator's HTTP workers (which take
/// connections in turn) serve as many each: a lopsided share left over from an earlier phase
/// would halve a phase's rate on two cores.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The raw baseline: every URL downloaded into `dir`, `CONCURRENCY` at once.
async fn raw_phase(
    http: &reqwest::Client,
    urls: &[(u64, String)],
    size: u64,
    dir: &Path,
    durable: bool,
) -> Run {
    tokio::fs::create_dir_all(dir).await.unwrap();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    let before = CpuTicks::now();
    let started = Instant::now();
    for (call, url) in urls {
        let (http, url, slots) = (http.clone(), url.clone(), slots.clone());
        let path = dir.join(format!("{call}.mp3"));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            raw_download(&http, &url, &path, durable).await
        });
    }
    let (mut failed, mut bytes) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(n) if n == size => bytes += n,
            Ok(n) => {
                eprintln!("  raw download: {n} bytes instead of {size}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("  raw download failed: {e}");
                failed += 1;
            }
        }
    }
    let run = Run::measure(started, before, urls.len(), failed, bytes);
    tokio::fs::remove_dir_all(dir).await.unwrap();
    run
}

/// The import: every job through `Importer::process`, `CONCURRENCY` at once.
async fn import_phase(importer: &Importer, jobs: Vec<ImportJob>, size: u64) -> Run {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    let count = jobs.len();
    let before = CpuTicks::now();
    let started = Instant::now();
    for job in jobs {
        let (importer, slots) = (importer.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            importer.process(job).await
        });
    }
    let (mut failed, mut bytes) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(Report::Done(Handled::Imported)) => bytes += size,
            other => {
                eprintln!("  import did not import: {other:?}");
                failed += 1;
            }
        }
    }
    Run::measure(started, before, count, failed, bytes)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    sum / f64::from(n.max(1))
}

/// Writes every dirty page to disk (outside any timing), so that no phase pays for the
/// writeback of the one before.
async fn settle_disk() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
}

/// What the throughput phases share.
struct Bench {
    sim: RunningSimulator,
    company: CompanyInfo,
    service: Service,
    scratch: PathBuf,
    rounds: usize,
    phases: Vec<Phase>,
}

impl Bench {
    /// `rounds` rounds of every phase for `calls` recordings of `size` bytes, the phase order
    /// rotating from round to round.
    async fn throughput(&self, calls: usize, size: u64) -> Vec<(Phase, Vec<Run>)> {
        let mut results: Vec<(Phase, Vec<Run>)> =
            self.phases.iter().map(|p| (*p, Vec::new())).collect();
        if calls == 0 {
            return results;
        }
        for round in 0..self.rounds {
            let ids = add_calls(&self.sim, &self.company, calls, size);
            let jobs = self.service.jobs(&ids).await;
            let mut order = self.phases.clone();
            order.rotate_left(round % self.phases.len().max(1));
            for phase in order {
                eprintln!(
                    "{} MB × {calls}, round {}/{}: {}…",
                    size / MB,
                    round + 1,
                    self.rounds,
                    phase.name()
                );
                let run = self.phase(phase, &jobs, size).await;
                settle_disk().await;
                if let Some((_, runs)) = results.iter_mut().find(|(p, _)| *p == phase) {
                    runs.push(run);
                }
            }
        }
        results
    }

    /// One phase over `jobs`' recordings; removes what it wrote.
    async fn phase(&self, phase: Phase, jobs: &[ImportJob], size: u64) -> Run {
        let urls: Vec<(u64, String)> = jobs
            .iter()
            .map(|j| {
                let url = j.snapshot.as_ref().and_then(|c| c.recording.clone());
                (j.call_id.0, url.expect("a recording URL"))
            })
            .collect();
        let raw_dir = self.scratch.join("raw");
        match phase {
            Phase::Raw => raw_phase(&fresh_client(), &urls, size, &raw_dir, false).await,
            Phase::RawFsync => raw_phase(&fresh_client(), &urls, size, &raw_dir, true).await,
            Phase::Import => {
                let api_before = api_requests(&self.sim, &self.company);
                // A new importer has a new download client, like `fresh_client`.
                let importer = self.service.ctx.importer(&self.service.cancel).unwrap();
                let run = import_phase(&importer, jobs.to_vec(), size).await;
                let api_calls = api_requests(&self.sim, &self.company) - api_before;
                assert_eq!(api_calls, 0, "the imports asked Aircall {api_calls} times");
                let _ = tokio::fs::remove_dir_all(&self.service.root).await;
                run
            }
        }
    }
}

/// The bench's output directory, removed when dropped (a failed bench too).
/// Result of the memory phase.
struct Memory {
    idle_hwm: u64,
    peak_hwm: u64,
    elapsed: Duration,
    imported: usize,
}

/// The real worker process importing 8 recordings of 200 MB at once.
async fn memory_phase(sim: &RunningSimulator, company: &CompanyInfo, scratch: &Path) -> Memory {
    let service = Service::start(sim, company, scratch.join("worker")).await;
    let ids = add_calls(sim, company, CONCURRENCY, LARGEST_RECORDING_BYTES);
    let settings = &service.ctx.settings;
    let child = Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .arg("worker")
        .env("AIRCALL_INGEST_MODE", "development")
        .env(
            "AIRCALL_INGEST_REDIS_KEY_PREFIX",
            &settings.redis_key_prefix,
        )
        .env("AIRCALL_INGEST_QUEUE__PREFIX", &settings.queue.prefix)
        .env("AIRCALL_INGEST_STORAGE__ROOT", &service.root)
        .env("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1")
        .env("AIRCALL_INGEST_AIRCALL_BASE_URL", sim.base_url.as_str())
        .env("AIRCALL_INGEST_AIRCALL__REQUESTS_PER_WINDOW", "100000")
        .env(
            "AIRCALL_INGEST_WORKER__CONCURRENCY",
            CONCURRENCY.to_string(),
        )
        .env("AIRCALL_INGEST_LOG__LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("aircall-ingest worker");
    let mut worker = Process::new("the worker", child);
    let pid = worker.pid();

    // Idle: started, connected, consuming the import queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let consumers = match service.ctx.broker.channel().await {
            Ok(channel) => {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let declared = channel
                    .queue_declare(
                        service.ctx.broker.names().import.as_str().into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await;
                let _ = channel.close(200, "done".into()).await;
                declared.map_or(0, |q| q.consumer_count())
            }
            Err(_) => 0,
        };
        if consumers > 0 {
            break;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "the worker never consumed its queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_hwm = common::proc_status_bytes(pid, "VmHWM").expect("the worker's /proc status");

    let jobs = service.jobs(&ids).await;
    eprintln!(
        "worker process: {} imports of {} MB at once…",
        jobs.len(),
        LARGEST_RECORDING_BYTES / MB
    );
    let started = Instant::now();
    for job in jobs {
        service
            .ctx
            .broker
            .publish(&Message::ImportCall(job), Duration::from_secs(5))
            .await
            .unwrap();
    }
    let mut imported = 0;
    while started.elapsed() < MEMORY_PHASE_TIMEOUT {
        imported = 0;
        for &call in &ids {
            let record = service
                .ctx
                .outcomes
                .get(&service.id, CallId(call))
                .await
                .unwrap();
            match record {
                Some(r) if r.outcome == Outcome::Imported => imported += 1,
                Some(r) if r.outcome != Outcome::Pending => {
                    panic!(
                        "call {call}: {} {:?} {:?}",
                        r.outcome.as_str(),
                        r.reason,
                        r.error
                    )
                }
                _ => {}
            }
        }
        if imported == ids.len() {
            break;
        }
        worker.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let peak_hwm = common::proc_status_bytes(pid, "VmHWM").expect("the worker's /proc status");
    worker.stop().await;
    service.clean_up().await;
    Memory {
        idle_hwm,
        peak_hwm,
        elapsed,
        imported,
    }
}

/// MB/s of SHA-256 and of the simulator's recording generator on one core: the two CPU costs
/// per byte that sit on the import's path (the generator on the raw baselines' too).
fn per_core_references() -> (f64, f64) {
    let bytes = 256 * MB;
    let mut source = AudioSource::new(1, AudioKind::Recording, bytes);
    let started = Instant::now();
    let mut chunks = Vec::new();
    while let Some(chunk) = source.next_chunk(64 * 1024) {
        chunks.push(chunk);
    }
    let generate = bytes as f64 / MB as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut hasher = sha2::Sha256::new();
    for chunk in &chunks {
        hasher.update(chunk);
    }
    std::hint::black_box(hasher.finalize());
    let hash = bytes as f64 / MB as f64 / started.elapsed().as_secs_f64();
    (hash, generate)
}

fn print_throughput(size: u64, calls: usize, results: &[(Phase, Vec<Run>)]) {
    let median_rate = |phase: Phase| {
        results
            .iter()
            .find(|(p, runs)| *p == phase && !runs.is_empty())
            .map(|(_, runs)| median(&runs.iter().map(Run::mb_per_s).collect::<Vec<_>>()))
    };
    let share = |rate: f64, of: Option<f64>, phase: Phase, base: Phase| match of {
        Some(of) if phase != base => format!("{:.0}%", 100.0 * rate / of),
        _ => String::from("—"),
    };
    let (raw, durable) = (median_rate(Phase::Raw), median_rate(Phase::RawFsync));
    for (phase, runs) in results.iter().filter(|(_, runs)| !runs.is_empty()) {
        let rates: Vec<f64> = runs.iter().map(Run::mb_per_s).collect();
        let mb_per_s = median(&rates);
        let calls_per_s = median(&runs.iter().map(Run::calls_per_s).collect::<Vec<_>>());
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        let rounds: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {} MB × {calls} | {} | {calls_per_s:.1} | {mb_per_s:.0} | {} | {} | {} | {failed} | {:.0}% | {:.0}% | {:.0}% | {:.2} |",
            size / MB,
            phase.name(),
            share(mb_per_s, raw, *phase, Phase::Raw),
            share(
                mb_per_s,
                durable.filter(|_| *phase == Phase::Import),
                *phase,
                Phase::RawFsync
            ),
            rounds.join(", "),
            100.0 * mean(runs.iter().map(|r| r.busy)),
            100.0 * mean(runs.iter().map(|r| r.iowait)),
            100.0 * mean(runs.iter().map(|r| r.steal)),
            mean(runs.iter().map(|r| r.cpu_ms_per_mb)),
        );
    }
}

#[tokio::main]
async fn main() {
    let small_calls = env_number("BENCH_IMPORT_SMALL_CALLS", 200) as usize;
    let large_calls = env_number("BENCH_IMPORT_LARGE_CALLS", 32) as usize;
    let rounds = env_number("BENCH_IMPORT_ROUNDS", 5).max(1) as usize;
    let with_memory = env_number("BENCH_IMPORT_MEMORY", 1) != 0;
    let phases: Vec<Phase> = std::env::var("BENCH_IMPORT_PHASES")
        .unwrap_or_else(|_| "raw,fsync,import".into())
        .split(',')
        .map(|name| Phase::parse(name.trim()).expect("BENCH_IMPORT_PHASES: raw, fsync, import"))
        .collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let scratch = Scratch::new("import");

    let sim = RunningSimulator::start(
        SimSettings {
            rate_limit: 1_000_000,
            workers: cores,
            ..SimSettings::for_tests()
        },
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let company = sim
        .state
        .add_company(CompanySpec {
            agents: 3,
            ..CompanySpec::default()
        })
        .unwrap();

    let service = Service::start(&sim, &company, scratch.0.join("import")).await;
    let mut bench = Bench {
        sim,
        company,
        service,
        scratch: scratch.0.clone(),
        rounds: 1,
        phases: phases.clone(),
    };

    eprintln!("warming up…");
    let _ = bench.throughput(16, MB).await;
    bench.rounds = rounds;
    let small = bench.throughput(small_calls, MB).await;
    let large = bench.throughput(large_calls, 50 * MB).await;
    let Bench {
        sim,
        company,
        service,
        ..
    } = bench;
    service.clean_up().await;

    let memory = if with_memory {
        Some(memory_phase(&sim, &company, &scratch.0).await)
    } else {
        None
    };
    let (hash, generate) = per_core_references();
    sim.stop().await;
    drop(scratch);

    println!(
        "\n{}; {CONCURRENCY} at once; median of {rounds} rounds (MB = 2^20 bytes)\n",
        machine()
    );
    println!(
        "| recordings | phase | calls/s | MB/s | vs raw | vs raw + fsync | MB/s per round | failed | CPU busy | iowait | steal | bench CPU ms/MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    print_throughput(MB, small_calls, &small);
    print_throughput(50 * MB, large_calls, &large);
    println!(
        "\nOne core: SHA-256 {hash:.0} MB/s; the simulator's recording generator {generate:.0} MB/s."
    );
    if let Some(m) = memory {
        let total = (CONCURRENCY as u64 * LARGEST_RECORDING_BYTES) as f64 / MB as f64;
        println!(
            "\n| worker process (`aircall-ingest worker`, concurrency {CONCURRENCY}) | VmHWM MB |"
        );
        println!("|---|---|");
        println!(
            "| idle: connected, consuming | {:.1} |",
            m.idle_hwm as f64 / MB as f64
        );
        println!(
            "| {} × {} MB imported at once ({} of {} done in {:.1} s, {:.0} MB/s) | {:.1} |",
            CONCURRENCY,
            LARGEST_RECORDING_BYTES / MB,
            m.imported,
            CONCURRENCY,
            m.elapsed.as_secs_f64(),
            total / m.elapsed.as_secs_f64(),
            m.peak_hwm as f64 / MB as f64
        );
    }
}
