//! What several benchmarks share: environment knobs, the realistic `call.ended` body, latency
//! percentiles, the release `aircall-ingest` processes they start and read `/proc` of, and the
//! line that says which machine and commit a run measured.
//!
//! Each benchmark is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A number from the environment, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What varies between `call.ended` bodies.
#[derive(Debug, Clone, Copy)]
pub struct CallEnded<'a> {
    pub call_id: u64,
    /// The webhook's token.
    pub token: &'a str,
    /// When the call ended (Unix seconds); it started 225 s before, the event is sent 30 s
    /// after and the recording URL is signed then, valid for an hour.
    pub ended_at: i64,
    pub agent_email: &'a str,
}

/// A realistic `call.ended` body (about 1.4 KB), as Aircall sends it: envelope, call, agent,
/// line, contact, signed recording URL.
pub fn call_ended(call: CallEnded<'_>) -> Vec<u8> {
    let CallEnded {
        call_id,
        token,
        ended_at,
        agent_email,
    } = call;
    let started_at = ended_at - 225;
    let sent_at = ended_at + 30;
    let amz_date = time::OffsetDateTime::from_unix_timestamp(sent_at)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .ok()
        })
        .unwrap_or_default();
    serde_json::json!({
        "resource": "call", "event": "call.ended", "timestamp": sent_at, "token": token,
        "data": {
            "id": call_id, "call_uuid": format!("CA{call_id:032x}"),
            "direct_link": format!("https://api.aircall.io/v1/calls/{call_id}"),
            "direction": "inbound", "status": "done", "missed_call_reason": null,
            "started_at": started_at, "answered_at": started_at + 9, "ended_at": ended_at,
            "duration": 225, "raw_digits": "+33 6 12 34 56 78",
            "recording": format!("https://storage.example/calls/{call_id}/recording.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={amz_date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=15af092d551f4694b37d01517aa6d5aa46b143eb5ba8098d41021b5ff7cf0690"),
            "voicemail": null, "asset": format!("https://assets.aircall.io/calls/{call_id}/recording"),
            "archived": false,
            "number": {"id": 1234, "direct_link": "https://api.aircall.io/v1/numbers/1234", "name": "Support FR",
                       "digits": "+33 1 76 11 11 11", "e164_digits": "+33176111111", "country": "FR", "time_zone": "Europe/Paris"},
            "user": {"id": 456, "direct_link": "https://api.aircall.io/v1/users/456", "name": "John Doe",
                     "email": agent_email, "available": true, "availability_status": "available", "substatus": "always_open"},
            "contact": {"id": 99, "first_name": "Ada", "last_name": "Lovelace", "company_name": "Analytical Engines",
                        "phone_numbers": [{"id": 100, "label": "Work", "value": "+33 6 12 34 56 78"}], "emails": []},
            "assigned_to": null, "teams": [], "transferred_by": null, "transferred_to": null,
            "comments": [], "tags": [], "participants": []
        }
    })
    .to_string()
    .into_bytes()
}

/// The `p` quantile (0 to 1) of latencies in microseconds, sorted ascending, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[index] as f64 / 1000.0
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`…), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// A process the benchmark started (the release `aircall-ingest`); killed if the benchmark
/// fails before stopping it.
pub struct Process {
    name: &'static str,
    child: Option<Child>,
}

impl Process {
    pub fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Err` with how it ended if the process has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            return Err(format!("{} exited early with {status}", self.name));
        }
        if self.child.is_none() {
            return Err(format!("{} is not running", self.name));
        }
        Ok(())
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Err(e) = self.check_running() {
            panic!("{e}");
        }
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL. Whether it exited cleanly
    /// (status 0) within the 15 s.
    pub async fn stop(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    eprintln!("  {} exited with {status}", self.name);
                }
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "  {} did not stop within 15 s of SIGTERM; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The commit measured, and whether `src/` differs from it.
pub fn revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            match git(&["status", "--porcelain", "--untracked-files=no", "--", "src"]) {
                Some(changes) if !changes.is_empty() => {
                    format!("commit {commit} + changes to src/")
                }
                _ => format!("commit {commit}"),
            }
        }
        None => String::from("commit unknown"),
    }
}

/// CPUs, RAM, date and commit, for the line above a benchmark's tables.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |v| v.trim_start_matches([' ', '\t', ':']));
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "{cores} CPUs ({model}), {memory_gib:.0} GiB RAM, {date}, {}",
        revision()
    )
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn own_rss_bytes() -> u64 {
    proc_status_bytes(std::process::id(), "VmRSS").unwrap_or(0)
}

/// Memory Redis reports for the keys of one prefix, in total and per group.
#[derive(Debug, Clone, Default)]
pub struct KeyMemory {
    pub keys: u64,
    pub bytes: u64,
    /// Per group (see [`redis_key_memory`]): `(keys, bytes)`.
    pub groups: std::collections::HashMap<String, (u64, u64)>,
}

impl KeyMemory {
    pub fn group(&self, name: &str) -> (u64, u64) {
        self.groups.get(name).copied().unwrap_or((0, 0))
    }
}

/// Every key under `{prefix}:` (a `SCAN`, so Redis is never blocked), each measured with
/// `MEMORY USAGE key SAMPLES 0` (exact, nested values included: the key, its value and Redis's
/// per-key overhead) and added to the group `group(key)` names. Unlike `INFO memory`'s
/// `used_memory`, it counts only this run's keys, whatever else shares the server.
pub async fn redis_key_memory(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
    group: impl Fn(&str) -> String,
) -> Result<KeyMemory, redis::RedisError> {
    let mut memory = KeyMemory::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(redis).await?;
            for (key, size) in keys.iter().zip(sizes) {
                // None: the key expired between the scan and the measure.
                let Some(size) = size else { continue };
                memory.keys += 1;
                memory.bytes += size;
                let entry = memory.groups.entry(group(key)).or_default();
                entry.0 += 1;
                entry.1 += size;
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(memory);
        }
    }
}

/// `used_memory` of `INFO memory`: the whole server's, other users included.
pub async fn redis_used_memory(redis: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Deletes every key under `{prefix}:` (`SCAN` and `UNLINK`, in batches).
pub async fn redis_remove_prefix(redis: &mut redis::aio::ConnectionManager, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(&keys).query_async(redis).await;
        }
        cursor = next;
        if cursor == 0 {
            return;
        }
    }
}

/// What a service a benchmark started leaves behind: its queues, its Redis keys (all under its
/// prefix), its scratch directory, and the token that stops its tasks.
#[derive(Clone)]
pub struct Traces {
    pub names: aircall_ingest::queue::QueueNames,
    pub redis: redis::aio::ConnectionManager,
    pub prefix: String,
    pub root: std::path::PathBuf,
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Traces {
    /// Stops the service's tasks and removes what it left behind.
    pub async fn remove(&self) {
        self.cancel.cancel();
        if let Ok(connection) = lapin::Connection::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
            && let Ok(channel) = connection.create_channel().await
        {
            aircall_ingest::queue::topology::delete(&channel, &self.names).await;
            let _ = connection.close(200, "done".into()).await;
        }
        redis_remove_prefix(&mut self.redis.clone(), &self.prefix).await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The traces of every service not cleaned up yet, so that a benchmark that fails half-way
/// still removes what it made (its `main` does, after catching the panic).
#[derive(Clone, Default)]
pub struct Leftovers(std::sync::Arc<std::sync::Mutex<Vec<Traces>>>);

impl Leftovers {
    pub fn add(&self, traces: Traces) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(traces);
    }

    pub fn forget(&self, prefix: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|t| t.prefix != prefix);
    }

    pub fn take(&self) -> Vec<Traces> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// A scratch directory of one run under Cargo's target directory, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(bench: &str) -> Self {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench-{bench}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the `main` of a benchmark that starts services does around its `run`: the service's
/// logs at `BENCH_LOG` when set, a scratch directory, and should `run` panic, the removal of
/// every service's traces (queues, Redis keys) and of the directory before the panic goes on.
pub async fn run_cleaning_up<Fut>(
    bench: &str,
    run: impl FnOnce(Leftovers, std::path::PathBuf) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::FutureExt as _;

    if let Ok(level) = std::env::var("BENCH_LOG") {
        let mut log = aircall_ingest::config::Settings::default().log;
        log.level = level;
        aircall_ingest::telemetry::init(&log);
    }
    let scratch = Scratch::new(bench);
    let leftovers = Leftovers::default();
    let outcome = std::panic::AssertUnwindSafe(run(leftovers.clone(), scratch.0.clone()))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        eprintln!("the bench failed; removing what it made");
        for traces in leftovers.take() {
            traces.remove().await;
        }
        drop(scratch);
        std::panic::resume_unwind(panic);
    }
}

/// The settings of the service a benchmark measures: the `AIRCALL_INGEST_*` variables (for
/// experiments) over the defaults, development mode, and Redis keys and queues of its own
/// (`bench-{name}-{random}`, also returned).
pub fn bench_settings(name: &str) -> (aircall_ingest::config::Settings, String) {
    let mut settings = aircall_ingest::config::Settings::load(None).expect("configuration");
    let tag = format!("bench-{name}-{:08x}", fastrand::u32(..));
    settings.mode = aircall_ingest::config::Mode::Development;
    settings.redis_key_prefix = tag.clone();
    settings.queue.prefix = tag.clone();
    (settings, tag)
}

/// Starts the service a benchmark measures from `settings`: `serve` on a port of its own (the
/// webhook endpoint, the admin API, the broker supervisor and spool drainer), its `public_url`
/// pointing there, RabbitMQ connected. Its traces are noted in `leftovers` before anything
/// runs, so a benchmark that fails later still removes them.
pub async fn start_service(
    mut settings: aircall_ingest::config::Settings,
    root: std::path::PathBuf,
    leftovers: &Leftovers,
) -> (aircall_ingest::app::Context, url::Url, Traces) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public_url =
        url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    settings.public_url = public_url.clone();
    let ctx = aircall_ingest::app::Context::new(settings).unwrap();
    ctx.broker
        .connect()
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (deploy/local/services.sh starts it)");
    let cancel = tokio_util::sync::CancellationToken::new();
    let traces = Traces {
        names: ctx.broker.names().clone(),
        redis: ctx.redis.clone(),
        prefix: ctx.settings.redis_key_prefix.clone(),
        root,
        cancel: cancel.clone(),
    };
    leftovers.add(traces.clone());
    ctx.start_background(&cancel);
    ctx.serve(listener, &cancel).unwrap();
    (ctx, public_url, traces)
}

/// What a closed loop measured: answers that said what was expected, the others, how long it
/// ran, and every request's latency (µs, sorted).
pub struct Looped {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
}

/// A closed loop: `concurrency` keep-alive clients, each posting its next request when the last
/// was answered, for `duration`. `request(n)` gives the URL and JSON body of the n-th request
/// (n from a random start, one per request across clients); an answer counts as ok when it is
/// 2xx and its body contains `ok_marker`.
pub async fn closed_loop(
    concurrency: u64,
    duration: Duration,
    ok_marker: &'static str,
    request: std::sync::Arc<dyn Fn(u64) -> (String, Vec<u8>) + Send + Sync>,
) -> Looped {
    use std::sync::atomic::{AtomicU64, Ordering};
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .build()
        .unwrap();
    let next = std::sync::Arc::new(AtomicU64::new(fastrand::u64(1..1 << 40)));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, request) = (client.clone(), next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let (url, body) = request(next.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let good = match response {
                    Ok(r) if r.status().is_success() => {
                        r.text().await.is_ok_and(|t| t.contains(ok_marker))
                    }
                    _ => false,
                };
                latencies.push(sent.elapsed().as_micros() as u64);
                if good { ok += 1 } else { failed += 1 }
            }
            (ok, failed, latencies)
        }));
    }
    let mut looped = Looped {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await.unwrap();
        looped.ok += ok;
        looped.failed += failed;
        looped.latencies_us.extend(latencies);
    }
    looped.elapsed = started.elapsed();
    looped.latencies_us.sort_unstable();
    looped
}
