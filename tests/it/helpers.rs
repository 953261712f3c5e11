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
