//! The Aircall REST client: Basic auth, timeouts, the shared per-company budget in front of
//! every request, bounded retries with backoff and jitter on transient errors and 429s, and the
//! paging rules of `GET /v1/calls` (never past the 10,000-result cap).
//!
//! It never follows redirects (credentials must not travel to another host) and never logs the
//! API token or response bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use super::error::AircallError;
use super::models::{
    Call, CallEnvelope, CallId, CallList, User, UserList, Webhook, WebhookEnvelope, WebhookList,
    WebhookSpec,
};
use super::ratelimit::{CompanyBudget, Observed, RateLimiter};
use crate::config::AircallSettings;

/// Aircall refuses any request whose `page × per_page` exceeds this.
pub const RESULT_CAP: u64 = 10_000;
/// Aircall's largest page.
pub const PER_PAGE: u64 = 50;
/// The last page that can be asked for with [`PER_PAGE`].
pub const LAST_LEGAL_PAGE: u64 = RESULT_CAP / PER_PAGE;
/// The shortest wait after a 429, whatever the headers say (`Retry-After: 0` included): Aircall
/// counts per minute, so retrying at once would only earn another 429.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// An Aircall API key: the API ID (a user name) and the API token (a password).
#[derive(Clone)]
pub struct Credentials {
    pub api_id: String,
    pub api_token: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_id", &self.api_id)
            .field("api_token", &"[redacted]")
            .finish()
    }
}

/// What every Aircall client of a process shares: the HTTP connection pool, the base URL, the
/// rate limiter and the settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Aircall {
    http: reqwest::Client,
    base: Url,
    limiter: RateLimiter,
    settings: Arc<AircallSettings>,
}

impl Aircall {
    pub fn new(
        base: &Url,
        settings: &AircallSettings,
        limiter: RateLimiter,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .read_timeout(settings.read_timeout())
            .timeout(settings.request_timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aircall-ingest/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self {
            http,
            base,
            limiter,
            settings: Arc::new(settings.clone()),
        })
    }

    /// A client for one company's credentials, drawing on the rate-limit budget named
    /// `budget_key` (the connection id: it outlives credential rotations). Its waits and
    /// retries end when `cancel` fires.
    pub fn client(
        &self,
        credentials: Credentials,
        budget_key: &str,
        cancel: CancellationToken,
    ) -> AircallClient {
        AircallClient {
            shared: self.clone(),
            budget: self.limiter.budget(budget_key),
            credentials,
            cancel,
            stats: Arc::new(ClientStats::default()),
        }
    }
}

/// Counters of one client, for run reports and benchmarks.
#[derive(Debug, Default)]
pub struct ClientStats {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    budget_wait_ms: AtomicU64,
}

/// A snapshot of [`ClientStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ClientStatsSnapshot {
    /// Requests sent to Aircall (every attempt counts).
    pub requests: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Time spent waiting for the shared budget, in milliseconds.
    pub budget_wait_ms: u64,
}

/// The Aircall API for one company.
#[derive(Clone, Debug)]
pub struct AircallClient {
    shared: Aircall,
    credentials: Credentials,
    budget: CompanyBudget,
    cancel: CancellationToken,
    stats: Arc<ClientStats>,
}

/// One API request, described once so every attempt sends the same thing.
struct Request<'a> {
    endpoint: &'static str,
    method: Method,
    path: &'a [&'a str],
    query: &'a [(&'static str, String)],
    body: Option<&'a WebhookSpec>,
}

impl AircallClient {
    pub fn stats(&self) -> ClientStatsSnapshot {
        ClientStatsSnapshot {
            requests: self.stats.requests.load(Ordering::Relaxed),
            rate_limited: self.stats.rate_limited.load(Ordering::Relaxed),
            budget_wait_ms: self.stats.budget_wait_ms.load(Ordering::Relaxed),
        }
    }

    /// `GET /v1/ping`: the cheapest credential check.
    pub async fn ping(&self) -> Result<(), AircallError> {
        self.send(Request {
            endpoint: "ping",
            method: Method::GET,
            path: &["v1", "ping"],
            query: &[],
            body: None,
        })
        .await
        .map(drop)
    }

    /// `GET /v1/calls/:id` with the contact filled in.
    pub async fn get_call(&self, id: CallId) -> Result<Call, AircallError> {
        let id = id.to_string();
        let envelope: CallEnvelope = self
            .get_json(Request {
                endpoint: "get_call",
                method: Method::GET,
                path: &["v1", "calls", &id],
                query: &[("fetch_contact", "true".into())],
                body: None,
            })
            .await?;
        Ok(envelope.call)
    }

    /// Pages through the calls started in `(from, to]` (Unix seconds; Aircall's `from` is
    /// exclusive and `to` inclusive), oldest first.
    pub fn calls_started_between(&self, from: i64, to: i64) -> CallPager<'_> {
        CallPager {
            client: self,
            pending: if to > from {
                vec![(from, to)]
            } else {
                Vec::new()
            },
            current: None,
            listed_through: from,
        }
    }

    /// Every call started in `(from, to]`, oldest first.
    pub async fn list_calls(&self, from: i64, to: i64) -> Result<Vec<Call>, AircallError> {
        let mut pager = self.calls_started_between(from, to);
        let mut calls = Vec::new();
        while let Some(page) = pager.next_page().await? {
            calls.extend(page);
        }
        Ok(calls)
    }

    /// One page of `GET /v1/calls`, oldest first, contacts included. Refuses (without sending)
    /// a page past Aircall's cap.
    async fn list_calls_page(
        &self,
        from: i64,
        to: i64,
        page: u64,
        per_page: u64,
    ) -> Result<CallList, AircallError> {
        if page.saturating_mul(per_page) > RESULT_CAP {
            return Err(AircallError::ListingTooDense {
                from,
                to,
                total: page * per_page,
            });
        }
        self.get_json(Request {
            endpoint: "list_calls",
            method: Method::GET,
            path: &["v1", "calls"],
            query: &[
                ("from", from.to_string()),
                ("to", to.to_string()),
                ("order", "asc".into()),
                ("per_page", per_page.to_string()),
                ("page", page.to_string()),
                ("fetch_contact", "true".into()),
            ],
            body: None,
        })
        .await
    }

    /// Every user (agent) of the company.
    pub async fn list_users(&self) -> Result<Vec<User>, AircallError> {
        let mut users = Vec::new();
        for page in 1..=LAST_LEGAL_PAGE {
            let list: UserList = self
                .get_json(Request {
                    endpoint: "list_users",
                    method: Method::GET,
                    path: &["v1", "users"],
                    query: &[
                        ("per_page", PER_PAGE.to_string()),
                        ("page", page.to_string()),
                    ],
                    body: None,
                })
                .await?;
            let done = list.meta.next_page_link.is_none() || list.users.is_empty();
            users.extend(list.users);
            if done {
                return Ok(users);
            }
        }
        Err(AircallError::ListingTooDense {
            from: 0,
            to: 0,
            total: RESULT_CAP,
        })
    }

    /// Registers a webhook. Pass `events` explicitly: without it Aircall subscribes to all.
    pub async fn create_webhook(&self, spec: &WebhookSpec) -> Result<Webhook, AircallError> {
        let envelope: WebhookEnvelope = self
            .get_json(Request {
                endpoint: "create_webhook",
                method: Method::POST,
                path: &["v1", "webhooks"],
                query: &[],
                body: Some(spec),
            })
            .await?;
        Ok(envelope.webhook)
    }

    pub async fn get_webhook(&self, webhook_id: &str) -> Result<Webhook, AircallError> {
        let envelope: WebhookEnvelope = self
            .get_json(Request {
                endpoint: "get_webhook",
                method: Method::GET,
                path: &["v1", "webhooks", webhook_id],
                query: &[],
                body: None,
            })
            .await?;
        Ok(envelope.webhook)
    }

    /// Changes a webhook. As on creation, a spec without `events` resubscribes it to all events.
    pub async fn update_webhook(
        &self,
        webhook_id: &str,
        spec: &WebhookSpec,
    ) -> Result<Webhook, AircallError> {
        let envelope: WebhookEnvelope = self
            .get_json(Request {
                endpoint: "update_webhook",
                method: Method::PUT,
                path: &["v1", "webhooks", webhook_id],
                query: &[],
                body: Some(spec),
            })
            .await?;
        Ok(envelope.webhook)
    }

    /// Deletes a webhook; [`AircallError::NotFound`] when it is already gone.
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<(), AircallError> {
        self.send(Request {
            endpoint: "delete_webhook",
            method: Method::DELETE,
            path: &["v1", "webhooks", webhook_id],
            query: &[],
            body: None,
        })
        .await
        .map(drop)
    }

    /// Every webhook of the company. The answer holds their tokens: keep it out of logs.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, AircallError> {
        let mut webhooks = Vec::new();
        for page in 1..=LAST_LEGAL_PAGE {
            let list: WebhookList = self
                .get_json(Request {
                    endpoint: "list_webhooks",
                    method: Method::GET,
                    path: &["v1", "webhooks"],
                    query: &[
                        ("per_page", PER_PAGE.to_string()),
                        ("page", page.to_string()),
                    ],
                    body: None,
                })
                .await?;
            let done = list.meta.next_page_link.is_none() || list.webhooks.is_empty();
            webhooks.extend(list.webhooks);
            if done {
                break;
            }
        }
        Ok(webhooks)
    }

    async fn get_json<T: DeserializeOwned>(&self, request: Request<'_>) -> Result<T, AircallError> {
        let endpoint = request.endpoint;
        let body = self.send(request).await?;
        parse_answer(endpoint, &body)
    }

    /// Sends one request with the budget, retries and classification; returns a 2xx body.
    async fn send(&self, request: Request<'_>) -> Result<bytes::Bytes, AircallError> {
        let settings = &self.shared.settings;
        let max_attempts = settings.max_attempts.max(1);
        let mut url = self.shared.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(request.path);
        }
        // Only requests Aircall cannot have acted on are retried when they may have arrived.
        let idempotent = request.method != Method::POST;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let waited = self.budget.acquire(&self.cancel).await?;
            crate::metrics::rate_limit_wait(waited);
            self.stats
                .budget_wait_ms
                .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);

            let mut builder = self
                .shared
                .http
                .request(request.method.clone(), url.clone())
                .basic_auth(
                    &self.credentials.api_id,
                    Some(self.credentials.api_token.expose_secret()),
                )
                .query(request.query);
            if let Some(body) = request.body {
                builder = builder.json(body);
            }
            let outcome = tokio::select! {
                outcome = Self::exchange(builder) => outcome,
                () = self.cancel.cancelled() => return Err(AircallError::Cancelled),
            };
            crate::metrics::aircall_request(
                request.endpoint,
                outcome.as_ref().ok().map(|(status, _, _)| status.as_u16()),
            );
            let (reason, source, may_retry) = match outcome {
                Ok((status, headers, body)) => {
                    let rate =
                        RateHeaders::parse(&headers, unix_ms_now(), settings.rate_limit_window());
                    self.follow_rate_headers(&rate).await;
                    match classify(status, &body) {
                        Ok(()) => return Ok(body),
                        Err(Failure::RateLimited) => {
                            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                            let wait = rate
                                .announced_wait()
                                .unwrap_or_else(|| backoff(settings, attempt))
                                .clamp(
                                    MIN_RATE_LIMIT_WAIT,
                                    settings.max_rate_limit_wait().max(MIN_RATE_LIMIT_WAIT),
                                );
                            // Everyone using this company's budget waits, not only this request.
                            self.budget.block_for(wait).await?;
                            if attempt >= max_attempts {
                                return Err(AircallError::RateLimited {
                                    retry_after: wait,
                                    attempts: attempt,
                                });
                            }
                            warn!(
                                endpoint = request.endpoint,
                                attempt,
                                wait_ms = wait.as_millis() as u64,
                                "Aircall answered 429; waiting for the budget to refill"
                            );
                            continue;
                        }
                        Err(Failure::Final(e)) => return Err(e),
                        // A 5xx may come after Aircall acted: repeat only what is idempotent.
                        Err(Failure::Retryable(reason)) => (reason, None, idempotent),
                    }
                }
                Err(e) => {
                    // A request that never reached Aircall may always be sent again.
                    let may_retry = idempotent || e.is_connect();
                    (describe(&e), Some(e), may_retry)
                }
            };
            if !may_retry || attempt >= max_attempts {
                return Err(AircallError::Unavailable {
                    reason,
                    attempts: attempt,
                    source,
                });
            }
            let pause = backoff(settings, attempt);
            warn!(endpoint = request.endpoint, attempt, reason = %reason, pause_ms = pause.as_millis() as u64, "Aircall request failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.cancel.cancelled() => return Err(AircallError::Cancelled),
            }
        }
    }

    /// One HTTP exchange, the whole body read (a body cut short is a transport error).
    async fn exchange(
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), reqwest::Error> {
        let response = builder.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok((status, headers, body))
    }

    /// Adjusts the shared budget to what Aircall's headers say: its limit, what remains (others
    /// may spend the company's budget too), and a hold until the reset when nothing remains.
    /// A failure here is logged, not returned: the answer itself was fine.
    async fn follow_rate_headers(&self, rate: &RateHeaders) {
        let max_wait = self.shared.settings.max_rate_limit_wait();
        let block = match rate.remaining {
            Some(0) => rate.reset_wait.map(|wait| wait.min(max_wait)),
            _ => None,
        };
        let seen = Observed {
            limit: rate.limit,
            remaining: rate.remaining,
            block,
            reset_in: rate.reset_wait,
        };
        if let Err(e) = self.budget.observe(&seen).await {
            warn!(error = %e, "cannot record Aircall's rate-limit headers");
        }
    }
}

/// Reads the body of a 2xx answer of `endpoint` (`get_call` → [`CallEnvelope`], `list_calls` →
/// [`CallList`], …): the one way every answer is read, public so the fuzz checks read answers
/// exactly as the client does. The reason of an error names the place, never the content:
/// bodies may hold tokens.
pub fn parse_answer<T: DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<T, AircallError> {
    serde_json::from_slice(body).map_err(|e| AircallError::Malformed {
        endpoint,
        reason: format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

/// How an answer must be handled.
enum Failure {
    RateLimited,
    Retryable(String),
    Final(AircallError),
}

fn classify(status: StatusCode, body: &[u8]) -> Result<(), Failure> {
    match status.as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(Failure::Final(AircallError::InvalidCredentials {
            status: status.as_u16(),
        })),
        404 => Err(Failure::Final(AircallError::NotFound)),
        429 => Err(Failure::RateLimited),
        408 | 500..=599 => Err(Failure::Retryable(format!("HTTP {}", status.as_u16()))),
        code => Err(Failure::Final(AircallError::Rejected {
            status: code,
            message: error_message(body),
        })),
    }
}

/// Aircall's error bodies vary: `{"message"}`, `{"error","troubleshoot"}`, or plain text.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let message = match (field("message"), field("error"), field("troubleshoot")) {
        (Some(m), _, _) => m,
        (None, Some(e), Some(t)) => format!("{e}: {t}"),
        (None, Some(e), None) => e,
        (None, None, Some(t)) => t,
        (None, None, None) => String::from_utf8_lossy(body).chars().take(300).collect(),
    };
    message.trim().to_string()
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "answer cut short".into()
    } else {
        "request failed".into()
    }
}

/// Exponential backoff with equal jitter: half the step fixed, half random.
fn backoff(settings: &AircallSettings, attempt: u32) -> Duration {
    let step = settings
        .backoff_initial()
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20))
        .min(settings.backoff_max());
    let half = step / 2;
    half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What Aircall's rate-limit headers said about one answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHeaders {
    /// `X-AircallApi-Limit`.
    pub limit: Option<u32>,
    /// `X-AircallApi-Remaining`.
    pub remaining: Option<u32>,
    /// Time until `X-AircallApi-Reset`.
    pub reset_wait: Option<Duration>,
    /// `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
}

impl RateHeaders {
    /// Reads the headers of one answer; `now_ms` is the local Unix time in milliseconds.
    pub fn parse(headers: &HeaderMap, now_ms: u64, window: Duration) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        Self {
            limit: number("x-aircallapi-limit").map(|v| v.min(u32::MAX.into()) as u32),
            remaining: number("x-aircallapi-remaining").map(|v| v.min(u32::MAX.into()) as u32),
            reset_wait: text("x-aircallapi-reset")
                .and_then(|v| wait_until_reset(v, now_ms, window)),
            retry_after: text("retry-after").and_then(|v| parse_retry_after(v, now_ms)),
        }
    }

    /// How long Aircall asked us to wait: `Retry-After`, else until the reset.
    pub fn announced_wait(&self) -> Option<Duration> {
        self.retry_after.or(self.reset_wait)
    }
}

/// `X-AircallApi-Reset` is a Unix time, most likely in seconds, in milliseconds for some: a value
/// above 10^12 is milliseconds. A reset more than an hour away, or far in the past, is absurd and
/// means one window. A reset just past (clock skew) means a short pause.
pub fn wait_until_reset(raw: &str, now_ms: u64, window: Duration) -> Option<Duration> {
    let value: f64 = raw
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let reset_ms = if value > 1e12 { value } else { value * 1000.0 } as i128;
    let wait_ms = reset_ms - i128::from(now_ms);
    Some(match wait_ms {
        w if !(-300_000..=3_600_000).contains(&w) => window,
        w if w <= 0 => Duration::from_millis(250),
        w => Duration::from_millis(w as u64),
    })
}

fn parse_retry_after(raw: &str, now_ms: u64) -> Option<Duration> {
    if let Ok(seconds) = raw.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    let at_ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

/// Lists the calls of a time range, oldest first, a page at a time, splitting the range in
/// halves whenever it holds more calls than can be paged under Aircall's 10,000-result cap.
///
/// The first page of every range doubles as the probe of its size (`meta.total`), so a quiet
/// range costs exactly one request.
pub struct CallPager<'a> {
    client: &'a AircallClient,
    /// Ranges `(from, to]` still to list; the last one is next.
    pending: Vec<(i64, i64)>,
    current: Option<Cursor>,
    listed_through: i64,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    from: i64,
    to: i64,
    page: u64,
}

impl CallPager<'_> {
    /// The next page of calls, or `None` when the whole range has been listed. After an error
    /// the same page is asked again by the next call.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Call>>, AircallError> {
        let threshold = u64::from(self.client.shared.settings.listing_split_threshold);
        loop {
            let cursor = match self.current.take() {
                Some(cursor) => cursor,
                None => match self.pending.pop() {
                    Some((from, to)) => Cursor { from, to, page: 1 },
                    None => return Ok(None),
                },
            };
            let list = match self
                .client
                .list_calls_page(cursor.from, cursor.to, cursor.page, PER_PAGE)
                .await
            {
                Ok(list) => list,
                Err(e) => {
                    self.current = Some(cursor);
                    return Err(e);
                }
            };
            let total = list.meta.total;
            if cursor.page == 1 && total > threshold {
                if cursor.to - cursor.from > 1 {
                    let mid = cursor.from + (cursor.to - cursor.from) / 2;
                    debug!(
                        from = cursor.from,
                        to = cursor.to,
                        total,
                        "splitting a dense listing range"
                    );
                    self.pending.push((mid, cursor.to));
                    self.pending.push((cursor.from, mid));
                    continue;
                }
                if total > RESULT_CAP {
                    return Err(AircallError::ListingTooDense {
                        from: cursor.from,
                        to: cursor.to,
                        total,
                    });
                }
            }
            match list
                .meta
                .next_page_link
                .as_deref()
                .filter(|_| !list.calls.is_empty())
            {
                Some(link) => {
                    let page = next_page_number(link, cursor.page);
                    if page > LAST_LEGAL_PAGE {
                        // The range grew past the cap while we paged it: refuse, never truncate.
                        return Err(AircallError::ListingTooDense {
                            from: cursor.from,
                            to: cursor.to,
                            total,
                        });
                    }
                    self.current = Some(Cursor { page, ..cursor });
                }
                None => self.listed_through = cursor.to,
            }
            return Ok(Some(list.calls));
        }
    }

    /// Every call started at or before this Unix time (and after the range's start) has been
    /// returned. Reconciliation advances its watermark with it.
    pub fn listed_through(&self) -> i64 {
        self.listed_through
    }
}

/// The page `next_page_link` points to. Only its page number is taken from it: the request
/// itself is always built from our own base URL, so a link can never send credentials elsewhere.
pub(crate) fn next_page_number(link: &str, current: u64) -> u64 {
    Url::parse(link)
        .ok()
        .and_then(|url| {
            url.query_pairs()
                .find(|(k, _)| k == "page")
                .and_then(|(_, v)| v.parse().ok())
        })
        .filter(|page| *page > current)
        .unwrap_or(current + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn reset_in_seconds_and_in_milliseconds_mean_the_same_instant() {
        let now_ms = 1_764_000_000_000;
        let in_s = wait_until_reset("1764000030", now_ms, WINDOW);
        let in_ms = wait_until_reset("1764000030000", now_ms, WINDOW);
        assert_eq!(in_s, Some(Duration::from_secs(30)));
        assert_eq!(in_ms, in_s);
    }

    #[test]
    fn an_absurd_reset_means_one_window() {
        let now_ms = 1_764_000_000_000;
        assert_eq!(
            wait_until_reset("99999999999", now_ms, WINDOW),
            Some(WINDOW)
        );
        assert_eq!(wait_until_reset("5", now_ms, WINDOW), Some(WINDOW));
        assert_eq!(wait_until_reset("soon", now_ms, WINDOW), None);
    }

    #[test]
    fn retry_after_wins_over_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        headers.insert("x-aircallapi-reset", "1764000030".parse().unwrap());
        let rate = RateHeaders::parse(&headers, 1_764_000_000_000, WINDOW);
        assert_eq!(rate.announced_wait(), Some(Duration::from_secs(7)));
        headers.remove("retry-after");
        let rate = RateHeaders::parse(&headers, 1_764_000_000_000, WINDOW);
        assert_eq!(rate.announced_wait(), Some(Duration::from_secs(30)));
        let rate = RateHeaders::parse(&HeaderMap::new(), 1_764_000_000_000, WINDOW);
        assert_eq!(rate.announced_wait(), None);
    }

    #[test]
    fn the_next_page_comes_from_the_link_but_never_goes_backwards() {
        assert_eq!(
            next_page_number("https://api.aircall.io/v1/calls?page=3&per_page=50", 2),
            3
        );
        assert_eq!(
            next_page_number("https://api.aircall.io/v1/calls?page=1", 2),
            3
        );
        assert_eq!(next_page_number("/v1/calls?page=3", 2), 3);
        assert_eq!(next_page_number("garbage", 7), 8);
    }

    #[test]
    fn error_messages_are_read_from_every_known_shape() {
        assert_eq!(error_message(br#"{"message":"Forbidden"}"#), "Forbidden");
        assert_eq!(
            error_message(br#"{"error":"Bad","troubleshoot":"use timestamps"}"#),
            "Bad: use timestamps"
        );
        assert_eq!(error_message(b"oops"), "oops");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let settings = AircallSettings {
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            ..Default::default()
        };
        for attempt in 1..30 {
            let pause = backoff(&settings, attempt);
            assert!(pause <= Duration::from_millis(1_000), "{pause:?}");
        }
        assert!(backoff(&settings, 1) >= Duration::from_millis(50));
        assert!(backoff(&settings, 5) >= Duration::from_millis(500));
    }
}
