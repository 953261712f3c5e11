//! Connections: one customer account's Aircall company, as stored in Redis.
//!
//! A connection holds the API ID, the API token **encrypted** (AES-256-GCM), the id of the webhook
//! registered on Aircall and only the **fingerprint** of that webhook's token. Neither secret is
//! ever stored or logged in clear.
//!
//! Keys: `{prefix}:connection:{id}` (hash), `{prefix}:connection:{id}:users` (set of the paying
//! users' normalised emails) and `{prefix}:connections` (set of ids).

mod lifecycle;
pub mod outcomes;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

pub use lifecycle::{
    ConnectError, ConnectRequest, DisconnectError, DisconnectRequest, Disconnected, RotateRequest,
    Rotated, connect, disconnect, rotate_credentials, webhook_url,
};
pub use outcomes::{
    Compacted, DayCounts, Outcome, OutcomeQuery, OutcomeRecord, OutcomeStore, Recorded, StoredCall,
};

use crate::import::rules::PayingUsers;

/// A connection id: 1 to 64 of `a-z`, `0-9`, `_`, `-` (it appears in URLs and Redis keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

/// A connection id that breaks the rule.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a connection id is 1 to 64 characters among a-z, 0-9, `_` and `-`")]
pub struct InvalidConnectionId;

impl ConnectionId {
    pub fn parse(text: &str) -> Result<Self, InvalidConnectionId> {
        let valid = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_string()))
        } else {
            Err(InvalidConnectionId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = InvalidConnectionId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<ConnectionId> for String {
    fn from(id: ConnectionId) -> Self {
        id.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Connected and importing.
    Active,
    /// Connected, but the first import waits for a list of paying users.
    WaitingForUsers,
    /// Aircall refuses the stored credentials.
    InvalidCredentials,
    /// Aircall deactivated the webhook and it could not be re-activated.
    WebhookDisabled,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::WaitingForUsers => "waiting_for_users",
            Self::InvalidCredentials => "invalid_credentials",
            Self::WebhookDisabled => "webhook_disabled",
        }
    }
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "waiting_for_users" => Self::WaitingForUsers,
            "invalid_credentials" => Self::InvalidCredentials,
            "webhook_disabled" => Self::WebhookDisabled,
            _ => return None,
        })
    }
}

/// A stored connection. The sealed token and the fingerprint are not secrets by themselves, but
/// still stay out of `Debug`.
#[derive(Clone, PartialEq)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub api_id: String,
    /// The API token, encrypted with [`crate::crypto::Keys::encrypt`] for this connection id.
    pub api_token_sealed: String,
    pub webhook_id: String,
    /// HMAC-SHA256 fingerprint of the webhook token.
    pub webhook_token_fingerprint: [u8; 32],
    pub status: ConnectionStatus,
    pub created_at_ms: i64,
}

impl fmt::Debug for ConnectionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRecord")
            .field("id", &self.id)
            .field("api_id", &self.api_id)
            .field("webhook_id", &self.webhook_id)
            .field("status", &self.status)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// How long a background refresh of a cached fingerprint waits for Redis.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// A fingerprint that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("Redis is unavailable")]
    Redis(#[source] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    TimedOut(Duration),
}

#[derive(Clone, Copy)]
struct Cached {
    fingerprint: [u8; 32],
    read_at: Instant,
}

/// Creates a connection's hash, its paying users and its index entry, unless it exists.
/// KEYS: hash, index set, users set. ARGV: id, now (ms), the number of field/value pairs, the
/// pairs, then the paying users' emails. Returns 1 when created, 0 when the id was taken.
const CREATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local pairs = tonumber(ARGV[3])
for i = 4, 3 + 2 * pairs, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('DEL', KEYS[3])
local first_email = 4 + 2 * pairs
if #ARGV >= first_email then
  for i = first_email, #ARGV do
    redis.call('SADD', KEYS[3], ARGV[i])
  end
  redis.call('HSET', KEYS[1], 'users_changed_at_ms', ARGV[2], 'users_version', 1)
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Replaces the credentials of an existing connection (and, when given, its webhook), and
/// lifts an `invalid_credentials` status. KEYS: hash, users set. ARGV: api_id, sealed token,
/// now (ms), webhook id ('' to keep), webhook fingerprint. Returns 0 for an unknown
/// connection, 2 when the status was `invalid_credentials`, else 1.
const ROTATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'api_id', ARGV[1], 'api_token_sealed', ARGV[2], 'credentials_rotated_at_ms', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_id', ARGV[4], 'webhook_token_fingerprint', ARGV[5])
end
if redis.call('HGET', KEYS[1], 'status') == 'invalid_credentials' then
  if redis.call('SCARD', KEYS[2]) > 0 then
    redis.call('HSET', KEYS[1], 'status', 'active')
  else
    redis.call('HSET', KEYS[1], 'status', 'waiting_for_users')
  end
  return 2
end
return 1
";

/// Replaces the paying users of an existing connection. KEYS: the connection hash, its users
/// set. ARGV: now (ms), then the emails. Returns 0 for an unknown connection. A connection
/// waiting for users becomes active with some; an active one left without any waits again.
const SET_USERS_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
end
redis.call('HSET', KEYS[1], 'users_changed_at_ms', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'users_version', 1)
local status = redis.call('HGET', KEYS[1], 'status')
if #ARGV > 1 and status == 'waiting_for_users' then
  redis.call('HSET', KEYS[1], 'status', 'active')
elseif #ARGV == 1 and status == 'active' then
  redis.call('HSET', KEYS[1], 'status', 'waiting_for_users')
end
return 1
";

/// The connections in Redis, with a small in-process cache of webhook fingerprints for the
/// webhook endpoint (hit on every webhook).
#[derive(Clone)]
pub struct ConnectionStore {
    redis: ConnectionManager,
    prefix: String,
    /// Fingerprints of existing connections and when they were read (unknown ids are not kept,
    /// so probes of random ids cannot grow it).
    fingerprints: Arc<RwLock<HashMap<String, Cached>>>,
    cache_ttl: Duration,
}

impl fmt::Debug for ConnectionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ConnectionStore {
    pub fn new(redis: ConnectionManager, key_prefix: &str, cache_ttl: Duration) -> Self {
        Self {
            redis,
            prefix: key_prefix.to_string(),
            fingerprints: Arc::default(),
            cache_ttl,
        }
    }

    fn key(&self, id: &ConnectionId) -> String {
        format!("{}:connection:{id}", self.prefix)
    }

    fn users_key(&self, id: &ConnectionId) -> String {
        format!("{}:connection:{id}:users", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}:connections", self.prefix)
    }

    /// Stores a new connection with its paying users (none: it waits for them), in one step;
    /// `false` when the id is already taken.
    pub async fn create(
        &self,
        record: &ConnectionRecord,
        users: &PayingUsers,
    ) -> Result<bool, redis::RedisError> {
        let fields = [
            ("api_id", record.api_id.clone()),
            ("api_token_sealed", record.api_token_sealed.clone()),
            ("webhook_id", record.webhook_id.clone()),
            (
                "webhook_token_fingerprint",
                hex::encode(record.webhook_token_fingerprint),
            ),
            ("status", record.status.as_str().to_string()),
            ("created_at_ms", record.created_at_ms.to_string()),
        ];
        let create = redis::Script::new(CREATE_LUA);
        let mut script = create.key(self.key(&record.id));
        script
            .key(self.index_key())
            .key(self.users_key(&record.id))
            .arg(record.id.as_str())
            .arg(record.created_at_ms)
            .arg(fields.len());
        for (field, value) in &fields {
            script.arg(*field).arg(value);
        }
        for email in users.sorted() {
            script.arg(email);
        }
        let created: i64 = script.invoke_async(&mut self.redis.clone()).await?;
        self.forget(&record.id);
        Ok(created == 1)
    }

    pub async fn get(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionRecord>, redis::RedisError> {
        let fields: HashMap<String, String> = self.redis.clone().hgetall(self.key(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        Ok(Some(ConnectionRecord {
            id: id.clone(),
            api_id: text("api_id"),
            api_token_sealed: text("api_token_sealed"),
            webhook_id: text("webhook_id"),
            webhook_token_fingerprint: parse_fingerprint(&text("webhook_token_fingerprint"))
                .unwrap_or([0; 32]),
            status: ConnectionStatus::parse(&text("status")).unwrap_or(ConnectionStatus::Active),
            created_at_ms: text("created_at_ms").parse().unwrap_or(0),
        }))
    }

    /// Every connection id.
    pub async fn ids(&self) -> Result<Vec<ConnectionId>, redis::RedisError> {
        let ids: Vec<String> = self.redis.clone().smembers(self.index_key()).await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| ConnectionId::parse(&id).ok())
            .collect())
    }

    /// Removes a connection's record (and with it its credentials).
    pub async fn delete(&self, id: &ConnectionId) -> Result<(), redis::RedisError> {
        redis::pipe()
            .atomic()
            .del(self.key(id))
            .ignore()
            .del(self.users_key(id))
            .ignore()
            .srem(self.index_key(), id.as_str())
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        self.forget(id);
        Ok(())
    }

    pub async fn set_status(
        &self,
        id: &ConnectionId,
        status: ConnectionStatus,
    ) -> Result<(), redis::RedisError> {
        // HSET only on an existing hash, so a status never resurrects a deleted connection.
        redis::Script::new("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'status', ARGV[1]) end return 0")
            .key(self.key(id))
            .arg(status.as_str())
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// Replaces a connection's paying users; `false` when the connection does not exist. A
    /// connection waiting for its users becomes active; an active one left without any waits.
    pub async fn set_paying_users(
        &self,
        id: &ConnectionId,
        users: &PayingUsers,
        now_ms: i64,
    ) -> Result<bool, redis::RedisError> {
        let set_users = redis::Script::new(SET_USERS_LUA);
        let mut script = set_users.prepare_invoke();
        script.key(self.key(id)).key(self.users_key(id)).arg(now_ms);
        for email in users.sorted() {
            script.arg(email);
        }
        let done: i64 = script.invoke_async(&mut self.redis.clone()).await?;
        Ok(done == 1)
    }

    /// Marks the connection `invalid_credentials` after Aircall refused `api_token_sealed`,
    /// unless its credentials were replaced since (a rotation must not be undone by a refusal
    /// of the old key). `false` when not marked.
    pub async fn mark_invalid_credentials(
        &self,
        id: &ConnectionId,
        api_token_sealed: &str,
    ) -> Result<bool, redis::RedisError> {
        let marked: i64 = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'api_token_sealed') ~= ARGV[1] then return 0 end \
             redis.call('HSET', KEYS[1], 'status', 'invalid_credentials') \
             return 1",
        )
        .key(self.key(id))
        .arg(api_token_sealed)
        .invoke_async(&mut self.redis.clone())
        .await?;
        Ok(marked == 1)
    }

    /// Replaces the API credentials of a connection, and its webhook when `webhook` is given
    /// (`(id, token fingerprint)`); lifts an `invalid_credentials` status.
    pub async fn replace_credentials(
        &self,
        id: &ConnectionId,
        api_id: &str,
        api_token_sealed: &str,
        webhook: Option<(&str, &[u8; 32])>,
        now_ms: i64,
    ) -> Result<CredentialsReplaced, redis::RedisError> {
        let (webhook_id, fingerprint) = webhook
            .map(|(id, fp)| (id.to_string(), hex::encode(fp)))
            .unwrap_or_default();
        let done: i64 = redis::Script::new(ROTATE_LUA)
            .key(self.key(id))
            .key(self.users_key(id))
            .arg(api_id)
            .arg(api_token_sealed)
            .arg(now_ms)
            .arg(webhook_id)
            .arg(fingerprint)
            .invoke_async(&mut self.redis.clone())
            .await?;
        self.forget(id);
        Ok(match done {
            0 => CredentialsReplaced::UnknownConnection,
            2 => CredentialsReplaced::StatusRestored,
            _ => CredentialsReplaced::Replaced,
        })
    }

    /// The paying users' count, how many times they were set, and when they last changed.
    pub async fn users_summary(
        &self,
        id: &ConnectionId,
    ) -> Result<UsersSummary, redis::RedisError> {
        let (count, version, changed_at_ms): (u64, Option<i64>, Option<i64>) = redis::pipe()
            .scard(self.users_key(id))
            .hget(self.key(id), "users_version")
            .hget(self.key(id), "users_changed_at_ms")
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(UsersSummary {
            count,
            version: version.unwrap_or(0),
            changed_at_ms,
        })
    }

    /// How many times the paying users were set (0 if never): a counter, so no clock skew
    /// between replicas or two changes within a millisecond can hide a change.
    pub async fn users_version(&self, id: &ConnectionId) -> Result<i64, redis::RedisError> {
        let version: Option<i64> = self
            .redis
            .clone()
            .hget(self.key(id), "users_version")
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Points a connection at a new webhook (Aircall lost or deleted the old one), unless the
    /// connection is gone or no longer on `replaced` (a credential rotation registered another
    /// meanwhile): `false` then.
    pub async fn update_webhook(
        &self,
        id: &ConnectionId,
        replaced: &str,
        webhook_id: &str,
        fingerprint: &[u8; 32],
    ) -> Result<bool, redis::RedisError> {
        let updated: i64 = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'webhook_id') ~= ARGV[3] then return 0 end \
             redis.call('HSET', KEYS[1], 'webhook_id', ARGV[1], 'webhook_token_fingerprint', ARGV[2]) \
             return 1",
        )
        .key(self.key(id))
        .arg(webhook_id)
        .arg(hex::encode(fingerprint))
        .arg(replaced)
        .invoke_async(&mut self.redis.clone())
        .await?;
        self.forget(id);
        Ok(updated == 1)
    }

    /// A connection's paying users (empty for an unknown connection).
    pub async fn paying_users(&self, id: &ConnectionId) -> Result<PayingUsers, redis::RedisError> {
        let emails: Vec<String> = self.redis.clone().smembers(self.users_key(id)).await?;
        Ok(PayingUsers::new(emails))
    }

    /// The fingerprint this process holds for a connection, however old, without waiting for
    /// anything: what lets a webhook be checked with no Redis read whatever the number of
    /// connections (each of thousands of quiet connections sees a webhook only now and then,
    /// long after any time-to-live). One older than `cache_ttl` is read again in the
    /// background (once per `cache_ttl`), so a change reaches this process within about that.
    /// A token that does not match it must be checked against [`Self::webhook_fingerprint`]:
    /// the fingerprint may have changed since. When Redis cannot be reached, the entry goes on
    /// answering, so known connections keep their webhooks flowing through a Redis outage.
    pub fn cached_fingerprint(&self, id: &ConnectionId) -> Option<[u8; 32]> {
        let stale = {
            let cache = self
                .fingerprints
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cached = cache.get(id.as_str())?;
            if cached.read_at.elapsed() < self.cache_ttl {
                return Some(cached.fingerprint);
            }
            cached.fingerprint
        };
        // Marked as read now, so the requests meanwhile do not all start a refresh.
        if let Some(entry) = self
            .fingerprints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(id.as_str())
        {
            entry.read_at = Instant::now();
        }
        let (store, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.webhook_fingerprint(&id, REFRESH_WAIT).await {
                tracing::debug!(connection = %id, error = %e, "cannot refresh a webhook fingerprint");
            }
        });
        Some(stale)
    }

    /// The webhook-token fingerprint of a connection as Redis has it now, waiting at most
    /// `wait`; `None` for an unknown connection. The cache is updated with it (an unknown id is
    /// dropped from it, and never kept: probes of random ids cannot grow it).
    pub async fn webhook_fingerprint(
        &self,
        id: &ConnectionId,
        wait: Duration,
    ) -> Result<Option<[u8; 32]>, FingerprintError> {
        let fetched = tokio::time::timeout(wait, async {
            self.redis
                .clone()
                .hget::<_, _, Option<String>>(self.key(id), "webhook_token_fingerprint")
                .await
        })
        .await;
        match fetched {
            Ok(Ok(text)) => {
                let fingerprint = text.as_deref().and_then(parse_fingerprint);
                let mut cache = self
                    .fingerprints
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match fingerprint {
                    Some(fingerprint) => {
                        cache.insert(
                            id.as_str().to_string(),
                            Cached {
                                fingerprint,
                                read_at: Instant::now(),
                            },
                        );
                    }
                    None => {
                        cache.remove(id.as_str());
                    }
                }
                Ok(fingerprint)
            }
            Ok(Err(e)) => Err(FingerprintError::Redis(e)),
            Err(_) => Err(FingerprintError::TimedOut(wait)),
        }
    }

    fn forget(&self, id: &ConnectionId) {
        self.fingerprints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id.as_str());
    }
}

/// What [`ConnectionStore::replace_credentials`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsReplaced {
    Replaced,
    /// Replaced, and the connection, marked `invalid_credentials`, works again.
    StatusRestored,
    UnknownConnection,
}

/// A connection's paying users, in figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsersSummary {
    pub count: u64,
    /// How many times the list was set (0: never).
    pub version: i64,
    /// When it last changed (Unix ms).
    pub changed_at_ms: Option<i64>,
}

fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_follow_the_rule() {
        for good in ["acme", "a", "acme-eu_2", &"x".repeat(64)] {
            assert!(ConnectionId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "acme corp",
            "a/b",
            "é",
            &"x".repeat(65),
            "../x",
            "a:b",
            "{a}",
        ] {
            assert!(ConnectionId::parse(bad).is_err(), "{bad}");
        }
    }
}
