//! What every test needs: a simulator on port 0, settings pointing at it with a key prefix of
//! its own, a Redis connection, and a webhook receiver.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use aircall_ingest::aircall::{Aircall, AircallClient, Credentials};
use aircall_ingest::app;
use aircall_ingest::config::{Mode, Settings};
use aircall_ingest::sim::{CompanyInfo, CompanySpec, RunningSimulator, SimSettings};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use url::Url;

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("test:{test}:{:08x}", fastrand::u32(..))
}

/// Settings of a test: development mode, Aircall at `base`, fast backoffs, its own prefix.
pub fn settings(test: &str, base: &Url) -> Settings {
    let mut s = Settings {
        mode: Mode::Development,
        ..Settings::default()
    };
    s.redis_key_prefix = unique_prefix(test);
    s.aircall_base_url = base.clone();
    s.aircall.backoff_initial_ms = 10;
    s.aircall.backoff_max_ms = 100;
    s.aircall.requests_per_window = 100_000;
    s
}

pub async fn start_sim(settings: SimSettings) -> RunningSimulator {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    RunningSimulator::start(settings, listener).unwrap()
}

/// A simulator without rate limit worries, and one company with `spec`.
pub async fn sim_with(settings: SimSettings, spec: CompanySpec) -> (RunningSimulator, CompanyInfo) {
    let sim = start_sim(settings).await;
    let company = sim.state.add_company(spec).unwrap();
    (sim, company)
}

pub fn roomy_sim() -> SimSettings {
    SimSettings {
        rate_limit: 1_000_000,
        ..SimSettings::for_tests()
    }
}

pub fn aircall(settings: &Settings) -> Aircall {
    app::aircall(settings, app::redis(settings).unwrap()).unwrap()
}

pub fn credentials(company: &CompanyInfo) -> Credentials {
    Credentials {
        api_id: company.api_id.clone(),
        api_token: SecretString::from(company.api_token.clone()),
    }
}

/// The budget key tests use for a simulated company.
pub fn budget_key(company: &CompanyInfo) -> String {
    format!("company-{}", company.id)
}

pub fn client(settings: &Settings, company: &CompanyInfo) -> AircallClient {
    aircall(settings).client(
        credentials(company),
        &budget_key(company),
        CancellationToken::new(),
    )
}

pub async fn redis() -> redis::aio::ConnectionManager {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or_default()
    }
}

/// An HTTP endpoint that records what it receives, failing the first `fail_first` requests.
#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub fail_remaining: Arc<Mutex<u32>>,
    pub url: String,
}

impl Receiver {
    pub async fn start(fail_first: u32) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Receiver {
            received: Arc::default(),
            fail_remaining: Arc::new(Mutex::new(fail_first)),
            url,
        };
        let shared = receiver.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().route(
                "/hook",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let shared = shared.clone();
                    async move {
                        let mut fail = shared.fail_remaining.lock().unwrap();
                        if *fail > 0 {
                            *fail -= 1;
                            return HttpResponse::InternalServerError().finish();
                        }
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = serde_json::from_slice(&body).unwrap_or_default();
                        shared
                            .received
                            .lock()
                            .unwrap()
                            .push(Received { headers, body });
                        HttpResponse::Ok().finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        receiver
    }

    pub fn fail_next(&self, n: u32) {
        *self.fail_remaining.lock().unwrap() = n;
    }

    pub fn events(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|r| r.event() == event).count()
    }
}

/// The real RabbitMQ and Redis of the test machine.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// Settings of a service under test: its own Redis prefix and queue names, one short retry
/// queue, development secrets.
pub fn service_settings(test: &str) -> Settings {
    let mut s = settings(test, &Url::parse("http://127.0.0.1:9/").unwrap());
    s.queue.prefix = format!("test-{test}-{:08x}", fastrand::u32(..));
    s.queue.retry_delays_ms = vec![1_000];
    s.serve.workers = 1;
    s.serve.shutdown_timeout_ms = 1_000;
    s.intake.spool_drain_interval_ms = 100;
    s
}

/// A `serve` role running in the test on port 0, with its broker supervisor and drainer. Its
/// queues and Redis keys are removed by [`TestApp::stop`], or when it is dropped (a failed test).
pub struct TestApp {
    pub url: String,
    pub ctx: aircall_ingest::app::Context,
    pub cancel: CancellationToken,
    cleaned: bool,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.cancel.cancel();
        let (names, prefix) = (
            self.ctx.broker.names().clone(),
            self.ctx.settings.redis_key_prefix.clone(),
        );
        // Tests run on the multi-threaded runtime, where blocking in place is allowed.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            tokio::task::block_in_place(|| handle.block_on(remove_traces(names, prefix)));
        }
    }
}

/// Deletes the queues and Redis keys of one test app.
async fn remove_traces(names: aircall_ingest::queue::QueueNames, prefix: String) {
    let amqp = amqp().await;
    aircall_ingest::queue::topology::delete(&amqp.channel, &names).await;
    amqp.close().await;
    let mut redis = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .unwrap_or(());
    }
}

impl TestApp {
    /// Starts the app on a port of its own, which is also its `public_url` (so webhooks the
    /// admin API registers on the simulator reach it).
    pub async fn spawn(mut settings: Settings) -> TestApp {
        if std::env::var_os("TEST_LOG").is_some() {
            aircall_ingest::telemetry::init(&settings.log);
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        settings.public_url =
            Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let ctx = aircall_ingest::app::Context::new(settings).unwrap();
        // Connect first when the broker is reachable, so tests start from a declared topology.
        let _ = ctx.broker.connect().await;
        let cancel = CancellationToken::new();
        ctx.start_background(&cancel);
        let server = ctx.serve(listener, &cancel).unwrap();
        TestApp {
            url: format!("http://{}", server.addr),
            ctx,
            cancel,
            cleaned: false,
        }
    }

    /// Stores a connection whose webhook token is `token`, as connecting would.
    pub async fn add_connection(&self, id: &str, token: &str) {
        use aircall_ingest::connections::{ConnectionId, ConnectionRecord, ConnectionStatus};
        let id = ConnectionId::parse(id).unwrap();
        let record = ConnectionRecord {
            api_token_sealed: self
                .ctx
                .keys
                .encrypt(&SecretString::from("api-token"), id.as_str()),
            webhook_token_fingerprint: self.ctx.keys.fingerprint(token),
            id,
            api_id: "api-id".into(),
            webhook_id: "webhook-id".into(),
            status: ConnectionStatus::Active,
            created_at_ms: 0,
        };
        assert!(
            self.ctx
                .connections
                .create(&record, &Default::default())
                .await
                .unwrap()
        );
    }

    pub async fn post(&self, connection: &str, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/webhooks/aircall/{connection}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Takes every message waiting in the import queue (through the real broker).
    pub async fn take_jobs(&self) -> Vec<aircall_ingest::queue::Message> {
        let queue = self.ctx.broker.names().import.clone();
        take_messages(&queue).await
    }

    pub async fn spool_depth(&self) -> u64 {
        self.ctx.spool.depth().await.unwrap()
    }

    /// Stops the app and removes its queues and Redis keys.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        self.cleaned = true;
        remove_traces(
            self.ctx.broker.names().clone(),
            self.ctx.settings.redis_key_prefix.clone(),
        )
        .await;
    }

    /// Wraps a context started elsewhere, so the test cleans up after it.
    pub fn adopt(ctx: aircall_ingest::app::Context, cancel: CancellationToken) -> TestApp {
        TestApp {
            url: String::new(),
            ctx,
            cancel,
            cleaned: false,
        }
    }
}

/// A connection to the real broker, for tests to look at queues. Close it when done.
pub struct Amqp {
    pub connection: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Amqp {
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

pub async fn amqp() -> Amqp {
    let connection = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    Amqp {
        connection,
        channel,
    }
}

/// Takes (and acknowledges) every message waiting in `queue`.
pub async fn take_messages(queue: &str) -> Vec<aircall_ingest::queue::Message> {
    let amqp = amqp().await;
    let mut messages = Vec::new();
    while let Some(delivery) = amqp
        .channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
        .await
        .unwrap()
    {
        messages.push(aircall_ingest::queue::Message::decode(&delivery.data).unwrap());
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    amqp.close().await;
    messages
}

/// Messages waiting in `queue`, without taking them. RabbitMQ answers 0 for a quorum queue
/// whose leader does not give its count within 250 ms (a busy broker): a 0 is asked again for
/// a second before it is believed.
pub async fn queue_depth(queue: &str) -> u32 {
    let amqp = amqp().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let count = loop {
        let count = amqp
            .channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap()
            .message_count();
        if count > 0 || tokio::time::Instant::now() >= deadline {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    amqp.close().await;
    count
}

/// An async version of [`eventually`].
pub async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed when the test ends, passed or not.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address of a server URL such as [`AMQP`] or [`REDIS`] (for a proxy in front of it).
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    let url = Url::parse(url).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap()
}
