//! Seeded scenario generation: agents, lines, and calls of every kind the import rules care
//! about, in the proportions of a [`CallMix`]. The same seed gives the same company.

use super::model::{Audio, CallMix, CallSpec, SimCall, SimContact, SimNumber, SimUser};
use crate::aircall::Direction;

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Grace", "Hugo", "Inès", "Jules", "Karim",
    "Léa", "Marc", "Nina", "Omar", "Paula", "Quentin", "Rosa", "Sami", "Théo", "Ursula", "Victor",
    "Wendy", "Yanis", "Zoé",
];
const LAST_NAMES: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "Roux", "Fournier", "Morel",
];
const CONTACT_COMPANIES: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark Industries",
    "Wayne Enterprises",
];
const MISSED_REASONS: &[&str] = &[
    "out_of_opening_hours",
    "short_abandoned",
    "abandoned_in_ivr",
    "abandoned_in_classic",
    "no_available_agent",
    "agents_did_not_answer",
];

/// Recordings over this are "oversized" (Aircall files the import must refuse).
const OVERSIZED_MIN_BYTES: u64 = 200 * 1024 * 1024 + 1;

/// Agents of a new company; the first `agents - unknown` are paying users of the platform.
pub(crate) fn agents(
    rng: &mut fastrand::Rng,
    count: usize,
    unknown_share: f64,
    domain: &str,
    next_id: &mut dyn FnMut() -> u64,
) -> Vec<SimUser> {
    let unknown = ((count as f64) * unknown_share).round() as usize;
    (0..count)
        .map(|i| {
            let first = FIRST_NAMES[rng.usize(..FIRST_NAMES.len())];
            let last = LAST_NAMES[rng.usize(..LAST_NAMES.len())];
            let local = format!("{}.{}{}", ascii_lower(first), ascii_lower(last), i + 1);
            SimUser {
                id: next_id(),
                name: format!("{first} {last}"),
                email: format!("{local}@{domain}"),
                paying: i < count.saturating_sub(unknown),
            }
        })
        .collect()
}

fn ascii_lower(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'é' | 'è' => 'e',
            'ï' | 'î' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// Two lines per company, as most small teams have.
pub(crate) fn numbers(next_id: &mut dyn FnMut() -> u64) -> Vec<SimNumber> {
    vec![
        SimNumber {
            id: next_id(),
            name: "Sales FR".into(),
            digits: "+33 1 76 11 11 11".into(),
            e164: "+33176111111".into(),
            country: "FR".into(),
            time_zone: "Europe/Paris".into(),
        },
        SimNumber {
            id: next_id(),
            name: "Support US".into(),
            digits: "+1 415-555-0100".into(),
            e164: "+14155550100".into(),
            country: "US".into(),
            time_zone: "America/Los_Angeles".into(),
        },
    ]
}

fn phone(rng: &mut fastrand::Rng) -> String {
    if rng.f64() < 0.03 {
        return "anonymous".into();
    }
    format!(
        "+33 6 {:02} {:02} {:02} {:02}",
        rng.u8(10..100),
        rng.u8(10..100),
        rng.u8(10..100),
        rng.u8(10..100)
    )
}

fn sid(rng: &mut fastrand::Rng) -> String {
    format!("CA{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

fn contact(rng: &mut fastrand::Rng, id: u64) -> SimContact {
    SimContact {
        id,
        first_name: FIRST_NAMES[rng.usize(..FIRST_NAMES.len())].into(),
        last_name: LAST_NAMES[rng.usize(..LAST_NAMES.len())].into(),
        company_name: CONTACT_COMPANIES[rng.usize(..CONTACT_COMPANIES.len())].into(),
    }
}

/// Inputs of one generated call.
pub(crate) struct Generate<'a> {
    pub id: u64,
    pub contact_id: u64,
    pub started_at: i64,
    pub mix: &'a CallMix,
    pub users: &'a [SimUser],
    pub numbers: usize,
    pub bytes_per_second: u64,
}

/// One call drawn from the mix. It is finished (`ended_at` set) — callers of live traffic unset
/// it until the call's end comes.
pub(crate) fn call(rng: &mut fastrand::Rng, g: &Generate<'_>) -> SimCall {
    let mix = g.mix;
    let direction = if rng.f64() < mix.outbound {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    let answered = rng.f64() >= mix.missed;
    let ring = rng.i64(3..25);
    let talk = if answered { rng.i64(20..900) } else { 0 };
    let duration = ring + talk;
    let user = if g.users.is_empty() {
        None
    } else if answered || direction == Direction::Outbound {
        Some(rng.usize(..g.users.len()))
    } else {
        None
    };
    let ended_at = g.started_at + duration;
    let mut recording = None;
    let mut voicemail = None;
    let mut missed_call_reason = None;
    if answered {
        if rng.f64() >= mix.no_recording {
            let bytes = if rng.f64() < mix.oversized {
                OVERSIZED_MIN_BYTES + rng.u64(0..50 * 1024 * 1024)
            } else {
                (talk as u64) * g.bytes_per_second
            };
            let delay = if rng.f64() < mix.late_recording {
                rng.i64(60..3 * 3600)
            } else {
                0
            };
            recording = Some(Audio {
                bytes,
                ready_at: ended_at + delay,
            });
        }
    } else if direction == Direction::Inbound {
        missed_call_reason = Some(MISSED_REASONS[rng.usize(..MISSED_REASONS.len())]);
        if rng.f64() < mix.voicemail {
            voicemail = Some(Audio {
                bytes: rng.u64(5..60) * g.bytes_per_second,
                ready_at: ended_at,
            });
        }
    }
    SimCall {
        id: g.id,
        sid: sid(rng),
        direction,
        started_at: g.started_at,
        answered_at: answered.then_some(g.started_at + ring),
        ended_at: Some(ended_at),
        duration,
        user,
        number: rng.usize(..g.numbers.max(1)),
        raw_digits: phone(rng),
        contact: (rng.f64() < mix.with_contact).then(|| contact(rng, g.contact_id)),
        missed_call_reason,
        recording,
        voicemail,
        without_content_length: rng.f64() < mix.without_content_length,
    }
}

/// A call exactly as a test described it. `user` is the agent's index, resolved by the caller.
pub(crate) fn explicit_call(
    rng: &mut fastrand::Rng,
    spec: &CallSpec,
    id: u64,
    contact_id: u64,
    now_s: i64,
    user: Option<usize>,
) -> SimCall {
    let duration = spec.duration.max(1);
    let started_at = spec.started_at.unwrap_or(now_s - duration);
    let ring = duration.min(5);
    let ended_at = (!spec.in_progress).then_some(started_at + duration);
    let end = started_at + duration;
    SimCall {
        id,
        sid: sid(rng),
        direction: spec.direction,
        started_at,
        answered_at: spec.answered.then_some(started_at + ring),
        ended_at,
        duration,
        user,
        number: 0,
        raw_digits: phone(rng),
        contact: spec.with_contact.then(|| contact(rng, contact_id)),
        missed_call_reason: (!spec.answered && spec.direction == Direction::Inbound)
            .then_some("agents_did_not_answer"),
        recording: spec.recording_bytes.map(|bytes| Audio {
            bytes,
            ready_at: end + spec.recording_delay_s.max(0),
        }),
        voicemail: spec.voicemail_bytes.map(|bytes| Audio {
            bytes,
            ready_at: end,
        }),
        without_content_length: spec.without_content_length,
    }
}
