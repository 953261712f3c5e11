//! Retention of the per-call outcome records: records decided longer ago than the import window
//! plus `retention.days_beyond_window` are removed from the hash and every index, by
//! `OutcomeStore::compact` and by the reconciler after each pass, so a connection's Redis keys
//! follow its recent activity and not its history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aircall_ingest::aircall::{CallId, Direction};
use aircall_ingest::connections::{
    Compacted, ConnectionId, Outcome, OutcomeRecord, OutcomeStore, StoredCall,
};
use aircall_ingest::import::rules::PayingUsers;
use aircall_ingest::queue::Trigger;
use aircall_ingest::reconcile::{Clock, Pass, Reconciler, RunReport};
use aircall_ingest::sim::CallSpec;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually_async, redis, roomy_sim, unique_prefix};
use crate::worker::Harness;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A record as the worker or the reconciler writes it, decided at `decided_at_ms`.
fn record(call: u64, outcome: Outcome, reason: Option<&str>, decided_at_ms: i64) -> OutcomeRecord {
    OutcomeRecord {
        call_id: CallId(call),
        outcome,
        reason: reason.map(str::to_string),
        decided_at_ms,
        trigger: Trigger::Webhook,
        agent_email: Some(format!("agent{}@example.com", call % 7)),
        agent_name: Some(format!("Agent {}", call % 7)),
        direction: Some(Direction::Inbound),
        started_at: Some(decided_at_ms / 1000 - 900),
        duration: Some(240),
        error: (outcome == Outcome::Failed).then(|| "Aircall answered 503".to_string()),
        stored: (outcome == Outcome::Imported).then(|| StoredCall {
            recording_key: format!("acme/2024/01/01/{call}.mp3"),
            metadata_key: format!("acme/2024/01/01/{call}.json"),
            location: format!("s3://call-recordings/aircall/acme/2024/01/01/{call}.mp3"),
            bytes: 1_234_567,
            sha256: "ab".repeat(32),
        }),
        announced: outcome == Outcome::Imported,
        recheck_at_ms: (outcome == Outcome::Pending).then_some(decided_at_ms + 3_600_000),
        pending_checks: u32::from(outcome == Outcome::Pending),
    }
}

/// Every index a call could be in: `all`, `pending`, each outcome's and each reason's.
fn index_names(reasons: &[&str]) -> Vec<String> {
    let mut names = vec!["all".to_string(), "pending".to_string()];
    names.extend(
        Outcome::ALL
            .iter()
            .map(|o| format!("outcome:{}", o.as_str())),
    );
    names.extend(reasons.iter().map(|r| format!("reason:{r}")));
    names
}

/// The indexes (of `names`) that hold `call`.
async fn indexes_holding(
    redis: &mut ConnectionManager,
    base: &str,
    names: &[String],
    call: u64,
) -> Vec<String> {
    let mut found = Vec::new();
    for name in names {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{base}:{name}"))
            .arg(call)
            .query_async(redis)
            .await
            .unwrap();
        if score.is_some() {
            found.push(name.clone());
        }
    }
    found
}

async fn reasons_set(redis: &mut ConnectionManager, base: &str) -> BTreeSet<String> {
    redis::cmd("SMEMBERS")
        .arg(format!("{base}:reasons"))
        .query_async(redis)
        .await
        .unwrap()
}

async fn delete_keys(redis: &mut ConnectionManager, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(redis)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_only_records_decided_before_the_cutoff_from_the_hash_and_every_index() {
    let prefix = unique_prefix("compact");
    let mut redis = redis().await;
    let store = OutcomeStore::new(redis.clone(), &prefix);
    let id = ConnectionId::parse("acme").unwrap();
    let base = format!("{prefix}:calls:{{acme}}");
    let cutoff = now_ms() - 44 * DAY_MS;

    // Older than the cutoff: every outcome, reasons shared with newer calls and reasons only
    // old calls have (`outside_window`, `invalid_credentials`, `no_user`).
    let old: Vec<OutcomeRecord> = vec![
        record(1, Outcome::Imported, None, cutoff - 90 * DAY_MS),
        record(2, Outcome::Imported, None, cutoff - 1),
        record(3, Outcome::Imported, None, cutoff - 5 * DAY_MS),
        record(
            4,
            Outcome::Skipped,
            Some("user_not_matched"),
            cutoff - 3 * DAY_MS,
        ),
        record(
            5,
            Outcome::Skipped,
            Some("user_not_matched"),
            cutoff - 2 * DAY_MS,
        ),
        record(
            6,
            Outcome::Skipped,
            Some("outside_window"),
            cutoff - 4 * DAY_MS,
        ),
        record(7, Outcome::Skipped, Some("outside_window"), cutoff - DAY_MS),
        record(
            8,
            Outcome::Pending,
            Some("recording_not_ready"),
            cutoff - DAY_MS,
        ),
        record(9, Outcome::Pending, Some("recording_not_ready"), cutoff - 2),
        record(
            10,
            Outcome::Failed,
            Some("invalid_credentials"),
            cutoff - 6 * DAY_MS,
        ),
    ];
    // At the cutoff or newer: kept, whatever they are.
    let mut kept: Vec<OutcomeRecord> = vec![
        record(20, Outcome::Imported, None, cutoff),
        record(21, Outcome::Imported, None, cutoff + DAY_MS),
        record(
            22,
            Outcome::Skipped,
            Some("user_not_matched"),
            cutoff + 2 * DAY_MS,
        ),
        record(
            23,
            Outcome::Pending,
            Some("recording_not_ready"),
            now_ms() - 60_000,
        ),
        record(
            24,
            Outcome::Failed,
            Some("aircall_unavailable"),
            now_ms() - 1_000,
        ),
    ];
    // Imported long ago, its `call.imported` event still owed (the job that would announce it
    // is a dead letter): kept, or a replay would skip it `outside_window` and never announce it.
    let owed = OutcomeRecord {
        announced: false,
        ..record(11, Outcome::Imported, None, cutoff - 7 * DAY_MS)
    };
    kept.push(owed.clone());
    // A call skipped `no_user` long ago and imported lately: its old reason's index is empty,
    // but the code stayed in the reasons set until a compaction sweeps it.
    let moved_before = record(30, Outcome::Skipped, Some("no_user"), cutoff - 10 * DAY_MS);
    let moved_after = record(30, Outcome::Imported, None, cutoff + 3 * DAY_MS);
    for r in old.iter().chain(&kept).chain([&moved_before, &moved_after]) {
        store.record(&id, r).await.unwrap();
    }
    let all_reasons = [
        "user_not_matched",
        "outside_window",
        "recording_not_ready",
        "invalid_credentials",
        "aircall_unavailable",
        "no_user",
    ];
    assert_eq!(
        reasons_set(&mut redis, &base).await,
        all_reasons.iter().map(|r| r.to_string()).collect()
    );

    // In batches of 4, each passing over the records earlier ones kept: the first keeps the
    // owed one (the second oldest), then 4 and 3 go (fewer than a batch: nothing older is
    // left). Later compactions keep it again.
    let mut batches = Vec::new();
    let mut skip = 0;
    loop {
        let done = store.compact(&id, cutoff, 4, skip).await.unwrap();
        batches.push((done.removed, done.kept));
        skip += done.kept;
        if done.removed + done.kept < 4 {
            break;
        }
    }
    assert_eq!(batches, [(3, 1), (4, 0), (3, 0)]);
    assert_eq!(
        store.compact(&id, cutoff, 4, 0).await.unwrap(),
        Compacted {
            removed: 0,
            kept: 1
        }
    );

    // The old records are gone from the hash and every index.
    let names = index_names(&all_reasons);
    for r in &old {
        let call = r.call_id;
        assert_eq!(store.get(&id, call).await.unwrap(), None, "call {call:?}");
        let left = indexes_holding(&mut redis, &base, &names, call.0).await;
        assert!(left.is_empty(), "call {call:?} still in {left:?}");
    }
    // The others are as they were, in their indexes only.
    for r in kept.iter().chain([&moved_after]) {
        let call = r.call_id;
        assert_eq!(store.get(&id, call).await.unwrap().as_ref(), Some(r));
        let mut wanted = vec!["all".to_string(), format!("outcome:{}", r.outcome.as_str())];
        if let Some(reason) = &r.reason {
            wanted.push(format!("reason:{reason}"));
        }
        if r.outcome == Outcome::Pending {
            wanted.push("pending".into());
        }
        let mut found = indexes_holding(&mut redis, &base, &names, call.0).await;
        found.sort();
        wanted.sort();
        assert_eq!(found, wanted, "call {call:?}");
    }
    let hash_len: u64 = redis::cmd("HLEN")
        .arg(&base)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(hash_len, 7);

    // The counts agree, and the reasons set lost exactly the codes no call has any more.
    let counts = store.counts(&id).await.unwrap();
    let expected: BTreeMap<String, u64> = [
        ("outcome:imported", 4),
        ("outcome:skipped", 1),
        ("outcome:pending", 1),
        ("outcome:failed", 1),
        ("reason:user_not_matched", 1),
        ("reason:recording_not_ready", 1),
        ("reason:aircall_unavailable", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(
        reasons_set(&mut redis, &base).await,
        [
            "user_not_matched",
            "recording_not_ready",
            "aircall_unavailable"
        ]
        .iter()
        .map(|r| r.to_string())
        .collect()
    );
    // The pending index holds the one pending call left.
    let due = store.due_pending(&id, i64::MAX, 100).await.unwrap();
    assert_eq!(due, [CallId(23)]);

    delete_keys(&mut redis, &prefix).await;
}

/// The bytes Redis uses for every key matching `pattern` (found with SCAN, each measured with
/// `MEMORY USAGE … SAMPLES 0`, exact), and the keys.
async fn memory_of(redis: &mut ConnectionManager, pattern: &str) -> (u64, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(redis)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut bytes = 0;
    for key in &keys {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(redis)
            .await
            .unwrap();
        bytes += used.unwrap_or(0);
    }
    (bytes, keys)
}

async fn pass(reconciler: &Reconciler, h: &Harness) -> RunReport {
    match reconciler
        .run_connection(&h.id(), &CancellationToken::new())
        .await
        .unwrap()
    {
        Pass::Ran(report) => {
            assert!(report.error.is_none(), "{report:?}");
            *report
        }
        Pass::Skipped(why) => panic!("the pass was skipped: {why}"),
    }
}

/// The value of an unlabelled counter in the process's Prometheus text.
fn counter(name: &str) -> f64 {
    let text = aircall_ingest::metrics::install().render();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_records_older_than_the_retention_disappear_and_memory_returns_to_its_baseline() {
    const HISTORY: u64 = 5_000;
    let mut h = Harness::start("retention", roomy_sim(), |s| {
        // 2,000 per pass: the history goes over three passes.
        s.retention.max_per_pass = 2_000;
    })
    .await;
    let id = h.id();
    let outcomes = h.app.ctx.outcomes.clone();
    let mut redis = redis().await;
    let prefix = h.app.ctx.settings.redis_key_prefix.clone();
    let pattern = format!("{prefix}:calls:{{acme}}*");
    // The reconciler reads the simulator's clock, which the test moves forward.
    let mut reconciler = h.app.ctx.reconciler();
    let sim = h.sim.state.clone();
    reconciler.clock = Clock::from_fn(move || sim.clock.now_ms());

    // Recent activity, through the real flow: a first import of three calls of paying agents
    // and one of an agent who does not pay.
    let now_s = h.sim.state.clock.now_s();
    let recent: Vec<u64> = (0..3)
        .map(|i| {
            h.add_call(&CallSpec {
                started_at: Some(now_s - 3_600 - i * 600),
                notify: false,
                ..h.call(2_000)
            })
        })
        .collect();
    let unpaid = h.add_call(&CallSpec {
        started_at: Some(now_s - 1_800),
        agent_email: Some(h.unpaid_agent()),
        notify: false,
        ..h.call(2_000)
    });
    h.start_worker();
    let first = pass(&reconciler, &h).await;
    assert_eq!(first.queued, 3, "{first:?}");
    assert_eq!(first.outcomes_expired, 0);
    let imported = eventually_async(Duration::from_secs(30), || async {
        let counts = outcomes.counts(&id).await.unwrap();
        counts.get("outcome:imported") == Some(&3)
    })
    .await;
    assert!(imported, "{:?}", outcomes.counts(&id).await.unwrap());
    h.stop_worker().await;

    let mut calls: Vec<CallId> = recent.iter().copied().map(CallId).collect();
    calls.push(CallId(unpaid));
    let recent_records = outcomes.get_many(&id, &calls).await.unwrap();
    assert!(recent_records.iter().all(Option::is_some));
    let baseline_counts = outcomes.counts(&id).await.unwrap();
    let base = format!("{prefix}:calls:{{acme}}");
    let baseline_reasons = reasons_set(&mut redis, &base).await;
    let (baseline, baseline_keys) = memory_of(&mut redis, &pattern).await;

    // History: 5,000 decisions made 35 to 43 days ago (inside the retention of 14 + 30 days,
    // for now), of every outcome and several reasons.
    let now = h.sim.state.clock.now_ms();
    let old_ids: Vec<u64> = (0..HISTORY).map(|i| 7_000_000_000 + i).collect();
    for (i, call) in old_ids.iter().enumerate() {
        let decided = now - 35 * DAY_MS - (i as i64) * (8 * DAY_MS / HISTORY as i64);
        let (outcome, reason) = match i % 8 {
            0..=2 => (Outcome::Imported, None),
            3 => (Outcome::Skipped, Some("user_not_matched")),
            4 => (Outcome::Skipped, Some("no_recording")),
            5 => (Outcome::Skipped, Some("first_import_cap")),
            6 => (Outcome::Failed, Some("download_failed")),
            _ => (Outcome::Pending, Some("recording_not_ready")),
        };
        let mut r = record(*call, outcome, reason, decided);
        if outcome == Outcome::Pending {
            // Not due: the passes below must not queue them.
            r.recheck_at_ms = Some(now + 365 * DAY_MS);
        }
        outcomes.record(&id, &r).await.unwrap();
    }
    let (loaded, _) = memory_of(&mut redis, &pattern).await;
    eprintln!(
        "memory of the connection's outcome keys: baseline {baseline} B, with the history {loaded} B"
    );
    assert!(
        loaded > baseline + 1_000_000,
        "5,000 records take room: {baseline} → {loaded}"
    );

    // Inside the retention, a pass removes nothing.
    let report = pass(&reconciler, &h).await;
    assert_eq!(report.outcomes_expired, 0, "{report:?}");
    assert_eq!(
        outcomes.counts(&id).await.unwrap()["outcome:imported"],
        3 + HISTORY * 3 / 8
    );

    // Ten days later the whole history is past the retention: the passes remove it, at most
    // 2,000 each.
    let expired_before = counter("aircall_ingest_outcomes_expired_total");
    h.sim.state.advance_clock(Duration::from_secs(10 * 86_400));
    let mut expired = Vec::new();
    loop {
        let report = pass(&reconciler, &h).await;
        assert_eq!(report.queued, 0, "{report:?}");
        expired.push(report.outcomes_expired);
        if report.outcomes_expired == 0 || expired.len() == 10 {
            break;
        }
    }
    assert_eq!(expired, [2_000, 2_000, 1_000, 0]);
    assert!(counter("aircall_ingest_outcomes_expired_total") >= expired_before + 5_000.0);

    // The history is gone, from the hash and every index…
    for chunk in old_ids.chunks(500) {
        let ids: Vec<CallId> = chunk.iter().copied().map(CallId).collect();
        let found = outcomes.get_many(&id, &ids).await.unwrap();
        assert!(found.iter().all(Option::is_none));
    }
    let names = index_names(&[
        "user_not_matched",
        "no_recording",
        "first_import_cap",
        "download_failed",
        "recording_not_ready",
    ]);
    for call in old_ids.iter().step_by(97) {
        let left = indexes_holding(&mut redis, &base, &names, *call).await;
        assert!(left.is_empty(), "call {call} still in {left:?}");
    }
    // …the recent calls are untouched, the counts and reason codes are those of before…
    assert_eq!(
        outcomes.get_many(&id, &calls).await.unwrap(),
        recent_records
    );
    assert_eq!(outcomes.counts(&id).await.unwrap(), baseline_counts);
    assert_eq!(reasons_set(&mut redis, &base).await, baseline_reasons);
    // …and so is the memory: the same keys, of their baseline size within allocator rounding
    // (the keys that grew past Redis's compact encoding were repacked when they shrank).
    let (after, after_keys) = memory_of(&mut redis, &pattern).await;
    eprintln!("memory of the connection's outcome keys after the passes: {after} B");
    assert_eq!(after_keys, baseline_keys);
    assert!(
        after <= baseline + 512,
        "back to the baseline: {baseline} → {loaded} → {after}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_no_pass_runs_for_still_loses_its_records_past_the_retention() {
    let h = Harness::start("retention-idle", roomy_sim(), |_| {}).await;
    let id = h.id();
    let ctx = &h.app.ctx;
    let reconciler = ctx.reconciler();
    let now = now_ms();

    // Waiting for its paying users, while its webhooks still bring decisions.
    ctx.connections
        .set_paying_users(&id, &PayingUsers::default(), 1)
        .await
        .unwrap();
    for (call, age) in [(1, 50 * DAY_MS), (2, DAY_MS)] {
        let r = record(call, Outcome::Skipped, Some("user_not_matched"), now - age);
        ctx.outcomes.record(&id, &r).await.unwrap();
    }
    let pass = reconciler
        .run_connection(&id, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        matches!(pass, Pass::Skipped("waiting_for_users")),
        "{pass:?}"
    );
    assert!(h.outcome(1).await.is_none());
    assert!(h.outcome(2).await.is_some());

    // Its credentials refused: likewise.
    ctx.connections
        .set_paying_users(&id, &PayingUsers::new([h.paying_agent()]), 2)
        .await
        .unwrap();
    let sealed = ctx
        .connections
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .api_token_sealed;
    assert!(
        ctx.connections
            .mark_invalid_credentials(&id, &sealed)
            .await
            .unwrap()
    );
    let r = record(
        3,
        Outcome::Failed,
        Some("invalid_credentials"),
        now - 45 * DAY_MS,
    );
    ctx.outcomes.record(&id, &r).await.unwrap();
    let pass = reconciler
        .run_connection(&id, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        matches!(pass, Pass::Skipped("invalid_credentials")),
        "{pass:?}"
    );
    assert!(h.outcome(3).await.is_none());
    assert!(h.outcome(2).await.is_some());
    h.stop().await;
}

/// An admin API request with the development token.
async fn admin(h: &Harness, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) {
    let mut request = reqwest::Client::new()
        .request(method.clone(), format!("{}/api{path}", h.app.url))
        .bearer_auth(aircall_ingest::config::DEVELOPMENT_ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{method} {path}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

async fn retired(redis: &mut ConnectionManager, prefix: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(format!("{prefix}:outcomes:retired"))
        .arg(0)
        .arg(-1)
        .query_async(redis)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imports_a_disconnected_connection_left_go_once_past_the_retention() {
    let h = Harness::start("retention-gone", roomy_sim(), |_| {}).await;
    let id = h.id();
    let ctx = &h.app.ctx;
    let prefix = ctx.settings.redis_key_prefix.clone();
    let pattern = format!("{prefix}:calls:{{acme}}*");
    let mut redis = redis().await;
    let now = now_ms();
    // Imports of the last weeks, the newest an hour old, and a skip.
    for call in 1..=300u64 {
        let r = record(call, Outcome::Imported, None, now - call as i64 * 3_600_000);
        ctx.outcomes.record(&id, &r).await.unwrap();
    }
    let skip = record(1_000, Outcome::Skipped, Some("no_user"), now - DAY_MS);
    ctx.outcomes.record(&id, &skip).await.unwrap();

    // A disconnect erases the skip; the imports stay, noted as a disconnected connection's.
    admin(&h, reqwest::Method::DELETE, "/connections/acme", None).await;
    assert!(h.outcome(1_000).await.is_none());
    assert!(h.outcome(1).await.is_some());
    assert_eq!(retired(&mut redis, &prefix).await, ["acme"]);
    // Connected again, the connection's own passes take care of them…
    let users = [h.paying_agent()];
    let body = serde_json::json!({
        "id": "acme",
        "api_id": h.company.api_id,
        "api_token": h.company.api_token,
        "users": users,
    });
    admin(&h, reqwest::Method::POST, "/connections", Some(body)).await;
    assert!(retired(&mut redis, &prefix).await.is_empty());
    // …and disconnected once more, the reconciler's rounds do.
    admin(&h, reqwest::Method::DELETE, "/connections/acme", None).await;
    assert_eq!(retired(&mut redis, &prefix).await, ["acme"]);

    // Within the retention a round leaves them.
    let mut reconciler = ctx.reconciler();
    let round = reconciler.run_due(true, &CancellationToken::new()).await;
    assert_eq!(round.failed, 0, "{round:?}");
    assert_eq!(
        ctx.outcomes.counts(&id).await.unwrap()["outcome:imported"],
        300
    );
    assert_eq!(retired(&mut redis, &prefix).await, ["acme"]);

    // 45 days later the newest is past the retention (44 days): a round removes them all,
    // and forgets the connection.
    reconciler.clock = Clock::from_fn(|| now_ms() + 45 * DAY_MS);
    reconciler.run_due(true, &CancellationToken::new()).await;
    assert!(h.outcome(1).await.is_none());
    assert!(h.outcome(300).await.is_none());
    let (bytes, keys) = memory_of(&mut redis, &pattern).await;
    assert!(keys.is_empty(), "{keys:?} ({bytes} B)");
    assert!(retired(&mut redis, &prefix).await.is_empty());
    h.stop().await;
}
