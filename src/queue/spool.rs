//! The spool: where an accepted webhook's job waits in Redis while RabbitMQ cannot confirm it,
//! and the drainer that moves spooled jobs into RabbitMQ as soon as it is back.
//!
//! Jobs are pushed at the head of a Redis list and drained from its tail, oldest first. A job
//! leaves the list only after RabbitMQ confirmed it; a crash between the confirm and the removal
//! publishes it twice, which the idempotent worker absorbs. One drainer at a time, across all
//! replicas, holds a lock, so the tail is never read by two drainers at once.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::broker::Broker;
use super::message::Message;

/// How long the drainer lock outlives its holder's last renewal.
const LOCK_TTL_MS: u64 = 15_000;

/// Takes or renews the drainer lock. KEYS[1]: lock; ARGV: holder, TTL ms. Returns 1 when held.
const LOCK_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Releases the lock if still held. KEYS[1]: lock; ARGV[1]: holder.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis spool of import jobs.
#[derive(Clone)]
pub struct Spool {
    redis: ConnectionManager,
    key: String,
    corrupt_key: String,
    lock_key: String,
    holder: String,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Spool {
    pub fn new(redis: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            redis,
            key: format!("{key_prefix}:spool"),
            corrupt_key: format!("{key_prefix}:spool:unreadable"),
            lock_key: format!("{key_prefix}:spool:drainer"),
            holder: super::message::new_job_id(),
        }
    }

    /// Holds a job until the drainer moves it to RabbitMQ. `Ok` means Redis has it.
    pub async fn push(&self, body: &[u8]) -> Result<(), redis::RedisError> {
        redis::cmd("LPUSH")
            .arg(&self.key)
            .arg(body)
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// Jobs waiting in the spool.
    pub async fn depth(&self) -> Result<u64, redis::RedisError> {
        redis::cmd("LLEN")
            .arg(&self.key)
            .query_async(&mut self.redis.clone())
            .await
    }

    async fn hold_lock(&self) -> Result<bool, redis::RedisError> {
        let held: i64 = redis::Script::new(LOCK_LUA)
            .key(&self.lock_key)
            .arg(&self.holder)
            .arg(LOCK_TTL_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    async fn release_lock(&self) {
        let released: Result<i64, _> = redis::Script::new(UNLOCK_LUA)
            .key(&self.lock_key)
            .arg(&self.holder)
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(e) = released {
            debug!(error = %e, "cannot release the spool drainer lock; it expires by itself");
        }
    }

    /// Moves up to `batch` of the oldest spooled jobs into RabbitMQ, removing each only after its
    /// confirm. Returns how many were moved; 0 when another process holds the drainer lock.
    pub async fn drain_once(
        &self,
        broker: &Broker,
        batch: usize,
        deadline: Duration,
    ) -> Result<usize, redis::RedisError> {
        if !self.hold_lock().await? {
            return Ok(0);
        }
        let mut redis = self.redis.clone();
        // Oldest last: LRANGE of the tail gives [newer … oldest].
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.key)
            .arg(-(batch as i64))
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        if items.is_empty() {
            return Ok(0);
        }
        let publishes = items.iter().map(|body| async move {
            match Message::decode(body) {
                Ok(message) => broker
                    .publish_bytes(&message, body, deadline)
                    .await
                    .map_err(Some),
                Err(e) => {
                    error!(error = %e, "an unreadable job was in the spool; setting it aside");
                    Err(None)
                }
            }
        });
        let results = futures_util::future::join_all(publishes).await;
        let moved = results.iter().filter(|r| r.is_ok()).count();
        if moved == items.len() {
            // Everything confirmed: cut the drained tail in one command.
            redis::cmd("LTRIM")
                .arg(&self.key)
                .arg(0)
                .arg(-(items.len() as i64) - 1)
                .query_async::<()>(&mut redis)
                .await?;
        } else {
            let mut pipe = redis::pipe();
            for (body, result) in items.iter().zip(&results) {
                match result {
                    Ok(()) => {
                        pipe.cmd("LREM").arg(&self.key).arg(-1).arg(body).ignore();
                    }
                    Err(None) => {
                        pipe.cmd("LPUSH").arg(&self.corrupt_key).arg(body).ignore();
                        pipe.cmd("LREM").arg(&self.key).arg(-1).arg(body).ignore();
                    }
                    Err(Some(_)) => {}
                }
            }
            pipe.query_async::<()>(&mut redis).await?;
            if let Some(Err(Some(e))) = results.iter().find(|r| matches!(r, Err(Some(_)))) {
                debug!(error = %e, moved, left = items.len() - moved, "RabbitMQ did not confirm every spooled job");
            }
        }
        Ok(moved)
    }

    /// Drains the spool whenever RabbitMQ is reachable, until `cancel` fires.
    pub async fn run_drainer(
        self,
        broker: Broker,
        interval: Duration,
        batch: usize,
        deadline: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            let mut drained = 0;
            while broker.is_connected() && !cancel.is_cancelled() {
                match self.drain_once(&broker, batch, deadline).await {
                    Ok(0) => break,
                    Ok(n) => drained += n,
                    Err(e) => {
                        warn!(error = %e, "cannot drain the spool: Redis is unavailable");
                        break;
                    }
                }
            }
            if drained > 0 {
                info!(jobs = drained, "moved spooled jobs into RabbitMQ");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = cancel.cancelled() => break,
            }
        }
        self.release_lock().await;
    }
}
