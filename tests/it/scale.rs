//! Many connections: a connection whose Aircall is slow or failing never holds up the others,
//! and the reconciler's places, its due index and its spreading over the cycle work with the
//! real loop (`Reconciler::run`), real Redis and the simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use aircall_ingest::connections::ConnectionId;
use aircall_ingest::reconcile::RunReport;
use aircall_ingest::sim::{CompanySpec, Faults};
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminTest;

const INTERVAL_MS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_failing_aircall_delays_no_other_connection() {
    let mut t = AdminTest::start("scale-isolation", |s| {
        s.reconcile.interval_ms = INTERVAL_MS;
        s.reconcile.jitter_ms = 0;
        s.reconcile.tick_ms = 100;
        s.reconcile.concurrency = 3;
        s.reconcile.pass_timeout_ms = 6_000;
        // Aircall's answers are awaited as long as they take (the slow company takes 30 s).
        s.aircall.read_timeout_ms = 60_000;
        s.aircall.request_timeout_ms = 60_000;
        s.aircall.max_attempts = 1;
    })
    .await;
    t.start_worker();
    // Eight companies; one will answer every request after 30 s, one will answer 5xx.
    let mut companies = BTreeMap::new();
    for i in 0..8 {
        let company = t
            .sim
            .state
            .add_company(CompanySpec {
                agents: 2,
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
        companies.insert(id, company);
    }
    for id in companies.keys() {
        t.wait_report_after(id, 0).await;
    }
    let slow = "company-0";
    let failing = "company-1";
    t.sim.state.set_faults(
        Some(companies[slow].id),
        Faults {
            latency_ms: 30_000,
            ..Faults::default()
        },
    );
    t.sim.state.set_faults(
        Some(companies[failing].id),
        Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
    );

    // The loop over every connection, three passes at a time, for four intervals.
    let reconciler = t.app.ctx.reconciler();
    let state = reconciler.state.clone();
    let cancel = CancellationToken::new();
    let started_ms = now_ms();
    let looping = tokio::spawn(reconciler.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(4 * INTERVAL_MS)).await;
    cancel.cancel();
    looping.await.unwrap();
    let ended_ms = now_ms();

    let passes = |id: &str| {
        let state = state.clone();
        let id = ConnectionId::parse(id).unwrap();
        async move {
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
    // of the slow or failing ones reached it.
    for id in companies.keys().filter(|id| *id != slow && *id != failing) {
        let reports = passes(id).await;
        assert!(
            reports.len() >= 3,
            "{id}: {} passes in 4 intervals",
            reports.len()
        );
        assert!(
            reports.iter().all(|r| r.error.is_none()),
            "{id}: {:?}",
            reports.iter().map(|r| &r.error).collect::<Vec<_>>()
        );
        // The first comes at the connection's place in the cycle (at most an interval and a
        // half after its first import), each later one an interval after the one before.
        let mut previous = started_ms;
        for (i, report) in reports.iter().enumerate() {
            let gap = report.started_at_ms - previous;
            let allowed = if i == 0 {
                INTERVAL_MS * 3 / 2
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
    // The failing one failed fast and was tried again; the slow one held one place until its
    // pass was abandoned at the deadline.
    let failed = passes(failing).await;
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|r| r.error.is_some()), "{failed:?}");
    let slowed = passes(slow).await;
    assert_eq!(slowed.len(), 1, "{slowed:?}");
    let error = slowed[0].error.clone().unwrap_or_default();
    assert!(error.contains("took longer than 6000 ms"), "{error}");
    t.stop().await;
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
