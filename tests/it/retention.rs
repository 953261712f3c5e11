//! Retention of the per-call outcome records: records decided longer ago than the import window
//! plus `retention.days_beyond_window` are removed from the hash and every index by
//! `OutcomeStore::compact`, so a connection's Redis keys follow its recent activity and not its
//! history.

use std::collections::{BTreeMap, BTreeSet};

use aircall_ingest::aircall::{CallId, Direction};
use aircall_ingest::connections::{ConnectionId, Outcome, OutcomeRecord, OutcomeStore, StoredCall};
use aircall_ingest::queue::Trigger;
use redis::aio::ConnectionManager;

use crate::helpers::{redis, unique_prefix};

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
    let kept: Vec<OutcomeRecord> = vec![
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

    // In batches of 4: 4, 4, 2 (fewer than a batch: nothing older is left), then none.
    let mut batches = Vec::new();
    loop {
        let removed = store.compact(&id, cutoff, 4).await.unwrap();
        batches.push(removed);
        if removed < 4 {
            break;
        }
    }
    assert_eq!(batches, [4, 4, 2]);
    assert_eq!(store.compact(&id, cutoff, 4).await.unwrap(), 0);

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
    assert_eq!(hash_len, 6);

    // The counts agree, and the reasons set lost exactly the codes no call has any more.
    let counts = store.counts(&id).await.unwrap();
    let expected: BTreeMap<String, u64> = [
        ("outcome:imported", 3),
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
