//! Aircall's resources as this service reads them: lenient typed models.
//!
//! Aircall adds fields, leaves most of them null or missing, and spells a few differently in
//! webhooks (`call_uuid` for `sid`, `participants` for `conference_participants`). So: unknown
//! fields are ignored, every field but a call's `id` is optional, both spellings are accepted,
//! times may arrive as integers, floats or numeric strings, and ids are 64-bit.
//!
//! The same types serialize back (the simulator writes them, jobs carry call snapshots), always
//! in the REST spelling.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An Aircall call id (64-bit; webhook `data.id` is the same number).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A call, in the REST (`GET /v1/calls/:id`) or webhook (`data`) form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: CallId,
    /// REST spelling of the call's unique string id; see [`Call::uuid`].
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub sid: Option<String>,
    /// Webhook spelling of the same id. Both may come; neither is required.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_uuid: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_link: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub direction: Option<Direction>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<CallStatus>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub missed_call_reason: Option<String>,
    /// Unix seconds, UTC.
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<i64>,
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub answered_at: Option<i64>,
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub ended_at: Option<i64>,
    /// Seconds from start to end, ringing included.
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<i64>,
    /// The other party's number, international format, or `anonymous`.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub raw_digits: Option<String>,
    /// Signed MP3 URL; expires. Absent when the call has no recording (yet).
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub recording: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub recording_short_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub voicemail: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub voicemail_short_url: Option<String>,
    /// A page behind Aircall's login; never a download source.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub asset: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub archived: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub number: Option<Number>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<User>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub contact: Option<Contact>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub assigned_to: Option<User>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub transferred_by: Option<User>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub transferred_to: Option<User>,
    #[serde(
        default,
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub teams: Vec<Value>,
    #[serde(
        default,
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub comments: Vec<Value>,
    #[serde(
        default,
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<Value>,
    /// REST spelling; see [`Call::participants`].
    #[serde(
        default,
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub conference_participants: Vec<Value>,
    /// Webhook spelling of the same list.
    #[serde(
        default,
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub participants: Vec<Value>,
}

impl Call {
    /// The call's unique string id, whichever spelling carried it.
    pub fn uuid(&self) -> Option<&str> {
        self.sid.as_deref().or(self.call_uuid.as_deref())
    }

    /// Conference participants, whichever spelling carried them.
    pub fn participants(&self) -> &[Value] {
        if self.conference_participants.is_empty() {
            &self.participants
        } else {
            &self.conference_participants
        }
    }

    /// A call with only its id, every other field absent.
    pub fn bare(id: CallId) -> Self {
        Self {
            id,
            sid: None,
            call_uuid: None,
            direct_link: None,
            direction: None,
            status: None,
            missed_call_reason: None,
            started_at: None,
            answered_at: None,
            ended_at: None,
            duration: None,
            raw_digits: None,
            recording: None,
            recording_short_url: None,
            voicemail: None,
            voicemail_short_url: None,
            asset: None,
            archived: None,
            number: None,
            user: None,
            contact: None,
            assigned_to: None,
            transferred_by: None,
            transferred_to: None,
            teams: Vec::new(),
            comments: Vec::new(),
            tags: Vec::new(),
            conference_participants: Vec::new(),
            participants: Vec::new(),
        }
    }
}

/// Call direction. Values Aircall may add later read as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    #[serde(other)]
    Other,
}

/// Call lifecycle status; only `Done` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Initial,
    Answered,
    Done,
    #[serde(other)]
    Other,
}

/// An Aircall user (agent).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(
        default,
        deserialize_with = "lenient_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_link: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub email: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub available: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub availability_status: Option<String>,
    /// Webhooks only.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub substatus: Option<String>,
    /// ISO 8601 text.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_zone: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub language: Option<String>,
}

/// An Aircall line (the "internal number" of a call).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Number {
    #[serde(
        default,
        deserialize_with = "lenient_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_link: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// Display format, e.g. `+33 1 76 11 11 11`.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub digits: Option<String>,
    /// Webhooks only.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub e164_digits: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub country: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_zone: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<String>,
}

/// An external contact of a call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Contact {
    #[serde(
        default,
        deserialize_with = "lenient_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub company_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub information: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_shared: Option<bool>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub phone_numbers: Vec<ContactDetail>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub emails: Vec<ContactDetail>,
}

/// One phone number or email of a contact.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactDetail {
    #[serde(
        default,
        deserialize_with = "lenient_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub label: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<String>,
}

/// Paging metadata of list responses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, deserialize_with = "lenient_count")]
    pub count: u64,
    #[serde(default, deserialize_with = "lenient_count")]
    pub total: u64,
    #[serde(default, deserialize_with = "lenient_count")]
    pub current_page: u64,
    #[serde(default, deserialize_with = "lenient_count")]
    pub per_page: u64,
    #[serde(default, deserialize_with = "lenient_string")]
    pub next_page_link: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub previous_page_link: Option<String>,
}

/// `GET /v1/calls` and `GET /v1/calls/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub calls: Vec<Call>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// `GET /v1/calls/:id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallEnvelope {
    pub call: Call,
}

/// `GET /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<User>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// An Aircall webhook registration. Its `token` is the secret Aircall puts in every event body.
#[derive(Debug, Clone, Deserialize)]
pub struct Webhook {
    pub webhook_id: String,
    #[serde(default)]
    pub direct_link: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub custom_name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub active: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<String>,
    #[serde(default)]
    pub token: Option<SecretString>,
}

/// `POST/GET/PUT /v1/webhooks/:id`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEnvelope {
    pub webhook: Webhook,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub webhooks: Vec<Webhook>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// What to register, or to change on a webhook. `events` is always sent: Aircall subscribes a
/// webhook created **or updated** without `events` to every event it has.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// The body of every webhook delivery. Its `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookEvent<T> {
    pub resource: String,
    pub event: String,
    #[serde(default)]
    pub timestamp: Option<i64>,
    pub token: String,
    pub data: T,
}

impl<T: std::fmt::Debug> std::fmt::Debug for WebhookEvent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEvent")
            .field("resource", &self.resource)
            .field("event", &self.event)
            .field("timestamp", &self.timestamp)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// Every event Aircall can send; a webhook registered without `events` receives all of them.
pub const ALL_EVENTS: &[&str] = &[
    "call.created",
    "call.ringing_on_agent",
    "call.agent_declined",
    "call.answered",
    "call.transferred",
    "call.external_transferred",
    "call.unsuccessful_transfer",
    "call.hungup",
    "call.ended",
    "call.hold",
    "call.unhold",
    "call.ivr_option_selected",
    "call.voicemail_left",
    "call.comm_assets_generated",
    "call.assigned",
    "call.archived",
    "call.tagged",
    "call.untagged",
    "call.commented",
    "user.created",
    "user.deleted",
    "user.connected",
    "user.disconnected",
    "user.opened",
    "user.closed",
    "number.created",
    "number.deleted",
    "number.opened",
    "number.closed",
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "message.sent",
    "message.received",
    "message.status_updated",
];

/// The events this service handles, and the only ones it subscribes to.
pub const HANDLED_EVENTS: &[&str] = &["call.ended", "call.comm_assets_generated"];

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Text as text; a number or a boolean as its text (a phone number sent as a number); anything
/// else (an object, a list) as absent rather than failing the whole call.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// A paging count: a number, a numeric string, or null (read as 0).
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A list the service only carries along (teams, tags, participants…): null, or any shape other
/// than a list, reads as empty (see [`lenient`]). The lists it reads — a page's calls — stay
/// strict: a page read as empty would skip its calls.
fn lenient_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// A value Aircall may send in an unexpected shape (a string for a flag, a number for an object,
/// an object for an enum) reads as absent rather than failing the whole call — and with it the
/// whole listing page, which would stop a connection's reconciliation at that page for good.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Unix seconds as an integer, a float, or a numeric string.
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("time out of range: {n}"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| Some(f as i64))
            .ok_or_else(|| D::Error::custom(format!("not a unix time: {s:?}"))),
        other => Err(D::Error::custom(format!("not a unix time: {other}"))),
    }
}

/// A nested resource id (user, number, contact) as an integer or a numeric string; anything else
/// reads as absent: those ids are informational, and an odd one must not cost us the call.
fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_spellings_read_as_rest_fields() {
        let call: Call = serde_json::from_value(serde_json::json!({
            "id": 9_000_000_000_u64, "call_uuid": "CA1", "participants": [{"id": 1}],
            "started_at": "1735732800", "duration": 12.0
        }))
        .unwrap();
        assert_eq!(call.id, CallId(9_000_000_000));
        assert_eq!(call.uuid(), Some("CA1"));
        assert_eq!(call.participants().len(), 1);
        assert_eq!(call.started_at, Some(1_735_732_800));
        assert_eq!(call.duration, Some(12));
    }

    #[test]
    fn both_spellings_at_once_and_odd_types_still_parse() {
        let call: Call = serde_json::from_value(serde_json::json!({
            "id": 1, "sid": "CA1", "call_uuid": "CA1", "participants": [], "conference_participants": [{}],
            "raw_digits": 33612345678_u64, "user": {"email": null, "name": ["odd"]}, "number": null,
            "recording": null, "direction": 3, "status": "future_status", "tags": null
        }))
        .unwrap();
        assert_eq!(call.uuid(), Some("CA1"));
        assert_eq!(call.raw_digits.as_deref(), Some("33612345678"));
        assert_eq!(call.user.as_ref().unwrap().name, None);
        assert_eq!(call.direction, None);
        assert_eq!(call.status, Some(CallStatus::Other));
        let list: CallList = serde_json::from_str(r#"{"calls":null,"meta":null}"#).unwrap();
        assert_eq!(list.meta.total, 0);
        let list: CallList =
            serde_json::from_str(r#"{"calls":[],"meta":{"total":null,"next_page_link":null}}"#)
                .unwrap();
        assert!(list.meta.next_page_link.is_none());
    }

    #[test]
    fn one_call_in_odd_shapes_does_not_make_its_page_unreadable() {
        // Flags, objects and lists in shapes Aircall does not document read as absent or empty,
        // so the other calls of the page — and the pass — go on.
        let page: CallList = serde_json::from_value(serde_json::json!({
            "calls": [
                {"id": 1, "status": "done", "archived": "false", "user": "x", "number": 5,
                 "contact": "c", "assigned_to": true, "transferred_by": "y", "transferred_to": 1,
                 "teams": {}, "comments": "none", "tags": 3, "participants": {"a": 1},
                 "conference_participants": "z", "started_at": 1_735_732_800},
                {"id": 2, "status": "done",
                 "user": {"email": "ana@acme.com", "available": "true", "id": "x"}}
            ],
            "meta": {"total": 2}
        }))
        .unwrap();
        let odd = &page.calls[0];
        assert_eq!(odd.status, Some(CallStatus::Done));
        assert_eq!(odd.started_at, Some(1_735_732_800));
        assert!(odd.archived.is_none() && odd.user.is_none() && odd.number.is_none());
        assert!(odd.contact.is_none() && odd.assigned_to.is_none());
        assert!(odd.teams.is_empty() && odd.tags.is_empty() && odd.participants().is_empty());
        let user = page.calls[1].user.as_ref().unwrap();
        assert_eq!(user.email.as_deref(), Some("ana@acme.com"));
        // The page's own list stays strict: a page read as empty would skip its calls.
        assert!(serde_json::from_str::<CallList>(r#"{"calls":{"id":1}}"#).is_err());
    }

    #[test]
    fn the_documented_example_body_parses() {
        let body = r#"{"resource":"call","event":"call.ended","timestamp":1735733055,"token":"df76g76dpziygs567f0",
 "data":{"id":812,"call_uuid":"CA1234567890abcdef1234567890abcdef",
  "direct_link":"https://api.aircall.io/v1/calls/812","direction":"inbound","status":"done",
  "missed_call_reason":null,"started_at":1735732800,"answered_at":1735732809,"ended_at":1735733025,
  "duration":225,"raw_digits":"+33 6 12 34 56 78",
  "recording":"https://signed-storage-host/calls/812/recording.mp3?X-Amz-Expires=600&a=b",
  "voicemail":null,"asset":"https://assets.aircall.io/calls/812/recording","archived":false,
  "number":{"id":1234,"direct_link":"https://api.aircall.io/v1/numbers/1234","name":"Support FR",
            "digits":"+33 1 76 11 11 11","country":"FR","time_zone":"Europe/Paris"},
  "user":{"id":456,"direct_link":"https://api.aircall.io/v1/users/456","name":"John Doe",
          "email":"john.doe@example.com","available":true,"availability_status":"available","substatus":"always_open"},
  "contact":null,"assigned_to":null,"teams":[],"transferred_by":null,"transferred_to":null,
  "comments":[],"tags":[],"participants":[]}}"#;
        let event: WebhookEvent<Call> = serde_json::from_str(body).unwrap();
        assert_eq!(event.data.id, CallId(812));
        assert_eq!(
            event.data.user.as_ref().and_then(|u| u.email.as_deref()),
            Some("john.doe@example.com")
        );
        assert_eq!(
            event.data.number.as_ref().and_then(|n| n.digits.as_deref()),
            Some("+33 1 76 11 11 11")
        );
        assert_eq!(event.data.duration, Some(225));
        assert!(
            !format!("{event:?}").contains("df76g76dpziygs567f0"),
            "the token stays out of Debug"
        );
    }

    #[test]
    fn a_call_needs_an_integer_id() {
        assert!(serde_json::from_str::<Call>(r#"{"id":"812"}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"direction":"inbound"}"#).is_err());
    }
}
