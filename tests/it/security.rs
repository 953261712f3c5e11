//! A webhook is believed only as far as its token goes: one that carries the right token but
//! names a recording somewhere else (an internal service, the cloud metadata address) must not
//! make the worker fetch it. The recording is taken from where Aircall says it is instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aircall_ingest::connections::Outcome;
use aircall_ingest::sim::{AudioKind, CallSpec, audio_sha256};
use serde_json::Value;

use crate::helpers::roomy_sim;
use crate::worker::Harness;

/// A listener that counts the connections it receives and answers none of them.
async fn trap(ip: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validly_tokened_webhook_naming_another_recording_host_is_never_fetched() {
    // Recordings may come from 127.0.0.1 only (the simulator's storage in this test).
    let mut h = Harness::start("forged-url", roomy_sim(), |_| {}).await;
    let (loopback, loopback_hits) = trap("127.0.0.1").await;
    let (other, other_hits) = trap("127.0.0.2").await;
    let forged = [
        // Loopback under another name, reaching a service of the machine.
        format!(
            "http://localhost:{}/admin?X-Amz-Signature=f",
            loopback.port()
        ),
        // Another loopback address.
        format!("http://{other}/internal/recording.mp3"),
        // The cloud metadata service.
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_string(),
        // Credentials in the URL, to a host of the attacker.
        "https://user:secret@recordings.attacker.example/x.mp3".to_string(),
    ];
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for url in &forged {
        // A real call whose webhooks the simulator does not send by itself…
        let bytes = 40_000 + calls.len() as u64;
        let call = h.add_call(&CallSpec {
            notify: false,
            ..h.call(bytes)
        });
        // …then `call.ended` with the webhook's real token, carrying the call as Aircall
        // shows it but its recording somewhere else.
        let mut shown: Value = http
            .get(format!("{}v1/calls/{call}", h.sim.base_url))
            .basic_auth(&h.company.api_id, Some(&h.company.api_token))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut data = shown["call"].take();
        data["recording"] = Value::String(url.clone());
        data["asset"] = Value::String(url.clone());
        assert!(h.sim.state.emit_event(h.company.id, "call.ended", data));
        calls.push((call, bytes));
    }

    let before = h.sim.state.stats(h.company.id).unwrap();
    h.start_worker();
    for (call, bytes) in &calls {
        let record = h
            .wait_outcome(*call, |r| r.outcome == Outcome::Imported)
            .await;
        let stored = record.stored.unwrap();
        assert_eq!(
            stored.sha256,
            audio_sha256(*call, AudioKind::Recording, *bytes),
            "the recording Aircall holds, not the one the webhook named"
        );
    }

    assert_eq!(
        loopback_hits.load(Ordering::SeqCst),
        0,
        "localhost never dialled"
    );
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "127.0.0.2 never dialled"
    );
    // The worker asked Aircall for each call (the only way it learnt the real URL).
    let after = h.sim.state.stats(h.company.id).unwrap();
    let fetches =
        |s: &aircall_ingest::sim::RequestStats| s.by_endpoint.get("get_call").copied().unwrap_or(0);
    assert_eq!(fetches(&after) - fetches(&before), forged.len() as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.stop().await;
}
