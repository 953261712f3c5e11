//! The admin API's request bodies and answers, as the OpenAPI document shows them. Times are
//! RFC 3339 UTC strings.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::aircall::{CallId, Direction};
use crate::connections::{ConnectionStatus, DayCounts, Outcome, OutcomeRecord};
use crate::queue::Trigger;
use crate::reconcile::RunReport;

/// `POST /api/connections`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    /// The connection's id, chosen by the platform: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "acme")]
    pub id: String,
    /// The API ID shown by Aircall when the key was generated.
    #[schema(pattern = "^ *[!-9;-~]+ *$", max_length = 256)]
    pub api_id: String,
    /// The API token shown (once) by Aircall when the key was generated.
    #[schema(value_type = String, format = Password, pattern = "^ *[!-~]+ *$", max_length = 1024)]
    pub api_token: SecretString,
    /// The paying users' emails; without them the connection waits (`waiting_for_users`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Email>>, max_items = 10000)]
    pub users: Option<Vec<String>>,
}

/// An email address (trimmed and lower-cased when stored).
#[derive(ToSchema)]
#[schema(
    pattern = "^[^@\\s]+@[^@\\s.][^@\\s]*\\.[^@\\s]*[^@\\s.]$",
    example = "ana@acme.com"
)]
#[allow(dead_code)]
pub struct Email(String);

/// `PUT /api/connections/{id}/credentials`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    #[schema(pattern = "^ *[!-9;-~]+ *$", max_length = 256)]
    pub api_id: String,
    #[schema(value_type = String, format = Password, pattern = "^ *[!-~]+ *$", max_length = 1024)]
    pub api_token: SecretString,
}

/// `PUT /api/connections/{id}/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsersBody {
    /// Every paying user's email (the list replaces the previous one).
    #[schema(value_type = Vec<Email>, max_items = 10000)]
    pub emails: Vec<String>,
}

/// A connection, as an operator looks at it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub id: String,
    pub api_id: String,
    pub status: ConnectionStatus,
    /// What the status means and what to do about it.
    pub status_explanation: String,
    pub webhook: WebhookView,
    pub created_at: String,
    pub paying_users: u64,
    pub users_changed_at: Option<String>,
    /// Calls per outcome.
    pub calls: OutcomeCounts,
    /// Calls per reason code (skip reasons, pending reasons, failure codes).
    pub reasons: BTreeMap<String, u64>,
    pub pending: PendingView,
    pub sync: SyncView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The webhook's id on Aircall.
    pub id: String,
    /// Where Aircall posts the connection's events.
    pub url: String,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct OutcomeCounts {
    pub imported: u64,
    pub skipped: u64,
    pub pending: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PendingView {
    /// Calls waiting for their recording (or to finish).
    pub count: u64,
    /// The earliest re-check among them.
    pub next_recheck_at: Option<String>,
}

/// Reconciliation of the connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncView {
    /// A pass holds the connection's lock now.
    pub running: bool,
    /// When the first import ran (none yet: it is still owed).
    pub first_import_at: Option<String>,
    pub last_run_at: Option<String>,
    pub next_due_at: Option<String>,
    /// The report of the latest pass.
    pub last_report: Option<RunReport>,
}

/// A page of connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    pub items: Vec<ConnectionView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// `GET /api/connections` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectionsQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub cursor: Option<String>,
}

/// The answer to a connect.
#[derive(Debug, Serialize, ToSchema)]
pub struct Connected {
    pub connection: ConnectionView,
    /// `started`, or `waiting_for_users` until paying users are set.
    pub first_import: String,
}

/// The answer to a credential rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsRotated {
    pub connection: ConnectionView,
    /// The new credentials could not see the old webhook, so a new one was registered.
    pub webhook_replaced: bool,
    /// The connection was `invalid_credentials` and works again.
    pub status_restored: bool,
    /// Jobs parked in the dead-letter queue because Aircall refused the old credentials, now
    /// queued again.
    pub dead_letters_replayed: u32,
}

/// The answer to a disconnect.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisconnectedView {
    pub id: String,
    /// `removed`, `already_gone`, `credentials_refused` (remove it in the Aircall dashboard),
    /// `unreachable` (forced), or `credentials_unreadable`.
    pub webhook: String,
    /// Records of calls not imported, erased (imported calls keep their files and record).
    /// `null` when Redis failed after the connection was removed: what is left is erased when
    /// the id is connected again.
    pub decisions_erased: Option<u64>,
}

/// `DELETE /api/connections/{id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DisconnectQuery {
    /// Erase the connection even when Aircall cannot be reached to remove its webhook.
    pub force: Option<bool>,
}

/// A connection's paying users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsersView {
    /// Normalised (trimmed, lower-case), sorted.
    pub emails: Vec<String>,
    pub count: u64,
    pub changed_at: Option<String>,
}

/// The answer to a sync request.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncStarted {
    pub id: String,
    /// `started`.
    pub sync: String,
}

/// `GET /api/connections/{id}/calls` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallsQuery {
    /// Only calls with this outcome.
    pub outcome: Option<Outcome>,
    /// Only calls with this reason code (e.g. `user_not_matched`).
    #[param(pattern = "^[a-z_]{1,64}$")]
    pub reason: Option<String>,
    /// Only decisions made at or after this time: RFC 3339 (`2026-11-28T09:00:00Z`) or a date
    /// (`2026-11-28`, from midnight UTC).
    #[param(
        pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))?$"
    )]
    pub since: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,19}\\.[0-9]{1,20}$")]
    pub cursor: Option<String>,
}

/// What became of one call, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub call_id: CallId,
    pub outcome: Outcome,
    /// Reason code: a skip reason, a pending reason or a failure code; absent when imported.
    pub reason: Option<String>,
    /// The reason in a sentence a person understands.
    pub explanation: String,
    pub decided_at: String,
    pub trigger: Trigger,
    pub agent_email: Option<String>,
    pub agent_name: Option<String>,
    pub direction: Option<Direction>,
    pub started_at: Option<String>,
    pub duration_s: Option<i64>,
    /// For failures: the error.
    pub error: Option<String>,
    /// For imported calls: where the recording is.
    pub recording: Option<RecordingView>,
    /// For pending calls: when it is looked at again.
    pub next_recheck_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingView {
    /// Storage location (`file://…`, `s3://…`).
    pub location: String,
    pub recording_key: String,
    pub metadata_key: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A page of call outcomes, newest decision first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallPage {
    pub items: Vec<CallView>,
    pub next_cursor: Option<String>,
}

/// `GET /api/connections/{id}/activity` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Days to cover, today included: 1 to 90 (default 14).
    #[param(minimum = 1, maximum = 90)]
    pub days: Option<u32>,
}

/// Calls decided per day.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    /// Oldest first; the last is today (UTC).
    pub days: Vec<DayView>,
}

/// Calls decided on one day (UTC), by the outcome each has now.
#[derive(Debug, Serialize, ToSchema)]
pub struct DayView {
    /// `2026-11-28`.
    pub date: String,
    pub imported: u64,
    pub skipped: u64,
    pub pending: u64,
    pub failed: u64,
}

impl From<DayCounts> for DayView {
    fn from(day: DayCounts) -> Self {
        let mut date = rfc3339(day.start_ms);
        date.truncate(10);
        Self {
            date,
            imported: day.imported,
            skipped: day.skipped,
            pending: day.pending,
            failed: day.failed,
        }
    }
}

/// A recording's bytes (`audio/mpeg`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Recording(Vec<u8>);

/// `GET /api/dead-letters` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// Only this connection's jobs.
    pub connection_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `POST /api/dead-letters/replay`: one job (`{"job_id"}`), or all of them (`{"all": true}`,
/// narrowed by `connection_id` and `failure_code` when given).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReplayBody {
    One(ReplayOne),
    All(ReplayAll),
}

/// Replay this job only.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayOne {
    #[schema(min_length = 1)]
    pub job_id: String,
}

/// Replay every replayable job, of one connection and with one failure code when given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayAll {
    /// Must be `true`.
    #[schema(value_type = AllTrue)]
    pub all: bool,
    pub connection_id: Option<String>,
    pub failure_code: Option<String>,
}

/// `true`, the only value `all` takes.
pub struct AllTrue;

impl utoipa::PartialSchema for AllTrue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Boolean)
            .enum_values(Some([true]))
            .into()
    }
}

impl ToSchema for AllTrue {}

/// Unix ms as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<OutcomeRecord> for CallView {
    fn from(record: OutcomeRecord) -> Self {
        Self {
            explanation: record.explanation(),
            call_id: record.call_id,
            outcome: record.outcome,
            reason: record.reason,
            decided_at: rfc3339(record.decided_at_ms),
            trigger: record.trigger,
            agent_email: record.agent_email,
            agent_name: record.agent_name,
            direction: record.direction,
            started_at: record.started_at.map(|s| rfc3339(s * 1000)),
            duration_s: record.duration,
            error: record.error,
            recording: record.stored.map(|s| RecordingView {
                location: s.location,
                recording_key: s.recording_key,
                metadata_key: s.metadata_key,
                bytes: s.bytes,
                sha256: s.sha256,
            }),
            next_recheck_at: record.recheck_at_ms.map(rfc3339),
        }
    }
}
