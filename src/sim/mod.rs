//! The bundled Aircall simulator: a faithful stand-in for the parts of Aircall's public API and
//! webhooks this service uses, quirks included (see `../shared/aircall-api.md` in the design):
//!
//! - Basic auth per company (401 without a header, 403 for wrong credentials);
//! - a fixed per-company window (60 requests a minute by default) with the `X-AircallApi-*`
//!   headers and 429s;
//! - `GET /v1/calls` with `from` exclusive and `to` inclusive on `started_at`, at most 50 per
//!   page, `meta.next_page_link`, and a 400 for any request past the 10,000-result cap;
//! - recordings behind S3-style signed URLs that expire (403), generated from the call id and
//!   streamed, with or without `Content-Length`;
//! - webhook registrations (no `events` = every event) and deliveries of `call.ended` and friends
//!   with the webhook's token, retried and deactivated like Aircall does;
//! - seeded scenarios (agents, history, live calls of every kind) and fault switches (5xx, 429,
//!   latency, truncated downloads, dropped webhooks), driven in-process or over `/_sim/…`.
//!
//! It must never be reachable from outside a test or demo machine: its control API is open.

mod clock;
mod control;
mod http;
pub mod model;
pub mod recording;
mod scenario;
mod state;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;
use url::Url;

pub use clock::SimClock;
pub use model::{
    AgentInfo, CallMix, CallSpec, CallTruth, CompanyInfo, CompanySpec, Faults, RequestStats,
    WebhookInfo,
};
pub use recording::{AudioKind, audio_sha256};
pub use state::{CAP_MESSAGE, SimState};

/// How the simulated Aircall behaves.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Seeds the URL-signing key and, through each company's spec, its data.
    pub seed: u64,
    /// Address used in API links; default `http://{bound address}/`.
    pub public_url: Option<Url>,
    /// Address recording URLs point to (Aircall serves them from its storage, not the API
    /// host); default: the API's address. Must reach this simulator.
    pub recording_url: Option<Url>,
    /// Lifetime of signed recording and voicemail URLs (about an hour at Aircall today).
    pub recording_url_ttl: Duration,
    /// Lifetime of `recording_short_url` (`fetch_short_urls=true`).
    pub short_url_ttl: Duration,
    /// Delay between a call's end and its `call.ended` delivery (about 30 s at Aircall).
    pub webhook_delay: Duration,
    /// How long a webhook receiver has to answer (Aircall: 5 s).
    pub webhook_timeout: Duration,
    /// First retry delay of a failed delivery; doubles per attempt, at most an hour.
    pub webhook_retry_initial: Duration,
    /// Attempts per event.
    pub webhook_max_attempts: u32,
    /// Failed events are retried for this long.
    pub webhook_retry_horizon: Duration,
    /// Consecutive failed deliveries after which a webhook is deactivated.
    pub webhook_deactivate_after: u32,
    /// Requests per company per window.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Write `X-AircallApi-Reset` in milliseconds instead of seconds (some clients saw that).
    pub reset_in_millis: bool,
    /// Add `Retry-After` (seconds to the reset) to 429s; Aircall does not document it.
    pub send_retry_after: bool,
    /// Recording size per second of talk (16,000 B/s is a 128 kbit/s MP3).
    pub bytes_per_second: u64,
    /// Faults of every company without its own.
    pub faults: Faults,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            seed: 1,
            public_url: None,
            recording_url: None,
            recording_url_ttl: Duration::from_secs(3600),
            short_url_ttl: Duration::from_secs(3 * 3600),
            webhook_delay: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(5),
            webhook_retry_initial: Duration::from_secs(10),
            webhook_max_attempts: 50,
            webhook_retry_horizon: Duration::from_secs(12 * 3600),
            webhook_deactivate_after: 10,
            rate_limit: 60,
            rate_window: Duration::from_secs(60),
            reset_in_millis: false,
            send_retry_after: false,
            bytes_per_second: 16_000,
            faults: Faults::default(),
            workers: 2,
        }
    }
}

impl SimSettings {
    /// Immediate webhooks and fast retries, for tests.
    pub fn for_tests() -> Self {
        Self {
            webhook_delay: Duration::ZERO,
            webhook_retry_initial: Duration::from_millis(200),
            workers: 1,
            ..Self::default()
        }
    }
}

/// A simulator serving HTTP, with its scheduler running.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    /// Base URL of the API (and of recordings), ending with `/`.
    pub base_url: Url,
    pub state: Arc<SimState>,
    server: actix_web::dev::ServerHandle,
    cancel: CancellationToken,
}

impl std::fmt::Debug for RunningSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSimulator")
            .field("base_url", &self.base_url.as_str())
            .finish()
    }
}

impl RunningSimulator {
    /// Starts the simulator on `listener` (bind port 0 in tests).
    pub fn start(settings: SimSettings, listener: TcpListener) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        listener
            .set_nonblocking(true)
            .context("cannot configure the simulator's socket")?;
        let addr = listener
            .local_addr()
            .context("the simulator's socket has no address")?;
        let base_url = match &settings.public_url {
            Some(url) => url.clone(),
            None => Url::parse(&format!("http://{addr}/")).context("simulator address")?,
        };
        let workers = settings.workers.max(1);
        let state = Arc::new(SimState::new(settings).context("cannot build the HTTP client")?);
        state.set_base_url(base_url.clone());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .configure(http::routes)
                .configure(control::routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .context("cannot serve the simulator")?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let cancel = CancellationToken::new();
        tokio::spawn(state.clone().run_scheduler(cancel.clone()));
        Ok(Self {
            addr,
            base_url,
            state,
            server: handle,
            cancel,
        })
    }

    /// Stops serving and scheduling.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.server.stop(true).await;
    }
}

/// `2024-01-15T09:30:00.000Z`, as Aircall writes ISO times.
pub(crate) fn iso8601(unix_s: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].000Z");
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}
