//! The chaos run: the promise that every eligible call arrives exactly once, checked while
//! things break for real.
//!
//! Aircall (the simulator, in this process) streams calls that end at a steady rate, with
//! recordings from 50 kB to 40 MB (and a few over the 200 MB limit), while 20% of its webhook
//! deliveries are dropped (5% sent twice, all reordered), 5% of API answers are 5xx, 5% are 429
//! and 5% of recording downloads are cut short. `serve`, two `worker`s and `reconcile` run as
//! separate processes of the real binary, against the machine's RabbitMQ and a Redis of the
//! run's own, persistent as production runs it (AOF; the machine's test Redis keeps nothing
//! across a restart). During the traffic: RabbitMQ is restarted twice, one worker is killed with
//! SIGKILL twice (and started again), Redis is restarted once and `serve` once. Then the traffic
//! stops, a quiet period lets retries and re-checks run, one reconcile pass is asked for through
//! the admin API, and the simulator's ground truth is compared with what was stored and
//! announced. The run fails unless nothing is missing, duplicated, corrupt, partial, imported
//! against the rules, left unannounced or dead-lettered, imports resumed after every fault,
//! every process stopped cleanly on SIGTERM, and no secret shows in any process's log.
//!
//! Time is compressed: a reconcile pass every 30 s instead of 15 min, re-checks of late
//! recordings after 10 to 30 s instead of 5 min to 6 h, webhook retries from 1 s instead of
//! Aircall's longer ones, a worker's lease of 15 s instead of 60.
//!
//! `deploy/local/chaos.sh [SECONDS]` runs it with 600 s of traffic (the figures in
//! BENCHMARKS.md); the README's test command runs 150 s. Ignored in the parallel test run
//! because it restarts the machine's RabbitMQ.

mod processes;
mod run;
mod traffic;
mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use run::Run;
use traffic::stream_calls;
use verdict::Report;

const BIN: &str = env!("CARGO_BIN_EXE_aircall-ingest");
const CONNECTION: &str = "chaos";
const ADMIN_TOKEN: &str = "dev-admin-token-not-for-production";
/// `import.max_recording_bytes`, the default.
const MAX_RECORDING_BYTES: u64 = 200 * 1024 * 1024;
const WINDOW_S: i64 = 14 * 86_400;

/// What a run does, from the environment (`CHAOS_SECONDS`, `CHAOS_CALLS_PER_MINUTE`).
struct Plan {
    traffic: Duration,
    calls_per_minute: f64,
    /// How long after the traffic the run waits for everything to settle before judging.
    settle: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        let number = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(default)
        };
        Plan {
            traffic: Duration::from_secs_f64(number("CHAOS_SECONDS", 150.0).max(60.0)),
            calls_per_minute: number("CHAOS_CALLS_PER_MINUTE", 60.0).max(1.0),
            settle: Duration::from_secs(300),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts the machine's RabbitMQ: run alone (deploy/local/test.sh, deploy/local/chaos.sh)"]
async fn under_chaos_every_eligible_call_is_imported_once_and_whole() {
    let plan = Plan::from_env();
    let mut run = Run::start().await;
    let t0 = Instant::now();
    println!(
        "[chaos] {} s of traffic at {} calls a minute; logs and files under {}",
        plan.traffic.as_secs(),
        plan.calls_per_minute,
        run.dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    // Calls made near the end are shorter, so every call ends within a minute of the traffic.
    let ends_by_s = run.sim.state.clock.now_s() + plan.traffic.as_secs() as i64 + 60;
    let stream = tokio::spawn(stream_calls(
        run.sim.state.clone(),
        run.company.clone(),
        plan.calls_per_minute,
        ends_by_s,
        stop.clone(),
    ));
    let faults = run.inflict_faults(&plan, t0).await;
    tokio::time::sleep(plan.traffic.saturating_sub(t0.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    let made = stream.await.unwrap();
    println!(
        "[chaos] traffic stopped at {:.0} s: {made} calls made; settling",
        t0.elapsed().as_secs_f64()
    );

    let (settled, required_s) = run.settle(&plan).await;
    // Judged on a still picture: every process stopped as an orchestrator stops it.
    let stopped = run.stop_all().await;
    let mut verdict = run.judge(required_s).await;
    verdict.made = made;
    verdict.settled = settled;
    verdict.stopped = stopped;
    verdict.leaks = run.secrets_in_logs();
    let report = Report {
        plan: &plan,
        faults: &faults,
        verdict: &verdict,
        logs: run.dir.join("logs"),
    }
    .to_string();
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-report.md");
    let _ = std::fs::write(&out, &report);
    println!("[chaos] report written to {}", out.display());

    let unrecovered: Vec<_> = faults
        .iter()
        .filter(|f| {
            f.flowing.is_none()
                || f.ready.is_none()
                || (f.fault == run::Fault::RestartRabbitmq && f.spool_drained.is_none())
        })
        .collect();
    let defects = verdict.defects();
    if defects == 0 && unrecovered.is_empty() {
        run.clean_up().await;
    }
    assert_eq!(
        defects, 0,
        "the chaos run found defects: see the report above"
    );
    assert!(
        unrecovered.is_empty(),
        "imports did not resume after: {unrecovered:?}"
    );
    assert!(verdict.imported > 0, "the run imported something");
}
