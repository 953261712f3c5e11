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
