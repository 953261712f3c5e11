//! One import job, start to finish, without any AMQP type: [`Importer::process`] takes the job
//! and says what became of it, so tests call it directly and the consumer only acks.
//!
//! The order of the steps is what makes "exactly one import per call" hold through crashes and
//! duplicate deliveries:
//!
//! 1. a call recorded `imported` (and announced) is done: nothing else happens;
//! 2. the per-call lease: while another worker holds it, the job waits in a retry queue;
//! 3. under the lease, the outcome is read again, then the call (the job's snapshot while its
//!    recording URL is fresh, or whatever its age when it rules the call out for good — no
//!    agent, an agent who does not pay, outside the window —, else `GET /v1/calls/:id`), then
//!    the rules;
//! 4. the recording streams to a temporary object, renamed only once complete; the metadata
//!    document is written beside it;
//! 5. the outcome `imported` is recorded, then `call.imported` is published with a confirm and
//!    the record marked announced. A crash between the two leaves an unannounced import, which
//!    the next delivery announces without downloading again (at-least-once events, keyed by
//!    `event_id`).
//!
//! Failures split three ways: transient ones go to the next retry queue, with the attempt
//! count and the error in the job; permanent ones, and transient ones out of attempts, go to
//! the dead-letter queue with their error and are recorded `failed`; Aircall refusing the
//! credentials also marks the connection `invalid_credentials`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::download::{DownloadError, Downloader};
use super::lease::{Lease, Leases};
use super::metadata::{self, CallMetadata, RecordingInfo};
use super::rules::{self, Decision, PendingReason, Rules, SkipReason};
use super::storage::{Storage, StorageError};
use crate::aircall::{Aircall, AircallError, Call, CallId, CallStatus, Credentials};
use crate::connections::{
    ConnectionId, ConnectionRecord, ConnectionStatus, ConnectionStore, Outcome, OutcomeRecord,
    OutcomeStore, Recorded, StoredCall,
};
use crate::crypto::Keys;
use crate::queue::broker::Envelope;
use crate::queue::topology::CALL_IMPORTED;
use crate::queue::{Broker, ImportJob, JobFailure, Message, PublishError, Trigger};

/// Version of the `call.imported` event's shape.
pub const EVENT_VERSION: u32 = 1;
/// A signed URL this close to its expiry is not worth starting a download with.
const URL_EXPIRY_MARGIN_S: i64 = 60;

/// The `call.imported` event: the metadata, and a key for consumers to drop the rare duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallImported {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// `{connection}:{call id}`: the same for every announcement of one call.
    pub event_id: String,
    pub metadata: CallMetadata,
}

/// What a job came to when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Imported,
    Skipped(SkipReason),
    Pending(PendingReason),
    /// Imported (or finally skipped) before: nothing to do.
    AlreadyDone,
    /// Imported before, but its event was not confirmed: announced now.
    Announced,
    /// The connection no longer exists.
    ConnectionGone,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the job names an invalid connection id")]
    InvalidConnectionId,
    #[error("another worker is importing this call")]
    Busy,
    #[error("the lease on the call was lost (another worker may have taken it over)")]
    LeaseLost,
    #[error(transparent)]
    Aircall(#[from] AircallError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("publishing the call.imported event failed")]
    Publish(#[from] PublishError),
    #[error("the stored API token cannot be decrypted with the configured secret_key")]
    CredentialsUnreadable,
    #[error("the connection's credentials were found invalid before")]
    KnownInvalidCredentials,
    /// Aircall refused the connection's credentials: those sealed as `api_token_sealed`, so a
    /// refusal of a key rotated away since does not mark the connection.
    #[error("Aircall rejected the API credentials (HTTP {status})")]
    CredentialsRefused {
        status: u16,
        api_token_sealed: String,
    },
    #[error("the call is recorded imported but its metadata is missing from storage")]
    MetadataMissing,
}

/// What to do with a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again after a delay, as a new attempt.
    Retry,
    /// Try again after the shortest delay, without counting an attempt.
    Defer,
    /// Straight to the dead-letter queue.
    DeadLetter,
    /// Give the job back to RabbitMQ unacknowledged (shutting down).
    Requeue,
}

impl JobError {
    /// A stable code for the dead-letter queue and the outcome record.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConnectionId => "invalid_job",
            Self::Busy => "busy",
            Self::LeaseLost => "lease_lost",
            Self::Aircall(AircallError::InvalidCredentials { .. })
            | Self::CredentialsRefused { .. }
            | Self::KnownInvalidCredentials => "invalid_credentials",
            Self::Aircall(AircallError::NotFound) => "call_not_found",
            Self::Aircall(AircallError::RateLimited { .. }) => "aircall_rate_limited",
            Self::Aircall(_) => "aircall_unavailable",
            Self::Download(DownloadError::Refused(_)) => "recording_url_refused",
            Self::Download(DownloadError::Storage(_)) | Self::Storage(_) => "storage_failed",
            Self::Download(_) => "download_failed",
            Self::Redis(_) => "redis_unavailable",
            Self::Publish(_) => "broker_unavailable",
            Self::CredentialsUnreadable => "credentials_unreadable",
            Self::MetadataMissing => "metadata_missing",
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            // A key storage refuses is this build's bug: retrying cannot fix it.
            Self::Storage(StorageError::InvalidKey(_))
            | Self::Download(DownloadError::Storage(StorageError::InvalidKey(_))) => {
                Disposition::DeadLetter
            }
            Self::Busy | Self::LeaseLost => Disposition::Defer,
            Self::Aircall(AircallError::Cancelled) => Disposition::Requeue,
            Self::Aircall(e) if e.is_transient() => Disposition::Retry,
            Self::Download(e) if e.is_transient() => Disposition::Retry,
            Self::Storage(_) | Self::Redis(_) | Self::Publish(_) => Disposition::Retry,
            Self::InvalidConnectionId
            | Self::Aircall(_)
            | Self::Download(_)
            | Self::CredentialsUnreadable
            | Self::CredentialsRefused { .. }
            | Self::KnownInvalidCredentials
            | Self::MetadataMissing => Disposition::DeadLetter,
        }
    }
}

/// What became of a job, for the consumer and the logs.
#[derive(Debug)]
pub enum Report {
    Done(Handled),
    /// Sent to a retry queue (`attempt` is the new count).
    Retrying {
        attempt: u32,
        error: JobError,
    },
    Deferred,
    DeadLettered(JobError),
    /// Not settled: the consumer gives the delivery back.
    Requeue(JobError),
}

impl Report {
    /// `(outcome, reason)` labels of the jobs metric: a fixed set.
    pub fn metric_labels(&self) -> (&'static str, &'static str) {
        match self {
            Report::Done(Handled::Imported) => ("imported", "none"),
            Report::Done(Handled::Skipped(reason)) => ("skipped", reason.as_str()),
            Report::Done(Handled::Pending(reason)) => ("pending", reason.as_str()),
            Report::Done(Handled::AlreadyDone) => ("already_done", "none"),
            Report::Done(Handled::Announced) => ("announced", "none"),
            Report::Done(Handled::ConnectionGone) => ("connection_gone", "none"),
            Report::Retrying { error, .. } => ("retried", error.code()),
            Report::Deferred => ("deferred", "busy"),
            Report::DeadLettered(error) => ("dead_lettered", error.code()),
            Report::Requeue(error) => ("requeued", error.code()),
        }
    }
}

/// Everything an import needs. Cheap to clone.
#[derive(Clone)]
pub struct Importer {
    pub connections: ConnectionStore,
    pub outcomes: OutcomeStore,
    pub leases: Leases,
    pub storage: Storage,
    pub downloader: Downloader,
    pub aircall: Aircall,
    pub keys: Arc<Keys>,
    pub broker: Broker,
    pub rules: Rules,
    /// The import settings the rules came from (pending re-check intervals, URL freshness).
    pub import: crate::config::ImportSettings,
    /// How long a job's snapshot URL is trusted without an expiry of its own.
    pub recording_url_fresh: Duration,
    /// Wait for RabbitMQ's confirms of retries, dead letters and events.
    pub confirm_timeout: Duration,
    /// Ends Aircall waits on shutdown.
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("storage", &self.storage)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The expiry (Unix seconds) of an S3-style signed URL (`X-Amz-Date` + `X-Amz-Expires`).
pub fn signed_url_expiry(url: &str) -> Option<i64> {
    let url = url::Url::parse(url).ok()?;
    let (mut date, mut expires) = (None, None);
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "X-Amz-Date" => date = super::download::parse_amz_date(&value),
            "X-Amz-Expires" => expires = value.parse::<i64>().ok(),
            _ => {}
        }
    }
    Some(date? + expires?)
}

/// The job's snapshot, if it can be trusted now: a finished call whose recording URL (if any)
/// is young enough and not about to expire.
pub fn fresh_snapshot(job: &ImportJob, now_ms: i64, fresh_for: Duration) -> Option<&Call> {
    let call = job.snapshot.as_ref()?;
    if call.status != Some(CallStatus::Done) {
        return None;
    }
    if now_ms.saturating_sub(job.received_at_ms) >= fresh_for.as_millis() as i64 {
        return None;
    }
    let expiring = call
        .recording
        .as_deref()
        .and_then(signed_url_expiry)
        .is_some_and(|expiry| expiry - URL_EXPIRY_MARGIN_S <= now_ms / 1000);
    (!expiring).then_some(call)
}

/// Whether the rules skip `call` for a reason no later look at the call can change: a finished
/// call without an agent, taken by an agent who is not a paying user, or started before the
/// window (a call whose start is unknown is not taken for one: Aircall may know it). A snapshot
/// too old for its recording URL still decides such a call.
pub fn skipped_whatever_the_recording(
    call: &Call,
    now_s: i64,
    users: &rules::PayingUsers,
    rules: &Rules,
) -> bool {
    call.status == Some(CallStatus::Done)
        && call.started_at.is_some()
        && matches!(
            rules::decide(call, now_s, users, rules),
            Decision::Skip(
                SkipReason::NoUser | SkipReason::UserNotMatched | SkipReason::OutsideWindow
            )
        )
}

impl Importer {
    /// Runs `job` and settles it: retried, deferred or dead-lettered through RabbitMQ as its
    /// outcome requires. An `Err` means that settlement could not be published: the consumer
    /// must give the delivery back to RabbitMQ.
    pub async fn process(&self, job: ImportJob) -> Result<Report, PublishError> {
        let started = std::time::Instant::now();
        let report = self.settle(job).await;
        if let Ok(report) = &report {
            let (outcome, reason) = report.metric_labels();
            crate::metrics::job(outcome, reason);
            if matches!(report, Report::Done(Handled::Imported)) {
                crate::metrics::imported(started.elapsed());
            }
        }
        report
    }

    async fn settle(&self, job: ImportJob) -> Result<Report, PublishError> {
        let error = match self.handle(&job).await {
            Ok(handled) => return Ok(Report::Done(handled)),
            Err(error) => error,
        };
        match error.disposition() {
            Disposition::Requeue => Ok(Report::Requeue(error)),
            Disposition::Defer => {
                let queue = self.broker.names().retries[0].clone();
                self.publish_job(&queue, &job).await?;
                Ok(Report::Deferred)
            }
            Disposition::Retry if (job.attempt as usize) < self.broker.names().retries.len() => {
                let queue = self.broker.names().retries[job.attempt as usize].clone();
                let mut next = job;
                next.attempt += 1;
                next.failure = Some(self.failure(&error));
                self.publish_job(&queue, &next).await?;
                Ok(Report::Retrying {
                    attempt: next.attempt,
                    error,
                })
            }
            Disposition::Retry | Disposition::DeadLetter => {
                self.dead_letter(job, &error).await?;
                Ok(Report::DeadLettered(error))
            }
        }
    }

    fn failure(&self, error: &JobError) -> JobFailure {
        JobFailure {
            code: error.code().to_string(),
            message: error_chain(error),
            at_ms: now_ms(),
        }
    }

    async fn publish_job(&self, queue: &str, job: &ImportJob) -> Result<(), PublishError> {
        let message = Message::ImportCall(job.clone());
        self.broker
            .publish_to(
                "",
                queue,
                (&message).into(),
                &message.encode(),
                self.confirm_timeout,
            )
            .await
    }

    /// Parks the job in the dead-letter queue with its error, and records the call `failed`.
    async fn dead_letter(&self, mut job: ImportJob, error: &JobError) -> Result<(), PublishError> {
        let failure = self.failure(error);
        job.failure = Some(failure.clone());
        let dead = self.broker.names().dead.clone();
        self.publish_job(&dead, &job).await?;
        let Ok(connection) = ConnectionId::parse(&job.connection_id) else {
            return Ok(());
        };
        if let JobError::CredentialsRefused {
            api_token_sealed, ..
        } = error
        {
            match self
                .connections
                .mark_invalid_credentials(&connection, api_token_sealed)
                .await
            {
                Ok(true) => {
                    warn!(connection = %connection, "Aircall refuses the connection's credentials; its jobs are parked in the dead-letter queue")
                }
                Ok(false) => {
                    info!(connection = %connection, "Aircall refused credentials replaced since; the connection stays as it is")
                }
                Err(e) => warn!(error = %e, "cannot mark the connection invalid_credentials"),
            }
        }
        let mut record = self.record_for(&job, job.snapshot.as_ref(), Outcome::Failed);
        record.reason = Some(failure.code);
        record.error = Some(failure.message);
        if let Err(e) = self.outcomes.record(&connection, &record).await {
            warn!(error = %e, "cannot record the failed outcome");
        }
        Ok(())
    }

    /// Imports the call of `job` if it should be, and records the decision.
    pub async fn handle(&self, job: &ImportJob) -> Result<Handled, JobError> {
        let id =
            ConnectionId::parse(&job.connection_id).map_err(|_| JobError::InvalidConnectionId)?;
        let Some(connection) = self.connections.get(&id).await? else {
            info!("the connection no longer exists; job dropped");
            return Ok(Handled::ConnectionGone);
        };
        if let Some(record) = self.outcomes.get(&id, job.call_id).await?
            && is_done(&record, job)
        {
            return Ok(Handled::AlreadyDone);
        }
        let Some(lease) = self.leases.acquire(&id, job.call_id).await? else {
            return Err(JobError::Busy);
        };
        // Should the lease be lost, the work stops where it is: an upload in progress is
        // dropped (nothing stored), and the final record is fenced by the lease anyway.
        let handled = tokio::select! {
            handled = self.handle_leased(&connection, job, &lease) => handled,
            () = lease.lost() => Err(JobError::LeaseLost),
        };
        lease.release().await;
        handled
    }

    async fn handle_leased(
        &self,
        connection: &ConnectionRecord,
        job: &ImportJob,
        lease: &Lease,
    ) -> Result<Handled, JobError> {
        let id = &connection.id;
        // Another delivery may have finished while this one waited for the lease.
        let previous = self.outcomes.get(id, job.call_id).await?;
        if let Some(record) = &previous {
            if record.outcome == Outcome::Imported && !record.announced {
                self.announce_stored(id, record.clone(), lease).await?;
                return Ok(Handled::Announced);
            }
            if is_done(record, job) {
                return Ok(Handled::AlreadyDone);
            }
        }

        let mut users = self.connections.paying_users(id).await?;
        let now = now_ms();
        let mut fetched = false;
        let mut call = match fresh_snapshot(job, now, self.recording_url_fresh) {
            Some(snapshot) => snapshot.clone(),
            None => match job.snapshot.as_ref().filter(|call| {
                skipped_whatever_the_recording(call, now / 1000, &users, &self.rules)
            }) {
                // Asking Aircall again would change nothing: a backlog of such jobs must not
                // cost the company's API budget one request each.
                Some(snapshot) => snapshot.clone(),
                None => {
                    fetched = true;
                    let (call, users_now) = self.fetch_with_users(connection, job.call_id).await?;
                    users = users_now;
                    call
                }
            },
        };
        let (recording_key, metadata_key) = metadata::storage_keys(id.as_str(), &call);
        // What a worker that died on this call left behind (the lease says nobody else writes).
        self.storage.clean_partials(&recording_key).await?;
        self.storage.clean_partials(&metadata_key).await?;
        loop {
            let now = now_ms();
            let decision = rules::decide(&call, now / 1000, &users, &self.rules);
            let (source, url) = match decision {
                Decision::Skip(reason) => {
                    self.record_skip(job, &call, reason, lease).await?;
                    return Ok(Handled::Skipped(reason));
                }
                Decision::Pending(reason) => {
                    let checks = match &previous {
                        Some(p) if p.outcome == Outcome::Pending => p.pending_checks + 1,
                        _ => 1,
                    };
                    self.record_pending(job, &call, reason, checks, lease)
                        .await?;
                    return Ok(Handled::Pending(reason));
                }
                Decision::Import { source, url } => (source, url),
            };
            debug!(?source, fetched, "importing");
            let downloaded = self
                .downloader
                .download(
                    &url,
                    &self.storage,
                    &recording_key,
                    self.rules.max_recording_bytes,
                )
                .await;
            let downloaded = match downloaded {
                Ok(downloaded) => downloaded,
                // The snapshot's link expired, or names a host this service does not fetch
                // from (a forged webhook must not stop the real call): ask Aircall, once.
                Err(e @ (DownloadError::Expired { .. } | DownloadError::Refused(_)))
                    if !fetched =>
                {
                    info!(error = %e, "the job's recording link is unusable; fetching the call again");
                    fetched = true;
                    (call, users) = self.fetch_with_users(connection, job.call_id).await?;
                    continue;
                }
                Err(DownloadError::TooLarge { seen, how, .. }) => {
                    info!(bytes = seen, how, "recording over the size limit");
                    self.record_skip(job, &call, SkipReason::RecordingTooLarge, lease)
                        .await?;
                    return Ok(Handled::Skipped(SkipReason::RecordingTooLarge));
                }
                Err(e) => return Err(e.into()),
            };

            let recording = RecordingInfo {
                location: downloaded.stored.location.clone(),
                key: recording_key.clone(),
                size_bytes: downloaded.stored.bytes,
                sha256: downloaded.sha256.clone(),
                content_type: downloaded.content_type.clone(),
                source,
            };
            let document = metadata::build(id.as_str(), &call, recording, job.trigger, now / 1000);
            let body = serde_json::to_vec_pretty(&document).unwrap_or_default();
            self.storage
                .put(&metadata_key, Bytes::from(body), "application/json")
                .await?;
            let mut record = self.record_for(job, Some(&call), Outcome::Imported);
            record.stored = Some(StoredCall {
                recording_key,
                metadata_key,
                location: downloaded.stored.location,
                bytes: downloaded.stored.bytes,
                sha256: downloaded.sha256,
            });
            self.commit(id, &record, lease).await?;
            info!(bytes = document.recording.size_bytes, "call imported");
            crate::metrics::recording_stored(document.recording.size_bytes);
            self.announce(id, record, &document, lease).await?;
            return Ok(Handled::Imported);
        }
    }

    /// The call as Aircall shows it now, and the paying users read after it: the fetch may
    /// have waited long on the company's budget, and a user added meanwhile must count.
    async fn fetch_with_users(
        &self,
        connection: &ConnectionRecord,
        call: CallId,
    ) -> Result<(Call, rules::PayingUsers), JobError> {
        let call = self.fetch_call(connection, call).await?;
        let users = self.connections.paying_users(&connection.id).await?;
        Ok((call, users))
    }

    async fn fetch_call(
        &self,
        connection: &ConnectionRecord,
        call: CallId,
    ) -> Result<Call, JobError> {
        if connection.status == ConnectionStatus::InvalidCredentials {
            return Err(JobError::KnownInvalidCredentials);
        }
        let api_token = self
            .keys
            .decrypt(&connection.api_token_sealed, connection.id.as_str())
            .map_err(|_| JobError::CredentialsUnreadable)?;
        let client = self.aircall.client(
            Credentials {
                api_id: connection.api_id.clone(),
                api_token,
            },
            connection.id.as_str(),
            self.cancel.clone(),
        );
        client.get_call(call).await.map_err(|e| match e {
            AircallError::InvalidCredentials { status } => JobError::CredentialsRefused {
                status,
                api_token_sealed: connection.api_token_sealed.clone(),
            },
            other => JobError::Aircall(other),
        })
    }

    /// The outcome record of `job`'s call, filled from `call` when known.
    fn record_for(&self, job: &ImportJob, call: Option<&Call>, outcome: Outcome) -> OutcomeRecord {
        let user = call.and_then(|c| c.user.as_ref());
        OutcomeRecord {
            call_id: job.call_id,
            outcome,
            reason: None,
            decided_at_ms: now_ms(),
            trigger: job.trigger,
            agent_email: user.and_then(|u| u.email.clone()),
            agent_name: user.and_then(|u| u.name.clone()),
            direction: call.and_then(|c| c.direction),
            started_at: call.and_then(|c| c.started_at),
            duration: call.and_then(|c| c.duration),
            error: None,
            stored: None,
            announced: false,
            recheck_at_ms: None,
            pending_checks: 0,
        }
    }

    /// Writes a decision made under `lease`, refused if the lease is no longer ours.
    async fn commit(
        &self,
        id: &ConnectionId,
        record: &OutcomeRecord,
        lease: &Lease,
    ) -> Result<(), JobError> {
        match self
            .outcomes
            .record_fenced(id, record, Some(lease.fence()))
            .await?
        {
            Recorded::LeaseLost => Err(JobError::LeaseLost),
            Recorded::Written | Recorded::KeptImport | Recorded::KeptDecision => Ok(()),
        }
    }

    async fn record_skip(
        &self,
        job: &ImportJob,
        call: &Call,
        reason: SkipReason,
        lease: &Lease,
    ) -> Result<(), JobError> {
        let mut record = self.record_for(job, Some(call), Outcome::Skipped);
        record.reason = Some(reason.as_str().to_string());
        let id =
            ConnectionId::parse(&job.connection_id).map_err(|_| JobError::InvalidConnectionId)?;
        self.commit(&id, &record, lease).await?;
        info!(reason = reason.as_str(), "call skipped");
        Ok(())
    }

    async fn record_pending(
        &self,
        job: &ImportJob,
        call: &Call,
        reason: PendingReason,
        checks: u32,
        lease: &Lease,
    ) -> Result<(), JobError> {
        let id =
            ConnectionId::parse(&job.connection_id).map_err(|_| JobError::InvalidConnectionId)?;
        let now_ms = now_ms();
        let wait = self.import.pending_recheck_after(checks);
        let mut recheck_at = now_ms + wait.as_millis() as i64;
        if reason == PendingReason::RecordingNotReady
            && let Some(deadline) = self.rules.recording_deadline(call)
        {
            recheck_at = recheck_at.min(deadline * 1000);
        }
        let mut record = self.record_for(job, Some(call), Outcome::Pending);
        record.reason = Some(reason.as_str().to_string());
        record.recheck_at_ms = Some(recheck_at);
        record.pending_checks = checks;
        self.commit(&id, &record, lease).await?;
        info!(reason = reason.as_str(), checks, "call pending");
        Ok(())
    }

    /// Publishes `call.imported` for a recorded import, then marks it announced.
    async fn announce(
        &self,
        id: &ConnectionId,
        mut record: OutcomeRecord,
        document: &CallMetadata,
        lease: &Lease,
    ) -> Result<(), JobError> {
        let event = CallImported {
            kind: CALL_IMPORTED.to_string(),
            version: EVENT_VERSION,
            event_id: format!("{id}:{}", record.call_id.0),
            metadata: document.clone(),
        };
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let envelope = Envelope {
            id: Some(&event.event_id),
            kind: Some(CALL_IMPORTED),
        };
        // The exchange's alternate exchange keeps events no consumer's queue is bound for, so
        // a confirm means the event is held somewhere.
        let exchange = self.broker.names().events.clone();
        self.broker
            .publish_to(
                &exchange,
                CALL_IMPORTED,
                envelope,
                &body,
                self.confirm_timeout,
            )
            .await?;
        record.announced = true;
        self.commit(id, &record, lease).await
    }

    /// Announces an import recorded earlier, from its stored metadata.
    async fn announce_stored(
        &self,
        id: &ConnectionId,
        record: OutcomeRecord,
        lease: &Lease,
    ) -> Result<(), JobError> {
        let key = record
            .stored
            .as_ref()
            .map(|s| s.metadata_key.clone())
            .ok_or(JobError::MetadataMissing)?;
        let body = self
            .storage
            .get(&key)
            .await?
            .ok_or(JobError::MetadataMissing)?;
        let document: CallMetadata =
            serde_json::from_slice(&body).map_err(|_| JobError::MetadataMissing)?;
        self.announce(id, record, &document, lease).await
    }
}

/// Imported and announced, or skipped for good: nothing left to do (a manual job decides a
/// skipped call again).
fn is_done(record: &OutcomeRecord, job: &ImportJob) -> bool {
    match record.outcome {
        Outcome::Imported => record.announced,
        Outcome::Skipped => {
            job.trigger != Trigger::Manual
                && record
                    .reason
                    .as_deref()
                    .and_then(skip_reason)
                    .is_some_and(SkipReason::is_final)
        }
        Outcome::Pending | Outcome::Failed => false,
    }
}

fn skip_reason(code: &str) -> Option<SkipReason> {
    SkipReason::ALL.into_iter().find(|r| r.as_str() == code)
}

/// An error with its causes, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_tell_their_expiry() {
        let url = "https://s.example.com/r.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261129T062800Z&X-Amz-Expires=600&X-Amz-Signature=ab";
        let signed = crate::sim::recording::parse_amz_date("20261129T062800Z").unwrap();
        assert_eq!(signed_url_expiry(url), Some(signed + 600));
        assert_eq!(signed_url_expiry("https://s.example.com/r.mp3"), None);
    }

    #[test]
    fn only_skips_no_later_look_can_change_are_decided_from_an_old_snapshot() {
        let rules = Rules::new(&crate::config::ImportSettings::default());
        let users = rules::PayingUsers::new(["ana@acme.com"]);
        let now_s = 1_764_400_000;
        let call = |json: serde_json::Value| -> Call { serde_json::from_value(json).unwrap() };
        let done = |extra: serde_json::Value| {
            let mut base = serde_json::json!({"id": 1, "status": "done", "started_at": now_s - 600,
                "answered_at": now_s - 590, "ended_at": now_s - 300});
            base.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            call(base)
        };
        let settled = |c: &Call| skipped_whatever_the_recording(c, now_s, &users, &rules);
        assert!(settled(&done(
            serde_json::json!({"user": {"email": "bob@acme.com"}})
        )));
        assert!(settled(&done(serde_json::json!({"user": null}))));
        assert!(settled(&done(
            serde_json::json!({"started_at": now_s - 30 * 86_400, "user": {"email": "ana@acme.com"}})
        )));
        // A paying agent's call depends on its recording: fetched again.
        assert!(!settled(&done(
            serde_json::json!({"user": {"email": "ana@acme.com"}})
        )));
        // An unknown start is not taken for one outside the window, nor is a call in progress
        // settled by who answered it.
        assert!(!settled(&done(
            serde_json::json!({"started_at": null, "user": {"email": "bob@acme.com"}})
        )));
        assert!(!settled(&done(
            serde_json::json!({"status": "answered", "user": {"email": "bob@acme.com"}})
        )));
    }

    #[test]
    fn a_snapshot_is_trusted_only_while_fresh() {
        let mut call = Call::bare(CallId(7));
        call.status = Some(CallStatus::Done);
        let mut job = ImportJob::new("acme", CallId(7), Trigger::Webhook, 1_000_000);
        job.snapshot = Some(call.clone());
        let fresh = Duration::from_secs(300);
        assert!(fresh_snapshot(&job, 1_000_000 + 299_999, fresh).is_some());
        assert!(fresh_snapshot(&job, 1_000_000 + 300_000, fresh).is_none());

        // A URL about to expire is not fresh, however young the job.
        let signed = 1_000; // seconds
        call.recording = Some(format!(
            "https://s.example.com/r.mp3?X-Amz-Date={}&X-Amz-Expires=100",
            crate::sim::recording::format_amz_date(signed)
        ));
        job.snapshot = Some(call.clone());
        assert!(fresh_snapshot(&job, (signed + 30) * 1000, fresh).is_some());
        assert!(fresh_snapshot(&job, (signed + 41) * 1000, fresh).is_none());

        // A call not finished is always fetched again.
        call.status = Some(CallStatus::Answered);
        job.snapshot = Some(call);
        assert!(fresh_snapshot(&job, 1_000_000, fresh).is_none());
    }

    #[test]
    fn transient_errors_retry_and_permanent_ones_go_to_dead_letters() {
        let retry = JobError::Download(DownloadError::Truncated {
            received: 1,
            expected: 2,
        });
        assert_eq!(retry.disposition(), Disposition::Retry);
        let dead = JobError::Aircall(AircallError::InvalidCredentials { status: 403 });
        assert_eq!(dead.disposition(), Disposition::DeadLetter);
        assert_eq!(dead.code(), "invalid_credentials");
        assert_eq!(JobError::Busy.disposition(), Disposition::Defer);
        assert_eq!(
            JobError::Download(DownloadError::Refused("x".into())).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            JobError::Aircall(AircallError::Cancelled).disposition(),
            Disposition::Requeue
        );
    }
}
