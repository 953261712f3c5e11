//! One budget per Aircall company, shared by every process: checked where it matters, at the
//! simulated Aircall, which logs when each request arrived.

use std::time::{Duration, Instant};

use aircall_ingest::aircall::ratelimit::Observed;
use aircall_ingest::aircall::{RateLimitSettings, RateLimiter};
use aircall_ingest::sim::{CompanySpec, SimSettings};
use tokio_util::sync::CancellationToken;

use crate::helpers::{aircall, budget_key, credentials, redis, settings, sim_with, unique_prefix};

/// The most requests that arrived within any `window_ms` span.
fn busiest_window(arrivals: &[i64], window_ms: i64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while arrivals[end] - arrivals[start] >= window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_sharing_a_budget_never_exceed_it_in_any_window() {
    const LIMIT: u32 = 60;
    const WINDOW: Duration = Duration::from_secs(3);
    let sim_settings = SimSettings {
        rate_limit: LIMIT,
        rate_window: WINDOW,
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("shared", &sim.base_url);
    s.aircall.requests_per_window = LIMIT;
    s.aircall.rate_limit_window_ms = WINDOW.as_millis() as u64;
    // Three processes: three separate clients, Redis connections and HTTP pools.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            aircall(&s).client(
                credentials(&company),
                &budget_key(&company),
                CancellationToken::new(),
            )
        })
        .collect();

    let deadline = Instant::now() + Duration::from_millis(7_500);
    let mut tasks = Vec::new();
    for client in clients.iter().cycle().take(6) {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while Instant::now() < deadline {
                client.ping().await.unwrap();
                sent += 1;
            }
            sent
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }

    let stats = sim.state.stats(company.id).unwrap();
    let arrivals: Vec<i64> = stats.recent_arrivals_ms.iter().copied().collect();
    let busiest = busiest_window(&arrivals, WINDOW.as_millis() as i64);
    assert!(
        busiest <= LIMIT as usize,
        "{busiest} requests arrived within one {WINDOW:?} window"
    );
    assert_eq!(
        stats.by_status.get(&429),
        None,
        "Aircall never had to refuse: {:?}",
        stats.by_status
    );
    assert!(
        sent >= 2 * LIMIT,
        "the budget was used, not starved: {sent} requests"
    );
    let rate_limited: u64 = clients.iter().map(|c| c.stats().rate_limited).sum();
    assert_eq!(rate_limited, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_set_by_one_process_holds_the_others() {
    let prefix = unique_prefix("block");
    let settings = RateLimitSettings {
        default_limit: 100,
        window: Duration::from_secs(60),
        margin: Duration::ZERO,
    };
    let one = RateLimiter::new(redis().await, &prefix, settings.clone()).budget("company");
    let other = RateLimiter::new(redis().await, &prefix, settings).budget("company");
    let cancel = CancellationToken::new();

    one.block_for(Duration::from_millis(600)).await.unwrap();
    let waited = other.acquire(&cancel).await.unwrap();

    assert!(waited >= Duration::from_millis(550), "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_applies_to_a_log_already_fuller_than_it() {
    let prefix = unique_prefix("lowered");
    let settings = RateLimitSettings {
        default_limit: 10,
        window: Duration::from_secs(60),
        margin: Duration::ZERO,
    };
    let budget = RateLimiter::new(redis().await, &prefix, settings).budget("company");
    let cancel = CancellationToken::new();
    for _ in 0..5 {
        budget.acquire(&cancel).await.unwrap();
    }

    budget
        .observe(&Observed {
            limit: Some(3),
            ..Observed::default()
        })
        .await
        .unwrap();
    let sixth = tokio::time::timeout(Duration::from_millis(300), budget.acquire(&cancel)).await;

    assert!(sixth.is_err(), "5 spent is over the new limit of 3: wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_of_different_companies_are_independent() {
    let prefix = unique_prefix("independent");
    let settings = RateLimitSettings {
        default_limit: 2,
        window: Duration::from_secs(60),
        margin: Duration::ZERO,
    };
    let limiter = RateLimiter::new(redis().await, &prefix, settings);
    let cancel = CancellationToken::new();
    let (a, b) = (limiter.budget("a"), limiter.budget("b"));

    for _ in 0..2 {
        a.acquire(&cancel).await.unwrap();
    }
    let b_waited = b.acquire(&cancel).await.unwrap();
    let a_third = tokio::time::timeout(Duration::from_millis(300), a.acquire(&cancel)).await;

    assert!(b_waited < Duration::from_millis(100));
    assert!(a_third.is_err(), "company a has spent its budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_window_is_measured_right() {
    assert_eq!(busiest_window(&[0, 10, 20, 3_000, 3_010], 3_000), 3);
    assert_eq!(busiest_window(&[0, 2_999, 3_000], 3_000), 2);
    assert_eq!(busiest_window(&[], 3_000), 0);
}
