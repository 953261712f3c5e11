//! Per-connection reconciliation state in Redis: the watermark, when the first import ran, which
//! paying-users version was seen, when the next pass is due, and the latest run reports.
//!
//! Keys (the `{connection}` hash tag keeps one connection's keys on one cluster slot):
//! `{p}:reconcile:{c}` (hash), `{p}:reconcile:{c}:reports` (list, newest first, trimmed),
//! `{p}:reconcile:{c}:lock` (the pass lock); and one for all connections,
//! `{p}:reconcile:due`, a sorted set of connection ids scored by when each is due next (Unix ms),
//! so finding the due connections costs the same with 10 or 10,000 of them. The hash's
//! `next_due_ms` is the truth, checked under the connection's lock; the index only says where
//! to look, and is repaired wherever it is found wrong.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::RunReport;
use crate::connections::ConnectionId;

/// Where a connection's reconciliation stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileState {
    /// Every call started at or before this (Unix s) has been listed by a complete pass. `None`
    /// until the first import completed.
    pub watermark: Option<i64>,
    pub first_import_at_ms: Option<i64>,
    /// The paying-users version (`users_version` of the connection) the passes have taken
    /// into account.
    pub users_seen: Option<i64>,
    /// When the next pass is due (Unix ms); 0 for a connection never reconciled: at once.
    pub next_due_ms: i64,
    pub last_run_at_ms: i64,
    /// When a pass last listed the whole overlap (Unix ms).
    pub full_overlap_at_ms: i64,
}

impl ReconcileState {
    /// The hash fields of the state (absent options are left as they are in Redis).
    fn fields(&self) -> Vec<(&'static str, i64)> {
        let mut fields = vec![
            ("next_due_ms", self.next_due_ms),
            ("last_run_at_ms", self.last_run_at_ms),
            ("full_overlap_at_ms", self.full_overlap_at_ms),
        ];
        if let Some(w) = self.watermark {
            fields.push(("watermark", w));
        }
        if let Some(t) = self.first_import_at_ms {
            fields.push(("first_import_at_ms", t));
        }
        if let Some(u) = self.users_seen {
            fields.push(("users_seen", u));
        }
        fields
    }
}

/// Writes a pass's state and report while its lock is held. KEYS: state hash, reports list,
/// lock. ARGV: lock token, report JSON, index of the last report kept, then field/value pairs.
/// Returns 0 (nothing written) when the lock is not the pass's any more.
const SAVE_LUA: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]))
return 1
";

/// The state of every connection. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    pub fn new(redis: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            redis,
            prefix: key_prefix.to_string(),
        }
    }

    fn key(&self, id: &ConnectionId) -> String {
        format!("{}:reconcile:{{{id}}}", self.prefix)
    }

    pub fn lock_key(&self, id: &ConnectionId) -> String {
        format!("{}:lock", self.key(id))
    }

    fn reports_key(&self, id: &ConnectionId) -> String {
        format!("{}:reports", self.key(id))
    }

    pub async fn get(&self, id: &ConnectionId) -> Result<ReconcileState, redis::RedisError> {
        let fields: HashMap<String, i64> = self.redis.clone().hgetall(self.key(id)).await?;
        Ok(ReconcileState {
            watermark: fields.get("watermark").copied(),
            first_import_at_ms: fields.get("first_import_at_ms").copied(),
            users_seen: fields.get("users_seen").copied(),
            next_due_ms: fields.get("next_due_ms").copied().unwrap_or(0),
            last_run_at_ms: fields.get("last_run_at_ms").copied().unwrap_or(0),
            full_overlap_at_ms: fields.get("full_overlap_at_ms").copied().unwrap_or(0),
        })
    }

    /// Saves a pass's state and pushes its report (keeping the newest `kept`), both only while
    /// the pass's lock `(key, token)` is still held; `false` when it was not (nothing written).
    pub async fn save_with_report(
        &self,
        id: &ConnectionId,
        state: &ReconcileState,
        report: &RunReport,
        kept: usize,
        (lock_key, token): (&str, &str),
    ) -> Result<bool, redis::RedisError> {
        let save = redis::Script::new(SAVE_LUA);
        let mut script = save.prepare_invoke();
        script
            .key(self.key(id))
            .key(self.reports_key(id))
            .key(lock_key)
            .arg(token)
            .arg(serde_json::to_string(report).unwrap_or_default())
            .arg(kept.saturating_sub(1));
        for (field, value) in state.fields() {
            script.arg(field).arg(value);
        }
        let saved: i64 = script.invoke_async(&mut self.redis.clone()).await?;
        if saved == 1 {
            // Another key (another cluster slot): not in the script. Should this fail, the
            // index says "due" too early, and the pass that finds the connection not due yet
            // puts it right.
            self.index(id, state.next_due_ms).await?;
        }
        Ok(saved == 1)
    }

    fn due_key(&self) -> String {
        format!("{}:reconcile:due", self.prefix)
    }

    /// Records in the due index when `id` is due next (Unix ms).
    pub async fn index(&self, id: &ConnectionId, due_ms: i64) -> Result<(), redis::RedisError> {
        self.redis
            .clone()
            .zadd::<_, _, _, ()>(self.due_key(), id.as_str(), due_ms)
            .await
    }

    fn troubled_key(&self) -> String {
        format!("{}:reconcile:troubled", self.prefix)
    }

    /// Records whether the connection's last pass failed.
    pub async fn mark_troubled(
        &self,
        id: &ConnectionId,
        troubled: bool,
    ) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        if troubled {
            redis.sadd(self.troubled_key(), id.as_str()).await
        } else {
            redis.srem(self.troubled_key(), id.as_str()).await
        }
    }

    /// The connections whose last pass failed.
    pub async fn troubled(&self) -> Result<std::collections::HashSet<String>, redis::RedisError> {
        self.redis.clone().smembers(self.troubled_key()).await
    }

    /// Removes `id` from the due index (it is no connection).
    pub async fn unindex(&self, id: &ConnectionId) -> Result<(), redis::RedisError> {
        self.redis
            .clone()
            .zrem::<_, _, ()>(self.due_key(), id.as_str())
            .await
    }

    /// The connections the index says are due by `by_ms`, soonest first: all of them at once
    /// (a snapshot of ids, ~20 bytes each), so a round's passes moving their connections'
    /// scores meanwhile cannot make it skip one.
    pub async fn due(&self, by_ms: i64) -> Result<Vec<ConnectionId>, redis::RedisError> {
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.due_key())
            .arg("-inf")
            .arg(by_ms)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| ConnectionId::parse(&id).ok())
            .collect())
    }

    /// Makes the index hold exactly the stored connections: a connection missing from it (made
    /// before the index existed, or whose entry a failure lost) is added with its state's due
    /// time, an entry of no connection is removed. Returns how many entries it changed. Reads
    /// the index first, so a connection made meanwhile is never taken for a stale entry. Costs
    /// a read per connection: the reconciler runs it once per interval, not per tick.
    pub async fn repair_index(
        &self,
        store: &crate::connections::ConnectionStore,
    ) -> Result<usize, redis::RedisError> {
        let indexed: Vec<String> = self.redis.clone().zrange(self.due_key(), 0, -1).await?;
        let connections = store.ids().await?;
        let indexed: std::collections::HashSet<String> = indexed.into_iter().collect();
        let wanted: std::collections::HashSet<&str> =
            connections.iter().map(ConnectionId::as_str).collect();
        let mut changed = 0;
        for id in connections
            .iter()
            .filter(|id| !indexed.contains(id.as_str()))
        {
            let state = self.get(id).await?;
            self.index(id, state.next_due_ms).await?;
            changed += 1;
        }
        let stale: Vec<&String> = indexed
            .iter()
            .filter(|id| !wanted.contains(id.as_str()))
            .collect();
        if !stale.is_empty() {
            self.redis
                .clone()
                .zrem::<_, _, ()>(self.due_key(), stale.as_slice())
                .await?;
            changed += stale.len();
        }
        Ok(changed)
    }

    /// Makes the connection due at once (a manual sync, or paying users just set).
    pub async fn make_due(&self, id: &ConnectionId) -> Result<(), redis::RedisError> {
        redis::pipe()
            .hset(self.key(id), "next_due_ms", 0)
            .ignore()
            .zadd(self.due_key(), id.as_str(), 0)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// The latest run reports, newest first.
    pub async fn reports(
        &self,
        id: &ConnectionId,
        count: usize,
    ) -> Result<Vec<RunReport>, redis::RedisError> {
        let items: Vec<String> = self
            .redis
            .clone()
            .lrange(self.reports_key(id), 0, count.saturating_sub(1) as isize)
            .await?;
        Ok(items
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Forgets a connection's state (it was disconnected): watermark, reports and lock, so a
    /// pass running now loses its lock and records nothing.
    pub async fn delete(&self, id: &ConnectionId) -> Result<(), redis::RedisError> {
        redis::pipe()
            .del(&[self.key(id), self.reports_key(id), self.lock_key(id)])
            .ignore()
            .zrem(self.due_key(), id.as_str())
            .ignore()
            .srem(self.troubled_key(), id.as_str())
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// Whether a pass holds the connection's lock now.
    pub async fn is_locked(&self, id: &ConnectionId) -> Result<bool, redis::RedisError> {
        self.redis.clone().exists(self.lock_key(id)).await
    }
}
