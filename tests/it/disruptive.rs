//! Tests that break the machine's real RabbitMQ. Ignored in the parallel run; the README's test
//! command runs them afterwards, alone (`cargo test -- --ignored --test-threads=1`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually_async, queue_depth, service_settings};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs here");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the machine's RabbitMQ: run alone (deploy/local/test.sh does)"]
async fn a_real_rabbitmq_restart_costs_no_webhook_and_no_restart_of_the_service() {
    let app = TestApp::spawn(service_settings("restart")).await;
    app.add_connection("acme", "restart-token").await;
    let body = |id: u64| {
        json!({"resource": "call", "event": "call.ended", "token": "restart-token",
               "data": {"id": id, "status": "done"}})
    };
    assert_eq!(
        app.post("acme", &body(1))
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "queued"
    );

    rabbitmqctl(&["stop_app"]);
    let mut answers = Vec::new();
    for id in 2..=6 {
        let started = Instant::now();
        let response = app.post("acme", &body(id)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        answers.push(
            response.json::<Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    assert!(answers.iter().all(|a| a == "spooled"), "{answers:?}");
    let import = app.ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(60), || async {
            app.spool_depth().await == 0
        })
        .await,
        "the spool drained after the broker came back"
    );
    assert!(
        eventually_async(Duration::from_secs(30), || async {
            app.post("acme", &body(7))
                .await
                .json::<Value>()
                .await
                .unwrap()["status"]
                == "queued"
        })
        .await,
        "intake publishes directly again"
    );
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            queue_depth(&import).await >= 7
        })
        .await
    );
    let mut ids: Vec<u64> = crate::helpers::take_messages(&import)
        .await
        .iter()
        .map(|aircall_ingest::queue::Message::ImportCall(job)| job.call_id.0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        (1..=7).collect::<Vec<_>>(),
        "nothing lost across the restart"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the machine's RabbitMQ: run alone (deploy/local/test.sh does)"]
async fn the_worker_consumes_again_after_a_real_rabbitmq_restart_with_its_prefetch() {
    use aircall_ingest::connections::Outcome;
    let mut h = crate::worker::Harness::start("worker-restart", crate::helpers::roomy_sim(), |s| {
        s.worker.prefetch = 11;
    })
    .await;
    h.start_worker();
    let first = h.add_call(&h.call(10_000));
    h.wait_outcome(first, |r| r.outcome == Outcome::Imported)
        .await;

    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    // The webhook of a call ending now is spooled or queued, and imported either way.
    let second = h.add_call(&h.call(10_000));
    h.wait_outcome(second, |r| r.outcome == Outcome::Imported)
        .await;
    let import = h.app.ctx.broker.names().import.clone();
    let prefetch = Command::new("rabbitmqctl")
        .args(["list_consumers", "-q", "queue_name", "prefetch_count"])
        .output()
        .expect("rabbitmqctl runs here");
    let listing = String::from_utf8_lossy(&prefetch.stdout).to_string();
    let ours: Vec<&str> = listing
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(import.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "one consumer after the restart: {listing}");
    assert!(ours[0].ends_with("11"), "prefetch re-applied: {listing}");
    h.stop().await;
}

/// Broker outage at the door (a figure of BENCHMARKS.md): webhooks keep coming at a steady rate
/// while RabbitMQ is down for `OUTAGE_SECONDS` (default 20; `deploy/local/bench.sh outage` runs 60).
/// Every one must still be answered 2xx (the spool holds the jobs), and every accepted job must
/// reach the import queue once RabbitMQ is back. Prints the answers per phase and how long the
/// spool took to drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the machine's RabbitMQ: run alone (deploy/local/test.sh does)"]
async fn a_broker_outage_under_steady_webhook_traffic_is_answered_2xx_throughout() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let outage = Duration::from_secs(env("OUTAGE_SECONDS", 20));
    let rate = env("OUTAGE_RATE", 200);
    let app = TestApp::spawn(service_settings("outage")).await;
    app.add_connection("acme", "outage-token").await;
    let url = format!("{}/webhooks/aircall/acme", app.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Open loop: request i is sent at start + i / rate whatever the answers before it, and its
    // latency counts from that moment (a slow answer cannot hide the ones queued behind it).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut id: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                id += 1;
                let scheduled = start + Duration::from_secs_f64(id as f64 / rate as f64);
                tokio::time::sleep_until(scheduled).await;
                let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
                tokio::spawn(async move {
                    let body = json!({"resource": "call", "event": "call.ended",
                        "token": "outage-token", "timestamp": 1_764_400_000,
                        "data": {"id": id, "status": "done", "direction": "inbound",
                                 "started_at": 1_764_399_000, "ended_at": 1_764_399_300}});
                    let status = client
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    let _ = tx.send((scheduled, id, status, scheduled.elapsed()));
                });
            }
            id
        })
    };

    let phase_length = Duration::from_secs(10);
    tokio::time::sleep(phase_length).await;
    let down_at = tokio::time::Instant::now();
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let mut spool_peak = 0;
    while down_at.elapsed() < outage {
        spool_peak = spool_peak.max(app.spool_depth().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .unwrap();
    tokio::task::spawn_blocking(|| rabbitmqctl(&["await_startup"]))
        .await
        .unwrap();
    let up_at = tokio::time::Instant::now();
    let mut drained = None;
    while up_at.elapsed() < Duration::from_secs(300) {
        let depth = app.spool_depth().await;
        spool_peak = spool_peak.max(depth);
        if depth == 0 {
            drained = Some(up_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(phase_length).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = generator.await.unwrap();
    // Every request's answer (each has a 10 s timeout).
    let mut answers = Vec::new();
    while answers.len() < sent as usize {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(answer)) => answers.push(answer),
            _ => break,
        }
    }

    let phase = |at: tokio::time::Instant| {
        if at < down_at {
            "before"
        } else if at < up_at {
            "RabbitMQ down"
        } else if drained.is_some_and(|d| at < up_at + d) {
            "back, spool draining"
        } else {
            "after"
        }
    };
    println!(
        "\n## Broker outage at the door: {} s without RabbitMQ at {rate} webhooks/s\n",
        outage.as_secs()
    );
    println!("| phase | sent | 2xx | not 2xx | no answer | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for name in ["before", "RabbitMQ down", "back, spool draining", "after"] {
        let mut latencies: Vec<Duration> = answers
            .iter()
            .filter(|a| phase(a.0) == name)
            .map(|a| a.3)
            .collect();
        latencies.sort_unstable();
        let of = |status: fn(u16) -> bool| {
            answers
                .iter()
                .filter(|a| phase(a.0) == name && status(a.2))
                .count()
        };
        let quantile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or("—".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            latencies.len(),
            of(|s| (200..300).contains(&s)),
            of(|s| s != 0 && !(200..300).contains(&s)),
            of(|s| s == 0),
            quantile(0.5),
            quantile(0.99),
            quantile(1.0),
        );
    }
    println!(
        "\nSpool: at most {spool_peak} jobs; drained {} after RabbitMQ was back.",
        drained.map_or("not within 300 s".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );

    let accepted: std::collections::BTreeSet<u64> = answers
        .iter()
        .filter(|a| (200..300).contains(&a.2))
        .map(|a| a.1)
        .collect();
    assert_eq!(answers.len(), sent as usize, "every request was answered");
    assert_eq!(accepted.len(), answers.len(), "every answer was 2xx");
    assert!(spool_peak > 0, "the outage sent jobs to the spool");
    assert!(drained.is_some(), "the spool drained");
    let import = app.ctx.broker.names().import.clone();
    let queued: std::collections::BTreeSet<u64> = crate::helpers::take_messages(&import)
        .await
        .iter()
        .map(|aircall_ingest::queue::Message::ImportCall(job)| job.call_id.0)
        .collect();
    let lost: Vec<&u64> = accepted.difference(&queued).collect();
    assert!(
        lost.is_empty(),
        "{} accepted webhooks have no job in the import queue: {lost:?}",
        lost.len()
    );
    app.stop().await;
}
