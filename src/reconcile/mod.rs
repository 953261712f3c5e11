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
//!   sets their next re-check, until the recording wait is over (`no_recording`);
//! - **retention**: outcome records decided longer ago than the import window plus
//!   `retention.days_beyond_window` are removed, `retention.max_per_pass` at most per pass (in
//!   batches of [`COMPACT_BATCH`]), so a connection's Redis keys follow its recent activity. A
//!   connection no pass runs for (waiting for paying users, or for new credentials) still has
//!   its old records removed each time the loop looks at it: its webhooks still bring decisions.
//!   So do disconnected connections (their imports' records stay at a disconnect): each round
//!   removes the records of a few of them once their newest is past the retention, then forgets
//!   them.
//!
//! Every Aircall request goes through the connection's shared budget, so the poller and the
//! workers never push a company past its limit together. Each pass leaves a run report.
//!
//! **Many connections.** The due connections come from an index sorted by due time (one read,
//! whatever the number of connections). Up to `reconcile.concurrency` passes run at once, each on
//! its own connection, under its own lock and budget: a connection whose Aircall is slow or
//! failing holds one place, while the others go on being started as they come due. A connection
//! whose last pass failed ("troubled") is started after the healthy ones due with it, and in the
//! loop may only take one of the quarter of the places set aside for such connections, so even
//! many of them never hold up the healthy ones coming due later (a CronJob round, where nothing
//! else comes due, lets them take every place once its healthy ones are started); and a pass that
//! sends no Aircall request for `reconcile.stall_timeout_ms` is abandoned. Each connection keeps
//! a place in the cycle derived from its id, so connections made together (a migration, a
//! restart after an outage) spread over the interval after their first pass instead of coming
//! due together.
//!
//! It never downloads or stores anything: that is the worker's job, fed by the queued jobs.

mod report;
mod state;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use url::Url;

pub use report::{RunKind, RunReport};
pub use state::{ReconcileState, StateStore};

use crate::aircall::models::{HANDLED_EVENTS, WebhookSpec};
use crate::aircall::{Aircall, AircallClient, AircallError, Call, CallId, Credentials};
use crate::config::{ImportSettings, ReconcileSettings, RetentionSettings};
use crate::connections::{
    ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore, Outcome, OutcomeQuery,
    OutcomeRecord, OutcomeStore, Recorded, webhook_url,
};
use crate::crypto::Keys;
use crate::import::lease::{Lease, Leases};
use crate::import::rules::{self, Decision, PayingUsers, PendingReason, Rules, SkipReason};
use crate::queue::{Broker, ImportJob, Message, PublishError, Trigger};

/// Outcome records one compaction step removes at most (each step is atomic in Redis, so
/// steps stay short and Redis answers everyone else in between).
pub const COMPACT_BATCH: usize = 1_000;

/// Disconnected connections whose records one round removes at most (each up to
/// `retention.max_per_pass`); the others wait for the next round.
const RETIRED_PER_ROUND: usize = 10;

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
    #[error(
        "the pass sent no Aircall request for {0} ms (reconcile.stall_timeout_ms) and was abandoned"
    )]
    Stalled(u64),
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
    /// How long outcome records are kept.
    pub retention: RetentionSettings,
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
    /// Runs passes until `cancel` fires: every `tick_ms`, each connection that has come due is
    /// started as soon as one of the `concurrency` places is free. A pass still running does
    /// not hold up the others, nor the next tick; shutting down waits for the running passes
    /// (which stop early once `cancel` fired).
    pub async fn run(self, cancel: CancellationToken) {
        info!(
            interval_ms = self.settings.interval_ms,
            concurrency = self.settings.concurrency,
            "reconciling every connection"
        );
        let scheduler = Scheduler::new(self.settings.concurrency, None);
        let mut repaired_at: Option<i64> = None;
        loop {
            let next_tick = tokio::time::Instant::now() + self.settings.tick();
            let now = self.clock.now_ms();
            if repaired_at.is_none_or(|at| now - at >= self.settings.interval_ms as i64)
                && self.repair_index().await
            {
                repaired_at = Some(now);
            }
            self.start_due(&scheduler, now, Some(next_tick), &cancel)
                .await;
            self.expire_retired(&cancel).await;
            tokio::select! {
                () = tokio::time::sleep_until(next_tick) => {}
                () = cancel.cancelled() => break,
            }
        }
        scheduler.tasks.close();
        scheduler.tasks.wait().await;
        info!("reconciler stopped");
    }

    /// One round over every connection that is due, `concurrency` at a time, and its totals
    /// once every pass ended. With `once` (a CronJob firing every interval), "due" is judged
    /// against the round's start with half an interval of slack, so a connection is never put
    /// off by the jitter or by how long the connections before it took.
    pub async fn run_due(&self, once: bool, cancel: &CancellationToken) -> Round {
        self.repair_index().await;
        let round_start = self.clock.now_ms();
        let due_by = if once {
            round_start + self.settings.interval_ms as i64 / 2
        } else {
            round_start
        };
        // A CronJob round schedules each connection it passes over for the next round at the
        // latest, whatever its place in the cycle: a round starts every interval, give or take
        // the pod's start.
        let cap = once.then_some(round_start + self.settings.interval_ms as i64);
        let scheduler = Scheduler::new(self.settings.concurrency, cap);
        self.start_due(&scheduler, due_by, None, cancel).await;
        scheduler.tasks.close();
        scheduler.tasks.wait().await;
        self.expire_retired(cancel).await;
        *scheduler
            .round
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the connections missing from the due index (and drops entries of none); false
    /// when Redis failed (the loop tries again at its next tick).
    async fn repair_index(&self) -> bool {
        match self.state.repair_index(&self.connections).await {
            Ok(0) => true,
            Ok(n) => {
                info!(entries = n, "due index repaired");
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot check the due index");
                false
            }
        }
    }

    /// Starts a pass for each connection due by `due_by` and not running already, waiting for a
    /// free place before each; returns once all are started (or `cancel` fired). The healthy
    /// connections go first; then the troubled ones (their last pass failed), each also waiting
    /// for one of the scheduler's troubled places, until `troubled_until` when given (the loop's
    /// next tick, where connections that came due meanwhile go first again).
    async fn start_due(
        &self,
        scheduler: &Scheduler,
        due_by: i64,
        troubled_until: Option<tokio::time::Instant>,
        cancel: &CancellationToken,
    ) {
        let (due, troubled) = match tokio::try_join!(self.state.due(due_by), self.state.troubled())
        {
            Ok(read) => read,
            Err(e) => {
                warn!(error = %e, "cannot read the due connections");
                scheduler.count(Err(()));
                return;
            }
        };
        let (troubled_due, healthy): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|id| troubled.contains(id.as_str()));
        let in_turn = healthy
            .into_iter()
            .map(|id| (id, false))
            .chain(troubled_due.into_iter().map(|id| (id, true)));
        let time_up = async {
            match troubled_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(time_up);
        for (id, is_troubled) in in_turn {
            let Some(claim) = scheduler.claim(&id) else {
                continue;
            };
            let troubled_place = if is_troubled {
                let place = tokio::select! {
                    place = scheduler.troubled_places.clone().acquire_owned() => place,
                    () = &mut time_up => return,
                    () = cancel.cancelled() => return,
                };
                let Ok(place) = place else { return };
                Some(place)
            } else {
                None
            };
            let place = tokio::select! {
                place = scheduler.places.clone().acquire_owned() => place,
                () = cancel.cancelled() => return,
            };
            let Ok(place) = place else { return };
            let (reconciler, scheduler_, cancel) =
                (self.clone(), scheduler.clone(), cancel.clone());
            scheduler.tasks.spawn(async move {
                let _held = (claim, place, troubled_place);
                let span = info_span!("reconcile", connection = %id);
                let pass = reconciler
                    .run_locked(&id, Some((due_by, scheduler_.cap)), &cancel)
                    .instrument(span)
                    .await;
                scheduler_.count(match &pass {
                    Ok(Pass::Ran(report)) if report.error.is_none() => Ok(true),
                    Ok(Pass::Ran(_)) => Err(()),
                    Ok(Pass::Skipped(_)) => Ok(false),
                    Err(e) => {
                        warn!(connection = %id, error = %e, "cannot reconcile");
                        Err(())
                    }
                });
            });
        }
    }

    /// Removes the records disconnected connections left (their imports) once the newest of
    /// them is past the retention, then forgets the connection; [`RETIRED_PER_ROUND`] of them
    /// at most. Without a lock, like [`Self::expire_outcomes_logged`]. Failures are logged:
    /// the next round tries again.
    async fn expire_retired(&self, cancel: &CancellationToken) {
        let kept_for = self.retention.outcome_ttl(&self.import).as_millis() as i64;
        let before_ms = self.clock.now_ms() - kept_for;
        let due = match self
            .outcomes
            .retired_due(before_ms, RETIRED_PER_ROUND)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "cannot read the disconnected connections");
                return;
            }
        };
        for id in due {
            if cancel.is_cancelled() {
                break;
            }
            let span = info_span!("retention", connection = %id);
            let expired = async {
                if self.connections.get(&id).await?.is_some() {
                    // Connected again: its passes take care of its records.
                    return self.outcomes.unretire(&id).await;
                }
                self.expire_outcomes(&id).await?;
                if self.outcomes.settle_retired(&id).await? {
                    info!("the records of a disconnected connection are all gone");
                }
                Ok(())
            }
            .instrument(span)
            .await;
            if let Err(e) = expired {
                warn!(connection = %id, error = %e, "cannot remove the records of a disconnected connection");
            }
        }
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

    /// A pass under the connection's lock, counted in the metrics. `scheduled`: the round's
    /// `(due_by, cap)` (see [`Self::run_locked_uncounted`]); `None` for a pass asked for now.
    async fn run_locked(
        &self,
        id: &ConnectionId,
        scheduled: Option<(i64, Option<i64>)>,
        cancel: &CancellationToken,
    ) -> Result<Pass, ReconcileError> {
        let pass = self.run_locked_uncounted(id, scheduled, cancel).await;
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

    /// A pass under the connection's lock. With `scheduled = Some((due_by, cap))`, only if the
    /// connection is still due by `due_by` once the lock is held (another replica may have just
    /// run it); `cap`, the latest its next pass may be scheduled for (a CronJob's next round).
    async fn run_locked_uncounted(
        &self,
        id: &ConnectionId,
        scheduled: Option<(i64, Option<i64>)>,
        cancel: &CancellationToken,
    ) -> Result<Pass, ReconcileError> {
        let Some(connection) = self.connections.get(id).await? else {
            self.state.unindex(id).await?;
            return Ok(Pass::Skipped("unknown_connection"));
        };
        // A connection that cannot be passed over now leaves the index until it is made due
        // again (new credentials, paying users set: both make it due) — or an interval later.
        let put_off = || {
            self.state
                .index(id, self.clock.now_ms() + self.settings.interval_ms as i64)
        };
        if connection.status == ConnectionStatus::InvalidCredentials {
            // Nothing to ask Aircall with; new credentials reset the status. Its webhooks still
            // bring jobs (recorded `failed`): their records expire all the same.
            self.expire_outcomes_logged(id).await;
            put_off().await?;
            return Ok(Pass::Skipped("invalid_credentials"));
        }
        // The version first: a change landing between the two reads is seen again next pass.
        let users_version = self.connections.users_version(id).await?;
        let users = self.connections.paying_users(id).await?;
        if users.is_empty() {
            self.expire_outcomes_logged(id).await;
            put_off().await?;
            return Ok(Pass::Skipped("waiting_for_users"));
        }
        let client = match self.client(&connection, cancel) {
            Ok(client) => client,
            Err(e) => {
                // Credentials sealed under a key this process lacks: not mended by retrying
                // at every tick.
                put_off().await?;
                return Err(e);
            }
        };
        let Some(lock) = self.locks.acquire_key(self.state.lock_key(id)).await? else {
            return Ok(Pass::Skipped("locked"));
        };
        let (due_by, cap) = scheduled.map_or((None, None), |(by, cap)| (Some(by), cap));
        let mut state = self.state.get(id).await?;
        if due_by.is_some_and(|by| state.next_due_ms > by) {
            // Another replica just ran it, or the index was behind: now it is right.
            self.state.index(id, state.next_due_ms).await?;
            lock.release().await;
            return Ok(Pass::Skipped("not_due"));
        }
        let started_ms = self.clock.now_ms();
        let mut report = RunReport::new(id, started_ms);
        let outcome = tokio::select! {
            outcome = self.pass(&connection, &lock, (&users, users_version), &client, &mut state, &mut report) => outcome,
            () = lock.lost() => Err(ReconcileError::LockLost),
            () = stalled(&client, Duration::from_millis(self.settings.stall_timeout_ms)) => {
                Err(ReconcileError::Stalled(self.settings.stall_timeout_ms))
            }
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
        if outcome.is_err() {
            // What a failing connection's webhooks keep bringing must not pile up either.
            self.expire_outcomes_logged(id).await;
        }
        // The next pass comes at the connection's place in the cycle; after a failure, a third
        // of an interval after this one ended, since what failed (the first import, say) is
        // still owed. A failed pass left the watermark where the last good listing put it.
        state.next_due_ms = match &outcome {
            Ok(()) => self.next_due_ms(id, started_ms),
            Err(_) => report.ended_at_ms + self.settings.interval_ms as i64 / 3,
        };
        if let Some(cap) = cap {
            state.next_due_ms = state.next_due_ms.min(cap);
        }
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
        // A hint for the scheduler, like the due index: a failure to write it is mended by the
        // next pass and fails nothing.
        if let Err(e) = self.state.mark_troubled(id, outcome.is_err()).await {
            warn!(error = %e, "cannot note whether the connection is troubled");
        }
        lock.release().await;
        Ok(Pass::Ran(Box::new(report)))
    }

    /// When a connection whose pass started at `started_ms` is due next: at its own place in
    /// the cycle (see [`cycle_place_ms`]), the first one at least half an interval away — so an
    /// interval apart from one pass to the next once in place — plus up to `jitter_ms`.
    fn next_due_ms(&self, id: &ConnectionId, started_ms: i64) -> i64 {
        let interval = self.settings.interval_ms as i64;
        let jitter = match self.settings.jitter_ms {
            0 => 0,
            j => fastrand::u64(0..=j),
        };
        due_at_place(cycle_place_ms(id, interval), interval, started_ms) + jitter as i64
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
        // The import is complete: a retention that fails leaves its records to the next pass.
        report.outcomes_expired = self.expire_outcomes_logged(id).await;
        Ok(())
    }

    /// [`Self::expire_outcomes`], a failure logged and counted as nothing removed (the next look
    /// tries again). It needs no lock — each batch is one atomic script, and two processes
    /// removing at once only find less to remove — so it also serves a connection no pass runs
    /// for now (waiting for paying users or for new credentials, or whose pass failed) while its
    /// webhooks still bring decisions.
    async fn expire_outcomes_logged(&self, id: &ConnectionId) -> u64 {
        self.expire_outcomes(id).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot remove the outcome records past the retention");
            0
        })
    }

    /// Removes the connection's outcome records decided before the retention's cutoff (now
    /// minus the import window minus `retention.days_beyond_window`), oldest first, in batches
    /// of [`COMPACT_BATCH`] up to `retention.max_per_pass`, passing over the records kept
    /// (imported, event still owed); a connection with a long history catches up over a few
    /// passes. Returns how many went.
    async fn expire_outcomes(&self, id: &ConnectionId) -> Result<u64, redis::RedisError> {
        let kept_for = self.retention.outcome_ttl(&self.import).as_millis() as i64;
        let before_ms = self.clock.now_ms() - kept_for;
        let most = self.retention.max_per_pass as u64;
        let (mut removed, mut kept) = (0, 0);
        while removed < most {
            let batch = (most - removed).min(COMPACT_BATCH as u64);
            let done = self
                .outcomes
                .compact(id, before_ms, batch as usize, kept)
                .await?;
            removed += done.removed;
            kept += done.kept;
            if done.removed + done.kept < batch {
                break;
            }
        }
        if removed > 0 {
            info!(
                removed,
                before_ms, "outcome records past the retention removed"
            );
            crate::metrics::outcomes_expired(removed);
        }
        Ok(removed)
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

/// A connection's place in the reconciliation cycle: an offset into the interval derived from
/// its id alone (FNV-1a), the same on every replica and after every restart, spread evenly
/// over the interval across connections.
fn cycle_place_ms(id: &ConnectionId, interval_ms: i64) -> i64 {
    let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % interval_ms.max(1) as u64) as i64
}

/// The first time at `place` in the cycle (`time mod interval == place`) at least half an
/// interval after `started_ms`.
fn due_at_place(place: i64, interval: i64, started_ms: i64) -> i64 {
    let earliest = started_ms + interval / 2;
    let due = earliest - earliest.rem_euclid(interval) + place;
    if due < earliest { due + interval } else { due }
}

/// Resolves once `client` has sent no request for `limit` (checked every second or so).
async fn stalled(client: &AircallClient, limit: Duration) {
    let check = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut sent = client.stats().requests;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(check).await;
        let now = client.stats().requests;
        if now != sent {
            (sent, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// The passes of one process: the free places (and those troubled connections may take), the
/// connections being passed over now (never two passes of one connection from
/// one process), the running tasks, the round's totals, and for a CronJob round the latest a
/// connection's next pass may be scheduled for.
#[derive(Clone)]
struct Scheduler {
    places: Arc<Semaphore>,
    troubled_places: Arc<Semaphore>,
    running: Arc<Mutex<HashSet<ConnectionId>>>,
    tasks: TaskTracker,
    round: Arc<Mutex<Round>>,
    cap: Option<i64>,
}

/// A connection being passed over by this process, until dropped (even by a panicking pass).
struct Claim {
    running: Arc<Mutex<HashSet<ConnectionId>>>,
    id: ConnectionId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Scheduler {
    /// `cap`: the round's end, for a CronJob round (see [`Scheduler::cap`]). A round starts
    /// every troubled connection once all its healthy ones are started: nothing else will come
    /// due in it, so they may take every place; the loop keeps three quarters of the places
    /// for the connections that come due at its next ticks.
    fn new(concurrency: usize, cap: Option<i64>) -> Self {
        let concurrency = concurrency.max(1);
        let troubled = if cap.is_some() {
            concurrency
        } else {
            (concurrency / 4).max(1)
        };
        Self {
            places: Arc::new(Semaphore::new(concurrency)),
            troubled_places: Arc::new(Semaphore::new(troubled)),
            running: Arc::default(),
            tasks: TaskTracker::new(),
            round: Arc::default(),
            cap,
        }
    }

    /// Claims `id` for a pass; `None` when this process is passing over it already.
    fn claim(&self, id: &ConnectionId) -> Option<Claim> {
        let fresh = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone());
        fresh.then(|| Claim {
            running: self.running.clone(),
            id: id.clone(),
        })
    }

    /// Counts a pass: `Ok(true)` succeeded, `Ok(false)` skipped, `Err` failed.
    fn count(&self, pass: Result<bool, ()>) {
        let mut round = self
            .round
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pass {
            Ok(true) => round.succeeded += 1,
            Ok(false) => round.skipped += 1,
            Err(()) => round.failed += 1,
        }
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

#[cfg(test)]
mod cycle_tests {
    use super::*;

    const INTERVAL: i64 = 15 * 60 * 1_000;

    #[test]
    fn connections_spread_evenly_over_the_cycle() {
        // 10,000 connections over the fifteen minutes of the cycle: about 667 a minute.
        let mut per_minute = [0u32; 15];
        for i in 0..10_000 {
            let id = ConnectionId::parse(&format!("customer-{i}")).unwrap();
            let place = cycle_place_ms(&id, INTERVAL);
            assert!((0..INTERVAL).contains(&place));
            per_minute[(place / 60_000) as usize] += 1;
        }
        for (minute, count) in per_minute.iter().enumerate() {
            assert!(
                (560..=780).contains(count),
                "minute {minute}: {count} connections ({per_minute:?})"
            );
        }
    }

    #[test]
    fn a_connection_keeps_its_place_an_interval_apart() {
        let id = ConnectionId::parse("acme").unwrap();
        let place = cycle_place_ms(&id, INTERVAL);
        for started in [
            0,
            1,
            123_456_789,
            1_796_000_000_000,
            1_796_000_000_000 + place,
        ] {
            let due = due_at_place(place, INTERVAL, started);
            assert_eq!(due.rem_euclid(INTERVAL), place);
            assert!(due >= started + INTERVAL / 2 && due < started + INTERVAL * 3 / 2);
            // Run on time, the next pass comes exactly an interval later.
            assert_eq!(due_at_place(place, INTERVAL, due), due + INTERVAL);
            // Run a little late (a tick, a busy place), still at its place.
            assert_eq!(due_at_place(place, INTERVAL, due + 5_000), due + INTERVAL);
        }
    }
}
