//! Reading an Aircall webhook body, with no I/O: JSON syntax, the token, the envelope, the call
//! id. Each step has its own error so the endpoint can answer precisely. Fuzzed (`fuzz/`).
//!
//! The body is read once, borrowing from the request bytes: the envelope's fields are kept as
//! raw JSON until each is needed, and the call is parsed straight from its raw `data`. No JSON
//! tree is built on this path, which runs for every webhook.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::aircall::{Call, CallId};

/// Why a body is not an acceptable webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body is not an Aircall webhook envelope: {0}")]
    NotAnEnvelope(&'static str),
    #[error("data.id must be the call's integer id: {0}")]
    InvalidCallId(&'static str),
}

/// A webhook body whose JSON is valid and is an object: its fields, still raw. Its `Debug`
/// leaves the token out.
#[derive(Deserialize)]
pub struct Body<'a> {
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl std::fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("event", &self.event)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The envelope of a webhook: `{"resource","event","timestamp","token","data"}`.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub resource: Cow<'a, str>,
    pub event: Cow<'a, str>,
    /// When Aircall emitted the event (Unix seconds).
    pub timestamp: Option<i64>,
    /// The call (or other resource), raw.
    pub data: &'a RawValue,
}

/// Reads the JSON of a body. Nesting deeper than 128 levels is refused by the parser; a key
/// given twice is refused as ambiguous.
pub fn parse(bytes: &[u8]) -> Result<Body<'_>, EnvelopeError> {
    // Serde would also read a list as the fields in order: only an object is an envelope.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            return Err(EnvelopeError::NotAnEnvelope(
                "the body is not a JSON object",
            ));
        }
        _ => return Err(EnvelopeError::InvalidJson("the body is not JSON".into())),
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            EnvelopeError::NotAnEnvelope("the body is not a JSON object with distinct keys")
        } else {
            // The message names the place (line, column), never the content.
            EnvelopeError::InvalidJson(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        }
    })
}

/// A raw JSON string field as text.
fn text<'a>(raw: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    serde_json::from_str::<Cow<'a, str>>(raw?.get()).ok()
}

impl<'a> Body<'a> {
    /// The `token` field, when it is a non-empty string.
    pub fn token(&self) -> Option<Cow<'a, str>> {
        text(self.token).filter(|t| !t.is_empty())
    }

    /// The envelope; call after the token checked out.
    pub fn envelope(self) -> Result<Envelope<'a>, EnvelopeError> {
        let event = text(self.event).ok_or(EnvelopeError::NotAnEnvelope(
            "`event` is missing or not a string",
        ))?;
        let resource = text(self.resource).ok_or(EnvelopeError::NotAnEnvelope(
            "`resource` is missing or not a string",
        ))?;
        let timestamp = self
            .timestamp
            .and_then(|raw| serde_json::from_str::<i64>(raw.get()).ok());
        let data = self.data.filter(|raw| raw.get().starts_with('{')).ok_or(
            EnvelopeError::NotAnEnvelope("`data` is missing or not an object"),
        )?;
        Ok(Envelope {
            resource,
            event,
            timestamp,
            data,
        })
    }
}

impl Envelope<'_> {
    /// `data.id` as a call id.
    pub fn call_id(&self) -> Result<CallId, EnvelopeError> {
        #[derive(Deserialize)]
        struct Id<'a> {
            #[serde(borrow, default)]
            id: Option<&'a RawValue>,
        }
        let id = serde_json::from_str::<Id<'_>>(self.data.get())
            .map_err(|_| {
                EnvelopeError::NotAnEnvelope("`data` is not an object with distinct keys")
            })?
            .id
            .filter(|raw| raw.get() != "null")
            .ok_or(EnvelopeError::InvalidCallId("it is missing"))?;
        match serde_json::from_str::<serde_json::Number>(id.get()) {
            Ok(n) => n
                .as_u64()
                .filter(|id| *id > 0)
                .map(CallId)
                .ok_or(EnvelopeError::InvalidCallId("it is not a positive integer")),
            Err(_) => Err(EnvelopeError::InvalidCallId("it is not a number")),
        }
    }

    /// The call as the webhook showed it, when it reads as a call. A snapshot that does not is
    /// left out rather than refused: the worker fetches the call anyway.
    pub fn snapshot(&self) -> Option<Call> {
        serde_json::from_str(self.data.get()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_says_what_is_wrong() {
        assert!(matches!(parse(b"{"), Err(EnvelopeError::InvalidJson(_))));
        assert!(matches!(
            parse(b"[1]"),
            Err(EnvelopeError::NotAnEnvelope(_))
        ));
        assert!(matches!(
            parse(&[0xff, 0xfe]),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(br#"{"token":"a","token":"b"}"#),
            Err(EnvelopeError::NotAnEnvelope(_))
        ));
        let body =
            parse(br#"{"token":"t","event":"call.ended","resource":"call","data":{"id":"7"}}"#)
                .unwrap();
        assert_eq!(body.token().as_deref(), Some("t"));
        let envelope = body.envelope().unwrap();
        assert!(matches!(
            envelope.call_id(),
            Err(EnvelopeError::InvalidCallId(_))
        ));
        let body =
            parse(br#"{"token":"","event":"call.ended","resource":"call","data":[]}"#).unwrap();
        assert_eq!(body.token(), None);
        assert!(matches!(
            body.envelope(),
            Err(EnvelopeError::NotAnEnvelope(_))
        ));
        let body = parse(br#"{"token":5,"event":7,"resource":"call","data":{}}"#).unwrap();
        assert_eq!(body.token(), None);
        assert!(matches!(
            body.envelope(),
            Err(EnvelopeError::NotAnEnvelope(_))
        ));
        for id in ["-5", "0", "1.5", "null", "\"812\"", "[]"] {
            let text =
                format!(r#"{{"event":"call.ended","resource":"call","data":{{"id":{id}}}}}"#);
            let envelope = parse(text.as_bytes()).unwrap().envelope().unwrap();
            assert!(
                matches!(envelope.call_id(), Err(EnvelopeError::InvalidCallId(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn a_call_ended_reads_with_its_snapshot() {
        let bytes = br#"{"token":"t\u0031","event":"call.ended","resource":"call","timestamp":5,"extra":[1,{"a":2}],"data":{"id":9000000000,"status":"done","user":{"email":"a@b.c"}}}"#;
        let body = parse(bytes).unwrap();
        assert_eq!(body.token().as_deref(), Some("t1"), "escapes are decoded");
        let envelope = body.envelope().unwrap();
        assert_eq!(envelope.call_id(), Ok(CallId(9_000_000_000)));
        assert_eq!(envelope.timestamp, Some(5));
        assert_eq!(
            envelope.snapshot().unwrap().user.unwrap().email.as_deref(),
            Some("a@b.c")
        );
    }

    #[test]
    fn absurd_nesting_never_overflows_the_stack() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_ok(), "skipped, not recursed into");
        // In a field the call reads, the parser's depth limit refuses it: no snapshot.
        let nested = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        for field in ["x", "tags"] {
            let text = format!(
                r#"{{"event":"call.ended","resource":"call","data":{{"id":1,"{field}":{nested}}}}}"#
            );
            let envelope = parse(text.as_bytes()).unwrap().envelope().unwrap();
            assert_eq!(envelope.call_id(), Ok(CallId(1)));
            assert_eq!(envelope.snapshot().is_some(), field == "x");
        }
    }
}
