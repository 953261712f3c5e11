//! The report of one reconciliation pass: what an operator reads to know when a connection was
//! last synced and what that pass found. Persisted per connection (the newest first) and
//! logged.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::ReasonCounts;
use crate::connections::ConnectionId;

/// Which kind of pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The connection's first: the whole window, capped.
    FirstImport,
    /// From the watermark minus the overlap.
    #[default]
    Incremental,
}

/// One pass over one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    pub connection_id: String,
    pub kind: RunKind,
    /// Unix ms.
    pub started_at_ms: i64,
    /// Unix ms.
    pub ended_at_ms: i64,
    /// Ranges listed, `(from, to]` in Unix seconds of the calls' start.
    #[schema(value_type = Vec<Vec<i64>>)]
    pub ranges: Vec<(i64, i64)>,
    /// Calls the listing returned.
    pub calls_seen: u64,
    /// Import jobs queued (listing, users changed and pending re-checks together).
    pub queued: u64,
    /// Calls recorded skipped by this pass, per reason.
    pub skipped: ReasonCounts,
    /// Calls found pending by this pass.
    pub pending_recorded: u64,
    /// Pending calls whose re-check was due, queued.
    pub pending_rechecked: u64,
    /// Pending calls the listing showed still pending: checked for free, next re-check put off.
    pub pending_listed: u64,
    /// Calls queued again because their agent became a paying user.
    pub users_requeued: u64,
    /// Outcome records removed at the end of the pass because their decision was older than
    /// the retention (the import window plus `retention.days_beyond_window`); at most
    /// `retention.max_per_pass`, the rest go at the next passes.
    #[serde(default)]
    pub outcomes_expired: u64,
    /// The webhook: `active`, `reactivated` or `recreated`.
    pub webhook: Option<String>,
    /// Aircall requests sent (every attempt), 429s received, time waited for the budget.
    pub aircall_requests: u64,
    pub rate_limited: u64,
    pub budget_wait_ms: u64,
    /// Why the pass failed; `None` when it completed (and moved the watermark).
    pub error: Option<String>,
    /// Calls this pass queued, so no step queues one twice.
    #[serde(skip)]
    #[schema(ignore)]
    pub queued_calls: std::collections::HashSet<u64>,
}

impl RunReport {
    pub fn new(connection: &ConnectionId, started_at_ms: i64) -> Self {
        Self {
            connection_id: connection.to_string(),
            started_at_ms,
            ..Self::default()
        }
    }

    pub fn log(&self) {
        match &self.error {
            None => info!(
                kind = ?self.kind,
                started_at_ms = self.started_at_ms,
                duration_ms = self.ended_at_ms - self.started_at_ms,
                ranges = ?self.ranges,
                calls_seen = self.calls_seen,
                queued = self.queued,
                skipped = ?self.skipped,
                pending_recorded = self.pending_recorded,
                pending_rechecked = self.pending_rechecked,
                users_requeued = self.users_requeued,
                outcomes_expired = self.outcomes_expired,
                webhook = self.webhook.as_deref().unwrap_or("unknown"),
                aircall_requests = self.aircall_requests,
                rate_limited = self.rate_limited,
                budget_wait_ms = self.budget_wait_ms,
                "reconciliation pass done"
            ),
            Some(error) => warn!(
                kind = ?self.kind,
                started_at_ms = self.started_at_ms,
                duration_ms = self.ended_at_ms - self.started_at_ms,
                ranges = ?self.ranges,
                calls_seen = self.calls_seen,
                queued = self.queued,
                skipped = ?self.skipped,
                pending_rechecked = self.pending_rechecked,
                aircall_requests = self.aircall_requests,
                rate_limited = self.rate_limited,
                budget_wait_ms = self.budget_wait_ms,
                error,
                "reconciliation pass failed; the watermark moved only if its listing completed"
            ),
        }
    }
}
