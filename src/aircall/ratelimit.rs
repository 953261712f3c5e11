//! One Aircall rate-limit budget per company, shared by every process through Redis.
//!
//! Aircall limits requests per company, whoever sends them, so the webhook workers and the
//! reconciliation poller of every replica draw from one budget. Each budget is a sliding log of
//! the requests spent in the last window (a Redis sorted set), updated by one Lua script so that
//! checking and spending are atomic; time is Redis's own clock, so process clocks may disagree.
//! A sliding log guarantees what a counter per window cannot: never more than `limit` requests
//! in *any* window, whatever the phase of Aircall's own window.
//!
//! The budget follows what Aircall says: `X-AircallApi-Limit` replaces the configured limit, and
//! `X-AircallApi-Remaining: 0` or a 429 blocks the whole company until Aircall's reset time.
//!
//! This module never sends a request to Aircall; it only says when one may be sent.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// How long what a budget learned (Aircall's limit, a block) is kept after the last update.
const CONTROL_TTL_MS: u64 = 24 * 3600 * 1000;
/// Bounds on a limit announced by Aircall's headers, against absurd values.
const MIN_LIMIT: u32 = 1;
const MAX_LIMIT: u32 = 100_000;
/// Spread of the retry instants of waiters, so they do not all ask Redis in the same millisecond.
const WAIT_JITTER_MS: u64 = 20;

/// Spends one request if the budget allows it; otherwise returns how long to wait.
/// KEYS[1]: sorted set of spent requests (score: Redis time in ms; member: unique per request).
/// KEYS[2]: hash of what Aircall told us: `limit`, `blocked_until` (ms).
/// ARGV: default limit, window ms (margin included), member.
/// Returns 0 when the request may go, else the milliseconds to wait before asking again.
const ACQUIRE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or tonumber(ARGV[1])
local blocked = tonumber(redis.call('HGET', KEYS[2], 'blocked_until')) or 0
if blocked > now then
  return blocked - now
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local spent = redis.call('ZCARD', KEYS[1])
if spent < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
-- The request that must leave the window before one more fits.
local gate = redis.call('ZRANGE', KEYS[1], spent - limit, spent - limit, 'WITHSCORES')
return math.max(1, tonumber(gate[2]) + window - now)
";

/// Adjusts the budget to what an Aircall answer said. KEYS[1]: the log; KEYS[2]: the control
/// hash. ARGV: default limit, window ms, announced limit (0: none), remaining (-1: none), block
/// ms (0: none), a unique member prefix, control TTL ms, ms until Aircall's reset (-1: unknown).
/// - an announced limit replaces the configured one;
/// - a `remaining` lower than the log's view means other integrations of the company spent the
///   difference: that many entries are added to the log, so our processes slow down too. They
///   leave the log when Aircall's window resets (a whole window later when the reset is unknown);
/// - a block holds every request of the company until it ends (never shortened).
const OBSERVE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local announced = tonumber(ARGV[3])
if announced > 0 then
  redis.call('HSET', KEYS[2], 'limit', announced)
end
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or tonumber(ARGV[1])
local remaining = tonumber(ARGV[4])
if remaining >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local unseen = (limit - redis.call('ZCARD', KEYS[1])) - remaining
  if unseen > 0 then
    local reset = tonumber(ARGV[8])
    local score = now
    if reset >= 0 and reset < window then
      score = now - window + reset
    end
    for i = 1, math.min(unseen, limit) do
      redis.call('ZADD', KEYS[1], score, ARGV[6] .. ':' .. i)
    end
    redis.call('PEXPIRE', KEYS[1], window)
  end
end
local block = tonumber(ARGV[5])
if block > 0 then
  local untill = now + block
  local current = tonumber(redis.call('HGET', KEYS[2], 'blocked_until')) or 0
  if untill > current then
    redis.call('HSET', KEYS[2], 'blocked_until', untill)
  end
end
if announced > 0 or block > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
return 0
";

/// Settings of every budget.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Requests per window until Aircall's headers say otherwise.
    pub default_limit: u32,
    pub window: Duration,
    /// Added to the window for each spent request; see `aircall.rate_limit_margin_ms`.
    pub margin: Duration,
}

/// The process-wide handle on all budgets.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    key_prefix: String,
    settings: RateLimitSettings,
    acquire: Arc<redis::Script>,
    observe: Arc<redis::Script>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key_prefix", &self.key_prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a request could not be granted.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("the shared rate-limit budget in Redis is unavailable")]
    Redis(#[source] redis::RedisError),
    #[error("cancelled while waiting for the rate-limit budget")]
    Cancelled,
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager, key_prefix: &str, settings: RateLimitSettings) -> Self {
        Self {
            redis,
            key_prefix: key_prefix.to_string(),
            settings,
            acquire: Arc::new(redis::Script::new(ACQUIRE_LUA)),
            observe: Arc::new(redis::Script::new(OBSERVE_LUA)),
        }
    }

    /// The budget of one company. `company` is a stable identifier of the Aircall company: the
    /// service uses the connection id, which outlives credential rotations.
    pub fn budget(&self, company: &str) -> CompanyBudget {
        // The braces are a Redis Cluster hash tag: both keys land on one slot for the script.
        let base = format!("{}:ratelimit:{{{company}}}", self.key_prefix);
        CompanyBudget {
            limiter: self.clone(),
            log_key: format!("{base}:log"),
            control_key: format!("{base}:control"),
        }
    }
}

/// The budget of one Aircall company.
#[derive(Clone)]
pub struct CompanyBudget {
    limiter: RateLimiter,
    log_key: String,
    control_key: String,
}

impl std::fmt::Debug for CompanyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompanyBudget")
            .field("log_key", &self.log_key)
            .finish_non_exhaustive()
    }
}

impl CompanyBudget {
    /// Waits until one request may be sent and spends it. Returns the time spent waiting.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Result<Duration, BudgetError> {
        let started = tokio::time::Instant::now();
        let settings = &self.limiter.settings;
        let window_ms = (settings.window + settings.margin).as_millis();
        loop {
            let member = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let wait_ms: u64 = self
                .limiter
                .acquire
                .key(&self.log_key)
                .key(&self.control_key)
                .arg(settings.default_limit)
                .arg(window_ms as u64)
                .arg(member)
                .invoke_async(&mut self.limiter.redis.clone())
                .await
                .map_err(BudgetError::Redis)?;
            if wait_ms == 0 {
                return Ok(started.elapsed());
            }
            let pause = Duration::from_millis(wait_ms + fastrand::u64(0..=WAIT_JITTER_MS));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return Err(BudgetError::Cancelled),
            }
        }
    }

    /// Holds every request of this company, in every process, for `wait` from now.
    pub async fn block_for(&self, wait: Duration) -> Result<(), BudgetError> {
        self.observe(&Observed {
            block: Some(wait),
            ..Observed::default()
        })
        .await
    }

    /// Adjusts the budget to an answer's rate-limit headers; see [`Observed`].
    pub async fn observe(&self, seen: &Observed) -> Result<(), BudgetError> {
        if seen.limit.is_none() && seen.remaining.is_none() && seen.block.is_none() {
            return Ok(());
        }
        let settings = &self.limiter.settings;
        let window_ms = (settings.window + settings.margin).as_millis() as u64;
        let remaining = seen.remaining.map_or(-1, i64::from);
        let _: i64 = self
            .limiter
            .observe
            .key(&self.log_key)
            .key(&self.control_key)
            .arg(settings.default_limit)
            .arg(window_ms)
            .arg(seen.limit.map_or(0, |l| l.clamp(MIN_LIMIT, MAX_LIMIT)))
            .arg(remaining)
            .arg(seen.block.map_or(0, |b| b.as_millis().max(1) as u64))
            .arg(format!("aircall:{:016x}", fastrand::u64(..)))
            .arg(CONTROL_TTL_MS)
            .arg(seen.reset_in.map_or(-1, |r| r.as_millis() as i64))
            .invoke_async(&mut self.limiter.redis.clone())
            .await
            .map_err(BudgetError::Redis)?;
        Ok(())
    }
}

/// What an Aircall answer said about the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// `X-AircallApi-Limit`: becomes the company's limit.
    pub limit: Option<u32>,
    /// `X-AircallApi-Remaining`: when lower than the budget's own view, the difference was spent
    /// by someone else and is counted as spent.
    pub remaining: Option<u32>,
    /// Hold every request of the company this long (after a 429, or when nothing remains).
    pub block: Option<Duration>,
    /// Time until Aircall's window resets (`X-AircallApi-Reset`), when known.
    pub reset_in: Option<Duration>,
}
