//! Reconciliation end to end: the simulator's calls, the real RabbitMQ and Redis, the worker
//! importing what the poller queues. Passes are driven one at a time with
//! `Reconciler::run_connection`, as the loop and `reconcile --once` run them.

use std::collections::BTreeSet;
use std::time::Duration;

use aircall_ingest::connections::Outcome;
use aircall_ingest::import::rules::PayingUsers;
use aircall_ingest::reconcile::{Pass, RunKind, RunReport};
use aircall_ingest::sim::{CallSpec, CompanySpec, Faults};
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually_async, roomy_sim};
use crate::worker::Harness;

const DAY: i64 = 86_400;

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn pass(h: &Harness) -> RunReport {
    match h
        .app
        .ctx
        .reconciler()
        .run_connection(&h.id(), &CancellationToken::new())
        .await
        .unwrap()
    {
        Pass::Ran(report) => *report,
        Pass::Skipped(why) => panic!("the pass was skipped: {why}"),
    }
}

async fn count(h: &Harness, name: &str) -> u64 {
    h.app
        .ctx
        .outcomes
        .counts(&h.id())
        .await
        .unwrap()
        .get(name)
        .copied()
        .unwrap_or(0)
}

async fn wait_count(h: &Harness, name: &str, wanted: u64) {
    let reached = eventually_async(Duration::from_secs(60), || async {
        count(h, name).await >= wanted
    })
    .await;
    assert!(
        reached,
        "{name}: {} of {wanted}; {:?}",
        count(h, name).await,
        h.app.ctx.outcomes.counts(&h.id()).await.unwrap()
    );
}

/// A recorded call of a paying agent, started at `started_at`, without webhooks.
fn quiet_call(h: &Harness, started_at: i64) -> CallSpec {
    CallSpec {
        started_at: Some(started_at),
        notify: false,
        ..h.call(2_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_import_takes_the_200_most_recent_eligible_calls_of_the_window() {
    let mut h = Harness::start("rec-first", roomy_sim(), |_| {}).await;
    let now = now_s();
    // 500 eligible calls over the last 13 days, and 20 older than the window.
    let mut recent = Vec::new();
    for i in 0..500 {
        let started = now - 600 - i * 2_200;
        recent.push((started, h.add_call(&quiet_call(&h, started))));
    }
    let mut old = Vec::new();
    for i in 0..20 {
        old.push(h.add_call(&quiet_call(&h, now - 14 * DAY - 600 - i * 60)));
    }
    h.start_worker();

    let report = pass(&h).await;
    assert_eq!(report.kind, RunKind::FirstImport);
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.calls_seen, 500);
    assert_eq!(report.queued, 200);
    assert_eq!(report.skipped.get("first_import_cap"), Some(&300));

    wait_count(&h, "outcome:imported", 200).await;
    recent.sort_by_key(|(started, _)| std::cmp::Reverse(*started));
    let expected: BTreeSet<u64> = recent.iter().take(200).map(|(_, id)| *id).collect();
    let mut imported = BTreeSet::new();
    for (_, call) in &recent {
        let record = h.outcome(*call).await.unwrap();
        match record.outcome {
            Outcome::Imported => {
                imported.insert(*call);
            }
            Outcome::Skipped => assert_eq!(record.reason.as_deref(), Some("first_import_cap")),
            other => panic!("call {call}: {other:?}"),
        }
    }
    assert_eq!(imported, expected, "exactly the 200 most recent");
    assert_eq!(count(&h, "reason:first_import_cap").await, 300);
    for call in old {
        assert!(
            h.outcome(call).await.is_none(),
            "nothing older than 14 days"
        );
    }

    // The next pass lists only from the watermark (minus the overlap) and queues nothing.
    let next = pass(&h).await;
    assert_eq!(next.kind, RunKind::Incremental);
    assert_eq!(next.queued, 0, "{next:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_imports_every_call_whose_webhook_was_dropped_exactly_once() {
    let mut h = Harness::start("rec-dropped", roomy_sim(), |_| {}).await;
    h.start_worker();
    let first = pass(&h).await;
    assert_eq!(first.kind, RunKind::FirstImport);
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            drop_webhook_share: 0.3,
            ..Faults::default()
        },
    );
    let calls: Vec<u64> = (0..40).map(|_| h.add_call(&h.call(8_000))).collect();
    // Let the webhooks that were sent be imported.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_webhook = count(&h, "outcome:imported").await;
    let dropped = h.sim.state.webhooks(h.company.id).unwrap()[0].dropped;
    assert!(
        dropped > 0 && by_webhook < 40,
        "{dropped} dropped, {by_webhook} imported"
    );

    let report = pass(&h).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.queued >= 40 - by_webhook, "{report:?}");
    wait_count(&h, "outcome:imported", 40).await;
    for call in &calls {
        let record = h.outcome(*call).await.unwrap();
        assert_eq!(record.outcome, Outcome::Imported, "call {call}");
    }
    let mut events = h.events_within(Duration::from_secs(3)).await;
    events.sort_by_key(|e| e.metadata.call_id);
    let ids: Vec<u64> = events.iter().map(|e| e.metadata.call_id.0).collect();
    let mut expected = calls.clone();
    expected.sort_unstable();
    assert_eq!(ids, expected, "one event per call");
    assert_eq!(
        h.files().len(),
        80,
        "one recording and one metadata file per call"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_import_of_a_window_over_10000_calls_completes_without_a_400() {
    let spec = CompanySpec {
        agents: 6,
        history_calls: 10_600,
        history_days: 13,
        ..CompanySpec::default()
    };
    let h = Harness::start_with("rec-dense", roomy_sim(), spec, |_| {}).await;
    let report = pass(&h).await;
    assert!(report.error.is_none(), "{report:?}");
    let truth = h.sim.state.calls_truth(h.company.id, false).unwrap();
    let to = report.ranges[0].1;
    let in_window = truth
        .iter()
        .filter(|c| c.started_at > report.ranges[0].0 && c.started_at <= to)
        .count() as u64;
    assert!(in_window > 10_000, "{in_window}");
    assert_eq!(report.calls_seen, in_window);
    assert_eq!(report.queued, 200);
    let stats = h.sim.state.stats(h.company.id).unwrap();
    assert_eq!(stats.by_status.get(&400), None, "{:?}", stats.by_status);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_comes_two_hours_late_is_imported_by_a_later_pass() {
    let mut h = Harness::start("rec-late", roomy_sim(), |s| {
        s.import.pending_recheck_initial_ms = 300;
    })
    .await;
    h.start_worker();
    let call = h.add_call(&CallSpec {
        recording_delay_s: 2 * 3_600,
        notify: false,
        ..h.call(6_000)
    });
    let report = pass(&h).await;
    assert_eq!(report.pending_recorded, 1, "{report:?}");
    let pending = h.outcome(call).await.unwrap();
    assert_eq!(pending.outcome, Outcome::Pending);

    // Two hours pass at Aircall; the re-check is due.
    h.sim
        .state
        .advance_clock(Duration::from_secs(2 * 3_600 + 60));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = pass(&h).await;
    // Its listing shows the recording now (else its due re-check would fetch it): queued once.
    assert_eq!(report.queued, 1, "{report:?}");
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_at_once_on_one_connection_do_the_work_once() {
    let h = Harness::start("rec-twice", roomy_sim(), |_| {}).await;
    let now = now_s();
    for i in 0..120 {
        h.add_call(&quiet_call(&h, now - 600 - i * 600));
    }
    let (a, b) = (h.app.ctx.reconciler(), h.app.ctx.reconciler());
    let cancel = CancellationToken::new();
    let id = h.id();
    let (first, second) = tokio::join!(
        a.run_connection(&id, &cancel),
        b.run_connection(&id, &cancel)
    );
    let passes = [first.unwrap(), second.unwrap()];
    let ran: Vec<&RunReport> = passes
        .iter()
        .filter_map(|p| match p {
            Pass::Ran(r) => Some(r.as_ref()),
            Pass::Skipped(_) => None,
        })
        .collect();
    assert_eq!(ran.len(), 1, "{passes:?}");
    assert!(passes.iter().any(|p| matches!(p, Pass::Skipped("locked"))));
    assert_eq!(ran[0].queued, 120);
    let queued = h.app.take_jobs().await;
    assert_eq!(queued.len(), 120, "each call queued once");
    let stats = h.sim.state.stats(h.company.id).unwrap();
    assert_eq!(stats.by_endpoint.get("list_calls"), Some(&3), "{stats:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_who_starts_paying_gets_the_calls_of_the_window_at_the_next_pass() {
    let mut h = Harness::start("rec-users", roomy_sim(), |_| {}).await;
    h.start_worker();
    let now = now_s();
    let newcomer = "new.payer@company.example".to_string();
    let never = "never.pays@company.example".to_string();
    let by = |agent: &str, n: i64, offset: i64| -> Vec<u64> {
        (0..n)
            .map(|i| {
                h.add_call(&CallSpec {
                    agent_email: Some(agent.to_string()),
                    ..quiet_call(&h, now - offset - i * 3_600)
                })
            })
            .collect()
    };
    let paying = by(&h.paying_agent(), 5, 600);
    let newcomers = by(&newcomer, 10, 900);
    let others = by(&never, 5, 1_200);
    let report = pass(&h).await;
    assert_eq!(report.queued, 5);
    assert_eq!(report.skipped.get("user_not_matched"), Some(&15));
    wait_count(&h, "outcome:imported", 5).await;

    let mut users = vec![h.paying_agent(), format!(" {} ", newcomer.to_uppercase())];
    users.extend(
        h.company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.clone()),
    );
    let changed_at = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    h.app
        .ctx
        .connections
        .set_paying_users(&h.id(), &PayingUsers::new(users), changed_at)
        .await
        .unwrap();
    let report = pass(&h).await;
    // Those inside the pass's listing are queued by it, the older ones for the users change;
    // each once.
    assert_eq!(report.queued, 10, "{report:?}");
    assert!(report.users_requeued > 0, "{report:?}");
    wait_count(&h, "outcome:imported", 15).await;
    for call in paying.iter().chain(&newcomers) {
        assert_eq!(h.outcome(*call).await.unwrap().outcome, Outcome::Imported);
    }
    for call in &others {
        let record = h.outcome(*call).await.unwrap();
        assert_eq!(record.reason.as_deref(), Some("user_not_matched"));
    }
    // Taken into account once: the pass after adds nothing.
    let report = pass(&h).await;
    assert_eq!(report.users_requeued, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pass_leaves_the_watermark_and_the_next_covers_the_gap() {
    let mut h = Harness::start("rec-storm", roomy_sim(), |_| {}).await;
    h.start_worker();
    pass(&h).await;
    let state = h.app.ctx.reconciler().state;
    let watermark = state.get(&h.id()).await.unwrap().watermark;
    assert!(watermark.is_some());
    let now = now_s();
    let calls: Vec<u64> = (0..12)
        .map(|i| h.add_call(&quiet_call(&h, now - 300 - i * 20)))
        .collect();
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
    );
    let failed = pass(&h).await;
    assert!(failed.error.is_some(), "{failed:?}");
    assert_eq!(state.get(&h.id()).await.unwrap().watermark, watermark);
    let reports = state.reports(&h.id(), 5).await.unwrap();
    assert_eq!(
        reports[0].error, failed.error,
        "the failed pass is reported"
    );

    h.sim
        .state
        .set_faults(Some(h.company.id), Faults::default());
    let report = pass(&h).await;
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.queued, 12);
    wait_count(&h, "outcome:imported", 12).await;
    for call in calls {
        assert_eq!(h.outcome(call).await.unwrap().outcome, Outcome::Imported);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_aircall_deactivated_is_reactivated_by_the_next_pass() {
    let h = Harness::start("rec-webhook", roomy_sim(), |_| {}).await;
    let webhook = h.sim.state.webhooks(h.company.id).unwrap()[0].clone();
    assert!(webhook.active);
    assert!(
        h.sim
            .state
            .deactivate_webhook(h.company.id, &webhook.webhook_id)
    );
    let report = pass(&h).await;
    assert_eq!(report.webhook.as_deref(), Some("reactivated"));
    let after = h.sim.state.webhooks(h.company.id).unwrap()[0].clone();
    assert!(after.active);
    assert_eq!(after.events.len(), 2, "still exactly the handled events");
    let report = pass(&h).await;
    assert_eq!(report.webhook.as_deref(), Some("active"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pass_costs_two_aircall_requests() {
    let h = Harness::start("rec-quiet", roomy_sim(), |_| {}).await;
    let first = pass(&h).await;
    let report = pass(&h).await;
    assert_eq!(report.kind, RunKind::Incremental);
    assert_eq!(
        report.aircall_requests, 2,
        "webhook check + one listing page"
    );
    // The whole overlap is listed once an hour; the passes in between list a short one.
    let settings = &h.app.ctx.settings.reconcile;
    let watermark = first.ranges[0].1;
    assert_eq!(report.ranges[0].0, watermark - settings.overlap_s as i64);
    let next = pass(&h).await;
    let previous = report.ranges[0].1;
    assert_eq!(next.ranges[0].0, previous - settings.short_overlap_s as i64);
    assert_eq!(next.aircall_requests, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_starts_a_first_import_as_soon_as_the_paying_users_are_set() {
    let h = Harness::start("rec-loop", roomy_sim(), |s| {
        s.reconcile.tick_ms = 200;
    })
    .await;
    let now = now_s();
    for i in 0..3 {
        h.add_call(&quiet_call(&h, now - 600 - i * 60));
    }
    // No paying users yet: the connection waits.
    let id = h.id();
    h.app
        .ctx
        .connections
        .set_paying_users(&id, &PayingUsers::default(), 0)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let looping = tokio::spawn(h.app.ctx.reconciler().run(cancel.clone()));
    let state = h.app.ctx.reconciler().state;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        state.reports(&id, 1).await.unwrap().is_empty(),
        "waiting for users"
    );

    h.app
        .ctx
        .connections
        .set_paying_users(&id, &PayingUsers::new([h.paying_agent()]), 1)
        .await
        .unwrap();
    // As the admin API does with every change of the users (a waiting connection is not looked
    // at again before that, or an interval later).
    state.make_due(&id).await.unwrap();
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            state
                .reports(&id, 1)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.kind == RunKind::FirstImport && r.queued == 3)
        })
        .await,
        "the first import ran within a tick"
    );
    // Not due again for an interval: one report only.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state.reports(&id, 5).await.unwrap().len(), 1);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), looping)
        .await
        .expect("SIGTERM ends the loop")
        .unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_runs_every_due_connection_and_exits_by_its_result() {
    let h = Harness::start("rec-once", roomy_sim(), |_| {}).await;
    h.add_call(&quiet_call(&h, now_s() - 600));
    let s = &h.app.ctx.settings;
    let run = |faulty: bool| {
        if faulty {
            h.sim.state.set_faults(
                Some(h.company.id),
                Faults {
                    error_5xx_share: 1.0,
                    ..Faults::default()
                },
            );
        } else {
            h.sim
                .state
                .set_faults(Some(h.company.id), Faults::default());
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
            .args(["reconcile", "--once"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AIRCALL_INGEST_MODE", "development")
            .env("AIRCALL_INGEST_REDIS_KEY_PREFIX", &s.redis_key_prefix)
            .env("AIRCALL_INGEST_QUEUE__PREFIX", &s.queue.prefix)
            .env("AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS", "200,400,800")
            .env("AIRCALL_INGEST_AIRCALL_BASE_URL", h.sim.base_url.as_str())
            .env("AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS", "1")
            .env("AIRCALL_INGEST_LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    let failed = run(true);
    assert_eq!(failed.status.code(), Some(1), "a failed pass: exit 1");
    // The failed pass made the connection due an interval later; make it due again.
    let state = h.app.ctx.reconciler().state;
    state.make_due(&h.id()).await.unwrap();
    let done = run(false);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report = &state.reports(&h.id(), 1).await.unwrap()[0];
    assert_eq!(report.kind, RunKind::FirstImport);
    assert_eq!(report.queued, 1);
    // Nothing is due any more: a second run does nothing, successfully.
    let idle = run(false);
    assert!(idle.status.success());
    assert_eq!(state.reports(&h.id(), 5).await.unwrap().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_deleted_at_aircall_is_registered_again_and_its_deliveries_verify() {
    let mut h = Harness::start("rec-rewebhook", roomy_sim(), |_| {}).await;
    let old = h.sim.state.webhooks(h.company.id).unwrap()[0].clone();
    let client = crate::helpers::client(&h.app.ctx.settings, &h.company);
    client.delete_webhook(&old.webhook_id).await.unwrap();
    // This app listens on a port of its own, not on the configured public_url.
    let mut reconciler = h.app.ctx.reconciler();
    reconciler.public_url = url::Url::parse(&h.app.url).unwrap();
    let Pass::Ran(report) = reconciler
        .run_connection(&h.id(), &CancellationToken::new())
        .await
        .unwrap()
    else {
        panic!("skipped")
    };
    assert_eq!(report.webhook.as_deref(), Some("recreated"));
    let webhooks = h.sim.state.webhooks(h.company.id).unwrap();
    assert_eq!(webhooks.len(), 1);
    assert_ne!(webhooks[0].webhook_id, old.webhook_id);
    assert_eq!(webhooks[0].events.len(), 2);
    let record = h.app.ctx.connections.get(&h.id()).await.unwrap().unwrap();
    assert_eq!(record.webhook_id, webhooks[0].webhook_id);
    // The new token is the one the endpoint now accepts.
    h.start_worker();
    let call = h.add_call(&h.call(4_000));
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_judged_before_the_paying_users_were_set_are_taken_by_the_first_import() {
    let mut h = Harness::start("rec-early", roomy_sim(), |_| {}).await;
    let id = h.id();
    h.app
        .ctx
        .connections
        .set_paying_users(&id, &PayingUsers::default(), 0)
        .await
        .unwrap();
    h.start_worker();
    // Webhooks come while nobody pays yet: the worker records the agent unmatched.
    let early = h.add_call(&h.call(4_000));
    let record = h
        .wait_outcome(early, |r| r.outcome == Outcome::Skipped)
        .await;
    assert_eq!(record.reason.as_deref(), Some("user_not_matched"));

    h.app
        .ctx
        .connections
        .set_paying_users(&id, &PayingUsers::new([h.paying_agent()]), 1)
        .await
        .unwrap();
    let report = pass(&h).await;
    assert_eq!(report.kind, RunKind::FirstImport);
    assert_eq!(report.queued, 1, "{report:?}");
    h.wait_outcome(early, |r| r.outcome == Outcome::Imported)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_call_whose_recheck_fails_for_good_stops_being_rechecked() {
    let mut h = Harness::start("rec-stuck", roomy_sim(), |s| {
        s.import.pending_recheck_initial_ms = 200;
    })
    .await;
    h.start_worker();
    pass(&h).await;
    // A pending call Aircall no longer knows (deleted since): its re-check fails for good.
    let ghost = aircall_ingest::connections::OutcomeRecord {
        call_id: aircall_ingest::aircall::CallId(5_999_000_001),
        outcome: Outcome::Pending,
        reason: Some("recording_not_ready".into()),
        decided_at_ms: (now_s() - 3_000) * 1_000,
        trigger: aircall_ingest::queue::Trigger::Webhook,
        agent_email: None,
        agent_name: None,
        direction: None,
        started_at: Some(now_s() - 3_600),
        duration: None,
        error: None,
        stored: None,
        announced: false,
        recheck_at_ms: Some(1),
        pending_checks: 1,
    };
    h.app.ctx.outcomes.record(&h.id(), &ghost).await.unwrap();
    let report = pass(&h).await;
    assert_eq!(report.pending_rechecked, 1);
    h.wait_outcome(5_999_000_001, |r| r.outcome == Outcome::Failed)
        .await;
    let due = h
        .app
        .ctx
        .outcomes
        .due_pending(&h.id(), i64::MAX, 10)
        .await
        .unwrap();
    assert!(due.is_empty(), "{due:?}");
    let report = pass(&h).await;
    assert_eq!(report.pending_rechecked, 0);
    h.stop().await;
}
