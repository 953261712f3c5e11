//! The import rules, as one pure function: a call, the time, the connection's paying users and
//! the settings in; a decision with its reason out. No I/O, no clock: the worker and the
//! reconciliation poller both call [`decide`], so a call is judged the same whichever path
//! brought it.
//!
//! The rules, in the order they are checked (the first that fails gives the reason):
//!
//! | rule | fails as |
//! |---|---|
//! | Aircall `status` is `done` | pending `not_finished` (not a skip: decided again later) |
//! | `started_at` ≥ now − window (14 days) | skip `outside_window` |
//! | the call has an agent | skip `no_user` |
//! | the agent's email, trimmed and case-folded, is a paying user's | skip `user_not_matched` |
//! | a recording (or, when enabled, the voicemail of an unanswered call) | answered: pending `recording_not_ready` until `recording_wait_hours` after the end, then skip `no_recording`; unanswered: skip `no_recording` |
//! | the recording is at most `max_recording_bytes` | skip `recording_too_large` ([`Rules::check_size`], applied while downloading) |

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::aircall::{Call, CallStatus};
use crate::config::ImportSettings;

/// The limits the rules apply, taken from [`ImportSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Oldest accepted start, as an age in seconds.
    pub window_s: i64,
    pub max_recording_bytes: u64,
    /// How long after its end an answered call's recording is waited for, in seconds.
    pub recording_wait_s: i64,
    pub import_voicemails: bool,
}

impl Rules {
    pub fn new(settings: &ImportSettings) -> Self {
        Self {
            window_s: i64::from(settings.window_days) * 86_400,
            max_recording_bytes: settings.max_recording_bytes,
            recording_wait_s: i64::from(settings.recording_wait_hours) * 3_600,
            import_voicemails: settings.import_voicemails,
        }
    }

    /// The size rule: a recording of `bytes` may be imported.
    pub fn check_size(&self, bytes: u64) -> Result<(), SkipReason> {
        if bytes <= self.max_recording_bytes {
            Ok(())
        } else {
            Err(SkipReason::RecordingTooLarge)
        }
    }

    /// The moment (Unix seconds) an answered call without a recording stops being pending.
    pub fn recording_deadline(&self, call: &Call) -> Option<i64> {
        ended_at(call).map(|end| end.saturating_add(self.recording_wait_s))
    }
}

/// A connection's paying users: emails trimmed and lower-cased once, so a lookup is one hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayingUsers(HashSet<String>);

impl PayingUsers {
    pub fn new<S: AsRef<str>>(emails: impl IntoIterator<Item = S>) -> Self {
        Self(
            emails
                .into_iter()
                .map(|e| normalize_email(e.as_ref()))
                .filter(|e| !e.is_empty())
                .collect(),
        )
    }

    pub fn contains(&self, email: &str) -> bool {
        self.0.contains(&normalize_email(email))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The normalised emails, sorted.
    pub fn sorted(&self) -> Vec<String> {
        let mut emails: Vec<String> = self.0.iter().cloned().collect();
        emails.sort();
        emails
    }
}

/// A plausible email address: one `@` with text on both sides and a dot in the domain, no
/// spaces. (Deliverability is not this service's business; matching Aircall's emails is.)
pub fn looks_like_email(text: &str) -> bool {
    let text = text.trim();
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !text.contains(char::is_whitespace)
                && text.len() <= 254
        }
        None => false,
    }
}

/// How emails are compared: surrounding spaces dropped, case folded.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Which audio file of a call is imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioSource {
    Recording,
    Voicemail,
}

/// What to do with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Download this audio file (its signed URL) and store the call.
    Import { source: AudioSource, url: String },
    /// Not imported, for good (unless the paying users change, for the agent reasons).
    Skip(SkipReason),
    /// Not yet: decided again later.
    Pending(PendingReason),
}

/// Why a call is not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    OutsideWindow,
    NoUser,
    UserNotMatched,
    NoRecording,
    RecordingTooLarge,
    FirstImportCap,
}

impl SkipReason {
    pub const ALL: [SkipReason; 6] = [
        Self::OutsideWindow,
        Self::NoUser,
        Self::UserNotMatched,
        Self::NoRecording,
        Self::RecordingTooLarge,
        Self::FirstImportCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsideWindow => "outside_window",
            Self::NoUser => "no_user",
            Self::UserNotMatched => "user_not_matched",
            Self::NoRecording => "no_recording",
            Self::RecordingTooLarge => "recording_too_large",
            Self::FirstImportCap => "first_import_cap",
        }
    }

    /// Skips about the agent are decided again when the paying users change; the others are
    /// final.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::NoUser | Self::UserNotMatched)
    }
}

/// Why a call is decided again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// Aircall's status is not `done` yet.
    NotFinished,
    /// Answered, but its recording is not there yet.
    RecordingNotReady,
}

impl PendingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFinished => "not_finished",
            Self::RecordingNotReady => "recording_not_ready",
        }
    }
}

fn ended_at(call: &Call) -> Option<i64> {
    call.ended_at.or_else(|| {
        let start = call.started_at?;
        Some(start.saturating_add(call.duration.unwrap_or(0).max(0)))
    })
}

fn present(url: Option<&String>) -> Option<&String> {
    url.filter(|u| !u.trim().is_empty())
}

/// Applies the rules to `call` at `now_s` (Unix seconds).
pub fn decide(call: &Call, now_s: i64, users: &PayingUsers, rules: &Rules) -> Decision {
    if call.status != Some(CallStatus::Done) {
        return Decision::Pending(PendingReason::NotFinished);
    }
    // A call without a start cannot be placed inside the window.
    let in_window = call
        .started_at
        .is_some_and(|start| start >= now_s.saturating_sub(rules.window_s));
    if !in_window {
        return Decision::Skip(SkipReason::OutsideWindow);
    }
    let Some(user) = &call.user else {
        return Decision::Skip(SkipReason::NoUser);
    };
    let paying = user
        .email
        .as_deref()
        .is_some_and(|email| users.contains(email));
    if !paying {
        return Decision::Skip(SkipReason::UserNotMatched);
    }
    if let Some(url) = present(call.recording.as_ref()) {
        return Decision::Import {
            source: AudioSource::Recording,
            url: url.clone(),
        };
    }
    let answered = call.answered_at.is_some();
    if !answered {
        return match present(call.voicemail.as_ref()) {
            Some(url) if rules.import_voicemails => Decision::Import {
                source: AudioSource::Voicemail,
                url: url.clone(),
            },
            _ => Decision::Skip(SkipReason::NoRecording),
        };
    }
    match rules.recording_deadline(call) {
        Some(deadline) if now_s < deadline => Decision::Pending(PendingReason::RecordingNotReady),
        _ => Decision::Skip(SkipReason::NoRecording),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aircall::CallId;
    use crate::aircall::models::User;
    use proptest::prelude::*;

    const NOW: i64 = 1_764_400_000;
    const DAY: i64 = 86_400;

    fn rules() -> Rules {
        Rules::new(&ImportSettings::default())
    }

    fn users() -> PayingUsers {
        PayingUsers::new(["ana@acme.com", "Bob@Acme.com "])
    }

    /// A finished, answered, recorded call by a paying agent, started an hour ago.
    fn eligible() -> Call {
        let mut call = Call::bare(CallId(5_000_000_001));
        call.status = Some(CallStatus::Done);
        call.started_at = Some(NOW - 3_600);
        call.answered_at = Some(NOW - 3_590);
        call.ended_at = Some(NOW - 3_400);
        call.duration = Some(200);
        call.recording = Some("https://storage.example.com/r.mp3?X-Amz-Expires=3600".into());
        call.user = Some(User {
            email: Some("ana@acme.com".into()),
            ..User::default()
        });
        call
    }

    fn import_recording(call: &Call) -> Decision {
        Decision::Import {
            source: AudioSource::Recording,
            url: call.recording.clone().unwrap(),
        }
    }

    #[test]
    fn an_eligible_call_is_imported() {
        let call = eligible();
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            import_recording(&call)
        );
    }

    #[test]
    fn exactly_fourteen_days_old_is_in_and_one_second_older_is_out() {
        let mut call = eligible();
        call.started_at = Some(NOW - 14 * DAY);
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            import_recording(&call)
        );
        call.started_at = Some(NOW - 14 * DAY - 1);
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::OutsideWindow)
        );
        call.started_at = None;
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::OutsideWindow)
        );
    }

    #[test]
    fn the_window_follows_its_setting() {
        let rules = Rules::new(&ImportSettings {
            window_days: 2,
            ..ImportSettings::default()
        });
        let mut call = eligible();
        call.started_at = Some(NOW - 2 * DAY);
        assert!(matches!(
            decide(&call, NOW, &users(), &rules),
            Decision::Import { .. }
        ));
        call.started_at = Some(NOW - 2 * DAY - 1);
        assert_eq!(
            decide(&call, NOW, &users(), &rules),
            Decision::Skip(SkipReason::OutsideWindow)
        );
    }

    #[test]
    fn exactly_the_size_limit_is_in_and_one_byte_more_is_out() {
        let rules = rules();
        assert_eq!(rules.max_recording_bytes, 209_715_200);
        assert_eq!(rules.check_size(209_715_200), Ok(()));
        assert_eq!(
            rules.check_size(209_715_201),
            Err(SkipReason::RecordingTooLarge)
        );
        assert_eq!(rules.check_size(0), Ok(()));
    }

    #[test]
    fn emails_match_whatever_their_case_and_surrounding_spaces() {
        for email in [
            "ana@acme.com",
            "ANA@ACME.COM",
            "  Ana@Acme.Com\t",
            "bob@acme.com",
        ] {
            let mut call = eligible();
            call.user.as_mut().unwrap().email = Some(email.into());
            assert!(
                matches!(
                    decide(&call, NOW, &users(), &rules()),
                    Decision::Import { .. }
                ),
                "{email:?}"
            );
        }
        let mut call = eligible();
        call.user.as_mut().unwrap().email = Some("ana@acme.co".into());
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::UserNotMatched)
        );
    }

    #[test]
    fn a_call_without_agent_or_agent_email_is_skipped() {
        let mut call = eligible();
        call.user = None;
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::NoUser)
        );
        let mut call = eligible();
        call.user.as_mut().unwrap().email = None;
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::UserNotMatched)
        );
        let mut call = eligible();
        call.user.as_mut().unwrap().email = Some("   ".into());
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::UserNotMatched)
        );
        // Nobody pays yet: nobody matches.
        assert_eq!(
            decide(&eligible(), NOW, &PayingUsers::default(), &rules()),
            Decision::Skip(SkipReason::UserNotMatched)
        );
    }

    #[test]
    fn a_call_not_done_is_pending_whatever_else_it_lacks() {
        for status in [None, Some(CallStatus::Initial), Some(CallStatus::Answered)] {
            let mut call = eligible();
            call.status = status;
            call.started_at = Some(NOW - 30 * DAY);
            assert_eq!(
                decide(&call, NOW, &users(), &rules()),
                Decision::Pending(PendingReason::NotFinished)
            );
        }
    }

    #[test]
    fn an_answered_call_without_recording_is_pending_until_the_wait_is_over() {
        let mut call = eligible();
        call.recording = None;
        let end = call.ended_at.unwrap();
        let deadline = end + 24 * 3_600;
        assert_eq!(rules().recording_deadline(&call), Some(deadline));
        assert_eq!(
            decide(&call, deadline - 1, &users(), &rules()),
            Decision::Pending(PendingReason::RecordingNotReady)
        );
        assert_eq!(
            decide(&call, deadline, &users(), &rules()),
            Decision::Skip(SkipReason::NoRecording)
        );
        call.recording = Some(String::new());
        assert_eq!(
            decide(&call, deadline - 1, &users(), &rules()),
            Decision::Pending(PendingReason::RecordingNotReady)
        );
    }

    #[test]
    fn voicemail_counts_only_when_enabled() {
        let mut call = eligible();
        call.answered_at = None;
        call.recording = None;
        call.voicemail = Some("https://storage.example.com/v.mp3".into());
        assert_eq!(
            decide(&call, NOW, &users(), &rules()),
            Decision::Skip(SkipReason::NoRecording)
        );
        let enabled = Rules {
            import_voicemails: true,
            ..rules()
        };
        assert_eq!(
            decide(&call, NOW, &users(), &enabled),
            Decision::Import {
                source: AudioSource::Voicemail,
                url: "https://storage.example.com/v.mp3".into()
            }
        );
        // An unanswered call has no recording to wait for.
        call.voicemail = None;
        assert_eq!(
            decide(&call, NOW, &users(), &enabled),
            Decision::Skip(SkipReason::NoRecording)
        );
        // An answered call's voicemail is not its recording.
        let mut answered = eligible();
        answered.recording = None;
        answered.voicemail = Some("https://storage.example.com/v.mp3".into());
        assert_eq!(
            decide(&answered, NOW, &users(), &enabled),
            Decision::Pending(PendingReason::RecordingNotReady)
        );
    }

    #[test]
    fn reason_codes_are_stable() {
        let codes: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            codes,
            [
                "outside_window",
                "no_user",
                "user_not_matched",
                "no_recording",
                "recording_too_large",
                "first_import_cap"
            ]
        );
        for reason in SkipReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
        assert!(!SkipReason::UserNotMatched.is_final() && !SkipReason::NoUser.is_final());
        assert!(SkipReason::NoRecording.is_final());
    }

    fn arbitrary_call() -> impl Strategy<Value = Call> {
        (
            prop::option::of(0u8..3),
            prop::option::of(-40 * DAY..DAY),
            any::<bool>(),
            prop::option::of(prop::option::of(prop::sample::select(vec![
                "ana@acme.com",
                " ANA@acme.com ",
                "eve@evil.com",
                "",
            ]))),
            any::<bool>(),
            any::<bool>(),
            0i64..20_000,
        )
            .prop_map(
                |(status, start, answered, user, recording, voicemail, duration)| {
                    let mut call = Call::bare(CallId(1));
                    call.status = status.map(|s| match s {
                        0 => CallStatus::Initial,
                        1 => CallStatus::Answered,
                        _ => CallStatus::Done,
                    });
                    call.started_at = start.map(|offset| NOW + offset);
                    call.answered_at = call.started_at.filter(|_| answered);
                    call.duration = Some(duration);
                    call.ended_at = call.started_at.map(|s| s + duration);
                    call.user = user.map(|email| User {
                        email: email.map(String::from),
                        ..User::default()
                    });
                    call.recording = recording.then(|| "https://s.example.com/r".into());
                    call.voicemail = voicemail.then(|| "https://s.example.com/v".into());
                    call
                },
            )
    }

    proptest! {
        /// Whatever the call, an import is only ever decided when every rule holds.
        #[test]
        fn an_import_is_decided_only_when_every_rule_holds(call in arbitrary_call(), voicemails: bool) {
            let rules = Rules { import_voicemails: voicemails, ..rules() };
            let decision = decide(&call, NOW, &users(), &rules);
            if let Decision::Import { source, url } = &decision {
                prop_assert_eq!(call.status, Some(CallStatus::Done));
                prop_assert!(call.started_at.unwrap() >= NOW - 14 * DAY);
                prop_assert!(users().contains(call.user.as_ref().unwrap().email.as_ref().unwrap()));
                match source {
                    AudioSource::Recording => prop_assert_eq!(Some(url), call.recording.as_ref()),
                    AudioSource::Voicemail => {
                        prop_assert!(voicemails && call.answered_at.is_none());
                        prop_assert_eq!(Some(url), call.voicemail.as_ref());
                    }
                }
            }
        }

        /// Pending only ever means "not done" or "answered, recording still awaited".
        #[test]
        fn pending_is_never_forever(call in arbitrary_call()) {
            match decide(&call, NOW, &users(), &rules()) {
                Decision::Pending(PendingReason::NotFinished) => {
                    prop_assert_ne!(call.status, Some(CallStatus::Done));
                }
                Decision::Pending(PendingReason::RecordingNotReady) => {
                    prop_assert!(call.answered_at.is_some() && call.recording.is_none());
                    let deadline = rules().recording_deadline(&call).unwrap();
                    prop_assert!(NOW < deadline);
                    // At the deadline, the same call is decided for good.
                    prop_assert_eq!(
                        decide(&call, deadline, &users(), &rules()),
                        Decision::Skip(SkipReason::NoRecording)
                    );
                }
                _ => {}
            }
        }

        /// The size rule is a plain threshold.
        #[test]
        fn the_size_rule_is_a_threshold(limit in 1u64..1 << 40, bytes in 0u64..1 << 41) {
            let rules = Rules { max_recording_bytes: limit, ..rules() };
            prop_assert_eq!(rules.check_size(bytes).is_ok(), bytes <= limit);
        }
    }
}
