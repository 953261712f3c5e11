//! The admin API end to end: real HTTP against `serve`, real Redis and RabbitMQ, the simulator
//! playing Aircall (webhooks included), and a worker importing where a test needs one.

use std::path::PathBuf;
use std::time::Duration;

use aircall_ingest::config::{DEVELOPMENT_ADMIN_TOKEN, Settings};
use aircall_ingest::queue::{ImportJob, JobFailure, Message, Trigger};
use aircall_ingest::sim::{CallSpec, CompanyInfo, CompanySpec, Faults, RunningSimulator};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TestApp, eventually_async, queue_depth, redis, roomy_sim, service_settings, start_sim,
};

/// A simulator with one company (no history), `serve` with its admin API, storage in a
/// scratch directory, and a worker on demand. No connection yet: tests make them through the API.
pub(crate) struct AdminTest {
    pub(crate) sim: RunningSimulator,
    pub(crate) company: CompanyInfo,
    pub(crate) app: TestApp,
    root: PathBuf,
    http: reqwest::Client,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl AdminTest {
    pub(crate) async fn start(test: &str, tweak: impl FnOnce(&mut Settings)) -> AdminTest {
        let sim = start_sim(roomy_sim()).await;
        let company = sim
            .state
            .add_company(CompanySpec {
                agents: 3,
                ..CompanySpec::default()
            })
            .unwrap();
        let root =
            std::env::temp_dir().join(format!("aircall-ingest-{test}-{:08x}", fastrand::u32(..)));
        let mut settings = service_settings(test);
        settings.aircall_base_url = sim.base_url.clone();
        settings.storage.root = root.clone();
        settings.import.recording_hosts = vec!["127.0.0.1".into()];
        settings.aircall.max_attempts = 2;
        settings.queue.retry_delays_ms = vec![200];
        tweak(&mut settings);
        let app = TestApp::spawn(settings).await;
        AdminTest {
            sim,
            company,
            app,
            root,
            http: reqwest::Client::new(),
            worker: None,
        }
    }

    pub(crate) fn start_worker(&mut self) {
        let cancel = CancellationToken::new();
        let task = self.app.ctx.start_worker(&cancel).unwrap();
        self.worker = Some((cancel, task));
    }

    /// A request with the admin token.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send_as(Some(DEVELOPMENT_ADMIN_TOKEN), method, path, body)
            .await
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.app.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) fn paying(&self) -> Vec<String> {
        self.company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.clone())
            .collect()
    }

    pub(crate) fn unpaid(&self) -> String {
        self.company
            .agents
            .iter()
            .find(|a| !a.paying)
            .map(|a| a.email.clone())
            .unwrap()
    }

    /// Connects the company as `id` with the paying agents as users.
    pub(crate) async fn connect(&self, id: &str) -> Value {
        let (status, body) = self
            .send(
                Method::POST,
                "/api/connections",
                Some(json!({
                    "id": id,
                    "api_id": self.company.api_id,
                    "api_token": self.company.api_token,
                    "users": self.paying(),
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// A finished call by a paying agent with a small recording, announced by webhooks.
    pub(crate) fn call(&self) -> CallSpec {
        CallSpec {
            agent_email: Some(self.paying()[0].clone()),
            recording_bytes: Some(20_000),
            ..CallSpec::default()
        }
    }

    pub(crate) fn add_call(&self, spec: &CallSpec) -> u64 {
        self.sim.state.add_call(self.company.id, spec).unwrap()
    }

    /// The call's outcome record through the API, once `wanted` holds.
    pub(crate) async fn wait_call(
        &self,
        id: &str,
        call: u64,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let find = || async {
            let (_, page) = self
                .get(&format!("/api/connections/{id}/calls?limit=500"))
                .await;
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|item| item["call_id"] == json!(call))
                .cloned()
        };
        let found = eventually_async(Duration::from_secs(20), || async {
            find().await.is_some_and(|item| wanted(&item))
        })
        .await;
        let item = find().await;
        assert!(found, "call {call}: {item:?}");
        item.unwrap()
    }

    /// The latest run report of `id` started after `after_ms`, once there is one.
    pub(crate) async fn wait_report_after(&self, id: &str, after_ms: i64) -> Value {
        let report = || async {
            let (_, view) = self.get(&format!("/api/connections/{id}")).await;
            let report = view["sync"]["last_report"].clone();
            let running = view["sync"]["running"] == json!(true);
            (report["started_at_ms"].as_i64().unwrap_or(-1) > after_ms && !running)
                .then_some(report)
        };
        assert!(
            eventually_async(Duration::from_secs(20), || async {
                report().await.is_some()
            })
            .await,
            "no report of {id} after {after_ms}"
        );
        report().await.unwrap()
    }

    /// Everything stored under this app's Redis prefix, as text.
    async fn redis_dump(&self) -> String {
        let mut redis = redis().await;
        let prefix = &self.app.ctx.settings.redis_key_prefix;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut dump = String::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let value: Vec<String> = match kind.as_str() {
                "hash" => {
                    redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut redis)
                        .await
                }
                "set" => {
                    redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut redis)
                        .await
                }
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut redis)
                        .await
                }
                "list" => {
                    redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut redis)
                        .await
                }
                _ => redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut redis)
                    .await
                    .map(|v| v.into_iter().collect()),
            }
            .unwrap_or_default();
            dump.push_str(&format!("{key} {kind} {value:?}\n"));
        }
        dump
    }

    pub(crate) async fn stop(mut self) {
        if let Some((cancel, task)) = self.worker.take() {
            cancel.cancel();
            let _ = task.await;
        }
        self.app.stop().await;
        self.sim.stop().await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_a_missing_or_wrong_token() {
    let t = AdminTest::start("admin-auth", |_| {}).await;
    let (status, document) = t
        .send_as(None, Method::GET, "/api/openapi.json", None)
        .await;
    assert_eq!(status, 200, "the document is public");
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 7, "{paths:?}");
    let mut checked = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let path = path.replace("{id}", "acme");
            let (status, body) = t.send_as(None, method.clone(), &path, None).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "missing_token");
            let (status, body) = t
                .send_as(Some("not-the-admin-token"), method.clone(), &path, None)
                .await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_token");
            checked += 1;
        }
    }
    assert!(checked >= 11, "{checked}");
    // Unknown admin paths are closed too, and 404 only with the token.
    let (status, _) = t.send_as(None, Method::GET, "/api/nothing", None).await;
    assert_eq!(status, 401);
    let (status, body) = t.get("/api/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    // A documented path asked with another method: 405, and which methods it takes.
    let response = t
        .http
        .patch(format!("{}/api/connections", t.app.url))
        .bearer_auth(DEVELOPMENT_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_registers_the_webhook_stores_secrets_sealed_and_starts_the_first_import() {
    let t = AdminTest::start("admin-connect", |_| {}).await;
    // A call of last week, there before the connection: the first import brings it.
    let earlier = t.add_call(&CallSpec {
        started_at: Some(now_ms() / 1000 - 3 * 86_400),
        notify: false,
        ..t.call()
    });
    let before = now_ms();

    let body = t.connect("acme").await;

    assert_eq!(body["first_import"], "started");
    let connection = &body["connection"];
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["paying_users"], json!(t.paying().len()));
    assert_eq!(connection["api_id"], json!(t.company.api_id));
    let hooks = t.sim.state.webhooks(t.company.id).unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].events,
        ["call.ended", "call.comm_assets_generated"]
    );
    assert_eq!(
        hooks[0].url,
        format!("{}/webhooks/aircall/acme", t.app.url),
        "at public_url"
    );
    assert_eq!(connection["webhook"]["id"], json!(hooks[0].webhook_id));
    assert_eq!(connection["webhook"]["url"], json!(hooks[0].url));

    let report = t.wait_report_after("acme", before - 1).await;
    assert_eq!(report["kind"], "first_import", "{report}");
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["queued"], 1, "{report}");
    let import = t.app.ctx.broker.names().import.clone();
    let jobs = crate::helpers::take_messages(&import).await;
    assert!(
        jobs.iter()
            .any(|Message::ImportCall(job)| job.call_id.0 == earlier),
        "{jobs:?}"
    );

    // Neither the API token nor the webhook token is stored in clear anywhere.
    let dump = t.redis_dump().await;
    assert!(dump.contains(":connection:acme"), "{dump}");
    assert!(!dump.contains(&t.company.api_token), "{dump}");
    assert!(!dump.contains(&hooks[0].token), "{dump}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_with_refused_credentials_is_422_with_the_checks_and_leaves_nothing() {
    let t = AdminTest::start("admin-badcreds", |_| {}).await;

    let (status, body) = t
        .send(
            Method::POST,
            "/api/connections",
            Some(json!({"id": "acme", "api_id": t.company.api_id, "api_token": "wrong-token"})),
        )
        .await;

    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("revoked") && message.contains("admin"),
        "{message}"
    );
    assert_eq!(
        body["error"]["details"]["checks"].as_array().unwrap().len(),
        3
    );
    assert!(t.sim.state.webhooks(t.company.id).unwrap().is_empty());
    let (status, _) = t.get("/api/connections/acme").await;
    assert_eq!(status, 404);
    let dump = t.redis_dump().await;
    assert!(!dump.contains(":connection:"), "{dump}");
    assert!(!dump.contains("wrong-token"), "{dump}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_an_existing_id_is_409_and_registers_nothing_more() {
    let t = AdminTest::start("admin-twice", |_| {}).await;
    t.connect("acme").await;

    let (status, body) = t
        .send(
            Method::POST,
            "/api/connections",
            Some(
                json!({"id": "acme", "api_id": t.company.api_id, "api_token": t.company.api_token}),
            ),
        )
        .await;

    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "connection_exists");
    assert_eq!(t.sim.state.webhooks(t.company.id).unwrap().len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_requests_are_refused_with_the_field_at_fault() {
    let t = AdminTest::start("admin-validate", |_| {}).await;
    let api_id = t.company.api_id.clone();
    let token = t.company.api_token.clone();
    let cases = [
        (
            json!({"id": "Acme Corp", "api_id": api_id, "api_token": token}),
            "invalid_request",
            "`id`",
        ),
        (
            json!({"id": "acme", "api_id": api_id}),
            "invalid_request",
            "api_token",
        ),
        (
            json!({"id": "acme", "api_id": api_id, "api_token": 42}),
            "invalid_request",
            "`api_token`",
        ),
        (
            json!({"id": "acme", "api_id": "", "api_token": token}),
            "invalid_request",
            "`api_id`",
        ),
        (
            json!({"id": "acme", "api_id": api_id, "api_token": token, "extra": 1}),
            "invalid_request",
            "extra",
        ),
        (
            json!({"id": "acme", "api_id": api_id, "api_token": token, "users": ["ana@acme.com", "bob", "c d@x.io"]}),
            "invalid_emails",
            "`bob`",
        ),
    ];
    for (body, code, names) in cases {
        let (status, answer) = t
            .send(Method::POST, "/api/connections", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body} → {message}");
    }
    let (_, answer) = t
        .send(
            Method::POST,
            "/api/connections",
            Some(json!({"id": "acme", "api_id": api_id, "api_token": token, "users": ["ana@acme.com", "bob", "c d@x.io"]})),
        )
        .await;
    assert_eq!(
        answer["error"]["details"]["invalid_emails"],
        json!(["bob", "c d@x.io"])
    );

    let raw = |content_type: &'static str, body: Vec<u8>| {
        t.http
            .post(format!("{}/api/connections", t.app.url))
            .bearer_auth(DEVELOPMENT_ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = raw("text/plain", b"{}".to_vec()).await.unwrap();
    assert_eq!(response.status(), 415);
    let response = raw("application/json", b"{\"id\": ".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    let response = raw("application/json", vec![b' '; 2 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Nothing was connected by any of them.
    assert!(t.sim.state.webhooks(t.company.id).unwrap().is_empty());
    let (_, list) = t.get("/api/connections").await;
    assert_eq!(list["items"], json!([]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_while_aircall_is_unreachable_is_502_and_stores_nothing() {
    let t = AdminTest::start("admin-unreachable", |s| {
        s.aircall_base_url = url::Url::parse("http://127.0.0.1:9/").unwrap();
    })
    .await;

    let (status, body) = t
        .send(
            Method::POST,
            "/api/connections",
            Some(json!({"id": "acme", "api_id": "x", "api_token": "y"})),
        )
        .await;

    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "aircall_unavailable");
    let (status, _) = t.get("/api/connections/acme").await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_to_a_refused_pair_keeps_the_old_credentials_working() {
    let t = AdminTest::start("admin-rotate-bad", |_| {}).await;
    t.connect("acme").await;
    let first = t.wait_report_after("acme", 0).await;

    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/credentials",
            Some(json!({"api_id": t.company.api_id, "api_token": "regenerated-wrongly"})),
        )
        .await;

    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let (status, body) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;
    assert_eq!(status, 202, "{body}");
    let report = t
        .wait_report_after("acme", first["started_at_ms"].as_i64().unwrap())
        .await;
    assert_eq!(report["error"], Value::Null, "{report}");
    assert!(report["aircall_requests"].as_u64().unwrap() > 0);
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["status"], "active");
    assert_eq!(t.sim.state.webhooks(t.company.id).unwrap().len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_to_a_new_key_replaces_the_old_one() {
    let t = AdminTest::start("admin-rotate", |_| {}).await;
    t.connect("acme").await;
    let first = t.wait_report_after("acme", 0).await;
    let (api_id, api_token) = t.sim.state.generate_api_key(t.company.id).unwrap();

    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/credentials",
            Some(json!({"api_id": api_id, "api_token": api_token})),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["webhook_replaced"], false,
        "same company, same webhook"
    );
    assert_eq!(body["connection"]["api_id"], json!(api_id));
    assert_eq!(t.sim.state.webhooks(t.company.id).unwrap().len(), 1);
    // The old key is revoked; a pass started after that works, with the new key.
    assert!(t.sim.state.revoke_api_key(&t.company.api_id));
    let rotated = t
        .wait_report_after("acme", first["started_at_ms"].as_i64().unwrap())
        .await;
    let (status, _) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;
    assert_eq!(status, 202);
    let report = t
        .wait_report_after("acme", rotated["started_at_ms"].as_i64().unwrap())
        .await;
    assert_eq!(report["error"], Value::Null, "{report}");
    assert!(report["aircall_requests"].as_u64().unwrap() > 0, "{report}");
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["status"], "active");
    let dump = t.redis_dump().await;
    assert!(!dump.contains(&api_token), "{dump}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_credentials_revive_a_refused_connection_and_replay_its_parked_jobs() {
    // Every job asks Aircall for its call (no snapshot is fresh enough), as after a backlog.
    let mut t = AdminTest::start("admin-revive", |s| s.import.recording_url_fresh_ms = 0).await;
    t.start_worker();
    t.connect("acme").await;
    let first = t.wait_report_after("acme", 0).await;
    // The key is revoked in Aircall: the next pass finds out and marks the connection.
    assert!(t.sim.state.revoke_api_key(&t.company.api_id));
    let (status, _) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;
    assert_eq!(status, 202);
    t.wait_report_after("acme", first["started_at_ms"].as_i64().unwrap())
        .await;
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["status"], "invalid_credentials", "{view}");
    // A call ends meanwhile: its job is parked in the dead-letter queue.
    let call = t.add_call(&t.call());
    let parked = t
        .wait_call("acme", call, |c| c["outcome"] == "failed")
        .await;
    assert_eq!(parked["reason"], "invalid_credentials");
    // Both of the call's webhooks (`call.ended`, `call.comm_assets_generated`) made a job;
    // both are parked.
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            t.get("/api/dead-letters").await.1["total"] == json!(2)
        })
        .await
    );
    let (_, dead) = t.get("/api/dead-letters?connection_id=acme").await;
    let parked = dead["items"].as_array().unwrap();
    assert!(!parked.is_empty(), "{dead}");
    assert!(
        parked
            .iter()
            .all(|d| d["failure"]["code"] == "invalid_credentials" && d["call_id"] == json!(call)),
        "{dead}"
    );

    let (api_id, api_token) = t.sim.state.generate_api_key(t.company.id).unwrap();
    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/credentials",
            Some(json!({"api_id": api_id, "api_token": api_token})),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status_restored"], true);
    assert_eq!(body["dead_letters_replayed"], json!(parked.len()));
    assert_eq!(body["connection"]["status"], "active");
    t.wait_call("acme", call, |c| c["outcome"] == "imported")
        .await;
    let (_, dead) = t.get("/api/dead-letters").await;
    assert_eq!(dead["total"], 0, "{dead}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_removes_the_webhook_and_erases_credentials_but_keeps_imports() {
    let mut t = AdminTest::start("admin-disconnect", |_| {}).await;
    t.start_worker();
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let call = t.add_call(&t.call());
    let imported = t
        .wait_call("acme", call, |c| c["outcome"] == "imported")
        .await;
    let recording = imported["recording"]["recording_key"].as_str().unwrap();
    let skipped = t.add_call(&CallSpec {
        agent_email: Some(t.unpaid()),
        ..t.call()
    });
    t.wait_call("acme", skipped, |c| c["outcome"] == "skipped")
        .await;
    let webhook = t.sim.state.webhooks(t.company.id).unwrap()[0].clone();

    let (status, body) = t.send(Method::DELETE, "/api/connections/acme", None).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook"], "removed");
    assert_eq!(body["decisions_erased"], 1);
    assert!(t.sim.state.webhooks(t.company.id).unwrap().is_empty());
    let (status, _) = t.get("/api/connections/acme").await;
    assert_eq!(status, 404);
    let dump = t.redis_dump().await;
    assert!(!dump.contains(":connection:acme"), "{dump}");
    assert!(!dump.contains(":reconcile:"), "{dump}");
    assert!(!dump.contains(&t.company.api_id), "{dump}");
    let decisions: Vec<&str> = dump.lines().filter(|l| l.contains(":calls:")).collect();
    assert!(
        !decisions.iter().any(|l| l.contains(&skipped.to_string())),
        "{decisions:?}"
    );
    assert!(
        decisions.iter().any(|l| l.contains(&call.to_string())),
        "the import is remembered: {decisions:?}"
    );
    assert!(t.root.join(recording).exists(), "the recording stays");
    // Aircall's webhook, were it still posting, is refused.
    let response = t
        .app
        .post(
            "acme",
            &json!({"resource": "call", "event": "call.ended", "timestamp": 1, "token": webhook.token, "data": {"id": 1}}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let (status, _) = t.send(Method::DELETE, "/api/connections/acme", None).await;
    assert_eq!(status, 404);
    // Connecting again starts afresh, and the import is not repeated.
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let (_, page) = t.get("/api/connections/acme/calls").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        items.iter().filter(|c| c["call_id"] == json!(call)).count(),
        1
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_when_aircall_cannot_remove_the_webhook() {
    let t = AdminTest::start("admin-disconnect-down", |_| {}).await;
    t.connect("acme").await;
    t.connect_second("globex").await;
    // Aircall answers 5xx to everything of acme's company.
    t.sim.state.set_faults(
        Some(t.company.id),
        Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
    );

    let (status, body) = t.send(Method::DELETE, "/api/connections/acme", None).await;

    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "aircall_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("force"));
    let (status, _) = t.get("/api/connections/acme").await;
    assert_eq!(status, 200, "nothing erased");
    let (status, body) = t
        .send(Method::DELETE, "/api/connections/acme?force=true", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook"], "unreachable");
    let (status, _) = t.get("/api/connections/acme").await;
    assert_eq!(status, 404);

    // Revoked credentials cannot remove the webhook either, but the disconnect goes through.
    let second = t.second_company();
    assert!(t.sim.state.revoke_api_key(&second.api_id));
    let (status, body) = t
        .send(Method::DELETE, "/api/connections/globex", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook"], "credentials_refused");
    t.stop().await;
}

impl AdminTest {
    /// A second company in the simulator, connected as `id` (no users).
    async fn connect_second(&self, id: &str) -> Value {
        let company = self.sim.state.add_company(CompanySpec::default()).unwrap();
        let (status, body) = self
            .send(
                Method::POST,
                "/api/connections",
                Some(json!({"id": id, "api_id": company.api_id, "api_token": company.api_token})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    fn second_company(&self) -> CompanyInfo {
        self.sim
            .state
            .companies()
            .into_iter()
            .find(|c| c.id != self.company.id)
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_users_are_validated_normalised_and_replaced() {
    let t = AdminTest::start("admin-users", |_| {}).await;
    let (status, body) = t
        .send(
            Method::POST,
            "/api/connections",
            Some(
                json!({"id": "acme", "api_id": t.company.api_id, "api_token": t.company.api_token}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["first_import"], "waiting_for_users");
    assert_eq!(body["connection"]["status"], "waiting_for_users");
    let (status, body) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("waiting_for_users"))
    );

    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/users",
            Some(json!({"emails": ["ana@acme.com", "not-an-email", "bob@", "  "]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_emails");
    assert_eq!(
        body["error"]["details"]["invalid_emails"],
        json!(["not-an-email", "bob@", "  "])
    );
    let (_, users) = t.get("/api/connections/acme/users").await;
    assert_eq!(users["count"], 0, "nothing changed: {users}");

    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/users",
            Some(json!({"emails": [" Ana@Acme.com ", "bob@acme.com", "ana@acme.com"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emails"], json!(["ana@acme.com", "bob@acme.com"]));
    let (_, users) = t.get("/api/connections/acme/users").await;
    assert_eq!(users["emails"], json!(["ana@acme.com", "bob@acme.com"]));
    assert!(users["changed_at"].is_string());
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["status"], "active", "setting users ends the wait");
    assert_eq!(view["paying_users"], 2);
    let (status, _) = t
        .send(
            Method::PUT,
            "/api/connections/nobody/users",
            Some(json!({"emails": []})),
        )
        .await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_paying_agent_has_their_skipped_calls_imported() {
    let mut t = AdminTest::start("admin-newly-paying", |_| {}).await;
    t.start_worker();
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let unpaid = t.unpaid();
    let call = t.add_call(&CallSpec {
        agent_email: Some(unpaid.clone()),
        ..t.call()
    });
    let skipped = t
        .wait_call("acme", call, |c| c["outcome"] == "skipped")
        .await;
    assert_eq!(skipped["reason"], "user_not_matched");

    let mut users = t.paying();
    users.push(unpaid.to_uppercase());
    let (status, _) = t
        .send(
            Method::PUT,
            "/api/connections/acme/users",
            Some(json!({ "emails": users })),
        )
        .await;
    assert_eq!(status, 200);

    t.wait_call("acme", call, |c| c["outcome"] == "imported")
        .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_endpoint_says_why_each_call_was_or_was_not_imported() {
    let mut t = AdminTest::start("admin-why", |s| {
        s.import.max_recording_bytes = 100_000;
        s.reconcile.first_import_max_calls = 1;
    })
    .await;
    let now = now_ms() / 1000;
    // Two eligible calls of yesterday, before the connection: the first import takes one.
    let older = t.add_call(&CallSpec {
        started_at: Some(now - 86_400 - 600),
        notify: false,
        ..t.call()
    });
    let newer = t.add_call(&CallSpec {
        started_at: Some(now - 86_400),
        notify: false,
        ..t.call()
    });
    t.start_worker();
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let paying = t.paying()[0].clone();
    let unpaid = t.unpaid();
    let mut expected = vec![
        (older, "first_import_cap", "200 most recent".to_string()),
        (
            t.add_call(&CallSpec {
                started_at: Some(now - 14 * 86_400 - 600),
                ..t.call()
            }),
            "outside_window",
            "before the import window".into(),
        ),
        (
            t.add_call(&CallSpec {
                agent_email: None,
                ..t.call()
            }),
            "no_user",
            "No Aircall user".into(),
        ),
        (
            t.add_call(&CallSpec {
                agent_email: Some(unpaid.clone()),
                ..t.call()
            }),
            "user_not_matched",
            format!("The agent's email {unpaid} does not belong to a paying user"),
        ),
        (
            t.add_call(&CallSpec {
                started_at: Some(now - 2 * 86_400),
                recording_bytes: None,
                ..t.call()
            }),
            "no_recording",
            "has no recording".into(),
        ),
        (
            t.add_call(&CallSpec {
                agent_email: Some(paying),
                recording_bytes: Some(100_001),
                ..t.call()
            }),
            "recording_too_large",
            "larger than the size limit".into(),
        ),
    ];
    for (call, reason, sentence) in &expected {
        let item = t
            .wait_call("acme", *call, |c| c["outcome"] == "skipped")
            .await;
        assert_eq!(item["reason"], *reason, "{item}");
        let explanation = item["explanation"].as_str().unwrap();
        assert!(
            explanation.contains(sentence.as_str()),
            "{reason}: {explanation}"
        );
        assert!(item["decided_at"].is_string() && item["trigger"].is_string());
    }
    let imported = t
        .wait_call("acme", newer, |c| c["outcome"] == "imported")
        .await;
    assert!(imported["recording"]["sha256"].is_string(), "{imported}");

    // Filters: by outcome, by reason, by date.
    let (_, page) = t.get("/api/connections/acme/calls?outcome=skipped").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 6, "{page}");
    let (_, page) = t
        .get("/api/connections/acme/calls?reason=user_not_matched")
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["agent_email"], json!(unpaid));
    let (_, page) = t
        .get("/api/connections/acme/calls?outcome=imported&reason=no_user")
        .await;
    assert_eq!(page["items"], json!([]));
    let (_, page) = t.get("/api/connections/acme/calls?since=2999-01-01").await;
    assert_eq!(page["items"], json!([]));
    // Pages of 2 walk every call once, newest first.
    let mut seen = Vec::new();
    let mut path = "/api/connections/acme/calls?limit=2".to_string();
    loop {
        let (status, page) = t.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|c| c["call_id"].as_u64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/connections/acme/calls?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    expected.push((newer, "", String::new()));
    let mut wanted: Vec<u64> = expected.iter().map(|(c, _, _)| *c).collect();
    wanted.sort();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, wanted, "{seen:?}");
    // The counts on the connection match.
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["calls"]["skipped"], 6, "{view}");
    assert_eq!(view["calls"]["imported"], 1, "{view}");
    assert_eq!(view["reasons"]["first_import_cap"], 1, "{view}");
    // Bad queries are refused.
    for bad in [
        "outcome=lost",
        "reason=Not-A-Code",
        "since=yesterday",
        "cursor=abc",
        "limit=-1",
    ] {
        let (status, body) = t.get(&format!("/api/connections/acme/calls?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}: {body}");
    }
    let (status, _) = t.get("/api/connections/nobody/calls").await;
    assert_eq!(status, 404);
    t.stop().await;
}

/// Puts a job in the dead-letter queue as a worker does after its last attempt.
async fn dead_letter(t: &AdminTest, connection: &str, call: u64, code: &str) -> String {
    let mut job = ImportJob::new(
        connection,
        aircall_ingest::aircall::CallId(call),
        Trigger::Webhook,
        now_ms(),
    );
    job.attempt = 4;
    job.failure = Some(JobFailure {
        code: code.into(),
        message: format!("{code} on every attempt"),
        at_ms: now_ms(),
    });
    let message = Message::ImportCall(job.clone());
    let names = t.app.ctx.broker.names();
    t.app
        .ctx
        .broker
        .publish_to(
            "",
            &names.dead,
            (&message).into(),
            &message.encode(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    job.job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_errors_and_replayed() {
    let t = AdminTest::start("admin-dead", |_| {}).await;
    let first = dead_letter(&t, "acme", 11, "aircall_unavailable").await;
    let second = dead_letter(&t, "globex", 12, "download_failed").await;
    let names = t.app.ctx.broker.names().clone();
    t.app
        .ctx
        .broker
        .publish_to(
            "",
            &names.dead,
            aircall_ingest::queue::broker::Envelope {
                id: Some("garbage-1"),
                kind: None,
            },
            b"not json",
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let (status, page) = t.get("/api/dead-letters").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["job_id"], json!(first));
    assert_eq!(items[0]["failure"]["code"], "aircall_unavailable");
    assert_eq!(items[0]["attempts"], 4);
    assert_eq!(items[2]["failure"]["code"], "unreadable");
    assert_eq!(items[2]["replayable"], false);
    // Listing takes nothing, and RabbitMQ counts every message again by the time it answers
    // (a quorum queue takes given-back messages in a moment after their nack): one listing
    // after another sees the whole queue.
    for _ in 0..10 {
        let (_, page) = t.get("/api/dead-letters?connection_id=globex").await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(page["total"], 3, "{page}");
    }
    assert_eq!(queue_depth(&names.dead).await, 3, "listing takes nothing");

    // One, by id: it is back in the import queue as a fresh job.
    let (status, body) = t
        .send(
            Method::POST,
            "/api/dead-letters/replay",
            Some(json!({ "job_id": second })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1);
    let jobs = crate::helpers::take_messages(&names.import).await;
    let [Message::ImportCall(job)] = jobs.as_slice() else {
        panic!("{jobs:?}")
    };
    assert_eq!((job.call_id.0, job.attempt), (12, 0));
    assert!(job.failure.is_none());
    let (status, body) = t
        .send(
            Method::POST,
            "/api/dead-letters/replay",
            Some(json!({ "job_id": second })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("dead_letter_not_found"))
    );
    for bad in [
        json!({}),
        json!({"job_id": first, "all": true}),
        json!({"all": false}),
    ] {
        let (status, body) = t
            .send(Method::POST, "/api/dead-letters/replay", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // All: the unreadable one stays.
    let (status, body) = t
        .send(
            Method::POST,
            "/api/dead-letters/replay",
            Some(json!({ "all": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"replayed": 1, "unreadable": 1, "remaining": 1})
    );
    assert_eq!(queue_depth(&names.dead).await, 1);
    assert_eq!(t.get("/api/dead-letters").await.1["total"], 1);
    assert_eq!(crate::helpers::take_messages(&names.import).await.len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_dropped_half_way_still_gives_everything_back_and_lets_go_of_the_reader_lease() {
    use aircall_ingest::import::lease::Leases;
    use aircall_ingest::queue::dead_letters::DeadLetters;

    let t = AdminTest::start("admin-dead-dropped", |_| {}).await;
    // Enough dead letters that reading them takes a while.
    let letters = 500;
    let publishes = (0..letters).map(|call| dead_letter(&t, "acme", call, "download_failed"));
    futures_util::future::join_all(publishes).await;
    let prefix = &t.app.ctx.settings.redis_key_prefix;
    let dead_letters = DeadLetters::new(
        t.app.ctx.broker.clone(),
        Leases::new(redis().await, prefix, Duration::from_secs(60)),
        prefix,
        10_000,
    );

    // A listing whose caller goes away (a request dropped by a server stopping) once it is
    // the reader.
    let reader_key = format!("{prefix}:dead-letters:reader");
    let mut redis = redis().await;
    {
        let listing = dead_letters.list(None, 1_000);
        tokio::pin!(listing);
        loop {
            tokio::select! {
                biased;
                page = &mut listing => panic!("the listing ended before it could be dropped: {page:?}"),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            let held: bool = redis::cmd("EXISTS")
                .arg(&reader_key)
                .query_async(&mut redis)
                .await
                .unwrap();
            if held {
                break;
            }
        }
    }
    // The next reader is let in as soon as that listing ends (not refused as busy until the
    // lease expires), and sees every message back.
    let page = dead_letters.list(None, 1_000).await.unwrap();
    assert_eq!(
        (page.total, page.items.len()),
        (letters as u32, letters as usize)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_all_replays_each_job_once_even_when_it_fails_again_at_once() {
    let mut t = AdminTest::start("admin-dead-bounce", |_| {}).await;
    t.start_worker();
    // Jobs whose connection id is not one: the worker sends each straight back to the dead
    // letters, while the replay is still reading them.
    let mut ids = Vec::new();
    for call in 0..40 {
        ids.push(dead_letter(&t, "Not An Id!", 100 + call, "invalid_job").await);
    }
    let dead = t.app.ctx.broker.names().dead.clone();
    for round in 0..2 {
        let (status, body) = t
            .send(
                Method::POST,
                "/api/dead-letters/replay",
                Some(json!({ "all": true })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["replayed"], 40, "round {round}: {body}");
        // Each comes back once, and the queue holds each job once.
        assert!(
            eventually_async(Duration::from_secs(20), || async {
                queue_depth(&dead).await == 40
            })
            .await,
            "round {round}: {} dead letters",
            queue_depth(&dead).await
        );
        let (_, page) = t.get("/api/dead-letters").await;
        let mut listed: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["job_id"].as_str().unwrap().to_string())
            .collect();
        listed.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(listed, expected, "round {round}");
    }
    t.stop().await;
}

/// A connection `acme` (first import done, a worker running) with one call imported — its id
/// and outcome record — and one skipped for an agent who does not pay.
async fn imported_and_skipped(test: &str) -> (AdminTest, (u64, Value), u64) {
    let mut t = AdminTest::start(test, |_| {}).await;
    t.start_worker();
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let imported = t.add_call(&t.call());
    let skipped = t.add_call(&CallSpec {
        agent_email: Some(t.unpaid()),
        ..t.call()
    });
    let record = t
        .wait_call("acme", imported, |c| c["outcome"] == "imported")
        .await;
    t.wait_call("acme", skipped, |c| c["outcome"] == "skipped")
        .await;
    (t, (imported, record), skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_counts_each_day_s_decisions_by_outcome() {
    let (t, _, _) = imported_and_skipped("admin-activity").await;

    // Read within one UTC day (a read that straddles midnight is taken again).
    let day = |ms: i64| aircall_ingest::admin::rfc3339(ms)[..10].to_string();
    let (read_at, activity) = loop {
        let before = now_ms();
        let (status, activity) = t.get("/api/connections/acme/activity").await;
        assert_eq!(status, 200, "{activity}");
        if day(now_ms()) == day(before) {
            break (before, activity);
        }
    };
    let today = day(read_at);
    let days = activity["days"].as_array().unwrap();
    assert_eq!(days.len(), 14, "two weeks by default");
    assert_eq!(days[13]["date"], json!(today), "today last");
    assert_eq!(days[0]["date"], json!(day(read_at - 13 * 86_400_000)));
    // Today holds every decision so far (the first import decided nothing: no history).
    let (_, view) = t.get("/api/connections/acme").await;
    for outcome in ["imported", "skipped", "pending", "failed"] {
        assert_eq!(
            days[13][outcome], view["calls"][outcome],
            "{outcome}: {activity}"
        );
        let earlier: u64 = days[..13]
            .iter()
            .map(|d| d[outcome].as_u64().unwrap())
            .sum();
        assert_eq!(earlier, 0, "{outcome}: {activity}");
    }
    assert!(days[13]["imported"].as_u64().unwrap() >= 1);

    let (_, week) = t.get("/api/connections/acme/activity?days=7").await;
    assert_eq!(week["days"].as_array().unwrap().len(), 7);
    for bad in ["0", "91", "x"] {
        let (status, body) = t
            .get(&format!("/api/connections/acme/activity?days={bad}"))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_query"))
        );
    }
    let (status, body) = t.get("/api/connections/nobody/activity").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_connection"))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_served_for_imported_calls_only() {
    let (t, (imported, record), skipped) = imported_and_skipped("admin-recording").await;
    let get = |path: String| {
        reqwest::Client::new()
            .get(format!("{}{path}", t.app.url.trim_end_matches('/')))
            .bearer_auth(DEVELOPMENT_ADMIN_TOKEN)
            .send()
    };

    let played = get(format!("/api/connections/acme/calls/{imported}/recording"))
        .await
        .unwrap();
    assert_eq!(played.status(), 200);
    assert_eq!(played.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        played.headers()["content-length"],
        record["recording"]["bytes"].to_string().as_str()
    );
    let body = played.bytes().await.unwrap();
    use sha2::Digest as _;
    assert_eq!(
        json!(hex::encode(sha2::Sha256::digest(&body))),
        record["recording"]["sha256"]
    );

    for (path, code) in [
        (
            format!("/api/connections/acme/calls/{skipped}/recording"),
            "not_imported",
        ),
        (
            "/api/connections/acme/calls/123/recording".into(),
            "not_imported",
        ),
        (
            "/api/connections/acme/calls/abc/recording".into(),
            "not_imported",
        ),
        (
            "/api/connections/nobody/calls/1/recording".into(),
            "unknown_connection",
        ),
    ] {
        let answer = get(path.clone()).await.unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}");
    }

    // The file gone from storage: said so, not a 500.
    let key = record["recording"]["recording_key"].as_str().unwrap();
    std::fs::remove_file(t.root.join(key)).unwrap();
    let answer = get(format!("/api/connections/acme/calls/{imported}/recording"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "recording_missing");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_runs_a_pass_and_says_when_it_cannot() {
    let t = AdminTest::start("admin-sync", |_| {}).await;
    let (status, _) = t
        .send(Method::POST, "/api/connections/nobody/sync", None)
        .await;
    assert_eq!(status, 404);
    t.connect("acme").await;
    let first = t.wait_report_after("acme", 0).await;
    // Another process holds the connection's lock.
    let lock = format!(
        "{}:reconcile:{{acme}}:lock",
        t.app.ctx.settings.redis_key_prefix
    );
    let mut redis = redis().await;
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, body) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("sync_in_progress"))
    );
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["sync"]["running"], true);
    let _: () = redis::cmd("DEL")
        .arg(&lock)
        .query_async(&mut redis)
        .await
        .unwrap();

    let (status, body) = t
        .send(Method::POST, "/api/connections/acme/sync", None)
        .await;

    assert_eq!(status, 202, "{body}");
    let report = t
        .wait_report_after("acme", first["started_at_ms"].as_i64().unwrap())
        .await;
    assert_eq!(report["kind"], "incremental", "{report}");
    let (_, view) = t.get("/api/connections/acme").await;
    assert!(view["sync"]["first_import_at"].is_string(), "{view}");
    assert!(view["sync"]["next_due_at"].is_string(), "{view}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_in_pages_by_id() {
    let t = AdminTest::start("admin-list", |_| {}).await;
    t.connect("acme").await;
    t.connect_second("beta").await;
    t.connect_second("gamma").await;

    let (status, page) = t.get("/api/connections?limit=2").await;

    assert_eq!(status, 200);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "beta"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = t
        .get(&format!("/api/connections?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page["items"][0]["id"], "gamma");
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["items"][0]["status"], "waiting_for_users");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_import_disconnect_cycle_logs_no_secret() {
    let sim = start_sim(roomy_sim()).await;
    let company = sim
        .state
        .add_company(CompanySpec {
            agents: 3,
            ..CompanySpec::default()
        })
        .unwrap();
    let settings = service_settings("admin-logs");
    let root = std::env::temp_dir().join(format!("aircall-ingest-logs-{:08x}", fastrand::u32(..)));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin_token = format!("admin-token-{:016x}", fastrand::u64(..));
    let secret_key = hex::encode(fastrand::u64(..).to_be_bytes().repeat(4));
    let log_path = root.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The real binary, as operators run it, logging at debug level.
    let service = std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .args(["all", "--listen", &addr.to_string()])
        .env("AIRCALL_INGEST_MODE", "development")
        .env("AIRCALL_INGEST_ADMIN_TOKEN", &admin_token)
        .env("AIRCALL_INGEST_SECRET_KEY", &secret_key)
        .env("AIRCALL_INGEST_AIRCALL_BASE_URL", sim.base_url.as_str())
        .env("AIRCALL_INGEST_PUBLIC_URL", format!("http://{addr}/"))
        .env(
            "AIRCALL_INGEST_REDIS_KEY_PREFIX",
            &settings.redis_key_prefix,
        )
        .env("AIRCALL_INGEST_QUEUE__PREFIX", &settings.queue.prefix)
        .env("AIRCALL_INGEST_STORAGE__ROOT", &root)
        .env("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1")
        .env("AIRCALL_INGEST_LOG__LEVEL", "debug")
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed if the test fails before it stops the service itself.
    let mut service = crate::helpers::KillOnDrop(service);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            http.get(format!("{base}/healthz")).send().await.is_ok()
        })
        .await
    );
    let paying: Vec<String> = company
        .agents
        .iter()
        .filter(|a| a.paying)
        .map(|a| a.email.clone())
        .collect();

    let response = http
        .post(format!("{base}/api/connections"))
        .bearer_auth(&admin_token)
        .json(&json!({"id": "acme", "api_id": company.api_id, "api_token": company.api_token, "users": paying}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let webhook_token = sim.state.webhooks(company.id).unwrap()[0].token.clone();
    let call = sim
        .state
        .add_call(
            company.id,
            &CallSpec {
                agent_email: Some(paying[0].clone()),
                recording_bytes: Some(20_000),
                ..CallSpec::default()
            },
        )
        .unwrap();
    let imported = eventually_async(Duration::from_secs(30), || async {
        let page: Value = http
            .get(format!(
                "{base}/api/connections/acme/calls?outcome=imported"
            ))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"][0]["call_id"] == json!(call)
    })
    .await;
    assert!(imported);
    let response = http
        .delete(format!("{base}/api/connections/acme"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    std::process::Command::new("kill")
        .args(["-TERM", &service.0.id().to_string()])
        .status()
        .unwrap();
    let exited = crate::helpers::eventually(Duration::from_secs(30), || {
        service.0.try_wait().unwrap().is_some()
    })
    .await;
    assert!(exited, "the service stops on SIGTERM");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("connected an Aircall company"), "{logs}");
    assert!(logs.contains("disconnected an Aircall company"), "{logs}");
    assert!(logs.contains("DEBUG"), "debug lines captured");
    for (name, secret) in [
        ("API token", company.api_token.as_str()),
        ("webhook token", webhook_token.as_str()),
        ("admin token", admin_token.as_str()),
        ("secret key", secret_key.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {name} is in the logs");
    }

    let ctx = aircall_ingest::app::Context::new(settings).unwrap();
    let _ = ctx.broker.connect().await;
    TestApp::adopt(ctx, CancellationToken::new()).stop().await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&log_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_to_another_company_s_key_moves_the_webhook_there() {
    let t = AdminTest::start("admin-rotate-company", |_| {}).await;
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let other = t.sim.state.add_company(CompanySpec::default()).unwrap();

    let (status, body) = t
        .send(
            Method::PUT,
            "/api/connections/acme/credentials",
            Some(json!({"api_id": other.api_id, "api_token": other.api_token})),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook_replaced"], true, "{body}");
    assert!(
        t.sim.state.webhooks(t.company.id).unwrap().is_empty(),
        "the old one is removed"
    );
    let hooks = t.sim.state.webhooks(other.id).unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        body["connection"]["webhook"]["id"],
        json!(hooks[0].webhook_id)
    );
    // The new webhook's token is the one the endpoint accepts now.
    let event = |token: &str| json!({"resource": "call", "event": "call.ended", "timestamp": 1, "token": token, "data": {"id": 77}});
    assert_eq!(
        t.app.post("acme", &event(&hooks[0].token)).await.status(),
        200
    );
    t.stop().await;
}

fn skipped_record(call: u64) -> aircall_ingest::connections::OutcomeRecord {
    aircall_ingest::connections::OutcomeRecord {
        call_id: aircall_ingest::aircall::CallId(call),
        outcome: aircall_ingest::connections::Outcome::Skipped,
        reason: Some("user_not_matched".into()),
        decided_at_ms: call as i64,
        trigger: Trigger::Reconciliation,
        agent_email: None,
        agent_name: None,
        direction: None,
        started_at: None,
        duration: None,
        error: None,
        stored: None,
        announced: false,
        recheck_at_ms: None,
        pending_checks: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_lost_its_lock_to_a_disconnect_writes_nothing() {
    let t = AdminTest::start("admin-fenced", |_| {}).await;
    t.connect("acme").await;
    t.wait_report_after("acme", 0).await;
    let id = aircall_ingest::connections::ConnectionId::parse("acme").unwrap();
    let reconciler = t.app.ctx.reconciler();
    // A pass holds the lock…
    let lock = reconciler
        .locks
        .acquire_key(reconciler.state.lock_key(&id))
        .await
        .unwrap()
        .unwrap();
    let (status, _) = t.send(Method::DELETE, "/api/connections/acme", None).await;
    assert_eq!(status, 200);
    // …and ends after the disconnect: neither its state nor its decisions are written.
    let state = aircall_ingest::reconcile::ReconcileState {
        watermark: Some(123),
        ..Default::default()
    };
    let report = aircall_ingest::reconcile::RunReport::new(&id, 1);
    let saved = reconciler
        .state
        .save_with_report(&id, &state, &report, 5, lock.fence())
        .await
        .unwrap();
    assert!(!saved);
    let recorded = t
        .app
        .ctx
        .outcomes
        .record_fenced(&id, &skipped_record(1), Some(lock.fence()))
        .await
        .unwrap();
    assert_eq!(recorded, aircall_ingest::connections::Recorded::LeaseLost);
    let dump = t.redis_dump().await;
    assert!(!dump.contains(":reconcile:"), "{dump}");
    assert!(!dump.contains(":calls:"), "{dump}");

    // A refusal of credentials replaced since does not mark the connection either.
    t.connect("acme").await;
    let before = t.app.ctx.connections.get(&id).await.unwrap().unwrap();
    let (api_id, api_token) = t.sim.state.generate_api_key(t.company.id).unwrap();
    let (status, _) = t
        .send(
            Method::PUT,
            "/api/connections/acme/credentials",
            Some(json!({"api_id": api_id, "api_token": api_token})),
        )
        .await;
    assert_eq!(status, 200);
    let marked = t
        .app
        .ctx
        .connections
        .mark_invalid_credentials(&id, &before.api_token_sealed)
        .await
        .unwrap();
    assert!(!marked);
    let (_, view) = t.get("/api/connections/acme").await;
    assert_eq!(view["status"], "active");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_decisions_keeps_imports_and_goes_in_batches() {
    use aircall_ingest::connections::Outcome;
    let t = AdminTest::start("admin-forget", |_| {}).await;
    let id = aircall_ingest::connections::ConnectionId::parse("acme").unwrap();
    let outcomes = &t.app.ctx.outcomes;
    for call in 0..2_300u64 {
        let mut record = skipped_record(call);
        (record.outcome, record.reason) = match call % 3 {
            0 => (Outcome::Skipped, Some("no_user".into())),
            1 => (Outcome::Pending, Some("recording_not_ready".into())),
            _ => (Outcome::Failed, Some("download_failed".into())),
        };
        outcomes.record(&id, &record).await.unwrap();
    }
    for call in 10_000..10_003u64 {
        let mut record = skipped_record(call);
        (record.outcome, record.reason) = (Outcome::Imported, None);
        outcomes.record(&id, &record).await.unwrap();
    }

    let erased = outcomes.forget_undecided(&id).await.unwrap();

    assert_eq!(erased, 2_300);
    let counts = outcomes.counts(&id).await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("outcome:imported".to_string(), 3)]
    );
    let dump = t.redis_dump().await;
    let keys: Vec<&str> = dump
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|k| k.contains(":calls:"))
        .collect();
    assert_eq!(
        keys.len(),
        3,
        "the hash, `all` and `outcome:imported`: {keys:?}"
    );
    t.stop().await;
}
