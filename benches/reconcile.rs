//! Reconciliation's Aircall budget (issue 5): the API requests the poller and the workers spend
//! together, counted by the simulator per company — every request it answered, 429s included;
//! recording downloads go to Aircall's storage, not its API, and are left out.
//!
//! 1. **Quiet passes**, under Aircall's real limit (60 requests a minute in the simulator, and
//!    the service's shared budget at its default 60): a connection whose first import is done
//!    and that has no new call; then connections with N answered calls still waiting for their
//!    recording (pending), found by their first import, whose re-check is due: the pass and the
//!    worker's fetches together.
//! 2. **A first import** of a 14-day window holding 5,000 calls (13 days of history): the
//!    pass's listing and webhook check, and the worker's requests for the ≤ 200 calls it queues
//!    (the jobs carry the listing's snapshot). Baseline in the same run: a second company with
//!    the same history whose queued jobs lose their snapshot before the worker sees them, as
//!    if the poller queued call ids only.
//! 3. **Simulated busy days**: two companies of 3,000 calls a day each (the simulator's default
//!    call mix), webhooks working, `serve`, the worker and the reconciler running; two days of
//!    the simulator's clock replayed in steps of 15 minutes (96 passes a day): the clock moves
//!    in sub-steps of 10 s (the simulator's live-call stream fires at most once per move of its
//!    clock), the webhooks that fall due are delivered and imported, then one pass runs per
//!    connection with the reconciler reading the simulator's clock, and the jobs it queued are
//!    imported. Day 1 starts from a fresh connection; day 2 carries day 1's pending calls, as
//!    every later day does. One connection has the default overlap (4 h 15 min); the other, the
//!    baseline, lists from the watermark with no overlap.
//!
//! Parts 2 and 3 raise the limits (simulator and shared budget) so the replay runs at machine
//! speed: the count of requests does not depend on them, only how long they take.
//!
//! The worker reads the system clock (the reconciler takes a [`Clock`]; the importer has none),
//! while the replay runs the simulator's clock ahead by up to two days. A pending call the
//! worker records gets its re-check time on the system clock, which the reconciler, on the
//! simulated clock, would find overdue at every pass; and the worker never sees the 24 h wait
//! for a recording end. Before each pass the bench moves those records onto the simulated
//! clock, as a worker reading it would have written them: the offset the simulated clock had
//! when the worker decided is added to the decision and re-check times, and a call decided past
//! its wait becomes the `no_recording` skip that worker would have recorded on the same fetch
//! (`BENCH_RECONCILE_REBASE=0` turns this off, to see the difference). The requests themselves
//! are the worker's own; records the reconciler writes are on the simulated clock already.
//!
//! Run: `cargo bench --bench reconcile` (RabbitMQ and Redis on their local default ports;
//! `deploy/local/bench.sh` starts them first). `BENCH_RECONCILE_PARTS` (`quiet,first,day`),
//! `BENCH_RECONCILE_PENDING` (pending re-checks per quiet pass, `10,100`),
//! `BENCH_RECONCILE_HISTORY_CALLS` (5000), `BENCH_RECONCILE_CALLS_PER_DAY` (3000),
//! `BENCH_RECONCILE_DAYS` (2) and `BENCH_RECONCILE_HOURS` (24 a day) shape the parts;
//! `BENCH_LOG=info` shows the service's logs; `AIRCALL_INGEST_*` variables apply to the
//! service. Prints Markdown tables.
// A benchmark may stop at the first broken assumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aircall_ingest::aircall::Credentials;
use aircall_ingest::app::Context;
use aircall_ingest::config::Settings;
use aircall_ingest::connections::{self, ConnectionId, Outcome, OutcomeQuery};
use aircall_ingest::import::rules::PayingUsers;
use aircall_ingest::queue::{ImportJob, Message};
use aircall_ingest::reconcile::{Clock, Pass, Reconciler, RunReport};
use aircall_ingest::sim::{CallSpec, CompanyInfo, CompanySpec, RunningSimulator, SimSettings};
use common::{Leftovers, Traces};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

/// A day of Aircall's budget for one company: 60 requests a minute.
const DAILY_BUDGET: u64 = 60 * 60 * 24;
/// Recording size per second of talk: small, so two replayed days stay near 500 MB on disk.
const RECORDING_BYTES_PER_SECOND: u64 = 100;
/// The reconciler's default interval.
const PASS_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// How far the simulated clock moves at once within an interval.
const SUB_STEP: Duration = Duration::from_secs(10);
/// Sub-steps (one simulated minute) between two waits for the worker to catch up, so no
/// recording link (valid an hour of simulated time) expires while its job waits.
const PACE_EVERY: u64 = 6;
/// Limits of parts 2 and 3 (simulator and shared budget): out of the way.
const RAISED_LIMIT: u32 = 100_000;
/// Longest wait for the service to fall idle (the 100 re-checks of part 1 take two minutes
/// of a 60-a-minute budget at worst).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(240);

fn env_text(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What the simulator counted for one company: API requests per endpoint and per answer status
/// (recording downloads aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Count {
    by_endpoint: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
}

impl Count {
    fn of(sim: &RunningSimulator, company: u64) -> Self {
        let stats = sim.state.stats(company).unwrap_or_default();
        Self {
            by_endpoint: stats
                .by_endpoint
                .into_iter()
                .filter(|(endpoint, _)| !endpoint.starts_with("download_"))
                .collect(),
            by_status: stats.by_status,
        }
    }

    /// What was counted since `before`.
    fn since(&self, before: &Count) -> Count {
        fn minus<K: Ord + Clone>(
            now: &BTreeMap<K, u64>,
            then: &BTreeMap<K, u64>,
        ) -> BTreeMap<K, u64> {
            now.iter()
                .map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        }
        Count {
            by_endpoint: minus(&self.by_endpoint, &before.by_endpoint),
            by_status: minus(&self.by_status, &before.by_status),
        }
    }

    fn add(&mut self, other: &Count) {
        for (k, v) in &other.by_endpoint {
            *self.by_endpoint.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_status {
            *self.by_status.entry(*k).or_default() += v;
        }
    }

    fn total(&self) -> u64 {
        self.by_endpoint.values().sum()
    }

    fn endpoint(&self, name: &str) -> u64 {
        self.by_endpoint.get(name).copied().unwrap_or(0)
    }

    fn rate_limited(&self) -> u64 {
        self.by_status.get(&429).copied().unwrap_or(0)
    }
}

/// Aircall's route for the simulator's endpoint names.
fn route(endpoint: &str) -> &str {
    match endpoint {
        "ping" => "GET /v1/ping",
        "list_calls" => "GET /v1/calls",
        "get_call" => "GET /v1/calls/:id",
        "list_users" => "GET /v1/users",
        "list_webhooks" => "GET /v1/webhooks",
        "create_webhook" => "POST /v1/webhooks",
        "get_webhook" => "GET /v1/webhooks/:id",
        "update_webhook" => "PUT /v1/webhooks/:id",
        "delete_webhook" => "DELETE /v1/webhooks/:id",
        other => other,
    }
}

/// Everything the webhooks and every request of a company reached so far, to tell when the
/// service has gone idle.
fn activity(sim: &RunningSimulator, company: u64) -> (u64, u64) {
    let requests = sim
        .state
        .stats(company)
        .map_or(0, |s| s.by_endpoint.values().sum());
    let deliveries = sim.state.webhooks(company).map_or(0, |hooks| {
        hooks
            .iter()
            .map(|w| w.delivered + w.failed_attempts + w.dropped)
            .sum()
    });
    (requests, deliveries)
}

/// The service under test: `serve` (the webhook endpoint, its broker supervisor and spool
/// drainer) on port 0, the worker once started, storage under `target/tmp`, its own Redis
/// prefix and queue names.
struct Service {
    ctx: Context,
    public_url: Url,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    traces: Traces,
    leftovers: Leftovers,
}

impl Service {
    async fn start(
        sim: &RunningSimulator,
        leftovers: &Leftovers,
        root: PathBuf,
        requests_per_window: u32,
        tweak: impl FnOnce(&mut Settings),
    ) -> Service {
        let (mut settings, _) = common::bench_settings("reconcile");
        settings.aircall_base_url = sim.base_url.clone();
        settings.aircall.requests_per_window = requests_per_window;
        settings.import.recording_hosts = vec!["127.0.0.1".into()];
        settings.storage.root = root.clone();
        // Two deliveries of one call at once (`call.ended` and `call.comm_assets_generated`
        // arrive together) defer one to the first retry queue: short delays keep the replay
        // from waiting on them. No Aircall request depends on these delays.
        settings.queue.retry_delays_ms = vec![200, 1_000, 5_000];
        settings.serve.workers = 1;
        tweak(&mut settings);
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

    /// Connects `company` through the real flow (ping, webhook registered at `serve`) and
    /// makes its paying agents the paying users.
    async fn connect(&self, company: &CompanyInfo, name: &str) -> ConnectionId {
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
        connections::connect(connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &api_token,
            public_url: &self.public_url,
            store: &self.ctx.connections,
            outcomes: &self.ctx.outcomes,
            state: &self.ctx.reconciler().state,
            keys: &self.ctx.keys,
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
            self.ctx
                .connections
                .set_paying_users(&id, &PayingUsers::new(paying), now_ms())
                .await
                .unwrap()
        );
        id
    }

    /// A reconciler reading the simulator's clock.
    fn reconciler(&self, sim: &RunningSimulator) -> Reconciler {
        let mut reconciler = self.ctx.reconciler();
        let state = sim.state.clone();
        reconciler.clock = Clock::from_fn(move || state.clock.now_ms());
        reconciler
    }

    /// A channel on the service's own broker link (which reconnects by itself), retried for a
    /// minute, for `look` to use and close.
    async fn with_channel<T>(
        &self,
        what: &str,
        look: impl AsyncFn(&Channel) -> Result<T, lapin::Error>,
    ) -> T {
        let started = Instant::now();
        loop {
            let error = match self.ctx.broker.channel().await {
                Ok(channel) => {
                    let result = look(&channel).await;
                    let _ = channel.close(200, "done".into()).await;
                    match result {
                        Ok(value) => return value,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cannot {what}: {error}"
            );
            eprintln!("  cannot {what} ({error}); trying again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Messages ready in `queues` (not those a worker holds).
    async fn depth(&self, queues: &[&str]) -> u32 {
        self.with_channel("read the queue depths", async |channel| {
            let mut ready = 0;
            for queue in queues {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                ready += channel
                    .queue_declare((*queue).into(), passive, FieldTable::default())
                    .await?
                    .message_count();
            }
            Ok(ready)
        })
        .await
    }

    /// Jobs waiting: in the import queue and in the retry queues.
    async fn waiting_jobs(&self) -> u32 {
        let names = self.ctx.broker.names();
        let mut queues = vec![names.import.as_str()];
        queues.extend(names.retries.iter().map(String::as_str));
        self.depth(&queues).await
    }

    /// Calls a worker is importing right now (each holds its lease).
    async fn leases_held(&self) -> usize {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!(
                "{}:calls:*:lease:*",
                self.ctx.settings.redis_key_prefix
            ))
            .query_async(&mut self.ctx.redis.clone())
            .await
            .unwrap_or_default();
        keys.len()
    }

    /// Waits until nothing moves: no job waiting or in a worker's hands, and the simulator's
    /// counters (requests, downloads, webhook deliveries) of `companies` unchanged over
    /// 100 ms.
    async fn settle(&self, sim: &RunningSimulator, companies: &[u64]) {
        let started = Instant::now();
        let mut last = None;
        let mut stable = 0;
        loop {
            let idle = self.waiting_jobs().await == 0 && self.leases_held().await == 0;
            let mark: Vec<(u64, u64)> = companies.iter().map(|c| activity(sim, *c)).collect();
            if idle && last.as_ref() == Some(&mark) {
                stable += 1;
                if stable >= 4 {
                    return;
                }
            } else {
                stable = 0;
            }
            last = Some(mark);
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "the service did not fall idle within {SETTLE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (a little) until the import queue is empty: the worker keeps up with the replay.
    async fn keep_up(&self) {
        let import = self.ctx.broker.names().import.clone();
        let started = Instant::now();
        while self.depth(&[&import]).await > 0 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Takes every job waiting in the import queue.
    async fn take_jobs(&self) -> Vec<ImportJob> {
        let import = self.ctx.broker.names().import.clone();
        self.with_channel("take the queued jobs", async |channel| {
            let mut jobs = Vec::new();
            while let Some(delivery) = channel
                .basic_get(import.as_str().into(), BasicGetOptions::default())
                .await?
            {
                let Message::ImportCall(job) = Message::decode(&delivery.data).unwrap();
                delivery.ack(BasicAckOptions::default()).await?;
                jobs.push(job);
            }
            Ok(jobs)
        })
        .await
    }

    async fn outcome_count(&self, id: &ConnectionId, name: &str) -> u64 {
        self.ctx
            .outcomes
            .counts(id)
            .await
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the worker (letting its imports finish) and `serve`; removes the queues, the
    /// exchanges, the Redis keys of this service's prefix and the storage root.
    async fn clean_up(mut self) {
        if let Some((cancel, task)) = self.worker.take() {
            cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.traces.remove().await;
        self.leftovers.forget(&self.traces.prefix);
    }
}

/// One pass, now; a failed or skipped pass stops the bench.
async fn pass(reconciler: &Reconciler, id: &ConnectionId) -> RunReport {
    let report = any_pass(reconciler, id).await;
    assert!(
        report.error.is_none(),
        "the pass on {id} failed: {report:?}"
    );
    report
}

/// One pass, now, failed or not (its report says); a skipped pass stops the bench.
async fn any_pass(reconciler: &Reconciler, id: &ConnectionId) -> RunReport {
    match reconciler
        .run_connection(id, &CancellationToken::new())
        .await
        .expect("a pass")
    {
        Pass::Ran(report) => {
            if let Some(error) = &report.error {
                eprintln!("  the pass on {id} failed (the next one covers it): {error}");
            }
            *report
        }
        Pass::Skipped(why) => panic!("the pass on {id} was skipped: {why}"),
    }
}

/// Moves the pending records the worker wrote (times on the system clock) onto the simulated
/// clock, as a worker reading that clock would have written them. See the module header.
struct Rebase {
    enabled: bool,
    /// `(system ms, simulated minus system ms)` after every move of the simulated clock.
    offsets: Vec<(i64, i64)>,
    /// Records already moved, or written while both clocks agreed: `(call id, decided at)`.
    done: HashSet<(u64, i64)>,
    /// How long an answered call's recording is waited for after its end, in seconds.
    recording_wait_s: i64,
    moved: u64,
    /// Of those, records turned into the `no_recording` skip.
    expired: u64,
}

impl Rebase {
    fn new(enabled: bool, settings: &Settings) -> Self {
        Self {
            enabled,
            offsets: vec![(0, 0)],
            done: HashSet::new(),
            recording_wait_s: i64::from(settings.import.recording_wait_hours) * 3_600,
            moved: 0,
            expired: 0,
        }
    }

    fn note(&mut self, sim: &RunningSimulator) {
        let real = now_ms();
        // Whole seconds: the clock only moves by whole sub-steps.
        let offset = (sim.state.clock.now_ms() - real + 500).div_euclid(1000) * 1000;
        self.offsets.push((real, offset));
    }

    fn offset_at(&self, real_ms: i64) -> i64 {
        let i = self.offsets.partition_point(|(at, _)| *at <= real_ms);
        self.offsets[i.saturating_sub(1)].1
    }

    async fn apply(&mut self, service: &Service, id: &ConnectionId) {
        if !self.enabled {
            return;
        }
        let outcomes = &service.ctx.outcomes;
        let now = now_ms();
        let mut query = OutcomeQuery {
            outcome: Some(Outcome::Pending),
            limit: 500,
            ..OutcomeQuery::default()
        };
        loop {
            let page = outcomes.list(id, &query).await.unwrap();
            for mut record in page.items {
                // The reconciler's records carry simulated times, ahead of the system clock.
                let key = (record.call_id.0, record.decided_at_ms);
                if record.decided_at_ms > now || self.done.contains(&key) {
                    continue;
                }
                let offset = self.offset_at(record.decided_at_ms);
                if offset == 0 {
                    self.done.insert(key);
                    continue;
                }
                // An answered call without its recording is pending until 24 h after its end
                // (the rules' deadline, in Unix seconds).
                let deadline_s = match (record.reason.as_deref(), record.started_at) {
                    (Some("recording_not_ready"), Some(start)) => {
                        Some(start + record.duration.unwrap_or(0) + self.recording_wait_s)
                    }
                    _ => None,
                };
                record.decided_at_ms += offset;
                if deadline_s.is_some_and(|deadline| record.decided_at_ms / 1000 >= deadline) {
                    // Past the wait on the simulated clock: a worker reading it would have
                    // decided `no_recording` on this very fetch.
                    record.outcome = Outcome::Skipped;
                    record.reason = Some("no_recording".into());
                    record.recheck_at_ms = None;
                    record.pending_checks = 0;
                    self.expired += 1;
                } else {
                    record.recheck_at_ms = record.recheck_at_ms.map(|at| match deadline_s {
                        Some(deadline) => (at + offset).min(deadline * 1000),
                        None => at + offset,
                    });
                }
                outcomes.record(id, &record).await.unwrap();
                self.done.insert((record.call_id.0, record.decided_at_ms));
                self.moved += 1;
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
    }
}

// ---------------------------------------------------------------- part 1: quiet passes

/// One row of part 1.
struct QuietRow {
    connection: String,
    pass: String,
    report: RunReport,
    /// Requests of the pass and of the imports it queued, as the simulator counted them.
    count: Count,
    wall: Duration,
}

async fn measured_pass(
    service: &Service,
    sim: &RunningSimulator,
    reconciler: &Reconciler,
    company: &CompanyInfo,
    id: &ConnectionId,
    label: String,
) -> QuietRow {
    let before = Count::of(sim, company.id);
    let started = Instant::now();
    let report = pass(reconciler, id).await;
    service.settle(sim, &[company.id]).await;
    QuietRow {
        connection: id.to_string(),
        pass: label,
        report,
        count: Count::of(sim, company.id).since(&before),
        wall: started.elapsed(),
    }
}

/// Calls of a paying agent, started `starts` seconds ago, without webhooks.
fn add_calls(
    sim: &RunningSimulator,
    company: &CompanyInfo,
    starts_ago_s: impl Iterator<Item = i64>,
    recording: Option<u64>,
) {
    let agent = company
        .agents
        .iter()
        .find(|a| a.paying)
        .expect("a paying agent")
        .email
        .clone();
    let now_s = sim.state.clock.now_s();
    for ago in starts_ago_s {
        let spec = CallSpec {
            started_at: Some(now_s - ago),
            duration: 180,
            agent_email: Some(agent.clone()),
            recording_bytes: recording,
            notify: false,
            ..CallSpec::default()
        };
        sim.state.add_call(company.id, &spec).unwrap();
    }
}

async fn quiet_part(leftovers: &Leftovers, scratch: &Path, pending_sizes: &[u64]) -> Vec<QuietRow> {
    // Aircall's limits: 60 requests a minute in the simulator and in the shared budget.
    let sim = RunningSimulator::start(
        SimSettings {
            bytes_per_second: RECORDING_BYTES_PER_SECOND,
            ..SimSettings::default()
        },
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let mut service = Service::start(&sim, leftovers, scratch.join("quiet"), 60, |s| {
        // Pending calls come due a second after they are found, instead of five minutes.
        s.import.pending_recheck_initial_ms = 1_000;
    })
    .await;
    service.start_worker();
    let reconciler = service.reconciler(&sim);
    let spec = CompanySpec {
        agents: 3,
        ..CompanySpec::default()
    };
    let mut rows = Vec::new();

    // A connection with 20 recorded calls over the last two weeks; all imported at first.
    eprintln!("part 1: quiet passes…");
    let company = sim.state.add_company(spec.clone()).unwrap();
    add_calls(
        &sim,
        &company,
        (0..20).map(|i| 86_400 + i * 12 * 86_400 / 20),
        Some(2_000),
    );
    let id = service.connect(&company, "quiet").await;
    let first = measured_pass(
        &service,
        &sim,
        &reconciler,
        &company,
        &id,
        "first import (20 calls)".into(),
    )
    .await;
    assert_eq!(service.outcome_count(&id, "outcome:imported").await, 20);
    rows.push(first);
    for i in 1..=5 {
        let row = measured_pass(
            &service,
            &sim,
            &reconciler,
            &company,
            &id,
            format!("quiet pass {i}"),
        )
        .await;
        rows.push(row);
    }

    // Connections with N answered calls between 5 and 20 hours old whose recording is not
    // there: older than the overlap, so the later pass lists nothing new, and pending until
    // 24 h after their end.
    for &n in pending_sizes {
        eprintln!("part 1: {n} due re-checks…");
        let company = sim.state.add_company(spec.clone()).unwrap();
        add_calls(
            &sim,
            &company,
            (0..n as i64).map(|i| 5 * 3_600 + i * 15 * 3_600 / n.max(1) as i64),
            None,
        );
        let id = service.connect(&company, &format!("pending-{n}")).await;
        let first = measured_pass(
            &service,
            &sim,
            &reconciler,
            &company,
            &id,
            format!("first import ({n} calls found pending)"),
        )
        .await;
        assert_eq!(first.report.pending_recorded, n);
        rows.push(first);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let due = measured_pass(
            &service,
            &sim,
            &reconciler,
            &company,
            &id,
            format!("{n} pending re-checks due"),
        )
        .await;
        assert_eq!(due.report.pending_rechecked, n);
        rows.push(due);
    }
    service.clean_up().await;
    sim.stop().await;
    rows
}

fn print_quiet(rows: &[QuietRow]) {
    println!("\n### 1. Passes under Aircall's limit (60 requests a minute)\n");
    println!(
        "| connection | pass | calls listed | re-checks queued | pass: webhook check + listing pages | worker: GET /v1/calls/:id | total requests | 429s | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let pass_requests = row.report.aircall_requests;
        let worker = row.count.total().saturating_sub(pass_requests);
        println!(
            "| {} | {} | {} | {} | {} ({} + {}) | {} | **{}** | {} | {:.1} |",
            row.connection,
            row.pass,
            row.report.calls_seen,
            row.report.pending_rechecked,
            pass_requests,
            row.count.endpoint("get_webhook"),
            row.count.endpoint("list_calls"),
            worker,
            row.count.total(),
            row.count.rate_limited(),
            row.wall.as_secs_f64(),
        );
    }
}

// ---------------------------------------------------------------- part 2: first import

struct FirstImport {
    label: &'static str,
    report: RunReport,
    pass: Count,
    worker: Count,
    imported: u64,
    /// Skipped by the worker while downloading (over 200 MB).
    too_large: u64,
    pass_wall: Duration,
}

async fn first_import_part(
    sim: &RunningSimulator,
    service: &mut Service,
    history_calls: usize,
) -> Vec<FirstImport> {
    eprintln!("part 2: first imports of {history_calls} calls…");
    let spec = CompanySpec {
        history_calls,
        history_days: 13,
        ..CompanySpec::default()
    };
    let reconciler = service.reconciler(sim);
    let mut runs = Vec::new();
    let mut companies = Vec::new();
    for (label, name) in [
        ("jobs with the listing's snapshot", "first-snapshot"),
        ("baseline: jobs without snapshot", "first-by-id"),
    ] {
        let company = sim.state.add_company(spec.clone()).unwrap();
        let id = service.connect(&company, name).await;
        let before = Count::of(sim, company.id);
        let started = Instant::now();
        let report = pass(&reconciler, &id).await;
        let pass_wall = started.elapsed();
        let after_pass = Count::of(sim, company.id);
        runs.push(FirstImport {
            label,
            report,
            pass: after_pass.since(&before),
            worker: Count::default(),
            imported: 0,
            too_large: 0,
            pass_wall,
        });
        companies.push((company, id, after_pass));
    }
    // The worker has not started: every queued job is still there. The baseline's lose their
    // snapshot, as if the poller had queued call ids.
    let baseline = companies[1].1.to_string();
    for mut job in service.take_jobs().await {
        if job.connection_id == baseline {
            job.snapshot = None;
        }
        service
            .ctx
            .broker
            .publish(&Message::ImportCall(job), Duration::from_secs(5))
            .await
            .unwrap();
    }
    service.start_worker();
    let ids: Vec<u64> = companies.iter().map(|(c, _, _)| c.id).collect();
    service.settle(sim, &ids).await;
    for (run, (company, id, after_pass)) in runs.iter_mut().zip(&companies) {
        run.worker = Count::of(sim, company.id).since(after_pass);
        run.imported = service.outcome_count(id, "outcome:imported").await;
        run.too_large = service
            .outcome_count(id, "reason:recording_too_large")
            .await;
    }
    runs
}

fn print_first_import(runs: &[FirstImport], history_calls: usize) {
    println!(
        "\n### 2. First import: {history_calls} calls over 13 days (limits raised; counts unchanged)\n"
    );
    let header: Vec<&str> = runs.iter().map(|r| r.label).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(runs.len()));
    let row = |name: &str, value: &dyn Fn(&FirstImport) -> String| {
        let cells: Vec<String> = runs.iter().map(value).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("calls listed", &|r| r.report.calls_seen.to_string());
    row("pass: GET /v1/calls (pages)", &|r| {
        r.pass.endpoint("list_calls").to_string()
    });
    row("pass: GET /v1/webhooks/:id", &|r| {
        r.pass.endpoint("get_webhook").to_string()
    });
    row("pass: requests", &|r| r.pass.total().to_string());
    row("queued (cap 200)", &|r| r.report.queued.to_string());
    row("recorded skipped / pending by the pass", &|r| {
        let skipped: Vec<String> = r
            .report
            .skipped
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        format!(
            "{}; pending {}",
            skipped.join(", "),
            r.report.pending_recorded
        )
    });
    row("worker: requests for the queued imports", &|r| {
        r.worker.total().to_string()
    });
    row("imported (+ skipped by the worker: over 200 MB)", &|r| {
        format!("{} (+ {})", r.imported, r.too_large)
    });
    row("**total requests**", &|r| {
        format!("**{}**", r.pass.total() + r.worker.total())
    });
    row("429s", &|r| {
        (r.pass.rate_limited() + r.worker.rate_limited()).to_string()
    });
    row("pass wall time here (raised limit)", &|r| {
        format!("{:.1} s", r.pass_wall.as_secs_f64())
    });
    row("at 60 requests a minute, at least", &|r| {
        let requests = r.pass.total() + r.worker.total();
        format!("{:.1} min", requests.saturating_sub(60) as f64 / 60.0)
    });
    row("fetching each listed call by id instead", &|r| {
        format!(
            "{} pages + {} GET /v1/calls/:id",
            r.pass.endpoint("list_calls"),
            r.report.calls_seen
        )
    });
}

// ---------------------------------------------------------------- part 3: a busy day

/// What one connection spent in one replayed day.
#[derive(Default)]
struct DayTotals {
    /// 1 for the first day.
    day: u64,
    reports: Vec<RunReport>,
    /// Per pass: requests of the pass and of the imports it queued.
    pass_counts: Vec<Count>,
    /// Per pass: due pending calls whose start lies in the range the same pass listed.
    rechecks_listed: Vec<u64>,
    /// Requests while the webhooks of the intervals were delivered and imported.
    webhook_phase: Count,
    /// Requests of the passes and of the imports they queued.
    pass_phase: Count,
    summary: Option<DaySummary>,
}

impl DayTotals {
    fn total(&self) -> Count {
        let mut total = self.webhook_phase.clone();
        total.add(&self.pass_phase);
        total
    }

    fn by_passes(&self) -> u64 {
        self.reports.iter().map(|r| r.aircall_requests).sum()
    }
}

/// One connection of the replayed days.
struct DayConnection {
    label: String,
    company: CompanyInfo,
    id: ConnectionId,
    reconciler: Reconciler,
    days: Vec<DayTotals>,
}

/// The simulator's rate of live calls that gives `per_day` calls a day when its clock moves
/// `SUB_STEP` at a time: the stream draws its next arrival from the moment it fires, and fires
/// at the first move past the arrival, so each gap is rounded up to a whole sub-step.
fn stepped_rate_per_minute(per_day: f64) -> f64 {
    let gap_s = 86_400.0 / per_day;
    let step_s = SUB_STEP.as_secs_f64();
    assert!(step_s < gap_s, "more than one call per sub-step");
    let mean_draw_s = -step_s / (1.0 - step_s / gap_s).ln();
    60.0 / mean_draw_s
}

/// The most requests in any one simulated minute: per fixed minute and per sliding 60 s.
fn peak_per_minute(arrivals: &[i64]) -> (usize, usize) {
    let mut fixed: BTreeMap<i64, usize> = BTreeMap::new();
    for at in arrivals {
        *fixed.entry(at.div_euclid(60_000)).or_default() += 1;
    }
    let (mut sliding, mut start) = (0, 0);
    for end in 0..arrivals.len() {
        while arrivals[end] - arrivals[start] >= 60_000 {
            start += 1;
        }
        sliding = sliding.max(end + 1 - start);
    }
    (fixed.values().copied().max().unwrap_or(0), sliding)
}

/// A connection at the end of a replayed day.
struct DaySummary {
    /// Calls started during the day.
    calls: usize,
    /// Calls the rules import, by the simulator's truth, up to the end of the day (all days).
    eligible: usize,
    imported: u64,
    outcomes: BTreeMap<String, u64>,
    delivered: u64,
    peak_fixed: usize,
    peak_sliding: usize,
}

async fn summarize(
    sim: &RunningSimulator,
    service: &Service,
    c: &DayConnection,
    (start_ms, end_ms): (i64, i64),
) -> DaySummary {
    let max_bytes = service.ctx.settings.import.max_recording_bytes;
    let truth = sim.state.calls_truth(c.company.id, false).unwrap();
    let (start_s, end_s) = (start_ms / 1000, end_ms / 1000);
    let calls = truth
        .iter()
        .filter(|t| t.started_at >= start_s && t.started_at < end_s)
        .count();
    let eligible = truth
        .iter()
        .filter(|t| {
            t.agent_paying
                && t.ended_at.is_some_and(|e| e <= end_s)
                && t.recording_bytes.is_some_and(|b| b <= max_bytes)
                && t.recording_ready_at.is_some_and(|r| r <= end_s)
        })
        .count();
    let outcomes = service.ctx.outcomes.counts(&c.id).await.unwrap();
    let delivered = sim
        .state
        .webhooks(c.company.id)
        .map_or(0, |hooks| hooks.iter().map(|w| w.delivered).sum());
    let mut arrivals: Vec<i64> = sim
        .state
        .stats(c.company.id)
        .map(|s| s.recent_arrivals_ms.into_iter().collect())
        .unwrap_or_default();
    arrivals.retain(|at| *at >= start_ms && *at <= end_ms);
    arrivals.sort_unstable();
    let (peak_fixed, peak_sliding) = peak_per_minute(&arrivals);
    DaySummary {
        calls,
        eligible,
        imported: outcomes.get("outcome:imported").copied().unwrap_or(0),
        outcomes,
        delivered,
        peak_fixed,
        peak_sliding,
    }
}

/// The due pending calls of `id` now (what the pass will re-check), with their start.
async fn due_pending(
    service: &Service,
    reconciler: &Reconciler,
    id: &ConnectionId,
) -> Vec<Option<i64>> {
    let outcomes = &service.ctx.outcomes;
    let due = outcomes
        .due_pending(
            id,
            reconciler.clock.now_ms(),
            reconciler.settings.pending_batch,
        )
        .await
        .unwrap();
    outcomes
        .get_many(id, &due)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.and_then(|r| r.started_at))
        .collect()
}

struct Replay {
    connections: Vec<DayConnection>,
    hours: u64,
    calls_per_day: f64,
    rate_per_minute: f64,
    dead_letters: u32,
    rebased: u64,
    /// Of those, turned into the `no_recording` skip (the wait was over).
    expired: u64,
    wall: Duration,
}

async fn day_part(
    sim: &RunningSimulator,
    service: &Service,
    calls_per_day: f64,
    (days, hours): (u64, u64),
    rebase: bool,
) -> Replay {
    let rate = stepped_rate_per_minute(calls_per_day);
    eprintln!(
        "part 3: {days} × {hours} h of {calls_per_day} calls a day per connection ({rate:.3} a minute at Aircall)…"
    );
    let spec = CompanySpec {
        live_calls_per_minute: rate,
        ..CompanySpec::default()
    };
    let mut connections = Vec::new();
    for (label, name, overlap_s) in [
        (
            "default overlaps (4 h 15 min hourly, 5 min between)",
            "day-overlap",
            service.ctx.settings.reconcile.overlap_s,
        ),
        ("baseline: no overlap", "day-no-overlap", 0),
    ] {
        let company = sim.state.add_company(spec.clone()).unwrap();
        let id = service.connect(&company, name).await;
        let mut reconciler = service.reconciler(sim);
        reconciler.settings.overlap_s = overlap_s;
        if overlap_s == 0 {
            reconciler.settings.short_overlap_s = 0;
        }
        // The first import, on an empty window, before the first day starts.
        pass(&reconciler, &id).await;
        connections.push(DayConnection {
            label: label.to_string(),
            company,
            id,
            reconciler,
            days: Vec::new(),
        });
    }
    let companies: Vec<u64> = connections.iter().map(|c| c.company.id).collect();
    service.settle(sim, &companies).await;
    let mut rebase = Rebase::new(rebase, &service.ctx.settings);
    let started = Instant::now();
    let steps_per_day = hours * 3_600 / PASS_INTERVAL.as_secs();
    let sub_steps = PASS_INTERVAL.as_secs() / SUB_STEP.as_secs();
    for day in 1..=days {
        let day_start_ms = sim.state.clock.now_ms();
        for c in &mut connections {
            c.days.push(DayTotals {
                day,
                ..DayTotals::default()
            });
        }
        for step in 1..=steps_per_day {
            let before: Vec<Count> = companies.iter().map(|c| Count::of(sim, *c)).collect();
            for i in 1..=sub_steps {
                sim.state.advance_clock(SUB_STEP);
                rebase.note(sim);
                // Lets the simulator's scheduler run what fell due.
                tokio::time::sleep(Duration::from_millis(1)).await;
                if i % PACE_EVERY == 0 {
                    service.keep_up().await;
                }
            }
            service.settle(sim, &companies).await;
            let delivered: Vec<Count> = companies.iter().map(|c| Count::of(sim, *c)).collect();
            let mut passes = Vec::new();
            for c in &connections {
                rebase.apply(service, &c.id).await;
                let due = due_pending(service, &c.reconciler, &c.id).await;
                let report = any_pass(&c.reconciler, &c.id).await;
                let listed = due
                    .iter()
                    .filter(|start| {
                        start.is_some_and(|s| report.ranges.iter().any(|(f, t)| s > *f && s <= *t))
                    })
                    .count() as u64;
                passes.push((report, listed));
            }
            service.settle(sim, &companies).await;
            for (((c, before), delivered), (report, listed)) in connections
                .iter_mut()
                .zip(&before)
                .zip(&delivered)
                .zip(passes)
            {
                let after = Count::of(sim, c.company.id);
                let totals = c.days.last_mut().expect("a day");
                totals.webhook_phase.add(&delivered.since(before));
                let this_pass = after.since(delivered);
                totals.pass_phase.add(&this_pass);
                totals.pass_counts.push(this_pass);
                totals.reports.push(report);
                totals.rechecks_listed.push(listed);
            }
            if step % 16 == 0 {
                let so_far: Vec<String> = connections
                    .iter()
                    .map(|c| c.days.last().map_or(0, |d| d.total().total()).to_string())
                    .collect();
                eprintln!(
                    "  day {day}, {:>2} h simulated ({:.0} s); requests today: {}",
                    step * PASS_INTERVAL.as_secs() / 3_600,
                    started.elapsed().as_secs_f64(),
                    so_far.join(" / ")
                );
            }
        }
        let day_end_ms = sim.state.clock.now_ms();
        for c in &mut connections {
            let summary = summarize(sim, service, c, (day_start_ms, day_end_ms)).await;
            c.days.last_mut().expect("a day").summary = Some(summary);
        }
    }
    let wall = started.elapsed();
    let dead_letters = service.depth(&[&service.ctx.broker.names().dead]).await;
    Replay {
        connections,
        hours,
        calls_per_day,
        rate_per_minute: rate,
        dead_letters,
        rebased: rebase.moved,
        expired: rebase.expired,
        wall,
    }
}

fn print_day(replay: &Replay) {
    let days = replay.connections.first().map_or(0, |c| c.days.len());
    let passes = replay
        .connections
        .first()
        .and_then(|c| c.days.first())
        .map_or(0, |d| d.reports.len());
    println!(
        "\n### 3. A busy day replayed: {days} × {} h, {passes} passes a day per connection, {} calls a day each (limits raised; counts unchanged)\n",
        replay.hours, replay.calls_per_day
    );
    // Columns: each day of each connection.
    let columns: Vec<(usize, &DayConnection, &DayTotals, &DaySummary)> = (0..days)
        .flat_map(|d| {
            replay.connections.iter().filter_map(move |c| {
                let totals = c.days.get(d)?;
                Some((d + 1, c, totals, totals.summary.as_ref()?))
            })
        })
        .collect();
    let header: Vec<String> = columns
        .iter()
        .map(|(d, c, _, _)| format!("day {d}: {}", c.label))
        .collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    let row = |name: &str, value: &dyn Fn(&DayTotals, &DaySummary) -> String| {
        let cells: Vec<String> = columns.iter().map(|(_, _, t, s)| value(t, s)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("calls started in the day", &|_, s| s.calls.to_string());
    row("webhooks delivered (so far)", &|_, s| {
        s.delivered.to_string()
    });
    row(
        "imported / importable by the simulator's truth (so far)",
        &|_, s| format!("{} / {}", s.imported, s.eligible),
    );
    row("outcomes at the end of the day (so far)", &|_, s| {
        let parts: Vec<String> = s
            .outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "outcome:imported")
            .map(|(k, v)| {
                let name = k
                    .trim_start_matches("outcome:")
                    .trim_start_matches("reason:");
                format!("{name} {v}")
            })
            .collect();
        parts.join(", ")
    });
    let endpoints: std::collections::BTreeSet<String> = columns
        .iter()
        .flat_map(|(_, _, t, _)| t.total().by_endpoint.into_keys())
        .collect();
    for endpoint in &endpoints {
        row(&format!("`{}`", route(endpoint)), &|t, _| {
            t.total().endpoint(endpoint).to_string()
        });
    }
    row(
        "— spent by the passes (webhook check + listing)",
        &|t, _| t.by_passes().to_string(),
    );
    row(
        "— spent by the worker on the passes' jobs (pending re-checks)",
        &|t, _| {
            t.pass_phase
                .total()
                .saturating_sub(t.by_passes())
                .to_string()
        },
    );
    row("— spent by the worker on webhook jobs", &|t, _| {
        t.webhook_phase.total().to_string()
    });
    row("**total Aircall requests**", &|t, _| {
        format!("**{}**", t.total().total())
    });
    row("share of a day's budget (86,400)", &|t, _| {
        format!(
            "**{:.2}%**",
            100.0 * t.total().total() as f64 / DAILY_BUDGET as f64
        )
    });
    row("pending re-checks queued", &|t, _| {
        t.reports
            .iter()
            .map(|r| r.pending_rechecked)
            .sum::<u64>()
            .to_string()
    });
    row(
        "— of calls inside the range the same pass had just listed",
        &|t, _| t.rechecks_listed.iter().sum::<u64>().to_string(),
    );
    row("jobs queued by passes / calls listed", &|t, _| {
        let queued: u64 = t.reports.iter().map(|r| r.queued).sum();
        let seen: u64 = t.reports.iter().map(|r| r.calls_seen).sum();
        format!("{queued} / {seen}")
    });
    row(
        "listing pages per pass (mean; day 1: after its first 4.5 h)",
        &|t, _| {
            // The first day's overlap starts empty: its steady state begins after 4 h 30 min.
            let skip = if t.day == 1 { 18 } else { 0 };
            let pages: Vec<u64> = t
                .pass_counts
                .iter()
                .skip(skip)
                .map(|p| p.endpoint("list_calls"))
                .collect();
            format!(
                "{:.1}",
                pages.iter().sum::<u64>() as f64 / pages.len().max(1) as f64
            )
        },
    );
    row(
        "most requests of one pass (with its worker fetches)",
        &|t, _| {
            t.pass_counts
                .iter()
                .map(Count::total)
                .max()
                .unwrap_or(0)
                .to_string()
        },
    );
    row(
        "most requests in one simulated minute (fixed / sliding)",
        &|_, s| format!("{} / {}", s.peak_fixed, s.peak_sliding),
    );
    row("429s", &|t, _| t.total().rate_limited().to_string());
    row("failed passes", &|t, _| {
        t.reports
            .iter()
            .filter(|r| r.error.is_some())
            .count()
            .to_string()
    });
    row("failed outcomes (so far)", &|_, s| {
        s.outcomes
            .get("outcome:failed")
            .copied()
            .unwrap_or(0)
            .to_string()
    });
    println!(
        "\nDead-letter queue after the replay: {} jobs. Simulator's live-call rate {:.3} a minute ({} a day once stepped by {} s). Pending records the worker wrote, moved onto the simulated clock: {} (of which {} past the 24 h wait, made `no_recording`). Replay wall time {:.0} s.",
        replay.dead_letters,
        replay.rate_per_minute,
        replay.calls_per_day,
        SUB_STEP.as_secs(),
        replay.rebased,
        replay.expired,
        replay.wall.as_secs_f64()
    );
    // Per hour of the last day, for the default connection: where the requests go.
    if let Some(c) = replay.connections.first()
        && let Some(day) = c.days.last()
    {
        println!(
            "\nPer hour of day {days}, {}: what the passes and the worker fetches for their jobs spent\n",
            c.label
        );
        println!(
            "| hour | listing pages | pending re-checks (of calls just listed) | worker fetches | requests |"
        );
        println!("|---|---|---|---|---|");
        let per_hour = (3_600 / PASS_INTERVAL.as_secs()) as usize;
        for (hour, ((counts, reports), listed)) in day
            .pass_counts
            .chunks(per_hour)
            .zip(day.reports.chunks(per_hour))
            .zip(day.rechecks_listed.chunks(per_hour))
            .enumerate()
        {
            let pages: u64 = counts.iter().map(|p| p.endpoint("list_calls")).sum();
            let rechecks: u64 = reports.iter().map(|r| r.pending_rechecked).sum();
            let requests: u64 = counts.iter().map(Count::total).sum();
            let by_passes: u64 = reports.iter().map(|r| r.aircall_requests).sum();
            println!(
                "| {} | {pages} | {rechecks} ({}) | {} | {requests} |",
                hour + 1,
                listed.iter().sum::<u64>(),
                requests.saturating_sub(by_passes)
            );
        }
    }
}

// ---------------------------------------------------------------- report

/// The bench's output directory, removed when dropped (a failed bench too).
#[tokio::main]
async fn main() {
    common::run_cleaning_up("reconcile", |leftovers, scratch| async move {
        run(&leftovers, &scratch).await;
    })
    .await;
}

async fn run(leftovers: &Leftovers, scratch: &Path) {
    let parts = env_text("BENCH_RECONCILE_PARTS", "quiet,first,day");
    let pending_sizes: Vec<u64> = env_text("BENCH_RECONCILE_PENDING", "10,100")
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let history_calls = env_number("BENCH_RECONCILE_HISTORY_CALLS", 5_000) as usize;
    let calls_per_day = env_number("BENCH_RECONCILE_CALLS_PER_DAY", 3_000) as f64;
    let days = env_number("BENCH_RECONCILE_DAYS", 2).max(1);
    let hours = env_number("BENCH_RECONCILE_HOURS", 24).max(1);
    let rebase = env_number("BENCH_RECONCILE_REBASE", 1) != 0;
    let started = Instant::now();

    let quiet = if parts.contains("quiet") {
        quiet_part(leftovers, scratch, &pending_sizes).await
    } else {
        Vec::new()
    };

    let mut first = Vec::new();
    let mut day = None;
    if parts.contains("first") || parts.contains("day") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let sim = RunningSimulator::start(
            SimSettings {
                rate_limit: RAISED_LIMIT,
                bytes_per_second: RECORDING_BYTES_PER_SECOND,
                workers: cores,
                ..SimSettings::default()
            },
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        let mut service =
            Service::start(&sim, leftovers, scratch.join("day"), RAISED_LIMIT, |_| {}).await;
        if parts.contains("first") {
            first = first_import_part(&sim, &mut service, history_calls).await;
        }
        if service.worker.is_none() {
            service.start_worker();
        }
        if parts.contains("day") {
            day = Some(day_part(&sim, &service, calls_per_day, (days, hours), rebase).await);
        }
        service.clean_up().await;
        sim.stop().await;
    }

    println!(
        "\n{}; whole bench {:.0} s\n",
        common::machine(),
        started.elapsed().as_secs_f64()
    );
    if !quiet.is_empty() {
        print_quiet(&quiet);
    }
    if !first.is_empty() {
        print_first_import(&first, history_calls);
    }
    if let Some(day) = &day {
        print_day(day);
    }
}
