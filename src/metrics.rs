//! Prometheus metrics: one recorder per process ([`install`]), rendered at `/metrics` by `serve`
//! and by the small listener of `worker` and `reconcile` ([`render`]).
//!
//! Every label takes values from a bounded set: route templates, event names this service
//! handles (anything else is `other`), outcome and reason codes, Aircall endpoint names and HTTP
//! statuses. Never a connection id, a call id or a raw path: a label per customer would grow the
//! series with the customer base.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::aircall::models::HANDLED_EVENTS;
use crate::queue::{Broker, Spool};

/// Webhooks answered, by `event` (a handled one, `other` or `none`) and `outcome` (`queued`,
/// `spooled`, `ignored`, `duplicate`, or the refusal's error code).
pub const WEBHOOKS: &str = "aircall_ingest_webhooks_total";
/// Time to answer a webhook.
pub const WEBHOOK_SECONDS: &str = "aircall_ingest_webhook_duration_seconds";
/// Admin API requests, by `route` template and `status`.
pub const ADMIN_REQUESTS: &str = "aircall_ingest_admin_requests_total";
/// Import jobs settled, by `outcome` and `reason`.
pub const JOBS: &str = "aircall_ingest_jobs_total";
/// Time from taking a job to its call imported.
pub const IMPORT_SECONDS: &str = "aircall_ingest_import_duration_seconds";
/// Recording bytes stored.
pub const RECORDING_BYTES: &str = "aircall_ingest_recording_bytes_total";
/// Size of each recording stored.
pub const RECORDING_SIZE: &str = "aircall_ingest_recording_size_bytes";
/// How long the job a worker took last had waited since it was accepted.
pub const JOB_AGE: &str = "aircall_ingest_job_age_seconds";
/// When a worker last took a job (Unix seconds): `time() - this` grows while workers are stuck
/// with jobs waiting, when the age above stands still.
pub const JOB_TAKEN_AT: &str = "aircall_ingest_job_taken_timestamp_seconds";
/// Aircall API requests (every attempt), by `endpoint` and `status` (HTTP status, or `error`).
pub const AIRCALL_REQUESTS: &str = "aircall_ingest_aircall_requests_total";
/// Waits for a company's shared rate-limit budget (the sum is the time spent waiting).
pub const RATE_LIMIT_WAIT: &str = "aircall_ingest_rate_limit_wait_seconds";
/// Jobs in the Redis spool, at scrape time.
pub const SPOOL_JOBS: &str = "aircall_ingest_spool_jobs";
/// Messages in a queue (`import`, `dead`), at scrape time.
pub const QUEUE_MESSAGES: &str = "aircall_ingest_queue_messages";
/// Reconciliation passes, by `result` (`succeeded`, `failed`, `skipped`).
pub const RECONCILE_RUNS: &str = "aircall_ingest_reconcile_runs_total";
/// Duration of a reconciliation pass that ran.
pub const RECONCILE_SECONDS: &str = "aircall_ingest_reconcile_run_duration_seconds";
/// Outcome records removed because they were older than the retention.
pub const OUTCOMES_EXPIRED: &str = "aircall_ingest_outcomes_expired_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 900.0,
            ];
            let bytes = [
                16e3,
                64e3,
                256e3,
                1e6,
                4e6,
                16e6,
                64e6,
                128e6,
                209_715_200.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(RECORDING_SIZE.into()), &bytes)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder installed first (a test harness): ours still renders what it
            // was given, nothing more.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(WEBHOOKS, "Webhooks answered, by event and outcome");
    describe_histogram!(
        WEBHOOK_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a webhook"
    );
    describe_counter!(ADMIN_REQUESTS, "Admin API requests, by route and status");
    describe_counter!(JOBS, "Import jobs settled, by outcome and reason");
    describe_histogram!(
        IMPORT_SECONDS,
        metrics::Unit::Seconds,
        "Time to import a call"
    );
    describe_counter!(
        RECORDING_BYTES,
        metrics::Unit::Bytes,
        "Recording bytes stored"
    );
    describe_histogram!(
        RECORDING_SIZE,
        metrics::Unit::Bytes,
        "Size of each recording stored"
    );
    describe_gauge!(
        JOB_AGE,
        metrics::Unit::Seconds,
        "Wait of the job a worker took last, since it was accepted"
    );
    describe_counter!(
        AIRCALL_REQUESTS,
        "Aircall API requests (every attempt), by endpoint and status"
    );
    describe_histogram!(
        RATE_LIMIT_WAIT,
        metrics::Unit::Seconds,
        "Waits for a company's shared rate-limit budget"
    );
    describe_gauge!(
        JOB_TAKEN_AT,
        metrics::Unit::Seconds,
        "When a worker last took a job (Unix time)"
    );
    describe_gauge!(SPOOL_JOBS, "Jobs in the Redis spool");
    describe_gauge!(QUEUE_MESSAGES, "Messages in a queue");
    describe_counter!(RECONCILE_RUNS, "Reconciliation passes, by result");
    describe_histogram!(
        RECONCILE_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a reconciliation pass"
    );
    describe_counter!(
        OUTCOMES_EXPIRED,
        "Outcome records removed because they were older than the retention"
    );
}

/// A webhook answered: `event` as the body named it (bounded here), `outcome` a fixed code.
pub fn webhook(event: Option<&str>, outcome: &'static str, elapsed: Duration) {
    let event = match event {
        Some(e) => HANDLED_EVENTS
            .iter()
            .find(|handled| **handled == e)
            .copied()
            .unwrap_or("other"),
        None => "none",
    };
    counter!(WEBHOOKS, "event" => event, "outcome" => outcome).increment(1);
    histogram!(WEBHOOK_SECONDS).record(elapsed.as_secs_f64());
}

/// An admin request answered, by route template (`unmatched` for none).
pub fn admin_request(route: &str, status: u16) {
    counter!(ADMIN_REQUESTS, "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
}

/// An import job settled.
pub fn job(outcome: &'static str, reason: &'static str) {
    counter!(JOBS, "outcome" => outcome, "reason" => reason).increment(1);
}

/// A recording of `bytes` stored.
pub fn recording_stored(bytes: u64) {
    counter!(RECORDING_BYTES).increment(bytes);
    histogram!(RECORDING_SIZE).record(bytes as f64);
}

/// A call imported, `elapsed` after its job was taken.
pub fn imported(elapsed: Duration) {
    histogram!(IMPORT_SECONDS).record(elapsed.as_secs_f64());
}

/// The age of the job a worker just took.
pub fn job_taken(age: Duration) {
    gauge!(JOB_AGE).set(age.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(JOB_TAKEN_AT).set(now.as_secs_f64());
}

/// One Aircall request attempt and what came of it (an HTTP status, or `None` for no answer).
pub fn aircall_request(endpoint: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!(AIRCALL_REQUESTS, "endpoint" => endpoint, "status" => status).increment(1);
}

/// Time a request waited for its company's budget (every request, so the count is the number
/// of requests and the sum the time they waited).
pub fn rate_limit_wait(waited: Duration) {
    histogram!(RATE_LIMIT_WAIT).record(waited.as_secs_f64());
}

/// A reconciliation pass's end: `result` and, for a pass that ran, its duration.
pub fn reconcile_run(result: &'static str, duration: Option<Duration>) {
    counter!(RECONCILE_RUNS, "result" => result).increment(1);
    if let Some(duration) = duration {
        histogram!(RECONCILE_SECONDS).record(duration.as_secs_f64());
    }
}

/// Outcome records removed by the retention.
pub fn outcomes_expired(count: u64) {
    counter!(OUTCOMES_EXPIRED).increment(count);
}

/// What a scrape samples on the spot: the spool (when this process has one) and the queues.
#[derive(Clone)]
pub struct Sampler {
    pub spool: Option<Spool>,
    pub broker: Broker,
}

/// How long a scrape waits for Redis or RabbitMQ before rendering without their figures.
const SAMPLE_WAIT: Duration = Duration::from_secs(2);

impl Sampler {
    async fn sample(&self) {
        // A figure that cannot be read now is NaN, not the last one read: an outage must not
        // show old numbers as current.
        if let Some(spool) = &self.spool {
            let depth = match tokio::time::timeout(SAMPLE_WAIT, spool.depth()).await {
                Ok(Ok(depth)) => depth as f64,
                _ => f64::NAN,
            };
            gauge!(SPOOL_JOBS).set(depth);
        }
        let names = self.broker.names();
        for (label, queue) in [("import", &names.import), ("dead", &names.dead)] {
            let depth =
                match tokio::time::timeout(SAMPLE_WAIT, self.broker.queue_depth(queue)).await {
                    Ok(Ok(depth)) => f64::from(depth),
                    _ => f64::NAN,
                };
            gauge!(QUEUE_MESSAGES, "queue" => label).set(depth);
        }
    }
}

/// The metrics in Prometheus's text format, sampled gauges refreshed first.
pub async fn render(handle: &PrometheusHandle, sampler: &Sampler) -> String {
    sampler.sample().await;
    handle.run_upkeep();
    handle.render()
}
