//! The simulator keeps Aircall's documented behaviour and quirks; if it did not, every other
//! test would prove nothing. Requests here are raw HTTP, as Aircall would see them.

use std::time::Duration;

use aircall_ingest::aircall::models::ALL_EVENTS;
use aircall_ingest::sim::{
    AudioKind, CAP_MESSAGE, CallSpec, CompanyInfo, CompanySpec, Faults, RunningSimulator,
    SimSettings, audio_sha256,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Receiver, eventually, roomy_sim, sim_with};

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(sim: &RunningSimulator, c: &CompanyInfo, path_and_query: &str) -> reqwest::Response {
    http()
        .get(format!("{}{path_and_query}", sim.base_url))
        .basic_auth(&c.api_id, Some(&c.api_token))
        .send()
        .await
        .unwrap()
}

async fn get_json(sim: &RunningSimulator, c: &CompanyInfo, path_and_query: &str) -> Value {
    let response = get(sim, c, path_and_query).await;
    assert_eq!(response.status(), 200, "{path_and_query}");
    response.json().await.unwrap()
}

fn ids(list: &Value) -> Vec<u64> {
    list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

fn spec_at(started_at: i64) -> CallSpec {
    CallSpec {
        started_at: Some(started_at),
        duration: 30,
        notify: false,
        ..CallSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_bounds_are_from_exclusive_and_to_inclusive() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let t0 = sim.state.clock.now_s() - 86_400;
    let at_t0 = sim.state.add_call(company.id, &spec_at(t0)).unwrap();
    let at_t1 = sim.state.add_call(company.id, &spec_at(t0 + 1)).unwrap();
    let at_t2 = sim.state.add_call(company.id, &spec_at(t0 + 2)).unwrap();
    let _at_t3 = sim.state.add_call(company.id, &spec_at(t0 + 3)).unwrap();

    let list = get_json(&sim, &company, &format!("v1/calls?from={t0}&to={}", t0 + 2)).await;

    assert_eq!(
        ids(&list),
        vec![at_t1, at_t2],
        "from {t0} excluded ({at_t0}), to included"
    );
    assert_eq!(list["meta"]["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hold_at_most_fifty_calls_and_link_to_the_next() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let t0 = sim.state.clock.now_s() - 86_400;
    for i in 0..60 {
        sim.state.add_call(company.id, &spec_at(t0 + i)).unwrap();
    }

    let first = get_json(&sim, &company, "v1/calls?per_page=100").await;
    let second = get_json(&sim, &company, "v1/calls?per_page=100&page=2").await;
    let default = get_json(&sim, &company, "v1/calls").await;

    assert_eq!(ids(&first).len(), 50);
    assert_eq!(first["meta"]["per_page"], 50);
    assert!(
        first["meta"]["next_page_link"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    assert_eq!(ids(&second).len(), 10);
    assert!(second["meta"]["next_page_link"].is_null());
    assert_eq!(ids(&default).len(), 20, "Aircall's default page is 20");
    let mut all = ids(&first);
    all.extend(ids(&second));
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "ascending by start by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_cap_is_refused_even_when_the_result_is_small() {
    let (sim, company) = sim_with(
        roomy_sim(),
        CompanySpec {
            history_calls: 3,
            ..Default::default()
        },
    )
    .await;

    let last_legal = get(&sim, &company, "v1/calls?per_page=50&page=200").await;
    let past_cap = get(&sim, &company, "v1/calls?per_page=50&page=201").await;
    let small_pages = get(&sim, &company, "v1/calls?per_page=20&page=501").await;

    assert_eq!(last_legal.status(), 200);
    assert_eq!(past_cap.status(), 400);
    assert_eq!(
        past_cap.json::<Value>().await.unwrap()["message"],
        CAP_MESSAGE
    );
    assert_eq!(small_pages.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_started_more_than_six_months_ago_are_not_served() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let now = sim.state.clock.now_s();
    sim.state
        .add_call(company.id, &spec_at(now - 200 * 86_400))
        .unwrap();
    let recent = sim
        .state
        .add_call(company.id, &spec_at(now - 86_400))
        .unwrap();

    let list = get_json(&sim, &company, "v1/calls?from=0").await;

    assert_eq!(ids(&list), vec![recent]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_events_subscribes_to_every_event_on_create_and_update() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let client = http();
    let url = format!("{}v1/webhooks", sim.base_url);
    let auth = |r: reqwest::RequestBuilder| r.basic_auth(&company.api_id, Some(&company.api_token));

    let created = auth(client.post(&url))
        .json(&json!({"url": "https://example.com/h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let hook = &created["webhook"];
    let all: Vec<&str> = ALL_EVENTS.to_vec();
    assert_eq!(hook["events"].as_array().unwrap().len(), all.len());
    assert!(hook["token"].as_str().is_some_and(|t| t.len() >= 16));
    assert!(hook["webhook_id"].as_str().is_some_and(|id| id.len() == 36));
    let id = hook["webhook_id"].as_str().unwrap();

    let narrowed: Value = auth(client.put(format!("{url}/{id}")))
        .json(&json!({"events": ["call.ended"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(narrowed["webhook"]["events"], json!(["call.ended"]));
    let widened: Value = auth(client.put(format!("{url}/{id}")))
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        widened["webhook"]["events"].as_array().unwrap().len(),
        all.len()
    );

    let listed: Value = auth(client.get(&url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["webhooks"][0]["token"], hook["token"],
        "the listing carries tokens"
    );
    let deleted = auth(client.delete(format!("{url}/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let again = auth(client.delete(format!("{url}/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_counts_per_company_with_its_three_headers() {
    let settings = SimSettings {
        rate_limit: 3,
        rate_window: Duration::from_secs(60),
        ..SimSettings::for_tests()
    };
    let sim = crate::helpers::start_sim(settings).await;
    let a = sim.state.add_company(CompanySpec::default()).unwrap();
    let b = sim
        .state
        .add_company(CompanySpec {
            seed: 2,
            ..Default::default()
        })
        .unwrap();
    let now = sim.state.clock.now_s();

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get(&sim, &a, "v1/ping").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-aircallapi-limit"], "3");
        let reset: i64 = r.headers()["x-aircallapi-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            reset > now && reset <= now + 61,
            "reset {reset} is a Unix time in the window"
        );
        remaining.push(
            r.headers()["x-aircallapi-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let refused = get(&sim, &a, "v1/ping").await;
    let other_company = get(&sim, &b, "v1/ping").await;

    assert_eq!(remaining, ["2", "1", "0"]);
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-aircallapi-remaining"], "0");
    assert_eq!(other_company.status(), 200, "the limit is per company");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_401_and_wrong_ones_403() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let url = format!("{}v1/ping", sim.base_url);

    let none = http().get(&url).send().await.unwrap();
    let wrong = http()
        .get(&url)
        .basic_auth(&company.api_id, Some("nope"))
        .send()
        .await
        .unwrap();
    let unknown_path = get(&sim, &company, "v1/nothing-here").await;

    assert_eq!(none.status(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap()["message"],
        "Unauthorized"
    );
    assert_eq!(wrong.status(), 403);
    assert_eq!(wrong.json::<Value>().await.unwrap()["message"], "Forbidden");
    assert_eq!(unknown_path.status(), 404);
}

async fn recording_url(sim: &RunningSimulator, company: &CompanyInfo, call: u64) -> Option<String> {
    let body = get_json(sim, company, &format!("v1/calls/{call}")).await;
    body["call"]["recording"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_the_promised_bytes_until_their_url_expires() {
    let settings = SimSettings {
        recording_url_ttl: Duration::from_secs(600),
        ..roomy_sim()
    };
    let (sim, company) = sim_with(settings, CompanySpec::default()).await;
    let size = 1_234_567;
    let call = sim
        .state
        .add_call(
            company.id,
            &CallSpec {
                recording_bytes: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
    let url = recording_url(&sim, &company, call).await.unwrap();
    assert!(url.contains("X-Amz-Expires=600"), "{url}");

    let fresh = http().get(&url).send().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["content-type"], "audio/mpeg");
    assert_eq!(fresh.content_length(), Some(size));
    let bytes = fresh.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        audio_sha256(call, AudioKind::Recording, size)
    );

    sim.state.advance_clock(Duration::from_secs(601));
    let expired = http().get(&url).send().await.unwrap();
    assert_eq!(expired.status(), 403);
    assert!(
        expired
            .text()
            .await
            .unwrap()
            .contains("<Code>AccessDenied</Code>")
    );
    let renewed = recording_url(&sim, &company, call).await.unwrap();
    assert_eq!(http().get(&renewed).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_may_come_without_content_length() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let size = 300_001;
    let spec = CallSpec {
        recording_bytes: Some(size),
        without_content_length: true,
        ..Default::default()
    };
    let call = sim.state.add_call(company.id, &spec).unwrap();
    let url = recording_url(&sim, &company, call).await.unwrap();

    let response = http().get(&url).send().await.unwrap();

    assert_eq!(response.content_length(), None);
    assert_eq!(
        response
            .headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        audio_sha256(call, AudioKind::Recording, size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_recording_streams_without_costing_the_simulator_memory() {
    // The simulator in a process of its own, so its memory is its alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--history-calls",
            "0",
            "--live-calls-per-minute",
            "0",
        ])
        .env("AIRCALL_INGEST_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/");
    let client = http();
    // Ready once its demo company exists (it binds its port a moment before).
    let ready = crate::helpers::eventually_async(Duration::from_secs(10), || async {
        client
            .get(format!("{base}_sim/companies/1"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the simulator did not start");
    let size: u64 = 250 * 1024 * 1024;
    let added: Value = client
        .post(format!("{base}_sim/companies/1/calls"))
        .json(&json!({"recording_bytes": size}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call = added["id"].as_u64().unwrap();
    let body: Value = client
        .get(format!("{base}v1/calls/{call}"))
        .basic_auth("demo-api-id", Some("demo-api-token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = body["call"]["recording"].as_str().unwrap().to_string();

    let mut response = client.get(&url).send().await.unwrap();
    assert_eq!(response.content_length(), Some(size));
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    let peak_kib = peak_resident_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(received, size);
    assert!(
        peak_kib < 64 * 1024,
        "serving 250 MB peaked at {peak_kib} KiB"
    );
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_fault_breaks_the_download_part_way() {
    let settings = SimSettings {
        faults: Faults {
            truncate_recording_share: 1.0,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(settings, CompanySpec::default()).await;
    let size = 2_000_000;
    let call = sim
        .state
        .add_call(
            company.id,
            &CallSpec {
                recording_bytes: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
    let url = recording_url(&sim, &company, call).await.unwrap();

    let mut response = http().get(&url).send().await.unwrap();
    assert_eq!(
        response.content_length(),
        Some(size),
        "the promise is the whole file"
    );
    let mut received = 0u64;
    let outcome = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len() as u64,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };

    assert!(
        outcome.is_err(),
        "a cut body must be an error, got {received} bytes and a clean end"
    );
    assert!(received < size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_comes_only_when_asked_for() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let call = sim
        .state
        .add_call(
            company.id,
            &CallSpec {
                with_contact: true,
                ..Default::default()
            },
        )
        .unwrap();

    let plain = get_json(&sim, &company, &format!("v1/calls/{call}")).await;
    let with_contact = get_json(
        &sim,
        &company,
        &format!("v1/calls/{call}?fetch_contact=true"),
    )
    .await;
    let missing = get(&sim, &company, "v1/calls/1").await;

    assert!(plain["call"]["contact"].is_null());
    assert!(with_contact["call"]["contact"]["last_name"].is_string());
    assert_eq!(missing.status(), 404);
}

async fn register(
    sim: &RunningSimulator,
    company: &CompanyInfo,
    url: &str,
    events: &[&str],
) -> Value {
    let response = http()
        .post(format!("{}v1/webhooks", sim.base_url))
        .basic_auth(&company.api_id, Some(&company.api_token))
        .json(&json!({"url": url, "events": events, "custom_name": "test"}))
        .send()
        .await
        .unwrap();
    response.json::<Value>().await.unwrap()["webhook"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ending_posts_call_ended_with_the_webhook_token_and_retries_failures() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let receiver = Receiver::start(2).await;
    let hook = register(&sim, &company, &receiver.url, &["call.ended"]).await;

    let call = sim
        .state
        .add_call(company.id, &CallSpec::default())
        .unwrap();

    assert!(
        eventually(Duration::from_secs(10), || receiver.count("call.ended")
            == 1)
        .await
    );
    let delivery = &receiver.events()[0];
    assert_eq!(delivery.body["token"], hook["token"]);
    assert_eq!(delivery.body["resource"], "call");
    assert_eq!(delivery.body["data"]["id"], call);
    assert!(
        delivery.body["data"]["call_uuid"].is_string(),
        "webhooks spell sid call_uuid"
    );
    assert!(delivery.body["data"].get("sid").is_none());
    assert!(delivery.body["data"]["participants"].is_array());
    assert_eq!(delivery.header("aircall-origin"), Some("webhooks"));
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    let info = &sim.state.webhooks(company.id).unwrap()[0];
    assert_eq!(
        (info.failed_attempts, info.delivered),
        (2, 1),
        "two failures, then delivered"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count("call.ended"),
        1,
        "no duplicate after success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_deactivated_and_comes_back_on_the_next_success() {
    let settings = SimSettings {
        webhook_deactivate_after: 3,
        webhook_retry_initial: Duration::from_millis(100),
        ..roomy_sim()
    };
    let (sim, company) = sim_with(settings, CompanySpec::default()).await;
    let receiver = Receiver::start(1_000).await;
    register(&sim, &company, &receiver.url, &["call.ended"]).await;

    sim.state
        .add_call(company.id, &CallSpec::default())
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !sim
            .state
            .webhooks(company.id)
            .unwrap()[0]
            .active)
        .await,
        "deactivated after 3 failures"
    );
    sim.state
        .add_call(company.id, &CallSpec::default())
        .unwrap();
    receiver.fail_next(0);

    assert!(
        eventually(Duration::from_secs(10), || sim
            .state
            .webhooks(company.id)
            .unwrap()[0]
            .active)
        .await
    );
    assert_eq!(
        receiver.count("call.ended"),
        1,
        "the event of the inactive period was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_recording_appears_when_its_time_comes_and_is_announced() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let receiver = Receiver::start(0).await;
    register(
        &sim,
        &company,
        &receiver.url,
        &["call.ended", "call.comm_assets_generated"],
    )
    .await;
    let spec = CallSpec {
        recording_delay_s: 2 * 3600,
        ..CallSpec::default()
    };

    let call = sim.state.add_call(company.id, &spec).unwrap();

    assert!(eventually(Duration::from_secs(5), || receiver.count("call.ended") == 1).await);
    assert!(recording_url(&sim, &company, call).await.is_none());
    assert!(receiver.events()[0].body["data"]["recording"].is_null());
    sim.state.advance_clock(Duration::from_secs(2 * 3600 + 1));
    assert!(
        eventually(Duration::from_secs(5), || receiver
            .count("call.comm_assets_generated")
            == 1)
        .await
    );
    assert!(recording_url(&sim, &company, call).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_progress_is_listed_then_ends_by_itself() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let receiver = Receiver::start(0).await;
    register(&sim, &company, &receiver.url, &["call.ended"]).await;
    let now = sim.state.clock.now_s();
    // Times are whole seconds: a 3-second call ends at least 2 s from now.
    let spec = CallSpec {
        started_at: Some(now),
        duration: 3,
        in_progress: true,
        ..CallSpec::default()
    };

    let call = sim.state.add_call(company.id, &spec).unwrap();
    let during = get_json(&sim, &company, &format!("v1/calls/{call}")).await;

    assert_ne!(during["call"]["status"], "done");
    assert!(during["call"]["ended_at"].is_null());
    assert!(
        eventually(Duration::from_secs(10), || receiver.count("call.ended")
            == 1)
        .await
    );
    let after = get_json(&sim, &company, &format!("v1/calls/{call}")).await;
    assert_eq!(after["call"]["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplication_fault_delivers_an_event_twice() {
    let settings = SimSettings {
        faults: Faults {
            duplicate_webhook_share: 1.0,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(settings, CompanySpec::default()).await;
    let receiver = Receiver::start(0).await;
    register(&sim, &company, &receiver.url, &["call.ended"]).await;

    sim.state
        .add_call(company.id, &CallSpec::default())
        .unwrap();

    assert!(eventually(Duration::from_secs(5), || receiver.count("call.ended") == 2).await);
    let events = receiver.events();
    assert_eq!(events[0].body, events[1].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_other_families_reach_webhooks_subscribed_to_them() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let every_event = Receiver::start(0).await;
    let calls_only = Receiver::start(0).await;
    let client = http();
    client
        .post(format!("{}v1/webhooks", sim.base_url))
        .basic_auth(&company.api_id, Some(&company.api_token))
        .json(&json!({"url": every_event.url}))
        .send()
        .await
        .unwrap();
    register(&sim, &company, &calls_only.url, &["call.ended"]).await;

    assert!(
        sim.state
            .emit_event(company.id, "user.connected", json!({"id": 1}))
    );

    assert!(
        eventually(Duration::from_secs(5), || every_event
            .count("user.connected")
            == 1)
        .await
    );
    assert_eq!(every_event.events()[0].body["resource"], "user");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(calls_only.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_link_refuses_credentials_and_may_live_on_another_host() {
    let mut settings = roomy_sim();
    settings.public_url = None;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    settings.recording_url = Some(url::Url::parse(&format!("http://localhost:{port}/")).unwrap());
    let sim = RunningSimulator::start(settings, listener).unwrap();
    let company = sim.state.add_company(CompanySpec::default()).unwrap();
    let call = sim
        .state
        .add_call(company.id, &CallSpec::default())
        .unwrap();
    let url = recording_url(&sim, &company, call).await.unwrap();
    assert!(
        url.starts_with(&format!("http://localhost:{port}/recordings/")),
        "{url}"
    );

    let with_credentials = http()
        .get(&url)
        .basic_auth(&company.api_id, Some(&company.api_token))
        .send()
        .await
        .unwrap();
    let plain = http().get(&url).send().await.unwrap();

    assert_eq!(with_credentials.status(), 400);
    assert_eq!(plain.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_webhooks_never_arrive() {
    let settings = SimSettings {
        faults: Faults {
            drop_webhook_share: 1.0,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(settings, CompanySpec::default()).await;
    let receiver = Receiver::start(0).await;
    register(&sim, &company, &receiver.url, &["call.ended"]).await;

    sim.state
        .add_call(company.id, &CallSpec::default())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(receiver.count("call.ended"), 0);
    assert_eq!(sim.state.webhooks(company.id).unwrap()[0].dropped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_5xx_and_latency_apply_per_company() {
    let sim = crate::helpers::start_sim(roomy_sim()).await;
    let slow = sim.state.add_company(CompanySpec::default()).unwrap();
    let healthy = sim
        .state
        .add_company(CompanySpec {
            seed: 2,
            ..Default::default()
        })
        .unwrap();
    sim.state.set_faults(
        Some(slow.id),
        Faults {
            error_5xx_share: 1.0,
            latency_ms: 300,
            ..Faults::default()
        },
    );

    let started = std::time::Instant::now();
    let failing = get(&sim, &slow, "v1/ping").await;
    let slow_for = started.elapsed();
    let fine = get(&sim, &healthy, "v1/ping").await;

    assert!(failing.status().is_server_error());
    assert!(slow_for >= Duration::from_millis(300));
    assert_eq!(fine.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_same_company_every_time() {
    let spec = CompanySpec {
        history_calls: 200,
        seed: 42,
        ..Default::default()
    };
    let (a, ca) = sim_with(roomy_sim(), spec.clone()).await;
    let (b, cb) = sim_with(roomy_sim(), spec).await;

    let shape = |truth: Vec<aircall_ingest::sim::CallTruth>| {
        truth
            .into_iter()
            .map(|c| {
                (
                    c.duration,
                    c.recording_bytes,
                    c.agent_email,
                    c.voicemail_bytes,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ca.agents.iter().map(|a| &a.email).collect::<Vec<_>>(),
        cb.agents.iter().map(|a| &a.email).collect::<Vec<_>>()
    );
    assert_eq!(
        shape(a.state.calls_truth(ca.id, false).unwrap()),
        shape(b.state.calls_truth(cb.id, false).unwrap())
    );
    let truth = a.state.calls_truth(ca.id, false).unwrap();
    assert!(
        truth.iter().any(|c| c.answered_at.is_none()),
        "the mix has missed calls"
    );
    assert!(
        truth.iter().any(|c| c.recording_bytes.is_some()),
        "and recorded ones"
    );
    assert!(
        truth
            .iter()
            .any(|c| c.agent_email.is_some() && !c.agent_paying),
        "and unknown agents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_drives_a_simulator_in_another_process() {
    let sim = crate::helpers::start_sim(roomy_sim()).await;
    let control = |path: &str| format!("{}_sim/{path}", sim.base_url);

    let created: Value = http()
        .post(control("companies"))
        .json(&json!({"api_id": "ctl", "api_token": "secret", "agents": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_u64().unwrap();
    let added: Value = http()
        .post(control(&format!("companies/{id}/calls")))
        .json(&json!({"recording_bytes": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let truth: Value = http()
        .get(control(&format!("companies/{id}/calls?sha256=true")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bad = http()
        .post(control("companies"))
        .json(&json!({"agents": "many"}))
        .send()
        .await
        .unwrap();
    let advanced = http()
        .post(control("clock/advance"))
        .json(&json!({"seconds": 60}))
        .send()
        .await
        .unwrap();

    assert_eq!(truth[0]["id"], added["id"]);
    assert_eq!(
        truth[0]["recording_sha256"],
        audio_sha256(added["id"].as_u64().unwrap(), AudioKind::Recording, 1000)
    );
    assert_eq!(bad.status(), 400);
    assert_eq!(advanced.status(), 200);
}
