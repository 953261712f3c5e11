//! The spool: where an accepted webhook's job waits in Redis while RabbitMQ cannot confirm it,
//! and the drainer that moves spooled jobs into RabbitMQ as soon as it is back.
//!
//! Jobs are pushed at the head of a Redis list and drained from its tail, oldest first. A job
//! leaves the list only after RabbitMQ confirmed it, and only by value (every job body is unique:
//! it carries its job id), by a script that first checks the drainer still holds its lock. So a
//! drainer that stalls and loses its lock can publish a job twice — which the idempotent worker
//! absorbs — but can never remove a job nobody published.
//!
//! While RabbitMQ does not confirm (it hangs, or an alarm blocks publishers), the drainer backs
//! off and probes with one job at a time, so a hung broker is not flooded with copies.
//!
//! Bodies are forwarded as they are: a job of a newer version, spooled by a newer replica during
//! a rolling upgrade, goes to the queue untouched and is judged by the worker.

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::broker::{Broker, Envelope};

/// How long the drainer lock outlives its holder's last renewal.
const LOCK_TTL_MS: u64 = 15_000;
/// Longest pause between drain attempts while RabbitMQ does not confirm.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Takes or renews the drainer lock. KEYS[1]: lock; ARGV: holder, TTL ms. Returns 1 when held.
const LOCK_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Removes confirmed jobs by value, if the lock is still held. KEYS[1]: spool; KEYS[2]: lock.
/// ARGV[1]: holder; ARGV[2…]: the confirmed bodies. Returns how many were removed, or -1 when
/// the lock was lost (the jobs stay: a duplicate publish is harmless, a lost job is not).
const REMOVE_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i])
end
return removed
";

/// Moves an entry that is not a job at all aside, by value, under the lock. KEYS: spool, lock,
/// unreadable list. ARGV: holder, body.
const SET_ASIDE_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
local removed = redis.call('LREM', KEYS[1], -1, ARGV[2])
if removed > 0 then
  redis.call('LPUSH', KEYS[3], ARGV[2])
end
return removed
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
    unreadable_key: String,
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

/// What one drain round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Jobs confirmed by RabbitMQ and removed from the spool.
    pub moved: usize,
    /// Jobs RabbitMQ did not confirm; they stay spooled.
    pub failed: usize,
}

/// The envelope fields the drainer needs from a body, read without judging its version.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    job_id: Option<&'a str>,
}

impl Spool {
    pub fn new(redis: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            redis,
            key: format!("{key_prefix}:spool"),
            unreadable_key: format!("{key_prefix}:spool:unreadable"),
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
            warn!(error = %e, "cannot release the spool drainer lock; it expires by itself");
        }
    }

    /// Moves up to `batch` of the oldest spooled jobs into RabbitMQ, removing each only after its
    /// confirm. Does nothing while another process holds the drainer lock.
    pub async fn drain_once(
        &self,
        broker: &Broker,
        batch: usize,
        deadline: Duration,
    ) -> Result<Drained, redis::RedisError> {
        if !self.hold_lock().await? {
            return Ok(Drained::default());
        }
        let mut redis = self.redis.clone();
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.key)
            .arg(-(batch.max(1) as i64))
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let mut confirmed: Vec<&[u8]> = Vec::new();
        let mut failed = 0;
        // Oldest (the tail) first.
        let publishes = items.iter().rev().map(|body| async move {
            match serde_json::from_slice::<Header<'_>>(body) {
                Ok(header) => {
                    let envelope = Envelope {
                        id: header.job_id,
                        kind: header.kind,
                    };
                    Some(broker.publish_bytes(envelope, body, deadline).await)
                }
                Err(_) => None,
            }
        });
        let results = futures_util::future::join_all(publishes).await;
        for (body, result) in items.iter().rev().zip(results) {
            match result {
                Some(Ok(())) => confirmed.push(body),
                Some(Err(e)) => {
                    failed += 1;
                    if failed == 1 {
                        warn!(error = %e, "RabbitMQ did not confirm a spooled job; it stays in the spool");
                    }
                }
                None => {
                    error!(
                        bytes = body.len(),
                        "an entry of the spool is not a job; setting it aside for a person"
                    );
                    let _: i64 = redis::Script::new(SET_ASIDE_LUA)
                        .key(&self.key)
                        .key(&self.lock_key)
                        .key(&self.unreadable_key)
                        .arg(&self.holder)
                        .arg(body.as_slice())
                        .invoke_async(&mut redis)
                        .await?;
                }
            }
        }
        if confirmed.is_empty() {
            return Ok(Drained { moved: 0, failed });
        }
        let remove = redis::Script::new(REMOVE_LUA);
        let mut invocation = remove.key(&self.key);
        invocation.key(&self.lock_key).arg(&self.holder);
        for body in &confirmed {
            invocation.arg(*body);
        }
        let removed: i64 = invocation.invoke_async(&mut redis).await?;
        if removed < 0 {
            warn!(
                jobs = confirmed.len(),
                "the spool drainer lost its lock mid-round; its published jobs stay spooled and may be published twice"
            );
            return Ok(Drained { moved: 0, failed });
        }
        Ok(Drained {
            moved: confirmed.len(),
            failed,
        })
    }

    /// Drains the spool whenever RabbitMQ takes publishers, until `cancel` fires. After a round
    /// in which RabbitMQ did not confirm, it waits longer (doubling, up to 30 s) and probes with
    /// a single job before sending batches again.
    pub async fn run_drainer(
        self,
        broker: Broker,
        interval: Duration,
        batch: usize,
        deadline: Duration,
        cancel: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        loop {
            let mut moved = 0;
            while broker.is_connected() && !cancel.is_cancelled() {
                let size = if failures > 0 { 1 } else { batch };
                match self.drain_once(&broker, size, deadline).await {
                    Ok(Drained {
                        moved: 0,
                        failed: 0,
                    }) => break,
                    Ok(Drained {
                        moved: n,
                        failed: 0,
                    }) => {
                        moved += n;
                        failures = 0;
                    }
                    Ok(Drained { moved: n, failed }) => {
                        moved += n;
                        failures += 1;
                        warn!(
                            failed,
                            attempt = failures,
                            "spooled jobs wait: RabbitMQ does not confirm them"
                        );
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot drain the spool: Redis is unavailable");
                        break;
                    }
                }
            }
            if moved > 0 {
                info!(jobs = moved, "moved spooled jobs into RabbitMQ");
            }
            let pause = interval
                .saturating_mul(1 << failures.min(8))
                .min(MAX_BACKOFF.max(interval));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => break,
            }
        }
        self.release_lock().await;
    }
}
