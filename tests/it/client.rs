//! The Aircall client against the simulator, over real HTTP, with the budget in real Redis.

use std::time::{Duration, Instant};

use aircall_ingest::aircall::models::{HANDLED_EVENTS, WebhookSpec};
use aircall_ingest::aircall::{AircallError, CallId, CallStatus, Credentials, Direction};
use aircall_ingest::sim::{CallSpec, CompanySpec, Faults, SimSettings};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::helpers::{aircall, budget_key, client, redis, roomy_sim, settings, sim_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_range_of_25000_calls_returns_every_call_and_never_crosses_the_cap() {
    let spec = CompanySpec {
        history_calls: 25_000,
        history_days: 10,
        ..CompanySpec::default()
    };
    let (sim, company) = sim_with(roomy_sim(), spec).await;
    let client = client(&settings("list25k", &sim.base_url), &company);
    let now = sim.state.clock.now_s();

    let calls = client.list_calls(now - 11 * 86_400, now).await.unwrap();

    assert_eq!(calls.len(), 25_000);
    let mut ids: Vec<u64> = calls.iter().map(|c| c.id.0).collect();
    assert!(
        calls.windows(2).all(|w| w[0].started_at <= w[1].started_at),
        "oldest first"
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 25_000, "no call twice");
    let stats = sim.state.stats(company.id).unwrap();
    assert_eq!(
        stats.by_status.get(&400),
        None,
        "no request answered 400: {:?}",
        stats.by_status
    );
    let requests = stats.by_endpoint["list_calls"];
    assert!(
        requests < 25_000 / 50 + 20,
        "{requests} requests: splitting must stay cheap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_range_costs_one_request() {
    let spec = CompanySpec {
        history_calls: 30,
        ..CompanySpec::default()
    };
    let (sim, company) = sim_with(roomy_sim(), spec).await;
    let client = client(&settings("quiet", &sim.base_url), &company);
    let now = sim.state.clock.now_s();

    let mut pager = client.calls_started_between(now - 3_600, now);
    let first = pager.next_page().await.unwrap();
    let end = pager.next_page().await.unwrap();

    assert_eq!(first.map(|p| p.len()), Some(0));
    assert!(end.is_none());
    assert_eq!(pager.listed_through(), now);
    assert_eq!(client.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_range_bounds_and_split_points_are_listed_exactly_once() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let mut s = settings("bounds", &sim.base_url);
    s.aircall.listing_split_threshold = 100;
    let to = sim.state.clock.now_s() - 3_600;
    let from = to - 1_000;
    // 400 calls: dense enough to split three times; one on every split point and bound.
    let mut seconds: Vec<i64> = (0..392).map(|i| from + 1 + (i * 997) % 1_000).collect();
    seconds.extend([
        from,
        from + 1,
        from + 500,
        from + 250,
        from + 750,
        to - 1,
        to,
        to + 1,
    ]);
    let mut expected = Vec::new();
    for &second in &seconds {
        let spec = CallSpec {
            started_at: Some(second),
            duration: 10,
            notify: false,
            ..CallSpec::default()
        };
        let id = sim.state.add_call(company.id, &spec).unwrap();
        if second > from && second <= to {
            expected.push(id);
        }
    }
    let client = client(&s, &company);

    let calls = client.list_calls(from, to).await.unwrap();

    let mut got: Vec<u64> = calls.iter().map(|c| c.id.0).collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_interrupted_by_an_error_resumes_at_the_same_page() {
    let spec = CompanySpec {
        history_calls: 180,
        history_days: 2,
        ..CompanySpec::default()
    };
    let (sim, company) = sim_with(roomy_sim(), spec).await;
    let mut s = settings("resume", &sim.base_url);
    s.aircall.max_attempts = 1;
    let client = client(&s, &company);
    let now = sim.state.clock.now_s();
    let mut pager = client.calls_started_between(now - 3 * 86_400, now);
    let mut calls = pager.next_page().await.unwrap().unwrap();

    sim.state.set_faults(
        Some(company.id),
        Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
    );
    assert!(pager.next_page().await.is_err());
    assert!(pager.next_page().await.is_err());
    sim.state.set_faults(Some(company.id), Faults::default());
    while let Some(page) = pager.next_page().await.unwrap() {
        calls.extend(page);
    }

    let mut ids: Vec<u64> = calls.iter().map(|c| c.id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        180,
        "every call once, none skipped by the failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_grows_past_the_cap_while_paged_is_refused_not_truncated() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let second = sim.state.clock.now_s() - 3_600;
    let spec = CallSpec {
        started_at: Some(second),
        duration: 10,
        notify: false,
        ..CallSpec::default()
    };
    for _ in 0..9_990 {
        sim.state.add_call(company.id, &spec).unwrap();
    }
    let client = client(&settings("grows", &sim.base_url), &company);
    let mut pager = client.calls_started_between(second - 1, second);
    pager.next_page().await.unwrap();
    for _ in 0..100 {
        sim.state.add_call(company.id, &spec).unwrap();
    }

    let result = loop {
        match pager.next_page().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };

    assert!(
        matches!(result, Err(AircallError::ListingTooDense { .. })),
        "{result:?}"
    );
    assert_eq!(
        sim.state.stats(company.id).unwrap().by_status.get(&400),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_second_holding_more_than_the_cap_is_a_loud_error_not_a_silent_truncation() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let second = sim.state.clock.now_s() - 3_600;
    let spec = CallSpec {
        started_at: Some(second),
        duration: 10,
        notify: false,
        ..CallSpec::default()
    };
    for _ in 0..10_001 {
        sim.state.add_call(company.id, &spec).unwrap();
    }
    let client = client(&settings("dense", &sim.base_url), &company);

    let result = client.list_calls(second - 100, second + 100).await;

    match result {
        Err(AircallError::ListingTooDense { from, to, total }) => {
            assert_eq!((from, to, total), (second - 1, second, 10_001));
        }
        other => panic!("expected ListingTooDense, got {other:?}"),
    }
    let stats = sim.state.stats(company.id).unwrap();
    assert_eq!(stats.by_status.get(&400), None);
}

/// Sleeps until just after the simulator's rate-limit window turns, so a test's few requests
/// all fall in one window.
async fn at_window_start(sim: &aircall_ingest::sim::RunningSimulator, window: Duration) {
    let window_ms = window.as_millis() as i64;
    let into = sim.state.clock.now_ms().rem_euclid(window_ms);
    tokio::time::sleep(Duration::from_millis((window_ms - into + 50) as u64)).await;
}

/// Another integration of the same Aircall company spends `n` requests of the window.
async fn spend_elsewhere(
    sim: &aircall_ingest::sim::RunningSimulator,
    company: &aircall_ingest::sim::CompanyInfo,
    n: usize,
) {
    let other = reqwest::Client::new();
    for _ in 0..n {
        let r = other
            .get(format!("{}v1/ping", sim.base_url))
            .basic_auth(&company.api_id, Some(&company.api_token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_and_the_request_retried() {
    // Reset in seconds, in milliseconds, and Retry-After: each must be understood.
    for (reset_in_millis, send_retry_after) in [(false, false), (true, false), (false, true)] {
        let window = Duration::from_secs(3);
        let sim_settings = SimSettings {
            rate_limit: 3,
            rate_window: window,
            reset_in_millis,
            send_retry_after,
            ..SimSettings::for_tests()
        };
        let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
        let mut s = settings("wait429", &sim.base_url);
        s.aircall.rate_limit_window_ms = window.as_millis() as u64;
        let client = client(&s, &company);
        at_window_start(&sim, window).await;
        spend_elsewhere(&sim, &company, 3).await;
        let started = Instant::now();

        client.ping().await.unwrap();

        let case = format!("reset in ms: {reset_in_millis}, retry-after: {send_retry_after}");
        let stats = client.stats();
        assert_eq!(stats.rate_limited, 1, "one 429 ({case})");
        assert_eq!(stats.requests, 2, "then one retry after the reset ({case})");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1_900),
            "waited {waited:?} for the reset ({case})"
        );
        assert!(
            waited < Duration::from_millis(4_500),
            "waited {waited:?}: not much past the reset ({case})"
        );
        let by_status = sim.state.stats(company.id).unwrap().by_status;
        assert_eq!(by_status.get(&429), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spent_by_other_integrations_slow_us_down_instead_of_earning_429s() {
    let window = Duration::from_secs(3);
    let sim_settings = SimSettings {
        rate_limit: 6,
        rate_window: window,
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("others", &sim.base_url);
    s.aircall.rate_limit_window_ms = window.as_millis() as u64;
    s.aircall.requests_per_window = 6;
    let client = client(&s, &company);
    at_window_start(&sim, window).await;
    client.ping().await.unwrap();
    spend_elsewhere(&sim, &company, 3).await;

    // Our log holds 1; Aircall says 2 remain after the next one: we may send only 2 more.
    for _ in 0..3 {
        client.ping().await.unwrap();
    }

    assert_eq!(
        client.stats().rate_limited,
        0,
        "the headers held us back before any 429"
    );
    assert!(client.stats().budget_wait_ms > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_remaining_holds_every_client_of_the_company_until_the_reset() {
    let window = Duration::from_secs(3);
    let sim_settings = SimSettings {
        rate_limit: 2,
        rate_window: window,
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("remaining0", &sim.base_url);
    s.aircall.rate_limit_window_ms = window.as_millis() as u64;
    let first = client(&s, &company);
    let second = client(&s, &company);
    at_window_start(&sim, window).await;

    first.ping().await.unwrap();
    first.ping().await.unwrap();
    let started = Instant::now();
    second.ping().await.unwrap();

    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_500),
        "the other client waited for the reset: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "and not much longer: {waited:?}"
    );
    assert_eq!(second.stats().rate_limited, 0);
    assert_eq!(
        sim.state.stats(company.id).unwrap().by_status.get(&429),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_that_persists_ends_as_rate_limited_with_the_wait() {
    let sim_settings = SimSettings {
        faults: Faults {
            rate_limit_429_share: 1.0,
            ..Faults::default()
        },
        rate_window: Duration::from_secs(1),
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("persist429", &sim.base_url);
    s.aircall.max_attempts = 2;
    let client = client(&s, &company);

    let result = client.ping().await;

    match result {
        Err(e @ AircallError::RateLimited { attempts: 2, .. }) => assert!(e.is_transient()),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_invalid_credentials_and_never_retried() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let s = settings("badcreds", &sim.base_url);
    let wrong = Credentials {
        api_id: company.api_id.clone(),
        api_token: SecretString::from("wrong"),
    };
    let client = aircall(&s).client(wrong, "badcreds", CancellationToken::new());

    let result = client.ping().await;

    assert!(
        matches!(
            result,
            Err(AircallError::InvalidCredentials { status: 403 })
        ),
        "{result:?}"
    );
    assert!(!result.unwrap_err().is_transient());
    assert_eq!(client.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff() {
    let sim_settings = SimSettings {
        faults: Faults {
            error_5xx_share: 0.5,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("retry5xx", &sim.base_url);
    s.aircall.max_attempts = 12;
    let client = client(&s, &company);

    for _ in 0..20 {
        client.ping().await.unwrap();
    }

    let by_status = sim.state.stats(company.id).unwrap().by_status;
    let server_errors: u64 = by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    assert!(server_errors > 0, "{by_status:?}");
    assert_eq!(by_status.get(&200), Some(&20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_between_attempts() {
    let sim_settings = SimSettings {
        faults: Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("backoff", &sim.base_url);
    s.aircall.max_attempts = 3;
    s.aircall.backoff_initial_ms = 200;
    s.aircall.backoff_max_ms = 1_000;
    let client = client(&s, &company);
    let started = Instant::now();

    let result = client.ping().await;

    assert!(
        matches!(result, Err(AircallError::Unavailable { attempts: 3, .. })),
        "{result:?}"
    );
    // Equal jitter: at least half of 200 ms, then half of 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.state.stats(company.id).unwrap().by_endpoint["ping"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_counts_as_unavailable() {
    let sim_settings = SimSettings {
        faults: Faults {
            latency_ms: 1_500,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("timeout", &sim.base_url);
    s.aircall.max_attempts = 1;
    s.aircall.read_timeout_ms = 300;
    s.aircall.request_timeout_ms = 500;
    let started = Instant::now();

    let result = client(&s, &company).ping().await;

    assert!(
        matches!(&result, Err(e @ AircallError::Unavailable { .. }) if e.is_transient()),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1_400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_that_is_not_the_documented_json_is_malformed_without_quoting_it() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(r#"{"call": {"id": "secret-looking-text"}}"#)
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    let s = settings("malformed", &base);
    let creds = Credentials {
        api_id: "x".into(),
        api_token: SecretString::from("y"),
    };
    let client = aircall(&s).client(creds, "malformed", CancellationToken::new());

    let result = client.get_call(CallId(1)).await;

    match result {
        Err(e @ AircallError::Malformed { .. }) => {
            assert!(!e.is_transient());
            assert!(!e.to_string().contains("secret-looking-text"), "{e}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_no_request_goes_out_and_the_error_is_transient() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let mut s = settings("noredis", &sim.base_url);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.redis_url = url::Url::parse(&format!("redis://{}/", closed.local_addr().unwrap()))
        .unwrap()
        .into();
    drop(closed);
    s.aircall.max_attempts = 1;

    let result = client(&s, &company).ping().await;

    assert!(
        matches!(&result, Err(e @ AircallError::Budget(_)) if e.is_transient()),
        "{result:?}"
    );
    assert!(
        sim.state.stats(company.id).unwrap().by_endpoint.is_empty(),
        "nothing reached Aircall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_creation_is_not_repeated_after_a_server_error() {
    let sim_settings = SimSettings {
        faults: Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
        ..roomy_sim()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let client = client(&settings("post5xx", &sim.base_url), &company);
    let spec = WebhookSpec {
        url: Some("https://example.com/h".into()),
        events: vec!["call.ended".into()],
        ..WebhookSpec::default()
    };

    let result = client.create_webhook(&spec).await;

    assert!(
        matches!(result, Err(AircallError::Unavailable { attempts: 1, .. })),
        "{result:?}"
    );
    assert_eq!(
        sim.state.stats(company.id).unwrap().by_endpoint["create_webhook"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_aircall_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let mut s = settings("unreachable", &base);
    s.aircall.max_attempts = 2;
    let creds = Credentials {
        api_id: "x".into(),
        api_token: SecretString::from("y"),
    };
    let client = aircall(&s).client(creds, "unreachable", CancellationToken::new());

    let result = client.ping().await;

    assert!(
        matches!(result, Err(AircallError::Unavailable { attempts: 2, .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_round_trip_through_the_client() {
    let (sim, company) = sim_with(roomy_sim(), CompanySpec::default()).await;
    let client = client(&settings("webhooks", &sim.base_url), &company);
    let events: Vec<String> = HANDLED_EVENTS.iter().map(|e| e.to_string()).collect();

    let created = client
        .create_webhook(&WebhookSpec {
            custom_name: Some("aircall-ingest".into()),
            url: Some("https://ingest.example.com/webhooks/aircall/acme".into()),
            events: events.clone(),
            active: None,
        })
        .await
        .unwrap();
    let fetched = client.get_webhook(&created.webhook_id).await.unwrap();
    sim.state
        .deactivate_webhook(company.id, &created.webhook_id);
    let inactive = client.get_webhook(&created.webhook_id).await.unwrap();
    let reactivated = client
        .update_webhook(
            &created.webhook_id,
            &WebhookSpec {
                active: Some(true),
                events: events.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed = client.list_webhooks().await.unwrap();
    client.delete_webhook(&created.webhook_id).await.unwrap();
    let gone = client.delete_webhook(&created.webhook_id).await;

    assert_eq!(created.events, events);
    assert_eq!(
        fetched
            .token
            .as_ref()
            .map(|t| t.expose_secret().to_string()),
        created
            .token
            .as_ref()
            .map(|t| t.expose_secret().to_string())
    );
    assert!(
        !format!("{created:?}").contains(created.token.as_ref().unwrap().expose_secret()),
        "tokens stay out of Debug"
    );
    assert!(!inactive.active);
    assert!(reactivated.active);
    assert_eq!(
        reactivated.events, events,
        "events kept because they were sent again"
    );
    assert_eq!(listed.len(), 1);
    assert!(matches!(gone, Err(AircallError::NotFound)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_parses_with_its_nulls_and_extra_fields() {
    let spec = CompanySpec {
        history_calls: 400,
        ..CompanySpec::default()
    };
    let (sim, company) = sim_with(roomy_sim(), spec).await;
    let client = client(&settings("parse", &sim.base_url), &company);
    let now = sim.state.clock.now_s();
    let in_progress = sim
        .state
        .add_call(
            company.id,
            &CallSpec {
                in_progress: true,
                duration: 3_600,
                started_at: Some(now - 10),
                ..Default::default()
            },
        )
        .unwrap();

    let calls = client.list_calls(now - 30 * 86_400, now).await.unwrap();
    let users = client.list_users().await.unwrap();
    let live = client.get_call(CallId(in_progress)).await.unwrap();
    let missing = client.get_call(CallId(1)).await;

    assert_eq!(calls.len(), 401);
    assert!(
        calls
            .iter()
            .all(|c| c.status.is_some() && c.started_at.is_some() && c.number.is_some())
    );
    assert!(
        calls
            .iter()
            .any(|c| c.recording.is_some()
                && c.user.as_ref().and_then(|u| u.email.as_ref()).is_some())
    );
    assert!(
        calls
            .iter()
            .any(|c| c.answered_at.is_none() && c.missed_call_reason.is_some())
    );
    assert!(calls.iter().any(|c| c.voicemail.is_some()));
    assert!(
        calls
            .iter()
            .any(|c| c.direction == Some(Direction::Outbound))
    );
    assert!(
        calls.iter().any(|c| c
            .contact
            .as_ref()
            .is_some_and(|k| !k.phone_numbers.is_empty())),
        "listing asks for contacts"
    );
    assert_eq!(users.len(), company.agents.len());
    assert_ne!(live.status, Some(CallStatus::Done));
    assert_eq!(live.ended_at, None);
    assert!(matches!(missing, Err(AircallError::NotFound)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aircalls_announced_limit_becomes_the_budget() {
    let sim_settings = SimSettings {
        rate_limit: 120,
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let s = settings("adopt", &sim.base_url);
    let client = client(&s, &company);

    client.ping().await.unwrap();

    let key = format!(
        "{}:ratelimit:{{{}}}:control",
        s.redis_key_prefix,
        budget_key(&company)
    );
    let limit: Option<u32> = redis().await.hget(&key, "limit").await.unwrap();
    assert_eq!(limit, Some(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_budget_ends_when_cancelled() {
    let sim_settings = SimSettings {
        rate_limit: 1,
        ..SimSettings::for_tests()
    };
    let (sim, company) = sim_with(sim_settings, CompanySpec::default()).await;
    let mut s = settings("cancel", &sim.base_url);
    s.aircall.requests_per_window = 1;
    s.aircall.rate_limit_window_ms = 60_000;
    let cancel = CancellationToken::new();
    let client = aircall(&s).client(
        crate::helpers::credentials(&company),
        &budget_key(&company),
        cancel.clone(),
    );
    client.ping().await.unwrap();

    let started = Instant::now();
    let waiting = tokio::spawn(async move { client.ping().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let result = waiting.await.unwrap();

    assert!(matches!(result, Err(AircallError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
