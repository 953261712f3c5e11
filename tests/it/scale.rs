//! Many connections: a connection whose Aircall is slow or failing never holds up the others,
//! and the reconciler's places, its due index and its spreading over the cycle work with the
//! real loop (`Reconciler::run`), real Redis and the simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use aircall_ingest::connections::ConnectionId;
use aircall_ingest::reconcile::{Round, RunReport};
use aircall_ingest::sim::{CompanySpec, Faults};
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminTest;

const INTERVAL_MS: u64 = 3_000;
const STALL_MS: u64 = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_or_failing_aircalls_delay_no_other_connection() {
    let mut t = AdminTest::start("scale-isolation", |s| {
        s.reconcile.interval_ms = INTERVAL_MS;
        s.reconcile.jitter_ms = 0;
        s.reconcile.tick_ms = 100;
        // Four places: as many as there are slow companies. Troubled ones get one.
        s.reconcile.concurrency = 4;
        s.reconcile.stall_timeout_ms = STALL_MS;
        // Aircall's answers are awaited as long as they take (the slow companies take 30 s).
        s.aircall.read_timeout_ms = 60_000;
        s.aircall.request_timeout_ms = 60_000;
        s.aircall.max_attempts = 1;
    })
    .await;
    t.start_worker();
    // Twelve companies; four will answer every request after 30 s, two will answer 5xx.
    let mut companies = BTreeMap::new();
    for i in 0..12 {
        let company = t
            .sim
            .state
            .add_company(CompanySpec {
                agents: 2,
                ..CompanySpec::default()
            })
            .unwrap();
        let id = format!("company-{i:02}");
        let users: Vec<String> = company.agents.iter().map(|a| a.email.clone()).collect();
        let (status, body) = t
            .send(
                Method::POST,
                "/api/connections",
                Some(json!({"id": id, "api_id": company.api_id, "api_token": company.api_token, "users": users})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        companies.insert(id, company);
    }
    for id in companies.keys() {
        t.wait_report_after(id, 0).await;
    }
    let slow: Vec<String> = (0..4).map(|i| format!("company-{i:02}")).collect();
    let failing: Vec<String> = (4..6).map(|i| format!("company-{i:02}")).collect();
    for id in &slow {
        let faults = Faults {
            latency_ms: 30_000,
            ..Faults::default()
        };
        t.sim.state.set_faults(Some(companies[id].id), faults);
    }
    for id in &failing {
        let faults = Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        };
        t.sim.state.set_faults(Some(companies[id].id), faults);
    }

    // The loop over every connection for five intervals.
    let reconciler = t.app.ctx.reconciler();
    let state = reconciler.state.clone();
    let cancel = CancellationToken::new();
    let started_ms = now_ms();
    let looping = tokio::spawn(reconciler.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(5 * INTERVAL_MS)).await;
    cancel.cancel();
    looping.await.unwrap();
    let ended_ms = now_ms();

    let passes = |id: String| {
        let state = state.clone();
        async move {
            let id = ConnectionId::parse(&id).unwrap();
            let mut reports: Vec<RunReport> = state
                .reports(&id, 50)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.started_at_ms >= started_ms)
                .collect();
            reports.reverse();
            reports
        }
    };
    // Every healthy connection was passed over once per interval, on time, all along: nothing
    // of the slow or failing ones reached it. (Their first slow passes, before anything was
    // known of them, held places for up to the stall timeout: the first gap allows for it.)
    let troubled: Vec<&String> = slow.iter().chain(&failing).collect();
    for id in companies.keys().filter(|id| !troubled.contains(id)) {
        let reports = passes(id.clone()).await;
        assert!(
            reports.len() >= 4,
            "{id}: {} passes in 5 intervals",
            reports.len()
        );
        assert!(
            reports.iter().all(|r| r.error.is_none()),
            "{id}: {:?}",
            reports.iter().map(|r| &r.error).collect::<Vec<_>>()
        );
        let mut previous = started_ms;
        for (i, report) in reports.iter().enumerate() {
            let gap = report.started_at_ms - previous;
            let allowed = if i == 0 {
                INTERVAL_MS * 3 / 2 + STALL_MS
            } else {
                INTERVAL_MS
            } as i64
                + 1_000;
            assert!(
                gap <= allowed,
                "{id}: a pass {gap} ms after the one before (interval {INTERVAL_MS} ms)"
            );
            previous = report.started_at_ms;
        }
        assert!(
            ended_ms - previous <= INTERVAL_MS as i64 + 1_000,
            "{id}: no pass in the last {} ms",
            ended_ms - previous
        );
    }
    // The slow ones were abandoned at the stall timeout; the failing ones failed fast and were
    // tried again. Once known to fail, they took one place at a time between them.
    let mut later = Vec::new();
    for id in &troubled {
        let reports = passes((*id).clone()).await;
        assert!(!reports.is_empty(), "{id}");
        for report in &reports {
            let error = report.error.clone().unwrap_or_default();
            assert!(!error.is_empty(), "{id}: {report:?}");
            if slow.contains(id) {
                assert!(
                    error.contains(&format!("no Aircall request for {STALL_MS} ms")),
                    "{error}"
                );
                assert!(report.ended_at_ms - report.started_at_ms < STALL_MS as i64 + 3_000);
            }
        }
        later.extend(
            reports
                .iter()
                .skip(1)
                .map(|r| (r.started_at_ms, r.ended_at_ms)),
        );
    }
    let most_at_once = later
        .iter()
        .map(|&(start, _)| {
            later
                .iter()
                .filter(|&&(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_at_once <= 1,
        "troubled passes at once: {most_at_once} ({later:?})"
    );
    t.stop().await;
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_round_passes_over_every_troubled_connection() {
    let t = AdminTest::start("scale-troubled-round", |s| {
        // One place for troubled connections in the loop.
        s.reconcile.concurrency = 4;
        s.reconcile.jitter_ms = 0;
        s.aircall.max_attempts = 1;
    })
    .await;
    // Eight connections, more than the loop's troubled places, whose Aircall then fails.
    let mut ids = Vec::new();
    for i in 0..8 {
        let company = t
            .sim
            .state
            .add_company(CompanySpec {
                agents: 1,
                ..CompanySpec::default()
            })
            .unwrap();
        let id = format!("company-{i}");
        let users: Vec<String> = company.agents.iter().map(|a| a.email.clone()).collect();
        let (status, body) = t
            .send(
                Method::POST,
                "/api/connections",
                Some(json!({"id": id, "api_id": company.api_id, "api_token": company.api_token, "users": users})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        t.wait_report_after(&id, 0).await;
        let faults = Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        };
        t.sim.state.set_faults(Some(company.id), faults);
        ids.push(ConnectionId::parse(&id).unwrap());
    }

    // The first round finds them healthy and every pass fails; the second finds every one
    // troubled, and still passes over each (a CronJob round has nothing else to keep places for).
    let reconciler = t.app.ctx.reconciler();
    let cancel = CancellationToken::new();
    for round in ["healthy", "troubled"] {
        for id in &ids {
            reconciler.state.make_due(id).await.unwrap();
        }
        let totals = reconciler.run_due(true, &cancel).await;
        assert_eq!(
            totals,
            Round {
                succeeded: 0,
                failed: 8,
                skipped: 0
            },
            "{round}"
        );
        assert_eq!(
            reconciler.state.troubled().await.unwrap().len(),
            8,
            "{round}"
        );
    }
    t.stop().await;
}
