//! Stopping for real: the `worker` binary gets SIGTERM in the middle of an import, and the
//! listener of `worker` and `reconcile` reports readiness as its dependencies come and go.

use std::time::{Duration, Instant};

use aircall_ingest::connections::Outcome;
use aircall_ingest::sim::{AudioKind, audio_sha256};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    AMQP, KillOnDrop, REDIS, TestApp, eventually, eventually_async, roomy_sim, server_addr,
};
use crate::proxy::FaultProxy;
use crate::worker::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_import_stops_the_worker_in_time_and_loses_nothing() {
    let mut h = Harness::start("sigterm", roomy_sim(), |s| {
        s.worker.shutdown_timeout_ms = 300;
    })
    .await;
    let settings = h.app.ctx.settings.clone();
    let retry_delays: Vec<String> = settings
        .queue
        .retry_delays_ms
        .iter()
        .map(u64::to_string)
        .collect();
    // The real binary, as Kubernetes runs it.
    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .arg("worker")
        .env("AIRCALL_INGEST_MODE", "development")
        .env(
            "AIRCALL_INGEST_AIRCALL_BASE_URL",
            settings.aircall_base_url.as_str(),
        )
        .env(
            "AIRCALL_INGEST_REDIS_KEY_PREFIX",
            &settings.redis_key_prefix,
        )
        .env("AIRCALL_INGEST_QUEUE__PREFIX", &settings.queue.prefix)
        .env(
            "AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS",
            retry_delays.join(","),
        )
        .env("AIRCALL_INGEST_STORAGE__ROOT", &settings.storage.root)
        .env("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1")
        .env(
            "AIRCALL_INGEST_WORKER__LEASE_MS",
            settings.worker.lease_ms.to_string(),
        )
        .env("AIRCALL_INGEST_WORKER__SHUTDOWN_TIMEOUT_MS", "300")
        .env("AIRCALL_INGEST_AIRCALL__REQUESTS_PER_WINDOW", "100000")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = KillOnDrop(worker);
    // A recording large enough to be in flight when the signal comes.
    let bytes = 150_000_000;
    let call = h.add_call(&h.call(bytes));
    let partial = |root: &std::path::Path| {
        fn walk(dir: &std::path::Path) -> bool {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path)
                    } else {
                        path.extension().is_some_and(|x| x == "part")
                    }
                })
        }
        walk(root)
    };
    let root = h.root.clone();
    assert!(
        eventually(Duration::from_secs(30), || partial(&root)).await,
        "the import started"
    );

    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        worker.0.try_wait().unwrap().is_some()
    })
    .await;

    assert!(exited, "the worker stops within the bound");
    let took = signalled.elapsed();
    let status = worker.0.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // 300 ms for the imports in flight, then the broker connection closes.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Imported during the drain, or given back to RabbitMQ: a worker finishes it, whole, once.
    h.start_worker();
    let record = h
        .wait_outcome(call, |r| r.outcome == Outcome::Imported)
        .await;
    let stored = record.stored.unwrap();
    assert_eq!(stored.bytes, bytes);
    assert_eq!(
        stored.sha256,
        audio_sha256(call, AudioKind::Recording, bytes)
    );
    let files: Vec<String> = h
        .files()
        .into_iter()
        .filter(|f| f.contains(&call.to_string()))
        .collect();
    assert_eq!(files.len(), 2, "the recording and its metadata: {files:?}");
    assert!(
        eventually(Duration::from_secs(10), || !partial(&root)).await,
        "no partial file left"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listener_is_ready_only_with_redis_and_rabbitmq_and_recovers() {
    let broker = FaultProxy::start(server_addr(AMQP)).await;
    let store = FaultProxy::start(server_addr(REDIS)).await;
    let mut settings = crate::helpers::service_settings("probes-ready");
    let mut amqp = broker.url("amqp", "/%2f");
    amqp.set_username("guest").unwrap();
    amqp.set_password(Some("guest")).unwrap();
    settings.amqp_url = amqp.into();
    settings.redis_url = store.url("redis", "/").into();
    settings.metrics_listen = "127.0.0.1:0".into();
    let app = TestApp::spawn(settings).await;
    let cancel = CancellationToken::new();
    let probes = app.ctx.start_probes(&cancel).unwrap().unwrap();
    let readyz = || async {
        let response = reqwest::get(format!("http://{}/readyz", probes.addr))
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(readyz().await.0, 200);

    for (name, proxy) in [("rabbitmq", &broker), ("redis", &store)] {
        proxy.cut();
        assert!(
            eventually_async(Duration::from_secs(10), || async {
                readyz().await.0 == 503
            })
            .await,
            "{name} down: not ready"
        );
        assert_eq!(readyz().await.1[name], "down");
        proxy.restore();
        assert!(
            eventually_async(Duration::from_secs(40), || async {
                readyz().await.0 == 200
            })
            .await,
            "{name} back: ready again without a restart; {:?}",
            readyz().await
        );
    }
    cancel.cancel();
    probes.stopped().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_hangs_ends_at_the_deadline() {
    // RabbitMQ stops answering (frozen, not closed): closing the connection would wait.
    let broker = FaultProxy::start(server_addr(AMQP)).await;
    let settings = crate::helpers::service_settings("deadline");
    let mut amqp = broker.url("amqp", "/%2f");
    amqp.set_username("guest").unwrap();
    amqp.set_password(Some("guest")).unwrap();
    let log =
        std::env::temp_dir().join(format!("aircall-ingest-deadline-{}.log", fastrand::u32(..)));
    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .arg("worker")
        .env("AIRCALL_INGEST_MODE", "development")
        .env("AIRCALL_INGEST_AMQP_URL", amqp.as_str())
        .env(
            "AIRCALL_INGEST_REDIS_KEY_PREFIX",
            &settings.redis_key_prefix,
        )
        .env("AIRCALL_INGEST_QUEUE__PREFIX", &settings.queue.prefix)
        .env("AIRCALL_INGEST_WORKER__SHUTDOWN_TIMEOUT_MS", "200")
        .env("AIRCALL_INGEST_SERVE__SHUTDOWN_TIMEOUT_MS", "200")
        .env("AIRCALL_INGEST_SHUTDOWN_DEADLINE_MS", "1000")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut worker = KillOnDrop(worker);
    // Consuming (the topology is declared), then the broker freezes.
    let import = settings.queue.prefix.clone() + ".import";
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            let amqp = crate::helpers::amqp().await;
            let declared = amqp
                .channel
                .queue_declare(
                    import.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await;
            amqp.close().await;
            declared.is_ok_and(|q| q.consumer_count() == 1)
        })
        .await,
        "the worker consumes: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    broker.freeze();

    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        worker.0.try_wait().unwrap().is_some()
    })
    .await;

    assert!(exited);
    let took = signalled.elapsed();
    let status = worker.0.wait().unwrap();
    // The drain cannot finish (closing the frozen connection waits): the deadline ends it.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert_eq!(status.code(), Some(1));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logs.contains("shutdown took longer than shutdown_deadline_ms"),
        "{logs}"
    );
    broker.restore();
    let _ = std::fs::remove_file(&log);
    let ctx = aircall_ingest::app::Context::new(settings).unwrap();
    let _ = ctx.broker.connect().await;
    TestApp::adopt(ctx, CancellationToken::new()).stop().await;
}
