//! `/metrics`, parsed as Prometheus would, after a small import; and the small listener of
//! `worker` and `reconcile`.

use std::collections::HashMap;
use std::time::Duration;

use aircall_ingest::connections::Outcome;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, roomy_sim, service_settings};
use crate::worker::Harness;

/// Every sample of a text exposition: `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain each of `labels`.
fn sum(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            metric == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn scrape(url: &str) -> (String, HashMap<String, f64>) {
    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_an_import_show_every_part_of_the_pipeline() {
    let mut h = Harness::start("metrics", roomy_sim(), |_| {}).await;
    // The recorder is the test binary's, shared with the tests running beside this one: what
    // this test did shows as growth between two scrapes (others can only add to it).
    let (_, before) = scrape(&h.app.url).await;
    h.start_worker();
    // An event this service does not handle (Aircall sends them when a webhook subscribes to
    // more): labelled `other`, whatever its name.
    let token = h.sim.state.webhooks(h.company.id).unwrap()[0].token.clone();
    let ignored = h
        .app
        .post(
            h.id().as_str(),
            &serde_json::json!({"resource": "user", "event": "user.created", "timestamp": 1, "token": token, "data": {"id": 1}}),
        )
        .await;
    assert_eq!(ignored.status(), 200);
    let call = h.add_call(&h.call(50_000));
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let reconciler = h.app.ctx.reconciler();
    reconciler
        .run_connection(&h.id(), &CancellationToken::new())
        .await
        .unwrap();

    let (text, m) = scrape(&h.app.url).await;

    // Counters and histograms: grown by at least `min` since the first scrape. Gauges: set.
    let at_least = |name: &str, labels: &[&str], min: f64| {
        let value =
            sum(&m, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"));
        let was = sum(&before, name, labels).unwrap_or(0.0);
        let cumulative = name.ends_with("_total")
            || name.ends_with("_count")
            || name.ends_with("_bucket")
            || name.ends_with("_sum");
        let grown = if cumulative { value - was } else { value };
        assert!(
            grown >= min,
            "{name} {labels:?} = {value} (was {was}), not {min} more"
        );
    };
    // Intake: by event and outcome, with its latency.
    at_least(
        "aircall_ingest_webhooks_total",
        &["event=\"call.ended\"", "outcome=\"queued\""],
        1.0,
    );
    at_least(
        "aircall_ingest_webhooks_total",
        &["event=\"other\"", "outcome=\"ignored\""],
        1.0,
    );
    assert!(
        !text.contains("user.created"),
        "an unhandled event's name is no label"
    );
    at_least("aircall_ingest_webhook_duration_seconds_count", &[], 2.0);
    at_least(
        "aircall_ingest_webhook_duration_seconds_bucket",
        &["le=\"+Inf\""],
        1.0,
    );
    // Worker: jobs by outcome and reason, import duration, bytes, job age.
    at_least(
        "aircall_ingest_jobs_total",
        &["outcome=\"imported\"", "reason=\"none\""],
        1.0,
    );
    at_least("aircall_ingest_import_duration_seconds_count", &[], 1.0);
    at_least("aircall_ingest_recording_bytes_total", &[], 50_000.0);
    at_least("aircall_ingest_recording_size_bytes_count", &[], 1.0);
    at_least("aircall_ingest_job_age_seconds", &[], 0.0);
    at_least("aircall_ingest_job_taken_timestamp_seconds", &[], 1.7e9);
    // Aircall: requests by endpoint and status, and the budget's waits.
    at_least(
        "aircall_ingest_aircall_requests_total",
        &["endpoint=\"get_webhook\"", "status=\"200\""],
        1.0,
    );
    at_least(
        "aircall_ingest_aircall_requests_total",
        &["endpoint=\"list_calls\"", "status=\"200\""],
        1.0,
    );
    at_least("aircall_ingest_rate_limit_wait_seconds_count", &[], 1.0);
    // Sampled at scrape time: the spool and the queues (this app's, drained by now).
    at_least("aircall_ingest_spool_jobs", &[], 0.0);
    at_least("aircall_ingest_queue_messages", &["queue=\"import\""], 0.0);
    at_least("aircall_ingest_queue_messages", &["queue=\"dead\""], 0.0);
    // Reconciliation: runs by result and their duration.
    at_least(
        "aircall_ingest_reconcile_runs_total",
        &["result=\"succeeded\""],
        1.0,
    );
    at_least(
        "aircall_ingest_reconcile_run_duration_seconds_count",
        &[],
        1.0,
    );
    // No label carries a connection or call id.
    assert!(!text.contains("acme"), "{text}");
    assert!(!text.contains(&call.to_string()), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listener_serves_metrics_health_and_readiness() {
    let mut settings = service_settings("probes");
    settings.metrics_listen = "127.0.0.1:0".into();
    let app = TestApp::spawn(settings).await;
    let cancel = CancellationToken::new();

    let probes = app.ctx.start_probes(&cancel).unwrap().unwrap();

    let base = format!("http://{}", probes.addr);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let (_, m) = scrape(&base).await;
    assert!(sum(&m, "aircall_ingest_queue_messages", &["queue=\"import\""]).is_some());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), probes.stopped())
        .await
        .unwrap();
    app.stop().await;
}
