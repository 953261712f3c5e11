//! The webhook endpoint with real RabbitMQ and Redis: what is accepted becomes exactly one
//! durable job, what is refused says why and leaves nothing behind, and a broker outage costs
//! nothing but a detour through the spool.

use std::time::{Duration, Instant};

use aircall_ingest::aircall::CallId;
use aircall_ingest::connections::ConnectionId;
use aircall_ingest::queue::{Message, Trigger};
use aircall_ingest::sim::{CallSpec, CompanySpec};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{
    AMQP, REDIS, TestApp, amqp, eventually_async, queue_depth, redis, roomy_sim, service_settings,
    sim_with,
};
use crate::proxy::FaultProxy;

const TOKEN: &str = "df76g76dpziygs567f0";

fn call_ended(id: u64, token: &str) -> Value {
    json!({
        "resource": "call", "event": "call.ended", "timestamp": 1_735_733_055, "token": token,
        "data": {
            "id": id, "call_uuid": "CA1234567890abcdef", "direction": "inbound", "status": "done",
            "started_at": 1_735_732_800, "answered_at": 1_735_732_809, "ended_at": 1_735_733_025,
            "duration": 225, "raw_digits": "+33 6 12 34 56 78",
            "recording": "https://storage.example/calls/812/recording.mp3?X-Amz-Expires=600",
            "user": {"id": 456, "name": "John Doe", "email": "john.doe@example.com"},
            "number": {"id": 1234, "digits": "+33 1 76 11 11 11", "name": "Support FR"},
            "contact": null, "tags": [], "participants": []
        }
    })
}

async fn app(test: &str) -> TestApp {
    let app = TestApp::spawn(service_settings(test)).await;
    app.add_connection("acme", TOKEN).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_webhook_becomes_exactly_one_durable_job() {
    let app = app("ended").await;

    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/aircall/acme", app.url))
        .header("x-request-id", "req-42")
        .json(&call_ended(9_000_000_812, TOKEN))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "queued"})
    );
    let jobs = app.take_jobs().await;
    assert_eq!(jobs.len(), 1);
    let Message::ImportCall(job) = &jobs[0];
    assert_eq!(job.connection_id, "acme");
    assert_eq!(job.call_id, CallId(9_000_000_812));
    assert_eq!(job.trigger, Trigger::Webhook);
    assert_eq!(job.event.as_deref(), Some("call.ended"));
    assert_eq!(job.event_at, Some(1_735_733_055));
    assert_eq!(job.request_id.as_deref(), Some("req-42"));
    let snapshot = job.snapshot.as_ref().unwrap();
    assert_eq!(
        snapshot.user.as_ref().unwrap().email.as_deref(),
        Some("john.doe@example.com")
    );
    assert!(snapshot.recording.is_some());
    assert!(job.received_at_ms > 1_700_000_000_000);
    assert_eq!(app.spool_depth().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_assets_generated_is_queued_and_other_events_are_ignored() {
    let app = app("events").await;
    let mut assets = call_ended(7, TOKEN);
    assets["event"] = json!("call.comm_assets_generated");
    let mut created = call_ended(8, TOKEN);
    created["event"] = json!("call.created");
    let user_event = json!({"resource": "user", "event": "user.connected", "token": TOKEN, "data": {"id": "u-1"}});

    let queued = app
        .post("acme", &assets)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let ignored_call = app.post("acme", &created).await;
    let ignored_user = app.post("acme", &user_event).await;

    assert_eq!(queued, json!({"status": "queued"}));
    assert_eq!(ignored_call.status(), 200);
    assert_eq!(
        ignored_call.json::<Value>().await.unwrap(),
        json!({"status": "ignored"})
    );
    assert_eq!(
        ignored_user.json::<Value>().await.unwrap(),
        json!({"status": "ignored"})
    );
    let jobs = app.take_jobs().await;
    assert_eq!(jobs.len(), 1);
    let Message::ImportCall(job) = &jobs[0];
    assert_eq!(job.event.as_deref(), Some("call.comm_assets_generated"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_code_and_nothing_is_queued() {
    let app = app("bad").await;
    let client = reqwest::Client::new();
    let url = |connection: &str| format!("{}/webhooks/aircall/{connection}", app.url);
    let json_body = |body: &Value| body.to_string().into_bytes();
    let mut no_data = call_ended(1, TOKEN);
    no_data.as_object_mut().unwrap().remove("data");
    let mut no_event = call_ended(1, TOKEN);
    no_event.as_object_mut().unwrap().remove("event");
    let mut no_id = call_ended(1, TOKEN);
    no_id["data"].as_object_mut().unwrap().remove("id");
    let mut string_id = call_ended(1, TOKEN);
    string_id["data"]["id"] = json!("812");
    let mut negative_id = call_ended(1, TOKEN);
    negative_id["data"]["id"] = json!(-5);
    let mut no_token = call_ended(1, TOKEN);
    no_token.as_object_mut().unwrap().remove("token");
    let huge = format!(
        r#"{{"token":"{TOKEN}","pad":"{}"}}"#,
        "x".repeat(300 * 1024)
    );

    // (case, URL, content type, body, status, code)
    type Case<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown connection",
            url("globex"),
            Some("application/json"),
            json_body(&call_ended(1, TOKEN)),
            404,
            "unknown_connection",
        ),
        (
            "impossible connection id",
            url("ACME%20corp"),
            Some("application/json"),
            json_body(&call_ended(1, TOKEN)),
            404,
            "unknown_connection",
        ),
        (
            "missing token",
            url("acme"),
            Some("application/json"),
            json_body(&no_token),
            401,
            "missing_token",
        ),
        (
            "wrong token",
            url("acme"),
            Some("application/json"),
            json_body(&call_ended(1, "not-the-token")),
            401,
            "invalid_token",
        ),
        (
            "body over the limit",
            url("acme"),
            Some("application/json"),
            huge.into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "not JSON content type",
            url("acme"),
            Some("text/plain"),
            json_body(&call_ended(1, TOKEN)),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            url("acme"),
            None,
            json_body(&call_ended(1, TOKEN)),
            415,
            "unsupported_media_type",
        ),
        (
            "malformed JSON",
            url("acme"),
            Some("application/json"),
            b"{\"token\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid UTF-8",
            url("acme"),
            Some("application/json"),
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "invalid_json",
        ),
        (
            "not an object",
            url("acme"),
            Some("application/json"),
            b"[1,2,3]".to_vec(),
            400,
            "not_an_envelope",
        ),
        (
            "no data",
            url("acme"),
            Some("application/json"),
            json_body(&no_data),
            400,
            "not_an_envelope",
        ),
        (
            "no event",
            url("acme"),
            Some("application/json"),
            json_body(&no_event),
            400,
            "not_an_envelope",
        ),
        (
            "no call id",
            url("acme"),
            Some("application/json"),
            json_body(&no_id),
            400,
            "invalid_call_id",
        ),
        (
            "call id as text",
            url("acme"),
            Some("application/json"),
            json_body(&string_id),
            400,
            "invalid_call_id",
        ),
        (
            "negative call id",
            url("acme"),
            Some("application/json"),
            json_body(&negative_id),
            400,
            "invalid_call_id",
        ),
    ];
    for (name, url, content_type, body, status, code) in cases {
        let mut request = client.post(&url).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert!(
            !body.to_string().contains(TOKEN),
            "{name}: the answer echoes the token"
        );
    }

    assert_eq!(queue_depth(&app.ctx.broker.names().import).await, 0);
    assert_eq!(app.spool_depth().await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obvious_redelivery_is_answered_but_queued_once() {
    let app = app("redelivery").await;

    let first = app
        .post("acme", &call_ended(55, TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let second = app
        .post("acme", &call_ended(55, TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let other_call = app
        .post("acme", &call_ended(56, TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();

    assert_eq!(first, json!({"status": "queued"}));
    assert_eq!(second, json!({"status": "duplicate"}));
    assert_eq!(other_call, json!({"status": "queued"}));
    assert_eq!(app.take_jobs().await.len(), 2);
    app.stop().await;
}

async fn app_through(test: &str, amqp: Option<&FaultProxy>, redis: Option<&FaultProxy>) -> TestApp {
    let mut settings = service_settings(test);
    if let Some(proxy) = amqp {
        settings.amqp_url = proxy.url("amqp", "/%2f").into();
        // guest may only log in from localhost, which the proxy is.
        let mut url = settings.amqp_url.expose().clone();
        url.set_username("guest").unwrap();
        url.set_password(Some("guest")).unwrap();
        settings.amqp_url = url.into();
    }
    if let Some(proxy) = redis {
        settings.redis_url = proxy.url("redis", "/").into();
    }
    let app = TestApp::spawn(settings).await;
    app.add_connection("acme", TOKEN).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_rabbitmq_is_down_jobs_are_spooled_and_reach_the_queue_exactly_once_after() {
    let broker = FaultProxy::start(crate::helpers::server_addr(AMQP)).await;
    let app = app_through("outage", Some(&broker), None).await;
    assert!(app.ctx.broker.is_connected());

    broker.cut();
    let answers: Vec<Value> = {
        let mut answers = Vec::new();
        for id in 100..105 {
            let started = Instant::now();
            let response = app.post("acme", &call_ended(id, TOKEN)).await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "answered in {:?}",
                started.elapsed()
            );
            assert_eq!(response.status(), 200);
            answers.push(response.json().await.unwrap());
        }
        answers
    };

    assert!(
        answers.iter().all(|a| a == &json!({"status": "spooled"})),
        "{answers:?}"
    );
    assert_eq!(app.spool_depth().await, 5);
    assert_eq!(queue_depth(&app.ctx.broker.names().import).await, 0);
    broker.restore();
    let import = app.ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(40), || async {
            app.spool_depth().await == 0
        })
        .await,
        "the spool drained without a restart"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = crate::helpers::take_messages(&import).await;
    let mut ids: Vec<u64> = jobs
        .iter()
        .map(|Message::ImportCall(job)| job.call_id.0)
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![100, 101, 102, 103, 104],
        "each spooled job exactly once"
    );
    let after = app
        .post("acme", &call_ended(200, TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        after,
        json!({"status": "queued"}),
        "intake publishes directly again"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_hangs_costs_one_confirm_deadline_then_the_spool() {
    let broker = FaultProxy::start(crate::helpers::server_addr(AMQP)).await;
    let app = app_through("hang", Some(&broker), None).await;

    broker.freeze();
    let started = Instant::now();
    let response = app.post("acme", &call_ended(300, TOKEN)).await;
    let took = started.elapsed();

    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "spooled"})
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered in {took:?}"
    );
    broker.restore();
    let import = app.ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(40), || async {
            app.spool_depth().await == 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = crate::helpers::take_messages(&import).await;
    // The job may arrive twice: once late from the hung publish, once from the spool. Both are
    // the same call, which the worker imports once.
    assert!(!jobs.is_empty() && jobs.len() <= 2, "{} jobs", jobs.len());
    assert!(
        jobs.iter()
            .all(|Message::ImportCall(job)| job.call_id == CallId(300))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_rabbitmq_both_down_the_answer_is_503_within_the_deadline() {
    let broker = FaultProxy::start(crate::helpers::server_addr(AMQP)).await;
    let store = FaultProxy::start(crate::helpers::server_addr(REDIS)).await;
    let app = app_through("bothdown", Some(&broker), Some(&store)).await;
    // Once while everything is up, so the connection's fingerprint is cached, as in production.
    assert_eq!(app.post("acme", &call_ended(1, TOKEN)).await.status(), 200);

    broker.cut();
    store.cut();
    let started = Instant::now();
    let response = app.post("acme", &call_ended(2, TOKEN)).await;
    let took = started.elapsed();

    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
    assert!(
        took < Duration::from_secs(4),
        "answered in {took:?}, inside Aircall's 5 s"
    );
    broker.restore();
    store.restore();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_rabbitmq_both_hanging_the_answer_still_comes_within_the_budget() {
    let broker = FaultProxy::start(crate::helpers::server_addr(AMQP)).await;
    let store = FaultProxy::start(crate::helpers::server_addr(REDIS)).await;
    let app = app_through("bothhang", Some(&broker), Some(&store)).await;
    assert_eq!(app.post("acme", &call_ended(1, TOKEN)).await.status(), 200);

    broker.freeze();
    store.freeze();
    let mut worst = Duration::ZERO;
    for (connection, id) in [("acme", 2), ("never-seen", 3)] {
        let started = Instant::now();
        let response = app.post(connection, &call_ended(id, TOKEN)).await;
        worst = worst.max(started.elapsed());
        assert_eq!(response.status(), 503, "{connection}");
    }

    // The budget is 3 s; Aircall gives up at 5 s.
    assert!(
        worst < Duration::from_millis(3_500),
        "slowest answer {worst:?}"
    );
    broker.restore();
    store.restore();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_costs_a_known_connection_nothing_but_the_redelivery_check() {
    let store = FaultProxy::start(crate::helpers::server_addr(REDIS)).await;
    let app = app_through("redishang", None, Some(&store)).await;
    // Once while Redis answers, so the connection's fingerprint is cached, as in production.
    assert_eq!(app.post("acme", &call_ended(1, TOKEN)).await.status(), 200);

    store.freeze();
    let started = Instant::now();
    let answer = app
        .post("acme", &call_ended(2, TOKEN))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let took = started.elapsed();
    store.restore();

    // The redelivery check fails open (100 ms at most); the job goes straight to RabbitMQ.
    assert_eq!(answer, json!({"status": "queued"}));
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let mut ids: Vec<u64> = app
        .take_jobs()
        .await
        .iter()
        .map(|Message::ImportCall(job)| job.call_id.0)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_each_dependency_and_recovers_without_a_restart() {
    let broker = FaultProxy::start(crate::helpers::server_addr(AMQP)).await;
    let store = FaultProxy::start(crate::helpers::server_addr(REDIS)).await;
    let app = app_through("ready", Some(&broker), Some(&store)).await;
    let readyz = || async {
        let response = reqwest::get(format!("{}/readyz", app.url)).await.unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(readyz().await.0, 200);
    assert_eq!(
        reqwest::get(format!("{}/healthz", app.url))
            .await
            .unwrap()
            .status(),
        200
    );

    // RabbitMQ down: still ready (the spool holds jobs), and says so.
    broker.cut();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            readyz().await.1["rabbitmq"] == "down"
        })
        .await
    );
    assert_eq!(
        readyz().await,
        (
            200,
            json!({"status": "degraded", "redis": "up", "rabbitmq": "down"})
        )
    );
    // Both down: nothing can hold a job.
    store.cut();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            readyz().await.0 == 503
        })
        .await
    );
    assert_eq!(readyz().await.1["status"], "not_ready");
    broker.restore();
    store.restore();
    let recovered = eventually_async(Duration::from_secs(30), || async {
        readyz().await
            == (
                200,
                json!({"status": "ready", "redis": "up", "rabbitmq": "up"}),
            )
    })
    .await;
    assert!(
        recovered,
        "recovers without a restart; still {:?}",
        readyz().await
    );
    // Redis down alone: RabbitMQ still takes jobs.
    store.cut();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            readyz().await.1["redis"] == "down"
        })
        .await
    );
    assert_eq!(readyz().await.0, 200);
    store.restore();
    assert!(
        eventually_async(Duration::from_secs(40), || async {
            readyz().await.1["status"] == "ready"
        })
        .await
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_is_a_quorum_queue() {
    let app = app("quorum").await;
    let queues =
        aircall_ingest::queue::topology::queues(app.ctx.broker.names(), &app.ctx.settings.queue);
    assert_eq!(
        queues.len(),
        2 + app.ctx.settings.queue.retry_delays_ms.len()
    );

    for (queue, mut arguments) in queues {
        // The same queue, the same arguments, but classic: refused for its type alone.
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(lapin::types::LongString::from("classic")),
        );
        let amqp = amqp().await;
        let classic = amqp
            .channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await;
        let refusal = classic
            .expect_err("a classic redeclaration was accepted")
            .to_string();
        assert!(
            refusal.contains("'x-queue-type'") && refusal.contains("quorum"),
            "{queue}: {refusal}"
        );
        amqp.close().await;
    }
    // Declaring the topology again (another role starting) is fine.
    app.ctx.broker.connect().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_registers_the_webhook_and_an_ending_call_reaches_the_queue() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let mut settings = service_settings("e2e");
    settings.aircall_base_url = sim.base_url.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    settings.public_url = url::Url::parse(&format!("http://{addr}/")).unwrap();
    let ctx = aircall_ingest::app::Context::new(settings).unwrap();
    ctx.broker.connect().await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    ctx.start_background(&cancel);
    ctx.serve(listener, &cancel).unwrap();
    let token = SecretString::from(company.api_token.clone());
    let credentials = aircall_ingest::aircall::Credentials {
        api_id: company.api_id.clone(),
        api_token: token.clone(),
    };
    let client = ctx.aircall.client(credentials, "acme", cancel.clone());
    let id = aircall_ingest::connections::ConnectionId::parse("acme").unwrap();

    let record =
        aircall_ingest::connections::connect(aircall_ingest::connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &token,
            public_url: &ctx.settings.public_url,
            store: &ctx.connections,
            outcomes: &ctx.outcomes,
            state: &ctx.reconciler().state,
            keys: &ctx.keys,
            users: &Default::default(),
            now_ms: 0,
        })
        .await
        .unwrap();
    let call = sim
        .state
        .add_call(company.id, &CallSpec::default())
        .unwrap();

    let hooks = sim.state.webhooks(company.id).unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].url, format!("http://{addr}/webhooks/aircall/acme"));
    assert_eq!(
        hooks[0].events,
        ["call.ended", "call.comm_assets_generated"]
    );
    assert_eq!(record.webhook_id, hooks[0].webhook_id);
    let import = ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            queue_depth(&import).await == 2
        })
        .await
    );
    let jobs = crate::helpers::take_messages(&import).await;
    assert!(
        jobs.iter()
            .all(|Message::ImportCall(job)| job.call_id == CallId(call)
                && job.connection_id == "acme")
    );
    // Neither secret is stored in clear.
    let mut redis = redis().await;
    let stored: std::collections::HashMap<String, String> = redis
        .hgetall(format!("{}:connection:acme", ctx.settings.redis_key_prefix))
        .await
        .unwrap();
    let everything = format!("{stored:?}");
    assert!(!everything.contains(token.expose_secret()));
    assert!(!everything.contains(&hooks[0].token));
    TestApp::adopt(ctx, cancel).stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_with_bad_credentials_leaves_nothing_behind() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let mut settings = service_settings("badconnect");
    settings.aircall_base_url = sim.base_url.clone();
    let app = TestApp::spawn(settings).await;
    let wrong = SecretString::from("wrong-token");
    let credentials = aircall_ingest::aircall::Credentials {
        api_id: company.api_id.clone(),
        api_token: wrong.clone(),
    };
    let client = app
        .ctx
        .aircall
        .client(credentials, "acme", app.cancel.clone());
    let id = aircall_ingest::connections::ConnectionId::parse("acme").unwrap();

    let result =
        aircall_ingest::connections::connect(aircall_ingest::connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &wrong,
            public_url: &app.ctx.settings.public_url,
            store: &app.ctx.connections,
            outcomes: &app.ctx.outcomes,
            state: &app.ctx.reconciler().state,
            keys: &app.ctx.keys,
            users: &Default::default(),
            now_ms: 0,
        })
        .await;

    assert!(
        matches!(
            result,
            Err(aircall_ingest::connections::ConnectError::InvalidCredentials)
        ),
        "{result:?}"
    );
    assert!(app.ctx.connections.get(&id).await.unwrap().is_none());
    assert!(sim.state.webhooks(company.id).unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_channel_closed_by_the_broker_is_reopened() {
    let app = app("channel").await;
    let message = Message::ImportCall(aircall_ingest::queue::ImportJob {
        version: aircall_ingest::queue::IMPORT_JOB_VERSION,
        job_id: "x".into(),
        connection_id: "acme".into(),
        call_id: CallId(1),
        trigger: Trigger::Manual,
        event: None,
        snapshot: None,
        event_at: None,
        received_at_ms: 0,
        request_id: None,
        attempt: 0,
        failure: None,
    });

    // Publishing to an exchange that does not exist makes RabbitMQ close the channel.
    let broken = app
        .ctx
        .broker
        .publish_to(
            "no-such-exchange",
            "x",
            (&message).into(),
            b"{}",
            Duration::from_secs(2),
        )
        .await;

    assert!(broken.is_err());
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            app.post("acme", &call_ended(fastrand::u64(1..1 << 40), TOKEN))
                .await
                .json::<Value>()
                .await
                .unwrap()
                == json!({"status": "queued"})
        })
        .await,
        "intake publishes again without a restart"
    );
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            app.spool_depth().await == 0
        })
        .await,
        "what was spooled meanwhile drains"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_fingerprint_never_refuses_a_new_token_nor_outlives_its_connection() {
    let mut settings = service_settings("intake-cache");
    settings.intake.connection_cache_ttl_ms = 300;
    let app = TestApp::spawn(settings).await;
    app.add_connection("acme", TOKEN).await;
    let id = ConnectionId::parse("acme").unwrap();
    let post = |call: u64, token: &'static str| {
        let app = &app;
        async move {
            app.post("acme", &call_ended(call, token))
                .await
                .status()
                .as_u16()
        }
    };
    // The fingerprint is cached by the first webhook.
    assert_eq!(post(1, TOKEN).await, 200);

    // The webhook is registered again with a new token (a rotation): accepted at once, though
    // the process still holds the old fingerprint; the old token is refused from then on.
    const NEW_TOKEN: &str = "a-new-webhook-token-after-rotation";
    let store = &app.ctx.connections;
    assert!(
        store
            .update_webhook(
                &id,
                "webhook-id",
                "webhook-2",
                &app.ctx.keys.fingerprint(NEW_TOKEN)
            )
            .await
            .unwrap()
    );
    assert_eq!(post(2, NEW_TOKEN).await, 200);
    assert_eq!(post(3, TOKEN).await, 401);

    // Disconnected by another replica (this process's held fingerprint stays): once it is
    // older than its time to live, the first webhook still passes on it and has it read again
    // in the background; those after are refused.
    let other_replica = aircall_ingest::connections::ConnectionStore::new(
        crate::helpers::redis().await,
        &app.ctx.settings.redis_key_prefix,
        Duration::from_secs(10),
    );
    other_replica.delete(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(post(4, NEW_TOKEN).await, 200);
    assert!(
        crate::helpers::eventually_async(Duration::from_secs(5), || async {
            post(5, NEW_TOKEN).await == 404
        })
        .await
    );
    app.stop().await;
}
