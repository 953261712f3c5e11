//! The checks behind the fuzz targets (`fuzz/`): each takes any bytes, runs them through the
//! same code the service runs on that input, and panics only when a promise breaks. A refusal of
//! bad input is the expected outcome, not a failure.
//!
//! They live in the library so that the corpus regression test (`tests/it/fuzz_corpus.rs`) runs
//! the very same checks on every committed input without libFuzzer. Not part of the service:
//! nothing else calls them.
//!
//! - [`envelope`]: a webhook body (JSON, token check, envelope, call id, snapshot);
//! - [`call_answer`]: an Aircall answer to `GET /v1/calls/:id` or `GET /v1/calls`;
//! - [`admin_bodies`]: the body of every admin request that takes one.
//!
//! Every call read from a webhook or an answer then goes through the import rules, the metadata
//! document, its storage keys and the job message ([`check_call`]).

use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};

use crate::admin::{
    self, CheckedConnect, ConnectBody, CredentialsBody, ReplayBody, UsersBody, parse_json_body,
};
use crate::aircall::client::{LAST_LEGAL_PAGE, next_page_number, parse_answer};
use crate::aircall::models::{CallEnvelope, CallList, Meta};
use crate::aircall::{AircallError, Call, CallStatus};
use crate::config::{ImportSettings, Mode, Settings};
use crate::connections::ConnectionId;
use crate::crypto::Keys;
use crate::import::metadata::{self, CallMetadata, RecordingInfo};
use crate::import::rules::{
    AudioSource, Decision, PayingUsers, PendingReason, Rules, SkipReason, decide, looks_like_email,
    normalize_email,
};
use crate::import::storage::validate_key;
use crate::intake::envelope as webhook;
use crate::queue::dead_letters::Selection;
use crate::queue::{ImportJob, Message, Trigger};
use crate::web::ApiError;

/// "Now" for the rules (2025-11-29), inside the window of the corpus' calls.
const NOW_S: i64 = 1_764_400_000;
/// The webhook token the checks' fingerprint is made from.
const WEBHOOK_TOKEN: &str = "df76g76dpziygs567f0";
/// The connection a call is imported for; the storage keys are checked for a few more.
const CONNECTION: &str = "acme";
/// Valid connection ids at the edges of the rule (one character, only `-`, 64 characters).
const KEY_CONNECTIONS: [&str; 4] = [
    "0",
    "-",
    "a_b-c",
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz01",
];

/// A webhook body as an attacker might send it: reading it, the token check and the envelope
/// never panic; the token check accepts the webhook's token and nothing else; the call id and the
/// snapshot agree; a snapshot passes [`check_call`].
pub fn envelope(data: &[u8]) {
    let Ok(body) = webhook::parse(data) else {
        return;
    };
    let (keys, fingerprint) = webhook_keys();
    if let Some(token) = body.token() {
        assert_eq!(
            keys.token_matches(&token, fingerprint),
            token == WEBHOOK_TOKEN,
            "the token check accepts the webhook's token and only it"
        );
    }
    let Ok(envelope) = body.envelope() else {
        return;
    };
    let id = envelope.call_id();
    if let Some(call) = envelope.snapshot() {
        if let Ok(id) = id {
            assert_eq!(id, call.id, "the job's call id is the snapshot's");
        }
        check_call(&call);
    }
}

/// An answer of Aircall's to `GET /v1/calls/:id` (`{"call": {…}}`) or `GET /v1/calls` (`{"calls":
/// […], "meta": {…}}`), read as the client reads it: a refusal is `Malformed` and quotes nothing
/// of the body; paging never goes backwards; every call passes [`check_call`].
pub fn call_answer(data: &[u8]) {
    match parse_answer::<CallEnvelope>("get_call", data) {
        Ok(answer) => check_call(&answer.call),
        Err(e) => check_malformed(&e, "get_call"),
    }
    match parse_answer::<CallList>("list_calls", data) {
        Ok(page) => {
            check_meta(&page.meta);
            for call in &page.calls {
                check_call(call);
            }
        }
        Err(e) => check_malformed(&e, "list_calls"),
    }
}

/// The body of `POST /api/connections`, `PUT /api/connections/{id}/credentials`, `PUT
/// /api/connections/{id}/users` and `POST /api/dead-letters/replay` (every body is tried as
/// each), read and checked as the handlers do: a refusal is a 400 with a stable code and a
/// message; what passes meets the rules the handlers promise.
pub fn admin_bodies(data: &[u8]) {
    match parse_json_body::<ConnectBody>(data).and_then(|body| {
        let checked = admin::check_connect(&body)?;
        Ok((body, checked))
    }) {
        Ok((body, checked)) => {
            let CheckedConnect {
                id,
                api_id,
                api_token,
                users,
            } = checked;
            assert_eq!(id.as_str(), body.id, "the id is taken as given");
            assert!(ConnectionId::parse(id.as_str()).is_ok());
            check_credentials(&api_id, &api_token);
            check_users(body.users.as_deref().unwrap_or_default(), &users);
        }
        Err(e) => check_refusal(&e, &["invalid_request", "invalid_emails"]),
    }
    match parse_json_body::<CredentialsBody>(data)
        .and_then(|body| admin::credentials(&body.api_id, &body.api_token))
    {
        Ok((api_id, api_token)) => check_credentials(&api_id, &api_token),
        Err(e) => check_refusal(&e, &["invalid_request"]),
    }
    match parse_json_body::<UsersBody>(data).and_then(|body| {
        let users = admin::paying_users(&body.emails)?;
        Ok((body, users))
    }) {
        Ok((body, users)) => check_users(&body.emails, &users),
        Err(e) => check_refusal(&e, &["invalid_request", "invalid_emails"]),
    }
    match admin::replay_selection(parse_json_body::<ReplayBody>(data)) {
        Ok(Selection::One(job_id)) => assert!(!job_id.is_empty(), "a job id is never empty"),
        Ok(Selection::All { .. }) => {}
        Err(e) => check_refusal(&e, &["invalid_request"]),
    }
}

/// A call as Aircall showed it, through everything that handles it before a download: the job
/// message carries it unchanged; the rules decide only what they promise; the metadata
/// document reads back as written; storage keys are clean, under the connection, and dated.
pub fn check_call(call: &Call) {
    check_job_round_trip(call);
    let defaults = Rules::new(&ImportSettings::default());
    let voicemails = Rules {
        import_voicemails: true,
        ..defaults
    };
    // The corpus' agent, and whoever this call's agent is, so the later rules are reached too.
    let own_email = call.user.as_ref().and_then(|u| u.email.clone());
    let user_sets = [
        PayingUsers::new(["john.doe@example.com", "ana@acme.com"]),
        PayingUsers::new(own_email),
    ];
    let start = call.started_at.unwrap_or(NOW_S);
    for rules in [defaults, voicemails] {
        for users in &user_sets {
            for now in [NOW_S, start.saturating_add(3_600), i64::MIN, i64::MAX] {
                check_decision(call, now, users, &rules);
            }
        }
    }
    check_metadata(call);
}

fn webhook_keys() -> &'static (Keys, [u8; 32]) {
    static KEYS: OnceLock<(Keys, [u8; 32])> = OnceLock::new();
    KEYS.get_or_init(|| {
        let settings = Settings {
            mode: Mode::Development,
            ..Settings::default()
        };
        let Ok(secrets) = settings.secrets() else {
            panic!("development settings come with secrets");
        };
        let keys = Keys::derive(&secrets.secret_key);
        let fingerprint = keys.fingerprint(WEBHOOK_TOKEN);
        (keys, fingerprint)
    })
}

fn check_malformed(error: &AircallError, expected: &str) {
    let AircallError::Malformed { endpoint, reason } = error else {
        panic!("an unreadable answer is Malformed, not {error:?}");
    };
    assert_eq!(*endpoint, expected);
    // "Syntax error at line 1 column 7": a place, nothing quoted from the body.
    assert!(
        reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' '),
        "the reason quotes nothing: {reason:?}"
    );
}

fn check_meta(meta: &Meta) {
    if let Some(link) = &meta.next_page_link {
        for current in [1, LAST_LEGAL_PAGE] {
            assert!(
                next_page_number(link, current) > current,
                "paging never goes backwards: {link:?}"
            );
        }
    }
}

fn check_job_round_trip(call: &Call) {
    let mut job = ImportJob::new(CONNECTION, call.id, Trigger::Webhook, NOW_S * 1000);
    job.event = Some("call.ended".into());
    job.snapshot = Some(call.clone());
    let message = Message::ImportCall(job);
    match Message::decode(&message.encode()) {
        Ok(decoded) => assert_eq!(decoded, message, "a job reads back as it was written"),
        Err(e) => panic!("a job this build wrote must read back: {e}"),
    }
}

fn check_decision(call: &Call, now: i64, users: &PayingUsers, rules: &Rules) {
    let decision = decide(call, now, users, rules);
    let done = call.status == Some(CallStatus::Done);
    assert_eq!(
        decision == Decision::Pending(PendingReason::NotFinished),
        !done,
        "only an unfinished call waits to finish: {decision:?}"
    );
    let blank = |url: Option<&String>| url.is_none_or(|u| u.trim().is_empty());
    match &decision {
        Decision::Import { source, url } => {
            let start = call.started_at;
            assert!(start.is_some_and(|s| s >= now.saturating_sub(rules.window_s)));
            let email = call.user.as_ref().and_then(|u| u.email.as_deref());
            assert!(email.is_some_and(|e| users.contains(e)), "a paying agent");
            assert!(!url.trim().is_empty());
            match source {
                AudioSource::Recording => assert_eq!(Some(url), call.recording.as_ref()),
                AudioSource::Voicemail => {
                    assert!(rules.import_voicemails && call.answered_at.is_none());
                    assert!(blank(call.recording.as_ref()));
                    assert_eq!(Some(url), call.voicemail.as_ref());
                }
            }
        }
        Decision::Skip(SkipReason::NoUser) => assert!(call.user.is_none()),
        Decision::Skip(SkipReason::RecordingTooLarge | SkipReason::FirstImportCap) => {
            panic!("the rules alone never decide {decision:?}")
        }
        Decision::Pending(PendingReason::RecordingNotReady) => {
            assert!(call.answered_at.is_some() && blank(call.recording.as_ref()));
            assert!(rules.recording_deadline(call).is_some_and(|d| now < d));
        }
        Decision::Skip(_) | Decision::Pending(PendingReason::NotFinished) => {}
    }
}

fn check_metadata(call: &Call) {
    for connection in std::iter::once(CONNECTION).chain(KEY_CONNECTIONS) {
        assert!(ConnectionId::parse(connection).is_ok());
        let (recording_key, metadata_key) = metadata::storage_keys(connection, call);
        for key in [&recording_key, &metadata_key] {
            assert!(validate_key(key).is_ok(), "storage accepts {key:?}");
            assert!(key.starts_with(&format!("{connection}/")), "{key:?}");
            assert_eq!(
                key.split('/').count(),
                5,
                "{{connection}}/yyyy/mm/dd/id: {key:?}"
            );
        }
        let stem = recording_key.strip_suffix(".mp3");
        assert!(stem.is_some() && stem == metadata_key.strip_suffix(".json"));
        assert!(recording_key.ends_with(&format!("/{}.mp3", call.id)));
    }
    let (key, _) = metadata::storage_keys(CONNECTION, call);
    let recording = RecordingInfo {
        location: format!("file:///srv/data/{key}"),
        key,
        size_bytes: 3_600_000,
        sha256: "0".repeat(64),
        content_type: "audio/mpeg".into(),
        source: AudioSource::Recording,
    };
    let document = metadata::build(CONNECTION, call, recording, Trigger::Webhook, NOW_S);
    assert_eq!(document.call_id, call.id);
    assert_eq!(document.status, metadata::call_status(call));
    assert!(!document.imported_at.is_empty());
    for (text, unix) in [
        (&document.started_at, call.started_at),
        (&document.ended_at, call.ended_at),
    ] {
        if let Some(text) = text {
            let parsed =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(|t| t.unix_timestamp());
            assert_eq!(parsed.ok(), unix, "{text} is the call's time");
        }
    }
    let texts = [
        document.user.as_ref().and_then(|u| u.name.as_ref()),
        document.user.as_ref().and_then(|u| u.email.as_ref()),
        document.contact.as_ref().and_then(|c| c.name.as_ref()),
        document.contact.as_ref().and_then(|c| c.phone.as_ref()),
        document.external_number.as_ref(),
    ];
    for text in texts.into_iter().flatten() {
        assert!(!text.is_empty() && text.trim() == text, "trimmed: {text:?}");
    }
    let Ok(json) = serde_json::to_vec(&document) else {
        panic!("a metadata document serializes");
    };
    match serde_json::from_slice::<CallMetadata>(&json) {
        Ok(read) => assert_eq!(read, document, "the document reads back as written"),
        Err(e) => panic!("a metadata document this build wrote must read back: {e}"),
    }
}

fn check_refusal(error: &ApiError, codes: &[&str]) {
    assert_eq!(error.status.as_u16(), 400, "{error:?}");
    assert!(codes.contains(&error.code), "a stable code: {error:?}");
    assert!(!error.message.trim().is_empty(), "a message: {error:?}");
    if error.code == "invalid_emails" {
        let listed = error
            .details
            .as_ref()
            .and_then(|d| d["invalid_emails"].as_array())
            .is_some_and(|list| !list.is_empty());
        assert!(listed, "the invalid emails are listed: {error:?}");
    }
}

fn check_credentials(api_id: &str, api_token: &SecretString) {
    let api_token = api_token.expose_secret();
    let printable = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
    assert!(printable(api_id) && api_id.len() <= 256 && !api_id.contains(':'));
    assert!(printable(api_token) && api_token.len() <= 1024);
}

fn check_users(given: &[String], users: &PayingUsers) {
    assert!(users.len() <= given.len());
    for email in given {
        assert!(looks_like_email(email), "accepted: {email:?}");
        assert!(
            users.contains(email),
            "{email:?} matches itself once stored"
        );
    }
    for stored in users.sorted() {
        assert!(!stored.is_empty() && !stored.contains(char::is_whitespace));
        assert_eq!(normalize_email(&stored), stored, "stored emails are normal");
    }
}
