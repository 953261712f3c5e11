//! The simulator's world: companies with their API keys, agents, lines, calls and webhooks, and
//! the switches (scenario mixes, faults) tests and demos turn. Plain data; behaviour lives in
//! `state.rs`, HTTP in `http.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::aircall::Direction;

/// Faults a company's API answers with. Shares are probabilities in `[0, 1]` per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// API requests answered 5xx (502, 503 or 504).
    pub error_5xx_share: f64,
    /// API requests answered 429 as if another integration had spent the company's budget.
    pub rate_limit_429_share: f64,
    /// Added to every API answer, in milliseconds.
    pub latency_ms: u64,
    /// Recording downloads cut short (the connection closes part-way).
    pub truncate_recording_share: f64,
    /// Webhook deliveries silently never sent.
    pub drop_webhook_share: f64,
    /// Webhook deliveries sent twice (Aircall delivers at least once).
    pub duplicate_webhook_share: f64,
    /// Up to this much extra delay per delivery, in milliseconds, so deliveries arrive out of
    /// order (Aircall does not order them).
    pub webhook_jitter_ms: u64,
}

/// The kinds of calls a generated scenario produces. Shares are of all calls unless noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallMix {
    /// Outbound calls (the rest are inbound).
    pub outbound: f64,
    /// Calls nobody answered (inbound: missed; outbound: failed).
    pub missed: f64,
    /// Share of missed inbound calls that leave a voicemail.
    pub voicemail: f64,
    /// Answered calls without a recording (too short, recording off, paused).
    pub no_recording: f64,
    /// Share of agents the platform does not know (not paying users).
    pub unknown_agent: f64,
    /// Recordings over 200 MB.
    pub oversized: f64,
    /// Recordings that appear minutes to hours after the call ended.
    pub late_recording: f64,
    /// Calls whose caller is a known contact.
    pub with_contact: f64,
    /// Recordings served without `Content-Length` (chunked).
    pub without_content_length: f64,
}

impl Default for CallMix {
    fn default() -> Self {
        Self {
            outbound: 0.4,
            missed: 0.2,
            voicemail: 0.3,
            no_recording: 0.1,
            unknown_agent: 0.25,
            oversized: 0.005,
            late_recording: 0.05,
            with_contact: 0.5,
            without_content_length: 0.1,
        }
    }
}

/// A company to create: generated agents, history and live traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompanySpec {
    pub name: Option<String>,
    /// Generated from the seed when absent.
    pub api_id: Option<String>,
    pub api_token: Option<String>,
    pub seed: u64,
    pub agents: usize,
    /// Finished calls spread over the last `history_days`.
    pub history_calls: usize,
    pub history_days: u32,
    /// New calls per minute from now on (0: none).
    pub live_calls_per_minute: f64,
    pub mix: CallMix,
}

impl Default for CompanySpec {
    fn default() -> Self {
        Self {
            name: None,
            api_id: None,
            api_token: None,
            seed: 1,
            agents: 8,
            history_calls: 0,
            history_days: 21,
            live_calls_per_minute: 0.0,
            mix: CallMix::default(),
        }
    }
}

/// One explicit call, for tests that need an exact case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallSpec {
    pub direction: Direction,
    /// Unix seconds; default: so that the call ends now.
    pub started_at: Option<i64>,
    /// Seconds from start to end.
    pub duration: i64,
    pub answered: bool,
    /// The agent, by email: one of the company's, or a new one created on the fly (not paying).
    pub agent_email: Option<String>,
    /// Recording size in bytes; `None` for no recording.
    pub recording_bytes: Option<u64>,
    /// Seconds after the end before the recording appears.
    pub recording_delay_s: i64,
    pub voicemail_bytes: Option<u64>,
    /// Serve the recording without `Content-Length`.
    pub without_content_length: bool,
    /// Still going: status `answered`, no `ended_at`, and no `call.ended` yet.
    pub in_progress: bool,
    /// Send the call's webhooks (`call.ended`, `call.comm_assets_generated`) as it ends.
    pub notify: bool,
    pub with_contact: bool,
}

impl Default for CallSpec {
    fn default() -> Self {
        Self {
            direction: Direction::Inbound,
            started_at: None,
            duration: 120,
            answered: true,
            agent_email: None,
            recording_bytes: Some(32_000),
            recording_delay_s: 0,
            voicemail_bytes: None,
            without_content_length: false,
            in_progress: false,
            notify: true,
            with_contact: false,
        }
    }
}

/// A company as the control API shows it (credentials included: this is a test double).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompanyInfo {
    pub id: u64,
    pub name: String,
    pub api_id: String,
    pub api_token: String,
    pub agents: Vec<AgentInfo>,
    pub calls: usize,
    pub webhooks: usize,
}

/// An agent of a simulated company.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: u64,
    pub name: String,
    pub email: String,
    /// Whether the scenario meant this agent to be a paying user of the platform.
    pub paying: bool,
}

/// What really happened to a call: the ground truth tests compare imports with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallTruth {
    pub id: u64,
    pub direction: Direction,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration: i64,
    pub agent_email: Option<String>,
    pub agent_paying: bool,
    pub recording_bytes: Option<u64>,
    pub recording_ready_at: Option<i64>,
    pub recording_sha256: Option<String>,
    pub voicemail_bytes: Option<u64>,
    pub without_content_length: bool,
    pub missed_call_reason: Option<String>,
}

/// A webhook as the control API shows it, with its delivery counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookInfo {
    pub webhook_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub token: String,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub consecutive_failures: u32,
}

/// Requests a company's API received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestStats {
    /// Authenticated API requests per endpoint, 429s and injected faults included; recording
    /// downloads as `download_{kind}`, and those a fault cut short also as
    /// `download_{kind}_cut_short`.
    pub by_endpoint: BTreeMap<String, u64>,
    /// Authenticated API requests per answer status.
    pub by_status: BTreeMap<u16, u64>,
    /// Arrival times (Unix ms, simulator clock) of the most recent authenticated API requests.
    pub recent_arrivals_ms: VecDeque<i64>,
}

/// How many arrival times a company keeps.
pub const KEPT_ARRIVALS: usize = 20_000;

pub(crate) struct Company {
    pub id: u64,
    pub name: String,
    pub api_id: String,
    pub api_token: String,
    pub data: Mutex<CompanyData>,
}

pub(crate) struct CompanyData {
    pub users: Vec<SimUser>,
    pub numbers: Vec<SimNumber>,
    /// Calls by `(started_at, id)`: Aircall lists by start time.
    pub calls: BTreeMap<(i64, u64), SimCall>,
    pub started_at_of: HashMap<u64, i64>,
    pub webhooks: Vec<SimWebhook>,
    /// Overrides the simulator-wide faults when set.
    pub faults: Option<Faults>,
    pub window_start_ms: i64,
    pub window_count: u32,
    pub stats: RequestStats,
    pub rng: fastrand::Rng,
    pub mix: CallMix,
}

impl CompanyData {
    pub fn call(&self, id: u64) -> Option<&SimCall> {
        let started = self.started_at_of.get(&id)?;
        self.calls.get(&(*started, id))
    }
    pub fn call_mut(&mut self, id: u64) -> Option<&mut SimCall> {
        let started = self.started_at_of.get(&id)?;
        self.calls.get_mut(&(*started, id))
    }
    pub fn insert_call(&mut self, call: SimCall) {
        self.started_at_of.insert(call.id, call.started_at);
        self.calls.insert((call.started_at, call.id), call);
    }
}

pub(crate) struct SimUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub paying: bool,
}

pub(crate) struct SimNumber {
    pub id: u64,
    pub name: String,
    pub digits: String,
    pub e164: String,
    pub country: String,
    pub time_zone: String,
}

pub(crate) struct SimContact {
    pub id: u64,
    pub first_name: String,
    pub last_name: String,
    pub company_name: String,
}

/// An audio file of a call and when it becomes available (Unix seconds).
#[derive(Clone, Copy)]
pub(crate) struct Audio {
    pub bytes: u64,
    pub ready_at: i64,
}

pub(crate) struct SimCall {
    pub id: u64,
    pub sid: String,
    pub direction: Direction,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    /// Set once the call is over.
    pub ended_at: Option<i64>,
    pub duration: i64,
    pub user: Option<usize>,
    pub number: usize,
    pub raw_digits: String,
    pub contact: Option<SimContact>,
    pub missed_call_reason: Option<&'static str>,
    pub recording: Option<Audio>,
    pub voicemail: Option<Audio>,
    pub without_content_length: bool,
}

impl SimCall {
    /// The audio of `kind` if it can be downloaded at `now_s`.
    pub fn audio_ready(&self, kind: super::recording::AudioKind, now_s: i64) -> Option<Audio> {
        let audio = match kind {
            super::recording::AudioKind::Recording => self.recording,
            super::recording::AudioKind::Voicemail => self.voicemail,
        }?;
        (self.ended_at.is_some() && audio.ready_at <= now_s).then_some(audio)
    }
}

pub(crate) struct SimWebhook {
    pub id: String,
    /// Set to inactive through the API by its owner: nothing is delivered, retries included.
    /// (Aircall's own deactivation after failures leaves this false and keeps retrying.)
    pub disabled_by_owner: bool,
    pub custom_name: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub token: String,
    pub created_at: i64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub consecutive_failures: u32,
}
