//! Per-connection reconciliation state in Redis: the watermark, when the first import ran, which
//! paying-users version was seen, when the next pass is due, and the latest run reports.
//!
//! Keys (the `{connection}` hash tag keeps one connection's keys on one cluster slot):
//! `{p}:reconcile:{c}` (hash), `{p}:reconcile:{c}:reports` (list, newest first, trimmed),
//! `{p}:reconcile:{c}:lock` (the pass lock).

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

    pub async fn save(
        &self,
        id: &ConnectionId,
        state: &ReconcileState,
    ) -> Result<(), redis::RedisError> {
        let mut fields = vec![
            ("next_due_ms", state.next_due_ms),
            ("last_run_at_ms", state.last_run_at_ms),
            ("full_overlap_at_ms", state.full_overlap_at_ms),
        ];
        if let Some(w) = state.watermark {
            fields.push(("watermark", w));
        }
        if let Some(t) = state.first_import_at_ms {
            fields.push(("first_import_at_ms", t));
        }
        if let Some(u) = state.users_seen {
            fields.push(("users_seen", u));
        }
        self.redis
            .clone()
            .hset_multiple::<_, _, _, ()>(self.key(id), &fields)
            .await
    }

    /// Makes the connection due at once (a manual sync, or paying users just set).
    pub async fn make_due(&self, id: &ConnectionId) -> Result<(), redis::RedisError> {
        self.redis
            .clone()
            .hset::<_, _, _, ()>(self.key(id), "next_due_ms", 0)
            .await
    }

    pub async fn push_report(
        &self,
        id: &ConnectionId,
        report: &RunReport,
        kept: usize,
    ) -> Result<(), redis::RedisError> {
        let json = serde_json::to_string(report).unwrap_or_default();
        redis::pipe()
            .atomic()
            .lpush(self.reports_key(id), json)
            .ignore()
            .ltrim(self.reports_key(id), 0, kept.saturating_sub(1) as isize)
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
        self.redis
            .clone()
            .del::<_, ()>(&[self.key(id), self.reports_key(id), self.lock_key(id)])
            .await
    }

    /// Whether a pass holds the connection's lock now.
    pub async fn is_locked(&self, id: &ConnectionId) -> Result<bool, redis::RedisError> {
        self.redis.clone().exists(self.lock_key(id)).await
    }
}
