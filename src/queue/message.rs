//! What travels on the queues: versioned, tagged JSON messages. Handlers take these types, never
//! AMQP types, so tests can call them directly.

use serde::{Deserialize, Serialize};

use crate::aircall::{Call, CallId};

/// Version of [`ImportJob`]'s shape. A consumer refuses (dead-letters) versions it does not know.
pub const IMPORT_JOB_VERSION: u32 = 1;

/// Every message type on the import queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    ImportCall(ImportJob),
}

/// What brought a call in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Webhook,
    Reconciliation,
    Manual,
}

/// Import one call of one connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportJob {
    pub version: u32,
    /// Unique per job (the AMQP `message_id`), for tracing; not an idempotency key: the call is.
    pub job_id: String,
    pub connection_id: String,
    pub call_id: CallId,
    pub trigger: Trigger,
    /// The webhook event that carried the call, for webhook jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The call as the webhook or the listing showed it. Its recording URL may have expired by
    /// the time a worker reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Call>,
    /// When Aircall emitted the event (Unix seconds), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_at: Option<i64>,
    /// When this service accepted the job (Unix milliseconds): the snapshot's age starts here.
    pub received_at_ms: i64,
    /// The request that created the job (`x-request-id`), carried into the worker's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Attempts that failed so far (0 for a new job); the retry queues carry it up.
    #[serde(default)]
    pub attempt: u32,
    /// Why the last attempt failed: set on jobs in the retry and dead-letter queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<JobFailure>,
}

/// The error a failed attempt ended with, as carried by a retried or dead-lettered job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFailure {
    /// Stable code, e.g. `aircall_unavailable`, `download_failed`, `invalid_credentials`.
    pub code: String,
    /// The error and its causes, for people (never a secret).
    pub message: String,
    /// When it failed (Unix ms).
    pub at_ms: i64,
}

impl ImportJob {
    /// A new job for `call_id` of `connection_id`.
    pub fn new(connection_id: &str, call_id: CallId, trigger: Trigger, now_ms: i64) -> Self {
        Self {
            version: IMPORT_JOB_VERSION,
            job_id: new_job_id(),
            connection_id: connection_id.to_string(),
            call_id,
            trigger,
            event: None,
            snapshot: None,
            event_at: None,
            received_at_ms: now_ms,
            request_id: None,
            attempt: 0,
            failure: None,
        }
    }
}

/// A message body that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a message this service knows: {0}")]
    Unreadable(#[from] serde_json::Error),
    #[error(
        "import job version {0} is not supported (this build reads version {IMPORT_JOB_VERSION})"
    )]
    UnsupportedVersion(u32),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let message: Message = serde_json::from_slice(body)?;
        match &message {
            Message::ImportCall(job) if job.version != IMPORT_JOB_VERSION => {
                Err(DecodeError::UnsupportedVersion(job.version))
            }
            Message::ImportCall(_) => Ok(message),
        }
    }

    /// The unique id of the message (the AMQP `message_id`).
    pub fn id(&self) -> &str {
        match self {
            Message::ImportCall(job) => &job.job_id,
        }
    }

    /// The AMQP `type` property.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::ImportCall(_) => "import_call",
        }
    }
}

/// A fresh random id (128 bits, hex). Job and request ids need uniqueness, not secrecy: a
/// thread-local generator seeded from the OS gives it without a system call per id.
pub fn new_job_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_with_its_type_tag_and_version() {
        let job = ImportJob {
            version: IMPORT_JOB_VERSION,
            job_id: new_job_id(),
            connection_id: "acme".into(),
            call_id: CallId(5_000_000_123),
            trigger: Trigger::Webhook,
            event: Some("call.ended".into()),
            snapshot: Some(Call::bare(CallId(5_000_000_123))),
            event_at: Some(1_735_733_055),
            received_at_ms: 1_735_733_056_000,
            request_id: Some("req-1".into()),
            attempt: 0,
            failure: None,
        };
        let body = Message::ImportCall(job.clone()).encode();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains(r#""type":"import_call""#), "{text}");
        assert!(text.contains(r#""version":1"#), "{text}");
        assert_eq!(Message::decode(&body).unwrap(), Message::ImportCall(job));
    }

    #[test]
    fn unknown_versions_and_types_are_refused() {
        let future = br#"{"type":"import_call","version":2,"job_id":"x","connection_id":"a","call_id":1,"trigger":"webhook","received_at_ms":0}"#;
        assert!(matches!(
            Message::decode(future),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        assert!(Message::decode(br#"{"type":"something_else"}"#).is_err());
    }
}
