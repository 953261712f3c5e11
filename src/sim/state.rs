//! The simulator's behaviour, independent of HTTP: authentication, the per-company rate limit,
//! listing with Aircall's paging quirks, rendering calls in REST and webhook form, webhook
//! registrations and their deliveries, live traffic, and the controls tests use.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use url::Url;

use super::SimSettings;
use super::clock::SimClock;
use super::model::{
    AgentInfo, CallSpec, CallTruth, Company, CompanyData, CompanyInfo, CompanySpec, Faults,
    KEPT_ARRIVALS, RequestStats, SimCall, SimUser, SimWebhook, WebhookInfo,
};
use super::recording::{AudioKind, AudioSource, LinkProblem, SignedLink, UrlSigner, audio_sha256};
use super::scenario;
use crate::aircall::Direction;
use crate::aircall::models::ALL_EVENTS;

/// Aircall's answer to a request past the 10,000-result cap.
pub const CAP_MESSAGE: &str = "Your query is limited to 10k results and pagination is out of \
                               bound, please use timestamps or other filters";
/// Aircall serves about six months of history.
const HISTORY_SERVED_S: i64 = 183 * 24 * 3600;
/// A company may have this many webhooks.
const MAX_WEBHOOKS: usize = 100;
/// Ground truth includes SHA-256 of recordings up to this size (hashing costs time).
const TRUTH_SHA256_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// An answer other than success: status and JSON body.
pub(crate) type Refusal = (u16, Value);

fn refusal(status: u16, message: &str) -> Refusal {
    (status, json!({ "message": message }))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the rate limiter and the fault switches decided for one API request.
pub(crate) struct Admission {
    pub company: Arc<Company>,
    /// `X-AircallApi-*` headers to send.
    pub headers: Vec<(&'static str, String)>,
    pub latency: Duration,
    /// Set when the request must be refused (429 or an injected 5xx).
    pub refusal: Option<Refusal>,
}

/// A download the HTTP layer streams.
pub(crate) struct Download {
    pub source: AudioSource,
    pub chunked: bool,
    /// Close the connection after this many bytes (a truncation fault).
    pub cut_after: Option<u64>,
}

/// Work the scheduler does at a given (simulated) time.
enum Task {
    EndCall { company: u64, call: u64 },
    RecordingReady { company: u64, call: u64 },
    LiveCall { company: u64, per_minute: f64 },
    Deliver(Delivery),
}

struct Delivery {
    company: u64,
    webhook_id: String,
    body: Arc<Vec<u8>>,
    event: String,
    attempt: u32,
    first_at_ms: i64,
}

struct Due {
    at_ms: i64,
    seq: u64,
    task: Task,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// The whole simulated Aircall.
pub struct SimState {
    settings: SimSettings,
    pub clock: SimClock,
    base_url: OnceLock<Url>,
    companies: RwLock<BTreeMap<u64, Arc<Company>>>,
    /// Every API key: its ID → the company and the key's token.
    by_api_id: RwLock<HashMap<String, (Arc<Company>, String)>>,
    next_id: AtomicU64,
    next_company: AtomicU64,
    default_faults: RwLock<Faults>,
    signer: UrlSigner,
    queue: Mutex<BinaryHeap<Reverse<Due>>>,
    wake: Notify,
    seq: AtomicU64,
    http: reqwest::Client,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SimState {
    pub(crate) fn new(settings: SimSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut key = [0u8; 32];
        fastrand::Rng::with_seed(settings.seed ^ 0x5349_4d55_4c41_544f).fill(&mut key);
        Ok(Self {
            default_faults: RwLock::new(settings.faults.clone()),
            settings,
            clock: SimClock::default(),
            base_url: OnceLock::new(),
            companies: RwLock::new(BTreeMap::new()),
            by_api_id: RwLock::new(HashMap::new()),
            // Above 2^32, so 64-bit ids are exercised.
            next_id: AtomicU64::new(5_000_000_000),
            next_company: AtomicU64::new(1),
            signer: UrlSigner::new(key),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            http,
        })
    }

    pub(crate) fn set_base_url(&self, url: Url) {
        let _ = self.base_url.set(url);
    }

    /// The simulator's public address, ending with `/`.
    pub fn base_url(&self) -> Url {
        self.base_url.get().cloned().unwrap_or_else(|| {
            Url::parse("http://127.0.0.1/").unwrap_or_else(|_| unreachable!("literal URL"))
        })
    }

    fn link(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path.trim_start_matches('/'))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn company(&self, id: u64) -> Option<Arc<Company>> {
        let companies = self
            .companies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        companies.get(&id).cloned()
    }

    fn all_companies(&self) -> Vec<Arc<Company>> {
        self.companies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    // ---------------------------------------------------------------- controls

    /// Creates a company with its agents, lines, history and live traffic. Fails when another
    /// company already uses the requested API ID.
    pub fn add_company(&self, spec: CompanySpec) -> Result<CompanyInfo, String> {
        let id = self.next_company.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            fastrand::Rng::with_seed(spec.seed.wrapping_mul(0x9e37_79b9).wrapping_add(id));
        let api_id = spec
            .api_id
            .clone()
            .unwrap_or_else(|| format!("sim-api-{id}-{:08x}", rng.u32(..)));
        if self
            .by_api_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&api_id)
        {
            return Err(format!(
                "API ID {api_id} is already used by another company"
            ));
        }
        let api_token = spec
            .api_token
            .clone()
            .unwrap_or_else(|| format!("{:016x}{:016x}", rng.u64(..), rng.u64(..)));
        let name = spec.name.clone().unwrap_or_else(|| format!("Company {id}"));
        let domain = format!("company{id}.example");
        let mut ids = || self.next_id();
        let users = scenario::agents(
            &mut rng,
            spec.agents,
            spec.mix.unknown_agent,
            &domain,
            &mut ids,
        );
        let numbers = scenario::numbers(&mut ids);
        let mut data = CompanyData {
            users,
            numbers,
            calls: Default::default(),
            started_at_of: HashMap::new(),
            webhooks: Vec::new(),
            faults: None,
            window_start_ms: 0,
            window_count: 0,
            stats: RequestStats::default(),
            rng,
            mix: spec.mix.clone(),
        };
        let now_s = self.clock.now_s();
        let span = i64::from(spec.history_days.max(1)) * 24 * 3600;
        let mut late = Vec::new();
        for _ in 0..spec.history_calls {
            // Leave the last hour free so every historical call is over.
            let started_at = now_s - 3600 - data.rng.i64(0..span - 3600);
            let call = self.generate(&mut data, started_at);
            if let Some(audio) = call.recording.filter(|a| a.ready_at > now_s) {
                late.push((call.id, audio.ready_at));
            }
            data.insert_call(call);
        }
        let company = Arc::new(Company {
            id,
            name,
            api_id: api_id.clone(),
            api_token,
            data: Mutex::new(data),
        });
        for (call, ready_at) in late {
            self.schedule(ready_at * 1000, Task::RecordingReady { company: id, call });
        }
        if spec.live_calls_per_minute > 0.0 {
            let mut data = lock(&company.data);
            let at =
                self.clock.now_ms() + next_arrival_ms(&mut data.rng, spec.live_calls_per_minute);
            drop(data);
            self.schedule(
                at,
                Task::LiveCall {
                    company: id,
                    per_minute: spec.live_calls_per_minute,
                },
            );
        }
        let info = describe(&company);
        self.companies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, company.clone());
        let token = company.api_token.clone();
        self.by_api_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(api_id, (company, token));
        Ok(info)
    }

    /// Generates another API key for a company, as an admin does in the dashboard
    /// (Integrations & API → API keys → Generate); `(api_id, api_token)`.
    pub fn generate_api_key(&self, company: u64) -> Option<(String, String)> {
        let company = self.company(company)?;
        let (api_id, api_token) = {
            let mut data = lock(&company.data);
            (
                format!("sim-api-{}-{:08x}", company.id, data.rng.u32(..)),
                format!("{:016x}{:016x}", data.rng.u64(..), data.rng.u64(..)),
            )
        };
        self.by_api_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(api_id.clone(), (company, api_token.clone()));
        Some((api_id, api_token))
    }

    /// Revokes an API key: requests with it are refused 403 from now on. `false` if unknown.
    pub fn revoke_api_key(&self, api_id: &str) -> bool {
        self.by_api_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(api_id)
            .is_some()
    }

    fn generate(&self, data: &mut CompanyData, started_at: i64) -> SimCall {
        let g = scenario::Generate {
            id: self.next_id(),
            contact_id: self.next_id(),
            started_at,
            mix: &data.mix,
            users: &data.users,
            numbers: data.numbers.len(),
            bytes_per_second: self.settings.bytes_per_second,
        };
        let mut rng = data.rng.clone();
        let call = scenario::call(&mut rng, &g);
        data.rng = rng;
        call
    }

    /// Every company, with credentials and agents.
    pub fn companies(&self) -> Vec<CompanyInfo> {
        self.all_companies().iter().map(|c| describe(c)).collect()
    }

    pub fn company_info(&self, company: u64) -> Option<CompanyInfo> {
        self.company(company).map(|c| describe(&c))
    }

    /// Adds a call exactly as described. A finished call with `notify` sends its webhooks as a
    /// call ending now would; an in-progress one ends after its duration.
    pub fn add_call(&self, company: u64, spec: &CallSpec) -> Option<u64> {
        let company = self.company(company)?;
        let now_s = self.clock.now_s();
        let id = self.next_id();
        let contact_id = self.next_id();
        let mut data = lock(&company.data);
        let user = spec.agent_email.as_ref().map(|email| {
            match data
                .users
                .iter()
                .position(|u| u.email.eq_ignore_ascii_case(email))
            {
                Some(i) => i,
                None => {
                    let user_id = self.next_id();
                    data.users.push(SimUser {
                        id: user_id,
                        name: email.clone(),
                        email: email.clone(),
                        paying: false,
                    });
                    data.users.len() - 1
                }
            }
        });
        let mut rng = data.rng.clone();
        let call = scenario::explicit_call(&mut rng, spec, id, contact_id, now_s, user);
        data.rng = rng;
        let end = call.started_at + call.duration;
        let finished = call.ended_at.is_some();
        data.insert_call(call);
        if !finished {
            self.schedule(
                end * 1000,
                Task::EndCall {
                    company: company.id,
                    call: id,
                },
            );
        } else if spec.notify {
            self.announce_end(&company, &mut data, id);
        }
        Some(id)
    }

    /// Overrides the faults of one company, or sets those of every company without an override.
    pub fn set_faults(&self, company: Option<u64>, faults: Faults) -> bool {
        match company {
            None => {
                *self
                    .default_faults
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
                true
            }
            Some(id) => match self.company(id) {
                Some(c) => {
                    lock(&c.data).faults = Some(faults);
                    true
                }
                None => false,
            },
        }
    }

    /// Moves simulated time forward; due recordings appear and due webhooks go out.
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
        self.wake.notify_one();
    }

    /// The ground truth of a company's calls, oldest first.
    pub fn calls_truth(&self, company: u64, with_sha256: bool) -> Option<Vec<CallTruth>> {
        let company = self.company(company)?;
        let data = lock(&company.data);
        Some(
            data.calls
                .values()
                .map(|c| {
                    let user = c.user.and_then(|i| data.users.get(i));
                    CallTruth {
                        id: c.id,
                        direction: c.direction,
                        started_at: c.started_at,
                        answered_at: c.answered_at,
                        ended_at: c.ended_at,
                        duration: c.duration,
                        agent_email: user.map(|u| u.email.clone()),
                        agent_paying: user.is_some_and(|u| u.paying),
                        recording_bytes: c.recording.map(|a| a.bytes),
                        recording_ready_at: c.recording.map(|a| a.ready_at),
                        recording_sha256: c
                            .recording
                            .filter(|a| with_sha256 && a.bytes <= TRUTH_SHA256_MAX_BYTES)
                            .map(|a| audio_sha256(c.id, AudioKind::Recording, a.bytes)),
                        voicemail_bytes: c.voicemail.map(|a| a.bytes),
                        without_content_length: c.without_content_length,
                        missed_call_reason: c.missed_call_reason.map(str::to_string),
                    }
                })
                .collect(),
        )
    }

    pub fn stats(&self, company: u64) -> Option<RequestStats> {
        self.company(company).map(|c| lock(&c.data).stats.clone())
    }

    pub fn webhooks(&self, company: u64) -> Option<Vec<WebhookInfo>> {
        let company = self.company(company)?;
        let data = lock(&company.data);
        Some(
            data.webhooks
                .iter()
                .map(|w| WebhookInfo {
                    webhook_id: w.id.clone(),
                    url: w.url.clone(),
                    events: w.events.clone(),
                    active: w.active,
                    token: w.token.clone(),
                    delivered: w.delivered,
                    failed_attempts: w.failed_attempts,
                    dropped: w.dropped,
                    consecutive_failures: w.consecutive_failures,
                })
                .collect(),
        )
    }

    /// Deactivates a webhook as Aircall does after repeated failed deliveries.
    pub fn deactivate_webhook(&self, company: u64, webhook_id: &str) -> bool {
        let Some(company) = self.company(company) else {
            return false;
        };
        let mut data = lock(&company.data);
        match data.webhooks.iter_mut().find(|w| w.id == webhook_id) {
            Some(w) => {
                w.active = false;
                true
            }
            None => false,
        }
    }

    // ---------------------------------------------------------------- API admission

    /// Basic auth: no header → 401; a header with unknown or wrong credentials → 403.
    pub(crate) fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Arc<Company>, Refusal> {
        let header = authorization.ok_or_else(|| refusal(401, "Unauthorized"))?;
        let forbidden = || refusal(403, "Forbidden");
        let encoded = header.strip_prefix("Basic ").ok_or_else(forbidden)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| forbidden())?;
        let decoded = String::from_utf8(decoded).map_err(|_| forbidden())?;
        let (id, token) = decoded.split_once(':').ok_or_else(forbidden)?;
        let companies = self
            .by_api_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (company, _) = companies
            .get(id)
            .filter(|(_, key)| key == token)
            .ok_or_else(forbidden)?;
        Ok(company.clone())
    }

    /// Counts the request against the company's window and applies its fault switches.
    pub(crate) fn admit(&self, company: Arc<Company>, endpoint: &str) -> Admission {
        let now_ms = self.clock.now_ms();
        let limit = self.settings.rate_limit;
        let window_ms = self.settings.rate_window.as_millis().max(1) as i64;
        let defaults = self
            .default_faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut data = lock(&company.data);
        let faults = data.faults.clone().unwrap_or(defaults);
        data.stats.recent_arrivals_ms.push_back(now_ms);
        if data.stats.recent_arrivals_ms.len() > KEPT_ARRIVALS {
            data.stats.recent_arrivals_ms.pop_front();
        }
        *data
            .stats
            .by_endpoint
            .entry(endpoint.to_string())
            .or_default() += 1;
        let window_start = now_ms.div_euclid(window_ms) * window_ms;
        if data.window_start_ms != window_start {
            data.window_start_ms = window_start;
            data.window_count = 0;
        }
        let reset_ms = window_start + window_ms;
        let reset = if self.settings.reset_in_millis {
            reset_ms.to_string()
        } else {
            (reset_ms.div_euclid(1000) + i64::from(reset_ms % 1000 != 0)).to_string()
        };
        let mut refusal_of = None;
        // Over the limit, or (a fault) as if another integration had spent the budget.
        if data.window_count >= limit || data.rng.f64() < faults.rate_limit_429_share {
            refusal_of = Some((
                429,
                json!({"message": "Too many requests", "troubleshoot": "Rate limit reached, wait for the reset"}),
            ));
        } else {
            data.window_count += 1;
            if data.rng.f64() < faults.error_5xx_share {
                let status = [502, 503, 504][data.rng.usize(..3)];
                refusal_of = Some(refusal(status, "Service unavailable"));
            }
        }
        let remaining = match &refusal_of {
            Some((429, _)) => 0,
            _ => limit.saturating_sub(data.window_count),
        };
        drop(data);
        let mut headers = vec![
            ("X-AircallApi-Limit", limit.to_string()),
            ("X-AircallApi-Remaining", remaining.to_string()),
            ("X-AircallApi-Reset", reset),
        ];
        if self.settings.send_retry_after && matches!(refusal_of, Some((429, _))) {
            let seconds = (reset_ms - now_ms).max(0).div_euclid(1000) + 1;
            headers.push(("Retry-After", seconds.to_string()));
        }
        Admission {
            company,
            headers,
            latency: Duration::from_millis(faults.latency_ms),
            refusal: refusal_of,
        }
    }

    pub(crate) fn record_status(&self, company: &Company, status: u16) {
        *lock(&company.data)
            .stats
            .by_status
            .entry(status)
            .or_default() += 1;
    }

    // ---------------------------------------------------------------- calls

    /// `GET /v1/calls`.
    pub(crate) fn list_calls(&self, company: &Company, q: &ListQuery) -> Result<Value, Refusal> {
        if q.page.saturating_mul(q.requested_per_page) > 10_000 {
            return Err(refusal(400, CAP_MESSAGE));
        }
        let now_s = self.clock.now_s();
        let oldest = now_s - HISTORY_SERVED_S;
        let from = q.from.unwrap_or(i64::MIN + 1).max(oldest - 1);
        let to = q.to.unwrap_or(i64::MAX - 1);
        let data = lock(&company.data);
        if to <= from {
            return Ok(page_json(&self.base_url(), q, "calls", Vec::new(), 0));
        }
        let range = data.calls.range((from + 1, 0)..=(to, u64::MAX));
        let total = range.clone().count() as u64;
        let skip = ((q.page - 1) * q.per_page) as usize;
        let take = q.per_page as usize;
        let calls: Vec<Value> = if q.descending {
            range
                .rev()
                .skip(skip)
                .take(take)
                .map(|(_, c)| self.rest_json(company, &data, c, q.fetch_contact, q.short_urls))
                .collect()
        } else {
            range
                .skip(skip)
                .take(take)
                .map(|(_, c)| self.rest_json(company, &data, c, q.fetch_contact, q.short_urls))
                .collect()
        };
        Ok(page_json(&self.base_url(), q, "calls", calls, total))
    }

    /// `GET /v1/calls/:id`.
    pub(crate) fn get_call(
        &self,
        company: &Company,
        id: u64,
        fetch_contact: bool,
        short_urls: bool,
    ) -> Result<Value, Refusal> {
        let data = lock(&company.data);
        let call = data.call(id).ok_or_else(|| refusal(404, "Not Found"))?;
        Ok(json!({ "call": self.rest_json(company, &data, call, fetch_contact, short_urls) }))
    }

    fn status_of(call: &SimCall, now_s: i64) -> &'static str {
        if call.ended_at.is_some() {
            "done"
        } else if call.answered_at.is_some_and(|t| t <= now_s) {
            "answered"
        } else {
            "initial"
        }
    }

    /// Where recordings are served from: their own address when configured (Aircall serves them
    /// from its storage, another host than the API).
    fn recording_base(&self) -> String {
        match &self.settings.recording_url {
            Some(url) => url.to_string(),
            None => self.base_url().to_string(),
        }
    }

    fn audio_link(
        &self,
        company: &Company,
        call: &SimCall,
        kind: AudioKind,
        now_s: i64,
        ttl: Duration,
    ) -> Option<String> {
        call.audio_ready(kind, now_s)?;
        let query = self
            .signer
            .query(company.id, call.id, kind, now_s, ttl.as_secs() as i64);
        Some(format!(
            "{}{}/{}/{}.mp3?{query}",
            self.recording_base(),
            kind.path_segment(),
            company.id,
            call.id
        ))
    }

    fn user_json(&self, user: &SimUser, webhook: bool) -> Value {
        let mut v = json!({
            "id": user.id,
            "direct_link": self.link(&format!("v1/users/{}", user.id)),
            "name": user.name,
            "email": user.email,
            "available": true,
            "availability_status": "available",
            "created_at": "2024-01-15T09:30:00.000Z",
            "time_zone": "Europe/Paris",
            "language": "en-US",
        });
        if webhook {
            v["substatus"] = json!("always_open");
        }
        v
    }

    /// A call as `GET /v1/calls/:id` shows it: every documented field, nulls included.
    fn rest_json(
        &self,
        company: &Company,
        data: &CompanyData,
        call: &SimCall,
        fetch_contact: bool,
        short_urls: bool,
    ) -> Value {
        let now_s = self.clock.now_s();
        let ttl = self.settings.recording_url_ttl;
        let number = data.numbers.get(call.number);
        let user = call.user.and_then(|i| data.users.get(i));
        let answered_at = call.answered_at.filter(|t| *t <= now_s);
        let mut v = json!({
            "id": call.id,
            "sid": call.sid,
            "direct_link": self.link(&format!("v1/calls/{}", call.id)),
            "direction": match call.direction { Direction::Outbound => "outbound", _ => "inbound" },
            "status": Self::status_of(call, now_s),
            "missed_call_reason": call.missed_call_reason,
            "started_at": call.started_at,
            "answered_at": answered_at,
            "ended_at": call.ended_at,
            "duration": if call.ended_at.is_some() { call.duration } else { 0 },
            "raw_digits": call.raw_digits,
            "recording": self.audio_link(company, call, AudioKind::Recording, now_s, ttl),
            "voicemail": self.audio_link(company, call, AudioKind::Voicemail, now_s, ttl),
            "asset": call.recording.map(|_| format!("https://assets.aircall.io/calls/{}/recording", call.id)),
            "archived": false,
            "cost": "0.0",
            "country_code_a2": number.map(|n| n.country.clone()),
            "pricing_type": "local",
            "number": number.map(|n| json!({
                "id": n.id,
                "direct_link": self.link(&format!("v1/numbers/{}", n.id)),
                "name": n.name,
                "digits": n.digits,
                "country": n.country,
                "time_zone": n.time_zone,
                "created_at": "2023-06-01T10:00:00.000Z",
            })),
            "user": user.map(|u| self.user_json(u, false)),
            "contact": Value::Null,
            "assigned_to": Value::Null,
            "teams": [],
            "transferred_by": Value::Null,
            "transferred_to": Value::Null,
            "comments": [],
            "tags": [],
            "conference_participants": [],
        });
        if fetch_contact {
            v["contact"] = call.contact.as_ref().map_or(Value::Null, |c| {
                json!({
                    "id": c.id,
                    "direct_link": self.link(&format!("v1/contacts/{}", c.id)),
                    "first_name": c.first_name,
                    "last_name": c.last_name,
                    "company_name": c.company_name,
                    "information": Value::Null,
                    "is_shared": true,
                    "phone_numbers": [{"id": c.id + 1, "label": "Work", "value": call.raw_digits}],
                    "emails": [],
                })
            });
        }
        if short_urls {
            let long = self.settings.short_url_ttl;
            v["recording_short_url"] =
                json!(self.audio_link(company, call, AudioKind::Recording, now_s, long));
            v["voicemail_short_url"] =
                json!(self.audio_link(company, call, AudioKind::Voicemail, now_s, long));
        }
        v
    }

    /// A call as webhook `data` carries it: `call_uuid`, `participants`, the contact filled in,
    /// and the webhook-only user and number fields.
    fn webhook_json(&self, company: &Company, data: &CompanyData, call: &SimCall) -> Value {
        let mut v = self.rest_json(company, data, call, true, false);
        if let Some(map) = v.as_object_mut() {
            if let Some(sid) = map.remove("sid") {
                map.insert("call_uuid".into(), sid);
            }
            if let Some(p) = map.remove("conference_participants") {
                map.insert("participants".into(), p);
            }
            if let Some(user) = map.get_mut("user").and_then(Value::as_object_mut) {
                user.insert("substatus".into(), json!("always_open"));
            }
            if let (Some(number), Some(n)) = (
                map.get_mut("number").and_then(Value::as_object_mut),
                data.numbers.get(call.number),
            ) {
                number.insert("e164_digits".into(), json!(n.e164));
            }
        }
        v
    }

    // ---------------------------------------------------------------- users

    /// `GET /v1/users`.
    pub(crate) fn list_users(&self, company: &Company, q: &ListQuery) -> Result<Value, Refusal> {
        if q.page.saturating_mul(q.requested_per_page) > 10_000 {
            return Err(refusal(400, CAP_MESSAGE));
        }
        let data = lock(&company.data);
        let skip = ((q.page - 1) * q.per_page) as usize;
        let users: Vec<Value> = data
            .users
            .iter()
            .skip(skip)
            .take(q.per_page as usize)
            .map(|u| self.user_json(u, false))
            .collect();
        Ok(page_json(
            &self.base_url(),
            q,
            "users",
            users,
            data.users.len() as u64,
        ))
    }

    // ---------------------------------------------------------------- webhooks

    fn webhook_json_of(&self, w: &SimWebhook) -> Value {
        json!({
            "webhook_id": w.id,
            "direct_link": self.link(&format!("v1/webhooks/{}", w.id)),
            "created_at": crate::sim::iso8601(w.created_at),
            "custom_name": w.custom_name,
            "url": w.url,
            "active": w.active,
            "events": w.events,
            "token": w.token,
        })
    }

    /// `POST /v1/webhooks`. Without `events`, the webhook gets every event.
    pub(crate) fn create_webhook(&self, company: &Company, body: &Value) -> Result<Value, Refusal> {
        let url =
            parse_webhook_url(body.get("url"))?.ok_or_else(|| refusal(400, "url is required"))?;
        let events = parse_events(body.get("events"))?;
        let custom_name = body
            .get("custom_name")
            .and_then(Value::as_str)
            .unwrap_or("Webhook")
            .to_string();
        let mut data = lock(&company.data);
        if data.webhooks.len() >= MAX_WEBHOOKS {
            return Err(refusal(400, "A company may have at most 100 webhooks"));
        }
        let mut token_bytes = [0u8; 16];
        data.rng.fill(&mut token_bytes);
        let webhook = SimWebhook {
            id: uuid_v4(&mut data.rng),
            custom_name,
            url,
            events,
            active: true,
            disabled_by_owner: false,
            token: hex::encode(token_bytes),
            created_at: self.clock.now_s(),
            delivered: 0,
            failed_attempts: 0,
            dropped: 0,
            consecutive_failures: 0,
        };
        let v = json!({ "webhook": self.webhook_json_of(&webhook) });
        data.webhooks.push(webhook);
        Ok(v)
    }

    pub(crate) fn list_webhooks(&self, company: &Company, q: &ListQuery) -> Result<Value, Refusal> {
        let data = lock(&company.data);
        let skip = ((q.page - 1) * q.per_page) as usize;
        let hooks: Vec<Value> = data
            .webhooks
            .iter()
            .skip(skip)
            .take(q.per_page as usize)
            .map(|w| self.webhook_json_of(w))
            .collect();
        Ok(page_json(
            &self.base_url(),
            q,
            "webhooks",
            hooks,
            data.webhooks.len() as u64,
        ))
    }

    pub(crate) fn get_webhook(&self, company: &Company, id: &str) -> Result<Value, Refusal> {
        let data = lock(&company.data);
        let w = data
            .webhooks
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| refusal(404, "Not Found"))?;
        Ok(json!({ "webhook": self.webhook_json_of(w) }))
    }

    /// `PUT /v1/webhooks/:id`. As on creation, a body without `events` means every event.
    pub(crate) fn update_webhook(
        &self,
        company: &Company,
        id: &str,
        body: &Value,
    ) -> Result<Value, Refusal> {
        let url = parse_webhook_url(body.get("url"))?;
        let events = parse_events(body.get("events"))?;
        let mut data = lock(&company.data);
        let w = data
            .webhooks
            .iter_mut()
            .find(|w| w.id == id)
            .ok_or_else(|| refusal(404, "Not Found"))?;
        if let Some(url) = url {
            w.url = url;
        }
        if let Some(name) = body.get("custom_name").and_then(Value::as_str) {
            w.custom_name = name.to_string();
        }
        if let Some(active) = body.get("active").and_then(Value::as_bool) {
            w.active = active;
            w.disabled_by_owner = !active;
            if active {
                w.consecutive_failures = 0;
            }
        }
        w.events = events;
        let v = json!({ "webhook": self.webhook_json_of(w) });
        Ok(v)
    }

    pub(crate) fn delete_webhook(&self, company: &Company, id: &str) -> Result<(), Refusal> {
        let mut data = lock(&company.data);
        let before = data.webhooks.len();
        data.webhooks.retain(|w| w.id != id);
        if data.webhooks.len() == before {
            return Err(refusal(404, "Not Found"));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- audio

    /// A signed audio link: 403 when expired or tampered with, 404 when there is no such file.
    pub(crate) fn download(
        &self,
        company: u64,
        call: u64,
        kind: AudioKind,
        query: &HashMap<String, String>,
    ) -> Result<Download, (u16, &'static str, &'static str)> {
        let param = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
        let now_s = self.clock.now_s();
        let company = self
            .company(company)
            .ok_or((403, "AccessDenied", "Access Denied"))?;
        let link = SignedLink {
            amz_date: param("X-Amz-Date"),
            expires: param("X-Amz-Expires"),
            signature: param("X-Amz-Signature"),
        };
        self.signer
            .check((company.id, call, kind), &link, now_s)
            .map_err(|problem| match problem {
                LinkProblem::Expired => (403, "AccessDenied", "Request has expired"),
                LinkProblem::BadSignature => (403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."),
            })?;
        let defaults = self
            .default_faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut data = lock(&company.data);
        *data
            .stats
            .by_endpoint
            .entry(format!("download_{}", kind.path_segment()))
            .or_default() += 1;
        let faults = data.faults.clone().unwrap_or(defaults);
        let c = data
            .call(call)
            .ok_or((404, "NoSuchKey", "The specified key does not exist."))?;
        let audio = c.audio_ready(kind, now_s).ok_or((
            404,
            "NoSuchKey",
            "The specified key does not exist.",
        ))?;
        let chunked = c.without_content_length;
        let cut_after = (data.rng.f64() < faults.truncate_recording_share && audio.bytes > 1)
            .then(|| audio.bytes / 4 + data.rng.u64(0..audio.bytes / 2 + 1));
        if cut_after.is_some() {
            *data
                .stats
                .by_endpoint
                .entry(format!("download_{}_cut_short", kind.path_segment()))
                .or_default() += 1;
        }
        Ok(Download {
            source: AudioSource::new(call, kind, audio.bytes),
            chunked,
            cut_after,
        })
    }

    // ---------------------------------------------------------------- scheduler

    fn schedule(&self, at_ms: i64, task: Task) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.queue).push(Reverse(Due { at_ms, seq, task }));
        self.wake.notify_one();
    }

    /// Runs due tasks (call ends, late recordings, live calls, webhook deliveries) until cancelled.
    pub(crate) async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let now = self.clock.now_ms();
            let mut due = Vec::new();
            let next_at = {
                let mut queue = lock(&self.queue);
                while queue.peek().is_some_and(|Reverse(d)| d.at_ms <= now) {
                    if let Some(Reverse(d)) = queue.pop() {
                        due.push(d.task);
                    }
                }
                queue.peek().map(|Reverse(d)| d.at_ms)
            };
            for task in due {
                self.execute(task);
            }
            let pause = next_at.map_or(1_000, |at| (at - now).clamp(1, 1_000)) as u64;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                () = self.wake.notified() => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    fn execute(self: &Arc<Self>, task: Task) {
        match task {
            Task::EndCall { company, call } => {
                let Some(company) = self.company(company) else {
                    return;
                };
                let mut data = lock(&company.data);
                let Some(c) = data.call_mut(call) else { return };
                c.ended_at = Some(c.started_at + c.duration);
                self.announce_end(&company, &mut data, call);
            }
            Task::RecordingReady { company, call } => {
                let Some(company) = self.company(company) else {
                    return;
                };
                let mut data = lock(&company.data);
                self.emit(
                    &company,
                    &mut data,
                    call,
                    "call.comm_assets_generated",
                    Duration::ZERO,
                );
            }
            Task::LiveCall {
                company,
                per_minute,
            } => {
                let Some(company) = self.company(company) else {
                    return;
                };
                let now_s = self.clock.now_s();
                let mut data = lock(&company.data);
                let mut call = self.generate(&mut data, now_s);
                let end = call.started_at + call.duration;
                call.ended_at = None;
                let id = call.id;
                data.insert_call(call);
                self.emit(&company, &mut data, id, "call.created", Duration::ZERO);
                let next = self.clock.now_ms() + next_arrival_ms(&mut data.rng, per_minute);
                drop(data);
                self.schedule(
                    end * 1000,
                    Task::EndCall {
                        company: company.id,
                        call: id,
                    },
                );
                self.schedule(
                    next,
                    Task::LiveCall {
                        company: company.id,
                        per_minute,
                    },
                );
            }
            Task::Deliver(delivery) => {
                let state = self.clone();
                tokio::spawn(async move { state.deliver(delivery).await });
            }
        }
    }

    /// The webhooks of a call that just ended: `call.hungup` at once, `call.ended` after the
    /// configured delay, `call.comm_assets_generated` when the recording is ready.
    fn announce_end(&self, company: &Company, data: &mut CompanyData, call: u64) {
        let now_s = self.clock.now_s();
        let delay = self.settings.webhook_delay;
        self.emit(company, data, call, "call.hungup", Duration::ZERO);
        self.emit(company, data, call, "call.ended", delay);
        let Some(c) = data.call(call) else { return };
        let audio_ready_at = c.recording.or(c.voicemail).map(|a| a.ready_at);
        match audio_ready_at {
            Some(at) if at <= now_s => {
                self.emit(company, data, call, "call.comm_assets_generated", delay)
            }
            Some(at) => self.schedule(
                at * 1000,
                Task::RecordingReady {
                    company: company.id,
                    call,
                },
            ),
            None => {}
        }
    }

    /// Queues one event of a call for every active webhook subscribed to it.
    fn emit(
        &self,
        company: &Company,
        data: &mut CompanyData,
        call: u64,
        event: &str,
        delay: Duration,
    ) {
        if !data
            .webhooks
            .iter()
            .any(|w| w.active && w.events.iter().any(|e| e == event))
        {
            return;
        }
        let Some(c) = data.call(call) else { return };
        let payload = self.webhook_json(company, data, c);
        self.emit_payload(company.id, data, "call", event, &payload, delay);
    }

    /// Queues one event for every active webhook subscribed to it, applying the delivery
    /// faults: dropped, duplicated, delayed out of order.
    fn emit_payload(
        &self,
        company: u64,
        data: &mut CompanyData,
        resource: &str,
        event: &str,
        payload: &Value,
        delay: Duration,
    ) {
        let now_ms = self.clock.now_ms();
        let defaults = self
            .default_faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let faults = data.faults.clone().unwrap_or(defaults);
        let mut deliveries = Vec::new();
        let CompanyData { webhooks, rng, .. } = data;
        for w in webhooks
            .iter_mut()
            .filter(|w| w.active && w.events.iter().any(|e| e == event))
        {
            if rng.f64() < faults.drop_webhook_share {
                w.dropped += 1;
                debug!(event, "simulator drops a webhook delivery");
                continue;
            }
            let body = json!({
                "resource": resource,
                "event": event,
                "timestamp": now_ms / 1000,
                "token": w.token,
                "data": payload,
            });
            let body = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
            let copies = if rng.f64() < faults.duplicate_webhook_share {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = if faults.webhook_jitter_ms > 0 {
                    rng.u64(0..=faults.webhook_jitter_ms)
                } else {
                    0
                };
                let at = now_ms + delay.as_millis() as i64 + jitter as i64;
                deliveries.push((
                    at,
                    Delivery {
                        company,
                        webhook_id: w.id.clone(),
                        body: body.clone(),
                        event: event.to_string(),
                        attempt: 1,
                        first_at_ms: now_ms,
                    },
                ));
            }
        }
        for (at, d) in deliveries {
            self.schedule(at, Task::Deliver(d));
        }
    }

    /// Sends an event of another family (`user.*`, `number.*`, …) with `data`, to every webhook
    /// subscribed to it, as Aircall would.
    pub fn emit_event(&self, company: u64, event: &str, data: Value) -> bool {
        let Some(company) = self.company(company) else {
            return false;
        };
        let resource = event.split('.').next().unwrap_or("call").to_string();
        let mut guard = lock(&company.data);
        self.emit_payload(
            company.id,
            &mut guard,
            &resource,
            event,
            &data,
            Duration::ZERO,
        );
        true
    }

    /// POSTs one event like Aircall: JSON, its headers, a 5-second deadline; failures retried
    /// with growing delays for up to 12 hours; repeated failures deactivate the webhook, and the
    /// next success re-activates it.
    async fn deliver(self: Arc<Self>, mut d: Delivery) {
        let Some(company) = self.company(d.company) else {
            return;
        };
        // The webhook's address now: it may have changed or gone since the event.
        let url = {
            let data = lock(&company.data);
            match data.webhooks.iter().find(|w| w.id == d.webhook_id) {
                Some(w) if !w.disabled_by_owner => w.url.clone(),
                _ => return,
            }
        };
        let result = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("user-agent", "axios/1.7.7")
            .header("aircall-origin", "webhooks")
            .body(d.body.as_ref().clone())
            .send()
            .await;
        let ok = match &result {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        };
        let Some(company) = self.company(d.company) else {
            return;
        };
        let now_ms = self.clock.now_ms();
        let retry = {
            let mut data = lock(&company.data);
            let Some(w) = data.webhooks.iter_mut().find(|w| w.id == d.webhook_id) else {
                return;
            };
            if ok {
                w.delivered += 1;
                w.consecutive_failures = 0;
                w.active = true;
                false
            } else {
                w.failed_attempts += 1;
                w.consecutive_failures += 1;
                if w.consecutive_failures >= self.settings.webhook_deactivate_after && w.active {
                    info!(webhook = %w.id, "simulator deactivates a failing webhook");
                    w.active = false;
                }
                let within =
                    now_ms - d.first_at_ms < self.settings.webhook_retry_horizon.as_millis() as i64;
                d.attempt < self.settings.webhook_max_attempts && within
            }
        };
        if !ok {
            let status = result.as_ref().map(|r| r.status().as_u16()).ok();
            debug!(event = %d.event, attempt = d.attempt, ?status, "simulator webhook delivery failed");
        }
        if retry {
            let step = self
                .settings
                .webhook_retry_initial
                .saturating_mul(1 << (d.attempt - 1).min(16));
            let pause = step.min(Duration::from_secs(3600));
            d.attempt += 1;
            self.schedule(now_ms + pause.as_millis() as i64, Task::Deliver(d));
        }
    }
}

/// Parsed paging parameters of a list request.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub path: &'static str,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub page: u64,
    /// `per_page` as asked: the cap is checked on it.
    pub requested_per_page: u64,
    /// `per_page` as served (at most 50).
    pub per_page: u64,
    pub descending: bool,
    pub fetch_contact: bool,
    pub short_urls: bool,
}

fn page_json(base: &Url, q: &ListQuery, key: &str, items: Vec<Value>, total: u64) -> Value {
    let link = |page: u64| {
        let mut url = format!(
            "{base}{}?page={page}&per_page={}",
            q.path.trim_start_matches('/'),
            q.per_page
        );
        if let Some(from) = q.from {
            url.push_str(&format!("&from={from}"));
        }
        if let Some(to) = q.to {
            url.push_str(&format!("&to={to}"));
        }
        if q.descending {
            url.push_str("&order=desc");
        }
        if q.fetch_contact {
            url.push_str("&fetch_contact=true");
        }
        if q.short_urls {
            url.push_str("&fetch_short_urls=true");
        }
        url
    };
    let more = q.page * q.per_page < total;
    json!({
        key: items.iter().collect::<Vec<_>>(),
        "meta": {
            "count": items.len(),
            "total": total,
            "current_page": q.page,
            "per_page": q.per_page,
            "next_page_link": more.then(|| link(q.page + 1)),
            "previous_page_link": (q.page > 1).then(|| link(q.page - 1)),
        }
    })
}

fn parse_webhook_url(value: Option<&Value>) -> Result<Option<String>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(s.clone())),
            _ => Err(refusal(400, "url must be a valid URL")),
        },
        Some(_) => Err(refusal(400, "url must be a string")),
    }
}

/// Aircall's quirk: a missing `events` means every event.
fn parse_events(value: Option<&Value>) -> Result<Vec<String>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(ALL_EVENTS.iter().map(|e| e.to_string()).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|e| match e.as_str() {
                Some(name) if ALL_EVENTS.contains(&name) => Ok(name.to_string()),
                _ => Err(refusal(400, &format!("unknown event {e}"))),
            })
            .collect(),
        Some(_) => Err(refusal(400, "events must be a list")),
    }
}

fn uuid_v4(rng: &mut fastrand::Rng) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Time to the next call of a Poisson stream of `per_minute` calls, in milliseconds.
fn next_arrival_ms(rng: &mut fastrand::Rng, per_minute: f64) -> i64 {
    let mean_ms = 60_000.0 / per_minute.max(1e-6);
    let u = rng.f64().max(1e-12);
    ((-u.ln()) * mean_ms).clamp(1.0, 24.0 * 3600.0 * 1000.0) as i64
}

fn describe(company: &Company) -> CompanyInfo {
    let data = lock(&company.data);
    CompanyInfo {
        id: company.id,
        name: company.name.clone(),
        api_id: company.api_id.clone(),
        api_token: company.api_token.clone(),
        agents: data
            .users
            .iter()
            .map(|u| AgentInfo {
                id: u.id,
                name: u.name.clone(),
                email: u.email.clone(),
                paying: u.paying,
            })
            .collect(),
        calls: data.calls.len(),
        webhooks: data.webhooks.len(),
    }
}
