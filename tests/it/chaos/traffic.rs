//! The traffic of the chaos run: calls that start, ring, end and are recorded, at a steady rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aircall_ingest::aircall::Direction;
use aircall_ingest::sim::{CallSpec, CompanyInfo};

use super::MAX_RECORDING_BYTES;

/// Makes calls at `per_minute` until `stop`, none of them ending after `ends_by_s` (simulator
/// time) unless made later than 5 s before it; how many it made.
pub(super) async fn stream_calls(
    state: Arc<aircall_ingest::sim::SimState>,
    company: CompanyInfo,
    per_minute: f64,
    ends_by_s: i64,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(8);
    let paying: Vec<String> = company
        .agents
        .iter()
        .filter(|a| a.paying)
        .map(|a| a.email.clone())
        .collect();
    let unpaid: Vec<String> = company
        .agents
        .iter()
        .filter(|a| !a.paying)
        .map(|a| a.email.clone())
        .collect();
    let every = Duration::from_secs_f64(60.0 / per_minute);
    let mut next = tokio::time::Instant::now();
    let mut made = 0;
    while !stop.load(Ordering::SeqCst) {
        let now_s = state.clock.now_s();
        let mut spec = call_spec(&mut rng, &paying, &unpaid, now_s);
        spec.duration = spec.duration.min((ends_by_s - now_s).max(5));
        state.add_call(company.id, &spec).unwrap();
        made += 1;
        next += every;
        tokio::time::sleep_until(next).await;
    }
    made
}

/// One call of the run's mix: a quarter by agents who do not pay, 15% unanswered, 10% of the
/// answered ones without a recording, 5% of recordings late (5 to 60 s), 10% served without
/// `Content-Length`. Every call starts when it is made and is listed in progress until it ends,
/// as at Aircall: 60% last 5 to 40 s, the others up to 4 minutes. Recordings: 70% from 50 kB
/// to 1 MB, 25% up to 8 MB, 4% up to 40 MB, 1% over the 200 MB limit.
pub(super) fn call_spec(
    rng: &mut fastrand::Rng,
    paying: &[String],
    unpaid: &[String],
    now_s: i64,
) -> CallSpec {
    let agent = if rng.f64() < 0.25 && !unpaid.is_empty() {
        &unpaid[rng.usize(..unpaid.len())]
    } else {
        &paying[rng.usize(..paying.len())]
    };
    let answered = rng.f64() >= 0.15;
    let recorded = answered && rng.f64() >= 0.10;
    let bytes = match rng.u32(0..100) {
        0 => MAX_RECORDING_BYTES + rng.u64(1..10_000_000),
        1..=4 => rng.u64(8_000_000..40_000_000),
        5..=29 => rng.u64(1_000_000..8_000_000),
        _ => rng.u64(50_000..1_000_000),
    };
    CallSpec {
        direction: if rng.bool() {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        started_at: Some(now_s),
        duration: if rng.f64() < 0.6 {
            rng.i64(5..40)
        } else {
            rng.i64(40..240)
        },
        answered,
        agent_email: Some(agent.clone()),
        recording_bytes: recorded.then_some(bytes),
        recording_delay_s: if rng.f64() < 0.05 { rng.i64(5..60) } else { 0 },
        voicemail_bytes: None,
        without_content_length: rng.f64() < 0.10,
        in_progress: true,
        notify: true,
        with_contact: rng.bool(),
    }
}
