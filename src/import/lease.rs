//! The per-call lease: at most one worker imports a given call at a time, however many
//! deliveries of it exist. A lease is a Redis key with a random token and an expiry, so a worker
//! that dies mid-import stops blocking the call once its lease lapses.
//!
//! A held lease renews itself in the background every third of its time, for as long as the
//! holder works (a slow rate-limit wait included). Should a renewal find the lease gone (Redis
//! lost it, or the process stalled past its expiry and another worker took the call),
//! [`Lease::lost`] fires and the holder stops. The final write of an import is fenced by the
//! token: the outcome script refuses it unless the lease is still this holder's (the lease key
//! shares the outcomes' `{connection}` hash tag, so one script may read both).

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

/// The Redis key of the lease on `call`: under the `{connection}` hash tag of the outcomes.
pub fn lease_key(prefix: &str, connection: &ConnectionId, call: CallId) -> String {
    format!("{prefix}:calls:{{{connection}}}:lease:{}", call.0)
}

/// A held lease, renewed in the background until released or dropped. If the holder dies, it
/// lapses.
#[derive(Debug)]
pub struct Lease {
    redis: ConnectionManager,
    key: String,
    token: String,
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
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
        self.acquire_key(lease_key(&self.prefix, connection, call))
            .await
    }

    /// Takes a lease under any key (a reconciliation lock, say), or `None` while it is held.
    pub async fn acquire_key(&self, key: String) -> Result<Option<Lease>, redis::RedisError> {
        let token = crate::queue::message::new_job_id();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            self.redis.clone(),
            key.clone(),
            token.clone(),
            self.ttl,
            lost.clone(),
        ));
        Ok(Some(Lease {
            redis: self.redis.clone(),
            key,
            token,
            lost,
            renewer,
        }))
    }
}

/// Renews every third of `ttl` until the task is aborted; fires `lost` when the lease is gone,
/// or when Redis did not answer for so long that it may have lapsed.
async fn renew(
    redis: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let renewed: Result<i64, _> = redis::Script::new(RENEW_LUA)
            .key(&key)
            .arg(&token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut redis.clone())
            .await;
        match renewed {
            Ok(1) => last_renewed = tokio::time::Instant::now(),
            Ok(_) => {
                warn!(lease = %key, "the lease on the call was lost; stopping this import");
                lost.cancel();
                return;
            }
            Err(e) if last_renewed.elapsed() + every >= ttl => {
                warn!(lease = %key, error = %e, "cannot renew the lease before it lapses; stopping this import");
                lost.cancel();
                return;
            }
            Err(e) => warn!(lease = %key, error = %e, "cannot renew the lease; trying again"),
        }
    }
}

impl Lease {
    /// The key and token, for a write fenced by the lease.
    pub fn fence(&self) -> (&str, &str) {
        (&self.key, &self.token)
    }

    /// Fires when the lease was lost: the holder must stop without committing anything.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Gives the lease back (best effort: if Redis is away, the lease lapses by itself).
    pub async fn release(self) {
        self.renewer.abort();
        let _: Result<i64, _> = redis::Script::new(RELEASE_LUA)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.redis.clone())
            .await;
    }
}
