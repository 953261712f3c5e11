//! The metadata document stored beside each recording, and published as the `call.imported`
//! event: every field of the design's "what is stored" table, from the call as Aircall showed
//! it, plus where the recording went and what brought the call in. Its JSON shape is documented
//! in the README; changing it means bumping [`METADATA_VERSION`].

use serde::{Deserialize, Serialize};

use super::rules::AudioSource;
use crate::aircall::{Call, CallId, Direction};
use crate::queue::Trigger;

/// Version of the document's shape.
pub const METADATA_VERSION: u32 = 1;

/// The stored metadata of one imported call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMetadata {
    pub version: u32,
    /// The connection (customer account) the call belongs to.
    pub connection_id: String,
    /// Aircall's call id.
    pub call_id: CallId,
    /// `inbound` or `outbound`.
    pub direction: Option<Direction>,
    /// `answered`, `voicemail`, `missed` (inbound) or `failed` (outbound).
    pub status: CallOutcomeStatus,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    /// RFC 3339, UTC.
    pub ended_at: Option<String>,
    /// Seconds, ringing included (Aircall's `duration`).
    pub duration_s: Option<i64>,
    pub recording: RecordingInfo,
    /// The agent.
    pub user: Option<Person>,
    /// The external party, when Aircall knows them as a contact.
    pub contact: Option<Contact>,
    /// The Aircall line.
    pub internal_number: Option<InternalNumber>,
    /// The other party's number as Aircall reports it (international format, or `anonymous`).
    pub external_number: Option<String>,
    /// What brought the call in.
    pub trigger: Trigger,
    /// When it was stored (RFC 3339, UTC).
    pub imported_at: String,
}

/// The call's status as the platform shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcomeStatus {
    Answered,
    Voicemail,
    Missed,
    Failed,
}

/// Where the audio is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// `file:///…` or `s3://bucket/…`.
    pub location: String,
    /// The storage key, relative to the storage root or bucket prefix.
    pub key: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    pub content_type: String,
    /// `recording`, or `voicemail` when the operator imports voicemails.
    pub source: AudioSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// First and last name, else the company name.
    pub name: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalNumber {
    /// As Aircall displays it, e.g. `+33 1 76 11 11 11`.
    pub digits: Option<String>,
    pub name: Option<String>,
}

/// RFC 3339 UTC of a Unix time.
pub fn rfc3339(unix_s: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

fn non_empty(text: Option<&String>) -> Option<String> {
    text.map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(String::from)
}

/// The status the platform shows: answered if picked up, else voicemail if one was left, else
/// missed (inbound) or failed (outbound).
pub fn call_status(call: &Call) -> CallOutcomeStatus {
    if call.answered_at.is_some() {
        CallOutcomeStatus::Answered
    } else if non_empty(call.voicemail.as_ref()).is_some() {
        CallOutcomeStatus::Voicemail
    } else if call.direction == Some(Direction::Outbound) {
        CallOutcomeStatus::Failed
    } else {
        CallOutcomeStatus::Missed
    }
}

/// The metadata of `call`, stored as `recording`, imported at `now_s`.
pub fn build(
    connection_id: &str,
    call: &Call,
    recording: RecordingInfo,
    trigger: Trigger,
    now_s: i64,
) -> CallMetadata {
    let contact = call.contact.as_ref().map(|c| {
        let full = [c.first_name.as_ref(), c.last_name.as_ref()]
            .into_iter()
            .filter_map(non_empty)
            .collect::<Vec<_>>()
            .join(" ");
        Contact {
            name: Some(full)
                .filter(|n| !n.is_empty())
                .or_else(|| non_empty(c.company_name.as_ref())),
            phone: c
                .phone_numbers
                .iter()
                .find_map(|p| non_empty(p.value.as_ref()))
                .or_else(|| non_empty(call.raw_digits.as_ref())),
        }
    });
    CallMetadata {
        version: METADATA_VERSION,
        connection_id: connection_id.to_string(),
        call_id: call.id,
        direction: call.direction,
        status: call_status(call),
        started_at: call.started_at.and_then(rfc3339),
        ended_at: call.ended_at.and_then(rfc3339),
        duration_s: call.duration,
        recording,
        user: call.user.as_ref().map(|u| Person {
            name: non_empty(u.name.as_ref()),
            email: non_empty(u.email.as_ref()),
        }),
        contact,
        internal_number: call.number.as_ref().map(|n| InternalNumber {
            digits: non_empty(n.digits.as_ref()),
            name: non_empty(n.name.as_ref()),
        }),
        external_number: non_empty(call.raw_digits.as_ref()),
        trigger,
        imported_at: rfc3339(now_s).unwrap_or_default(),
    }
}

/// Storage keys of a call's recording and metadata:
/// `{connection}/{yyyy}/{mm}/{dd}/{call_id}.mp3` and `.json`, dated by the call's start (UTC).
pub fn storage_keys(connection_id: &str, call: &Call) -> (String, String) {
    let start = call
        .started_at
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "{connection_id}/{:04}/{:02}/{:02}/{}",
        start.year(),
        u8::from(start.month()),
        start.day(),
        call.id.0
    );
    (format!("{base}.mp3"), format!("{base}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aircall::models::{Contact as AircallContact, ContactDetail, Number, User};

    fn recording() -> RecordingInfo {
        RecordingInfo {
            location: "file:///data/acme/2025/01/01/812.mp3".into(),
            key: "acme/2025/01/01/812.mp3".into(),
            size_bytes: 3,
            sha256: "ab".into(),
            content_type: "audio/mpeg".into(),
            source: AudioSource::Recording,
        }
    }

    #[test]
    fn every_stored_field_comes_from_the_call() {
        let mut call = Call::bare(CallId(812));
        call.direction = Some(Direction::Inbound);
        call.started_at = Some(1_735_732_800);
        call.answered_at = Some(1_735_732_809);
        call.ended_at = Some(1_735_733_025);
        call.duration = Some(225);
        call.raw_digits = Some("+33 6 12 34 56 78".into());
        call.number = Some(Number {
            name: Some("Support FR".into()),
            digits: Some("+33 1 76 11 11 11".into()),
            ..Number::default()
        });
        call.user = Some(User {
            name: Some("John Doe".into()),
            email: Some("john.doe@example.com".into()),
            ..User::default()
        });
        call.contact = Some(AircallContact {
            first_name: Some("Ana".into()),
            last_name: Some("Lopez".into()),
            company_name: Some("Acme".into()),
            phone_numbers: vec![ContactDetail {
                value: Some("+33 6 12 34 56 78".into()),
                ..ContactDetail::default()
            }],
            ..AircallContact::default()
        });
        let m = build("acme", &call, recording(), Trigger::Webhook, 1_735_733_100);
        assert_eq!(m.call_id, CallId(812));
        assert_eq!(m.status, CallOutcomeStatus::Answered);
        assert_eq!(m.started_at.as_deref(), Some("2025-01-01T12:00:00Z"));
        assert_eq!(m.ended_at.as_deref(), Some("2025-01-01T12:03:45Z"));
        assert_eq!(m.duration_s, Some(225));
        assert_eq!(
            m.user.unwrap().email.as_deref(),
            Some("john.doe@example.com")
        );
        let contact = m.contact.unwrap();
        assert_eq!(contact.name.as_deref(), Some("Ana Lopez"));
        assert_eq!(contact.phone.as_deref(), Some("+33 6 12 34 56 78"));
        let line = m.internal_number.unwrap();
        assert_eq!(line.digits.as_deref(), Some("+33 1 76 11 11 11"));
        assert_eq!(line.name.as_deref(), Some("Support FR"));
        assert_eq!(m.external_number.as_deref(), Some("+33 6 12 34 56 78"));
        assert_eq!(m.imported_at, "2025-01-01T12:05:00Z");
        assert_eq!(
            storage_keys("acme", &call),
            (
                "acme/2025/01/01/812.mp3".to_string(),
                "acme/2025/01/01/812.json".to_string()
            )
        );
    }

    #[test]
    fn status_follows_the_design() {
        let mut call = Call::bare(CallId(1));
        call.direction = Some(Direction::Inbound);
        assert_eq!(call_status(&call), CallOutcomeStatus::Missed);
        call.direction = Some(Direction::Outbound);
        assert_eq!(call_status(&call), CallOutcomeStatus::Failed);
        call.voicemail = Some("https://x/v.mp3".into());
        assert_eq!(call_status(&call), CallOutcomeStatus::Voicemail);
        call.answered_at = Some(5);
        assert_eq!(call_status(&call), CallOutcomeStatus::Answered);
    }

    #[test]
    fn a_contact_without_a_name_is_its_company() {
        let mut call = Call::bare(CallId(1));
        call.contact = Some(AircallContact {
            company_name: Some("Acme".into()),
            ..AircallContact::default()
        });
        call.raw_digits = Some("+1 555".into());
        let m = build("c", &call, recording(), Trigger::Manual, 0);
        let contact = m.contact.unwrap();
        assert_eq!(contact.name.as_deref(), Some("Acme"));
        assert_eq!(contact.phone.as_deref(), Some("+1 555"));
    }
}
