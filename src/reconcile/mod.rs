//! The `reconcile` role: the safety net behind the webhooks. For each connection, under a lock
//! in Redis (so any number of replicas, or a CronJob beside a loop, never do the work twice):
//!
//! - **webhook health**: the connection's Aircall webhook is read; one Aircall deactivated is
//!   re-activated, one that vanished is registered again;
//! - **first import** of a new connection, as soon as it has paying users: the window (14 days)
//!   is listed in ascending pages of 50 (ranges split under the 10,000-result cap), judged with
//!   the worker's own rules, and the most recent `first_import_max_calls` (200) eligible calls are
//!   queued; the older eligible ones are recorded `first_import_cap`;
//! - **later passes**: from the watermark minus an overlap (calls that started before it and
//!   ended after it) up to a minute ago; every call not decided yet is queued with the listing's
//!   snapshot, skips and pending calls are recorded; calls imported or finally skipped are left
//!   alone. The watermark moves only after a complete pass, so a failed pass is covered by the
//!   next;
//! - **paying users changed**: calls of the window skipped `user_not_matched` whose agent now pays
//!   are queued again (no first-import cap for them);
//! - **pending calls** due for a re-check are queued by id; the worker decides them again and
//!   sets their next re-check, until the recording wait is over (`no_recording`).
//!
//! Every Aircall request goes through the connection's shared budget, so the poller and the
//! workers never push a company past its limit together. Each pass leaves a run report.
//!
//! It never downloads or stores anything: that is the worker's job, fed by the queued jobs.

mod report;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use url::Url;

pub use report::{RunKind, RunReport};
pub use state::{ReconcileState, StateStore};

use crate::aircall::models::{HANDLED_EVENTS, WebhookSpec};
use crate::aircall::{Aircall, AircallClient, AircallError, Call, CallId, Credentials};
use crate::config::{ImportSettings, ReconcileSettings};
use crate::connections::{
    ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore, Outcome, OutcomeQuery,
    OutcomeRecord, OutcomeStore, Recorded, webhook_url,
};
use crate::crypto::Keys;
use crate::import::lease::{Lease, Leases};
use crate::import::rules::{self, Decision, PayingUsers, PendingReason, Rules, SkipReason};
use crate::queue::{Broker, ImportJob, Message, PublishError, Trigger};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Aircall(#[from] AircallError),
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("queueing an import job failed")]
    Publish(#[from] PublishError),
    #[error("the stored API token cannot be decrypted with the configured secret_key")]
    CredentialsUnreadable,
    #[error("the lock on the connection was lost")]
    LockLost,
}

/// What one attempt at a connection came to.
#[derive(Debug)]
pub enum Pass {
    /// The pass ran (successfully or not: see the report's `error`).
    Ran(Box<RunReport>),
    /// Nothing was done, for this reason.
    Skipped(&'static str),
}

/// Totals of a round over every due connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Everything a pass needs. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    pub connections: ConnectionStore,
    pub outcomes: OutcomeStore,
    pub state: StateStore,
    pub aircall: Aircall,
    pub keys: Arc<Keys>,
    pub broker: Broker,
    pub locks: Leases,
    pub rules: Rules,
    pub import: ImportSettings,
    pub settings: ReconcileSettings,
    /// Where Aircall reaches this service (to register a vanished webhook again).
    pub public_url: Url,
    pub confirm_timeout: Duration,
    pub clock: Clock,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Where a reconciler reads the time: the system's, or (benchmarks replaying a day in
/// minutes) another source such as the simulator's clock.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> i64 + Send + Sync>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock reading `now_ms` (Unix milliseconds).
    pub fn from_fn(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now_ms)))
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(now) => now(),
            None => (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(custom)"
        } else {
            "Clock(system)"
        })
    }
}

impl Reconciler {
    /// Runs passes until `cancel` fires: every `tick_ms`, each connection that is due.
    pub async fn run(self, cancel: CancellationToken) {
        info!(
            interval_ms = self.settings.interval_ms,
            "reconciling every connection"
        );
        loop {
            self.run_due(false, &cancel).await;
            tokio::select! {
                () = tokio::time::sleep(self.settings.tick()) => {}
                () = cancel.cancelled() => break,
            }
        }
        info!("reconciler stopped");
    }

    /// One round over every connection that is due. With `once` (a CronJob firing every
    /// interval), "due" is judged against the round's start with half an interval of slack, so
    /// a connection is never put off by the jitter or by how long the connections before it
    /// took.
    pub async fn run_due(&self, once: bool, cancel: &CancellationToken) -> Round {
        let mut round = Round::default();
        let ids = match self.connections.ids().await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "cannot list the connections");
                round.failed += 1;
                return round;
            }
        };
        let round_start = self.clock.now_ms();
        let slack = if once {
            self.settings.interval_ms as i64 / 2
        } else {
            0
        };
        for id in ids {
            if cancel.is_cancelled() {
                break;
            }
            let due_by = if once {
                round_start + slack
            } else {
                self.clock.now_ms()
            };
            let due = match self.state.get(&id).await {
                Ok(state) => state.next_due_ms <= due_by,
                Err(e) => {
                    warn!(connection = %id, error = %e, "cannot read the reconciliation state");
                    round.failed += 1;
                    continue;
                }
            };
            if !due {
                continue;
            }
            let span = info_span!("reconcile", connection = %id);
            match self
                .run_locked(&id, Some(due_by), cancel)
                .instrument(span)
                .await
            {
                Ok(Pass::Ran(report)) if report.error.is_none() => round.succeeded += 1,
                Ok(Pass::Ran(_)) => round.failed += 1,
                Ok(Pass::Skipped(_)) => round.skipped += 1,
                Err(e) => {
                    warn!(connection = %id, error = %e, "cannot reconcile");
                    round.failed += 1;
                }
            }
        }
        round
    }

    /// One pass over one connection, now, under its lock.
    pub async fn run_connection(
        &self,
        id: &ConnectionId,
        cancel: &CancellationToken,
    ) -> Result<Pass, ReconcileError> {
        let span = info_span!("reconcile", connection = %id);
        self.run_locked(id, None, cancel).instrument(span).await
    }

    /// A pass under the connection's lock, counted in the metrics.
    async fn run_locked(
        &self,
        id: &ConnectionId,
        due_by: Option<i64>,
        cancel: &CancellationToken,
    ) -> Result<Pass, ReconcileError> {
        let pass = self.run_locked_uncounted(id, due_by, cancel).await;
        match &pass {
            Ok(Pass::Ran(report)) => crate::metrics::reconcile_run(
                if report.error.is_none() {
                    "succeeded"
                } else {
                    "failed"
                },
                Some(Duration::from_millis(
                    report
                        .ended_at_ms
                        .saturating_sub(report.started_at_ms)
                        .max(0) as u64,
                )),
            ),
            Ok(Pass::Skipped(_)) => crate::metrics::reconcile_run("skipped", None),
            Err(_) => crate::metrics::reconcile_run("failed", None),
        }
        pass
    }

    /// A pass under the connection's lock; with `due_by`, only if the connection is still due
    /// by then once the lock is held (another replica may have just run it).
    async fn run_locked_uncounted(
        &self,
        id: &ConnectionId,
        due_by: Option<i64>,
        cancel: &CancellationToken,
    ) -> Result<Pass, ReconcileError> {
        let Some(connection) = self.connections.get(id).await? else {
            return Ok(Pass::Skipped("unknown_connection"));
        };
        if connection.status == ConnectionStatus::InvalidCredentials {
            // Nothing to ask Aircall with; new credentials reset the status.
            return Ok(Pass::Skipped("invalid_credentials"));
        }
        // The version first: a change landing between the two reads is seen again next pass.
        let users_version = self.connections.users_version(id).await?;
        let users = self.connections.paying_users(id).await?;
        if users.is_empty() {
            return Ok(Pass::Skipped("waiting_for_users"));
        }
        let Some(lock) = self.locks.acquire_key(self.state.lock_key(id)).await? else {
            return Ok(Pass::Skipped("locked"));
        };
        let mut state = self.state.get(id).await?;
        if due_by.is_some_and(|by| state.next_due_ms > by) {
            lock.release().await;
            return Ok(Pass::Skipped("not_due"));
        }
        let started_ms = self.clock.now_ms();
        let mut report = RunReport::new(id, started_ms);
        let client = self.client(&connection, cancel)?;
        let outcome = tokio::select! {
            outcome = self.pass(&connection, &lock, (&users, users_version), &client, &mut state, &mut report) => outcome,
            () = lock.lost() => Err(ReconcileError::LockLost),
        };
        if cancel.is_cancelled() {
            // Shutting down mid-pass: the next process runs it again as soon as it starts;
            // nothing of this pass is recorded (its queued jobs are harmless duplicates).
            lock.release().await;
            info!("reconciliation pass interrupted by shutdown");
            return Ok(Pass::Skipped("cancelled"));
        }
        let stats = client.stats();
        report.aircall_requests = stats.requests;
        report.rate_limited = stats.rate_limited;
        report.budget_wait_ms = stats.budget_wait_ms;
        report.ended_at_ms = self.clock.now_ms();
        if let Err(e) = &outcome {
            report.error = Some(crate::import::job::error_chain(e));
            if matches!(
                e,
                ReconcileError::Aircall(AircallError::InvalidCredentials { .. })
            ) {
                // Unless the credentials were replaced during the pass.
                self.connections
                    .mark_invalid_credentials(id, &connection.api_token_sealed)
                    .await?;
            }
        }
        // The next pass comes an interval later (plus jitter); after a failure, a third of an
        // interval later, since what failed (the first import, say) is still owed. A failed
        // pass left the watermark where the last good one put it.
        state.next_due_ms = started_ms
            + match &outcome {
                Ok(()) => self.next_interval_ms(),
                Err(_) => self.settings.interval_ms as i64 / 3,
            };
        state.last_run_at_ms = started_ms;
        report.log();
        // Written only while the lock is still this pass's: another replica holding it now, or
        // a disconnect having deleted it, leaves the state alone.
        let kept = self
            .state
            .save_with_report(
                id,
                &state,
                &report,
                self.settings.reports_kept,
                lock.fence(),
            )
            .await?;
        if !kept {
            info!("the lock was lost; this pass's state and report were not written");
            return Ok(Pass::Ran(Box::new(report)));
        }
        lock.release().await;
        Ok(Pass::Ran(Box::new(report)))
    }

    fn next_interval_ms(&self) -> i64 {
        let jitter = match self.settings.jitter_ms {
            0 => 0,
            j => fastrand::u64(0..=j),
        };
        (self.settings.interval_ms + jitter) as i64
    }

    fn client(
        &self,
        connection: &ConnectionRecord,
        cancel: &CancellationToken,
    ) -> Result<AircallClient, ReconcileError> {
        let api_token = self
            .keys
            .decrypt(&connection.api_token_sealed, connection.id.as_str())
            .map_err(|_| ReconcileError::CredentialsUnreadable)?;
        Ok(self.aircall.client(
            Credentials {
                api_id: connection.api_id.clone(),
                api_token,
            },
            connection.id.as_str(),
            cancel.clone(),
        ))
    }

    async fn pass(
        &self,
        connection: &ConnectionRecord,
        lock: &Lease,
        (users, users_version): (&PayingUsers, i64),
        client: &AircallClient,
        state: &mut ReconcileState,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let id = &connection.id;
        // A webhook Aircall cannot tell us about right now must not stop the listing: the
        // safety net matters most when Aircall is degraded.
        match self.check_webhook(connection, client).await {
            Ok(state) => report.webhook = Some(state),
            Err(ReconcileError::Aircall(e))
                if !matches!(e, AircallError::InvalidCredentials { .. }) =>
            {
                warn!(error = %e, "cannot check the webhook; listing anyway");
                report.webhook = Some(format!("unchecked: {e}"));
            }
            Err(e) => return Err(e),
        }
        let now_s = self.clock.now_ms() / 1000;
        let to = now_s - self.settings.lag_s as i64;
        // Listings exclude their start (`from` is exclusive): one second earlier, so a call
        // started exactly `window` ago (inside the rule) is listed too.
        let window_start = now_s - self.rules.window_s - 1;
        match state.watermark {
            None => {
                report.kind = RunKind::FirstImport;
                let cap = Some(self.settings.first_import_max_calls);
                self.list_and_judge((id, lock), users, client, (window_start, to), cap, report)
                    .await?;
            }
            Some(watermark) => {
                report.kind = RunKind::Incremental;
                let now_ms = self.clock.now_ms();
                let full =
                    now_ms - state.full_overlap_at_ms >= self.settings.full_overlap_every_ms as i64;
                let overlap = if full {
                    self.settings.overlap_s
                } else {
                    self.settings.short_overlap_s
                };
                let from = (watermark - overlap as i64).max(window_start);
                self.list_and_judge((id, lock), users, client, (from, to), None, report)
                    .await?;
                if full {
                    state.full_overlap_at_ms = now_ms;
                }
            }
        }
        // Only a complete listing moves the watermark.
        state.watermark = Some(to);
        if state.first_import_at_ms.is_none() {
            state.first_import_at_ms = Some(self.clock.now_ms());
        }
        // The first import decided every call with these users already.
        if state.users_seen.is_some_and(|seen| users_version > seen) {
            self.users_changed(id, users, now_s, report).await?;
        }
        state.users_seen = Some(users_version);
        self.recheck_pending(id, report).await?;
        Ok(())
    }

    /// Reads the connection's webhook; re-activates it, or registers it again if it vanished.
    /// When Aircall refuses to (not a passing failure), the connection is marked
    /// `webhook_disabled` and the pass goes on: listing still brings the calls in.
    async fn check_webhook(
        &self,
        connection: &ConnectionRecord,
        client: &AircallClient,
    ) -> Result<String, ReconcileError> {
        let mended = match client.get_webhook(&connection.webhook_id).await {
            Ok(webhook) if webhook.active => Ok("active"),
            Ok(_) => self.reactivate_webhook(connection, client).await,
            Err(AircallError::NotFound) => self.register_webhook(connection, client).await?,
            Err(e) => Err(e),
        };
        let status = match mended {
            Ok(state) => {
                if connection.status == ConnectionStatus::WebhookDisabled {
                    self.connections
                        .set_status(&connection.id, ConnectionStatus::Active)
                        .await?;
                }
                state
            }
            Err(e)
                if !e.is_transient() && !matches!(e, AircallError::InvalidCredentials { .. }) =>
            {
                warn!(error = %e, "Aircall refuses to re-activate the webhook; calls come by reconciliation only");
                self.connections
                    .set_status(&connection.id, ConnectionStatus::WebhookDisabled)
                    .await?;
                "disabled"
            }
            Err(e) => return Err(e.into()),
        };
        Ok(status.to_string())
    }

    async fn reactivate_webhook(
        &self,
        connection: &ConnectionRecord,
        client: &AircallClient,
    ) -> Result<&'static str, AircallError> {
        let spec = WebhookSpec {
            custom_name: None,
            url: None,
            // Always sent: without `events`, Aircall would subscribe the webhook to everything.
            events: HANDLED_EVENTS.iter().map(|e| e.to_string()).collect(),
            active: Some(true),
        };
        client.update_webhook(&connection.webhook_id, &spec).await?;
        warn!(webhook = %connection.webhook_id, "Aircall had deactivated the webhook; re-activated");
        Ok("reactivated")
    }

    /// Registers the connection's webhook again. The outer error is ours (storing it failed:
    /// the new webhook was removed again); the inner one is Aircall's answer.
    async fn register_webhook(
        &self,
        connection: &ConnectionRecord,
        client: &AircallClient,
    ) -> Result<Result<&'static str, AircallError>, ReconcileError> {
        let spec = WebhookSpec {
            custom_name: Some(format!("aircall-ingest {}", connection.id)),
            url: Some(webhook_url(&self.public_url, &connection.id)),
            events: HANDLED_EVENTS.iter().map(|e| e.to_string()).collect(),
            active: None,
        };
        let webhook = match client.create_webhook(&spec).await {
            Ok(webhook) => webhook,
            Err(e) => return Ok(Err(e)),
        };
        let Some(token) = webhook.token.as_ref() else {
            let _ = client.delete_webhook(&webhook.webhook_id).await;
            return Ok(Err(AircallError::Malformed {
                endpoint: "create_webhook",
                reason: "the webhook came back without a token".into(),
            }));
        };
        use secrecy::ExposeSecret as _;
        let fingerprint = self.keys.fingerprint(token.expose_secret());
        let stored = self
            .connections
            .update_webhook(
                &connection.id,
                &connection.webhook_id,
                &webhook.webhook_id,
                &fingerprint,
            )
            .await;
        match stored {
            Ok(true) => {}
            // Not recorded (the connection was just removed, or its credentials rotated with a
            // webhook of their own): remove it, or it would post events nobody can verify.
            Ok(false) => {
                let _ = client.delete_webhook(&webhook.webhook_id).await;
                return Ok(Ok("connection_changed"));
            }
            Err(e) => {
                let _ = client.delete_webhook(&webhook.webhook_id).await;
                return Err(e.into());
            }
        }
        warn!(webhook = %webhook.webhook_id, "the webhook was gone from Aircall; registered again");
        Ok(Ok("recreated"))
    }

    /// Lists the calls started in `(from, to]` and judges every one not settled yet: skips and
    /// pending calls recorded (a pending call listed still pending counts as re-checked),
    /// eligible calls queued with their snapshot. With `cap` (the first import), only the `cap`
    /// most recent eligible calls are queued and the older ones recorded `first_import_cap`.
    ///
    /// Calls decided already in a way worth looking at again (a webhook judged them before the
    /// paying users were set, say) are judged anew like undecided ones, and in a first import
    /// compete for the cap like any other.
    async fn list_and_judge(
        &self,
        // The connection, and the lock its writes are fenced by.
        (id, lock): (&ConnectionId, &Lease),
        users: &PayingUsers,
        client: &AircallClient,
        (from, to): (i64, i64),
        cap: Option<usize>,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        report.ranges.push((from, to));
        // Pages come oldest first, so the last `cap` eligible calls seen are the most recent:
        // a call pushed out of this window is past the cap, and recorded so at once.
        let mut newest: VecDeque<Call> = VecDeque::new();
        let mut pager = client.calls_started_between(from, to);
        while let Some(page) = pager.next_page().await? {
            let known = self.known(id, &page).await?;
            for (call, known) in page.into_iter().zip(known) {
                report.calls_seen += 1;
                if settled(known.as_ref()) {
                    continue;
                }
                let now_s = self.clock.now_ms() / 1000;
                let decision = rules::decide(&call, now_s, users, &self.rules);
                // The same decision as recorded keeps its record (and a pending call its
                // re-check schedule); a new one replaces it.
                if same_as_recorded(&decision, known.as_ref()) {
                    self.listed_pending(id, lock, &call, known.as_ref(), report)
                        .await?;
                    continue;
                }
                match (decision, cap) {
                    (Decision::Import { .. }, Some(cap)) => {
                        newest.push_back(call);
                        if newest.len() > cap
                            && let Some(older) = newest.pop_front()
                        {
                            self.record_skip(id, lock, &older, SkipReason::FirstImportCap, report)
                                .await?;
                        }
                    }
                    (Decision::Import { .. }, None) => {
                        self.queue(id, call.id, Some(call), report).await?;
                    }
                    (Decision::Skip(reason), _) => {
                        self.record_skip(id, lock, &call, reason, report).await?
                    }
                    (Decision::Pending(reason), _) => {
                        self.record_pending(id, lock, &call, reason, report).await?
                    }
                }
            }
        }
        for call in newest {
            self.queue(id, call.id, Some(call), report).await?;
        }
        Ok(())
    }

    /// The paying users changed: calls of the window skipped because their agent did not pay,
    /// and whose agent pays now, are decided again (by the worker, with a fresh look at the call).
    async fn users_changed(
        &self,
        id: &ConnectionId,
        users: &PayingUsers,
        now_s: i64,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let window_start = now_s - self.rules.window_s;
        let mut query = OutcomeQuery {
            reason: Some(SkipReason::UserNotMatched.as_str().into()),
            limit: 500,
            ..OutcomeQuery::default()
        };
        loop {
            let page = self.outcomes.list(id, &query).await?;
            for record in &page.items {
                let in_window = record.started_at.is_some_and(|s| s >= window_start);
                let pays = record
                    .agent_email
                    .as_deref()
                    .is_some_and(|e| users.contains(e));
                if in_window && pays && self.queue(id, record.call_id, None, report).await? {
                    report.users_requeued += 1;
                }
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        Ok(())
    }

    /// Queues the pending calls whose re-check is due; the worker fetches each by id.
    async fn recheck_pending(
        &self,
        id: &ConnectionId,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let due = self
            .outcomes
            .due_pending(id, self.clock.now_ms(), self.settings.pending_batch)
            .await?;
        // Until the worker decides it (and sets the next re-check), a queued call is not
        // due again for an interval: a worker backlog does not queue it every pass.
        let postponed_to = self.clock.now_ms() + self.settings.interval_ms as i64;
        for call in due {
            if self.queue(id, call, None, report).await? {
                report.pending_rechecked += 1;
            }
            self.outcomes
                .postpone_pending(id, call, postponed_to)
                .await?;
        }
        Ok(())
    }

    /// The outcome records of a page of calls.
    async fn known(
        &self,
        id: &ConnectionId,
        page: &[Call],
    ) -> Result<Vec<Option<OutcomeRecord>>, ReconcileError> {
        let ids: Vec<CallId> = page.iter().map(|c| c.id).collect();
        Ok(self.outcomes.get_many(id, &ids).await?)
    }

    async fn queue(
        &self,
        id: &ConnectionId,
        call: CallId,
        snapshot: Option<Call>,
        report: &mut RunReport,
    ) -> Result<bool, ReconcileError> {
        if !report.queued_calls.insert(call.0) {
            return Ok(false);
        }
        let mut job = ImportJob::new(
            id.as_str(),
            call,
            Trigger::Reconciliation,
            self.clock.now_ms(),
        );
        job.snapshot = snapshot;
        self.broker
            .publish(&Message::ImportCall(job), self.confirm_timeout)
            .await?;
        report.queued += 1;
        Ok(true)
    }

    fn record_for(call: &Call, outcome: Outcome, decided_at_ms: i64) -> OutcomeRecord {
        let user = call.user.as_ref();
        OutcomeRecord {
            call_id: call.id,
            outcome,
            reason: None,
            decided_at_ms,
            trigger: Trigger::Reconciliation,
            agent_email: user.and_then(|u| u.email.clone()),
            agent_name: user.and_then(|u| u.name.clone()),
            direction: call.direction,
            started_at: call.started_at,
            duration: call.duration,
            error: None,
            stored: None,
            announced: false,
            recheck_at_ms: None,
            pending_checks: 0,
        }
    }

    /// Records a decision, unless the pass lost its lock (a disconnect deleted it, or another
    /// replica took over): then the pass stops.
    async fn record(
        &self,
        id: &ConnectionId,
        lock: &Lease,
        record: &OutcomeRecord,
    ) -> Result<(), ReconcileError> {
        match self
            .outcomes
            .record_fenced(id, record, Some(lock.fence()))
            .await?
        {
            Recorded::LeaseLost => Err(ReconcileError::LockLost),
            Recorded::Written | Recorded::KeptImport | Recorded::KeptDecision => Ok(()),
        }
    }

    async fn record_skip(
        &self,
        id: &ConnectionId,
        lock: &Lease,
        call: &Call,
        reason: SkipReason,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let mut record = Self::record_for(call, Outcome::Skipped, self.clock.now_ms());
        record.reason = Some(reason.as_str().into());
        self.record(id, lock, &record).await?;
        *report
            .skipped
            .entry(reason.as_str().to_string())
            .or_insert(0) += 1;
        Ok(())
    }

    /// A pending call the listing showed still pending was just checked, for free: its next
    /// re-check by id is put off as if the worker had made it.
    async fn listed_pending(
        &self,
        id: &ConnectionId,
        lock: &Lease,
        call: &Call,
        known: Option<&OutcomeRecord>,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let Some(known) = known.filter(|k| k.outcome == Outcome::Pending) else {
            return Ok(());
        };
        let mut record = known.clone();
        record.pending_checks += 1;
        let mut recheck_at = self.clock.now_ms()
            + self
                .import
                .pending_recheck_after(record.pending_checks)
                .as_millis() as i64;
        if record.reason.as_deref() == Some(PendingReason::RecordingNotReady.as_str())
            && let Some(deadline) = self.rules.recording_deadline(call)
        {
            recheck_at = recheck_at.min(deadline * 1000);
        }
        record.recheck_at_ms = Some(recheck_at);
        self.record(id, lock, &record).await?;
        report.pending_listed += 1;
        Ok(())
    }

    async fn record_pending(
        &self,
        id: &ConnectionId,
        lock: &Lease,
        call: &Call,
        reason: PendingReason,
        report: &mut RunReport,
    ) -> Result<(), ReconcileError> {
        let now = self.clock.now_ms();
        let mut recheck_at = now + self.import.pending_recheck_after(1).as_millis() as i64;
        if reason == PendingReason::RecordingNotReady
            && let Some(deadline) = self.rules.recording_deadline(call)
        {
            recheck_at = recheck_at.min(deadline * 1000);
        }
        let mut record = Self::record_for(call, Outcome::Pending, now);
        record.reason = Some(reason.as_str().into());
        record.recheck_at_ms = Some(recheck_at);
        record.pending_checks = 1;
        self.record(id, lock, &record).await?;
        report.pending_recorded += 1;
        Ok(())
    }
}

/// Decided for good as far as reconciliation goes: imported, skipped for a final reason, or in
/// the dead-letter queue for a person to look at.
fn settled(known: Option<&OutcomeRecord>) -> bool {
    known.is_some_and(|record| match record.outcome {
        Outcome::Imported | Outcome::Failed => true,
        Outcome::Skipped => record
            .reason
            .as_deref()
            .and_then(skip_reason)
            .is_some_and(SkipReason::is_final),
        Outcome::Pending => false,
    })
}

/// Whether `decision` is what `known` records already (a skip or pending call for the same
/// reason).
fn same_as_recorded(decision: &Decision, known: Option<&OutcomeRecord>) -> bool {
    let Some(known) = known else {
        return false;
    };
    match decision {
        Decision::Import { .. } => false,
        Decision::Skip(reason) => {
            known.outcome == Outcome::Skipped && known.reason.as_deref() == Some(reason.as_str())
        }
        Decision::Pending(reason) => {
            known.outcome == Outcome::Pending && known.reason.as_deref() == Some(reason.as_str())
        }
    }
}

fn skip_reason(code: &str) -> Option<SkipReason> {
    SkipReason::ALL.into_iter().find(|r| r.as_str() == code)
}

/// Counts per reason, for reports.
pub type ReasonCounts = BTreeMap<String, u64>;
