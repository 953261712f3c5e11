//! The per-call lease: at most one worker imports a given call at a time, however many
//! deliveries of it exist. A lease is a Redis key with a random token and an expiry, so a worker
//! that dies mid-import stops blocking the call once its lease lapses; the holder renews it
//! while it works and gives it back when done. Renewal and release only ever touch the holder's
//! own token.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::aircall::CallId;
use crate::connections::ConnectionId;

/// Renews the lease if the caller still holds it. KEYS: lease. ARGV: token, ttl (ms).
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if the caller holds it. KEYS: lease. ARGV: token.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Takes leases on calls.
#[derive(Clone)]
pub struct Leases {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A held lease. Give it back with [`Lease::release`]; if the holder dies, it lapses.
#[derive(Debug)]
pub struct Lease {
    redis: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
}

impl Leases {
    pub fn new(redis: ConnectionManager, key_prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: key_prefix.to_string(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease on `call`, or `None` while another holder has it.
    pub async fn acquire(
        &self,
        connection: &ConnectionId,
        call: CallId,
    ) -> Result<Option<Lease>, redis::RedisError> {
        let key = format!("{}:lease:{connection}:{}", self.prefix, call.0);
        let token = crate::queue::message::new_job_id();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(taken.map(|_| Lease {
            redis: self.redis.clone(),
            key,
            token,
            ttl: self.ttl,
        }))
    }
}

impl Lease {
    /// Extends the lease by its full time; `false` when it was lost (it lapsed and another
    /// worker took the call), in which case the holder must stop.
    pub async fn renew(&self) -> Result<bool, redis::RedisError> {
        let renewed: i64 = redis::Script::new(RENEW_LUA)
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// How often the holder should renew: a third of the lease, so one slow renewal is not
    /// fatal.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Gives the lease back (best effort: if Redis is away, the lease lapses by itself).
    pub async fn release(self) {
        let _: Result<i64, _> = redis::Script::new(RELEASE_LUA)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.redis.clone())
            .await;
    }
}
