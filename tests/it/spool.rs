//! The spool and its drainer on their own: several drainers at once, entries that are not jobs,
//! and a drainer that may not hold the lock.

use std::time::Duration;

use aircall_ingest::aircall::CallId;
use aircall_ingest::queue::{IMPORT_JOB_VERSION, ImportJob, Message, Spool, Trigger};

use crate::helpers::{TestApp, redis, service_settings, take_messages};

fn job(call: u64) -> Message {
    Message::ImportCall(ImportJob {
        version: IMPORT_JOB_VERSION,
        job_id: aircall_ingest::queue::message::new_job_id(),
        connection_id: "acme".into(),
        call_id: CallId(call),
        trigger: Trigger::Webhook,
        event: Some("call.ended".into()),
        snapshot: None,
        event_at: None,
        received_at_ms: 0,
        request_id: None,
        attempt: 0,
        failure: None,
    })
}

fn call_ids(messages: &[Message]) -> Vec<u64> {
    let mut ids: Vec<u64> = messages
        .iter()
        .map(|Message::ImportCall(job)| job.call_id.0)
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainers_racing_each_other_lose_nothing() {
    let app = TestApp::spawn(service_settings("race")).await;
    let prefix = app.ctx.settings.redis_key_prefix.clone();
    // Three replicas' spools on the same Redis key; the app's own drainer runs too.
    let spools: Vec<Spool> = (0..3)
        .map(|_| Spool::new(app.ctx.redis.clone(), &prefix))
        .collect();
    for call in 1..=250 {
        spools[0].push(&job(call).encode()).await.unwrap();
    }

    let mut drains = Vec::new();
    for spool in spools.clone() {
        let broker = app.ctx.broker.clone();
        drains.push(tokio::spawn(async move {
            for _ in 0..50 {
                spool
                    .drain_once(&broker, 40, Duration::from_secs(2))
                    .await
                    .unwrap();
            }
        }));
    }
    for drain in drains {
        drain.await.unwrap();
    }
    assert!(
        crate::helpers::eventually_async(Duration::from_secs(10), || async {
            app.spool_depth().await == 0
        })
        .await
    );

    let mut ids = call_ids(&take_messages(&app.ctx.broker.names().import).await);
    ids.dedup();
    assert_eq!(
        ids,
        (1..=250).collect::<Vec<_>>(),
        "every job reached the queue"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_without_the_lock_touches_nothing() {
    let mut settings = service_settings("nolock");
    settings.intake.spool_drain_interval_ms = 60_000;
    let prefix = settings.redis_key_prefix.clone();
    // Another replica holds the lock, taken before the app starts, so the app's own drainer
    // (whose first round runs at once) cannot take the job either.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:spool:drainer"))
        .arg("another-replica")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let app = TestApp::spawn(settings).await;
    let spool = Spool::new(app.ctx.redis.clone(), &prefix);
    spool.push(&job(7).encode()).await.unwrap();

    let drained = spool
        .drain_once(&app.ctx.broker, 10, Duration::from_secs(1))
        .await
        .unwrap();

    assert_eq!(drained.moved + drained.failed, 0);
    assert_eq!(spool.depth().await.unwrap(), 1);
    assert!(
        take_messages(&app.ctx.broker.names().import)
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_is_not_a_job_is_set_aside_and_jobs_of_any_version_move_on() {
    let app = TestApp::spawn(service_settings("unreadable")).await;
    let prefix = app.ctx.settings.redis_key_prefix.clone();
    let spool = Spool::new(app.ctx.redis.clone(), &prefix);
    spool.push(&job(1).encode()).await.unwrap();
    spool.push(b"not json at all").await.unwrap();
    // A job of a version this build does not know, spooled by a newer replica.
    spool
        .push(br#"{"type":"import_call","version":2,"job_id":"future","connection_id":"acme","call_id":2}"#)
        .await
        .unwrap();

    assert!(
        crate::helpers::eventually_async(Duration::from_secs(10), || async {
            app.spool_depth().await == 0
        })
        .await
    );

    let unreadable: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(format!("{prefix}:spool:unreadable"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis().await)
        .await
        .unwrap();
    assert_eq!(unreadable, vec![b"not json at all".to_vec()]);
    let amqp = crate::helpers::amqp().await;
    let mut bodies = Vec::new();
    while let Some(delivery) = amqp
        .channel
        .basic_get(
            app.ctx.broker.names().import.as_str().into(),
            Default::default(),
        )
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(delivery.data.clone()).unwrap());
        delivery.ack(Default::default()).await.unwrap();
    }
    amqp.close().await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies.iter().any(|b| b.contains(r#""version":2"#)),
        "forwarded untouched for the worker to judge"
    );
    app.stop().await;
}
