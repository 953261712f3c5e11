//! Webhook intake throughput and latency, beside two baselines measured in the same run:
//!
//! 1. **bare actix**: an endpoint that only reads and parses the body (the HTTP ceiling);
//! 2. **raw broker**: lapin publishing persistent messages of the same size to a quorum queue
//!    with publisher confirms, as fast as it can (the broker ceiling);
//! 3. **reference**: actix reading a body and publishing it with a confirm, no checks at all —
//!    the least an HTTP-to-RabbitMQ hop costs when client, server and broker share the machine;
//! 4. **intake**: the real `POST /webhooks/aircall/{connection}` (token check, redelivery
//!    marker, confirmed publish), with realistic `call.ended` bodies;
//! 5. **intake at half its peak**: an open-loop constant rate, latency measured from each
//!    request's scheduled time (no coordinated omission).
//!
//! Run: `cargo bench --bench intake` (RabbitMQ and Redis on their local default ports;
//! `deploy/local/bench.sh` starts them first). `BENCH_SECONDS` (default 10) sets each phase's
//! length, `BENCH_CONCURRENCY` (default 32) the closed-loop concurrency. Prints a Markdown table.
// A benchmark may stop at the first broken assumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use aircall_ingest::app::Context;
use aircall_ingest::connections::{ConnectionId, ConnectionRecord, ConnectionStatus};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use common::{CallEnded, env_number};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOKEN: &str = "bench-webhook-token-0123456789";

/// A realistic `call.ended` body, distinct per call id (the shape `benches/load.rs` sends too).
fn body(call_id: u64) -> Vec<u8> {
    common::call_ended(CallEnded {
        call_id,
        token: TOKEN,
        ended_at: 1_735_733_025,
        agent_email: "john.doe@example.com",
    })
}

/// Latencies of one phase, in microseconds.
struct Phase {
    name: &'static str,
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        common::percentile_ms(&sorted, p)
    }
    fn row(&self, baseline: Option<&Phase>) -> String {
        let share = baseline.map_or(String::from("—"), |b| {
            format!("{:.0}%", 100.0 * self.rate() / b.rate())
        });
        format!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            self.rate(),
            self.failed,
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            share
        )
    }
}

/// Closed loop: `concurrency` clients, each sending its next request when the last answered.
async fn closed_loop(
    name: &'static str,
    url: &str,
    concurrency: u64,
    duration: Duration,
    ok_status: &'static str,
) -> Phase {
    let url = url.to_string();
    let request = Arc::new(move |id: u64| (url.clone(), body(id)));
    let looped = common::closed_loop(concurrency, duration, ok_status, request).await;
    Phase {
        name,
        ok: looped.ok,
        failed: looped.failed,
        elapsed: looped.elapsed,
        latencies_us: looped.latencies_us,
    }
}

/// Open loop: one request every `1/rate` seconds whatever the answers, latency from the
/// scheduled time.
async fn open_loop(name: &'static str, url: &str, rate: f64, duration: Duration) -> Phase {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as u64;
    let first_id = fastrand::u64(1..1 << 40);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body(first_id + n))
                .send()
                .await;
            let good = match response {
                Ok(r) if r.status().is_success() => {
                    r.text().await.is_ok_and(|t| t.contains("queued"))
                }
                _ => false,
            };
            (good, scheduled.elapsed().as_micros() as u64)
        }));
    }
    let mut phase = Phase {
        name,
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (good, latency) = task.await.unwrap();
        if good {
            phase.ok += 1
        } else {
            phase.failed += 1
        }
        phase.latencies_us.push(latency);
    }
    phase.elapsed = started.elapsed();
    phase
}

/// Baseline 1: actix reading and parsing the body, nothing else.
fn bare_actix(workers: usize) -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/webhooks/aircall/bench",
        listener.local_addr().unwrap()
    );
    let server = HttpServer::new(|| {
        App::new().route(
            "/webhooks/aircall/{connection}",
            web::post().to(|body: web::Bytes| async move {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(_) => HttpResponse::Ok().json(serde_json::json!({"status": "queued"})),
                    Err(_) => HttpResponse::BadRequest().finish(),
                }
            }),
        )
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}

/// A connection, a confirm-mode channel and a fresh quorum queue of its own, like the
/// service's import queue.
async fn quorum_queue_with_confirms(tag: &str) -> (Connection, lapin::Channel, String) {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("bench-{tag}-{:08x}", fastrand::u32(..));
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, args)
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel, queue)
}

/// Reference: actix reading the body and publishing it with a confirm, nothing else: the least
/// an HTTP-to-RabbitMQ hop costs on this machine.
async fn actix_publish(
    workers: usize,
) -> (String, actix_web::dev::ServerHandle, Connection, String) {
    let (connection, channel, queue) = quorum_queue_with_confirms("hop").await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/webhooks/aircall/bench",
        listener.local_addr().unwrap()
    );
    let shared = web::Data::new((channel, queue.clone()));
    let server = HttpServer::new(move || {
        App::new().app_data(shared.clone()).route(
            "/webhooks/aircall/{connection}",
            web::post().to(
                |shared: web::Data<(lapin::Channel, String)>, body: web::Bytes| async move {
                    let (channel, queue) = shared.get_ref();
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    let confirmed = async {
                        channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                &body,
                                properties,
                            )
                            .await?
                            .await
                    }
                    .await;
                    match confirmed {
                        Ok(c) if c.is_ack() => {
                            HttpResponse::Ok().json(serde_json::json!({"status": "queued"}))
                        }
                        _ => HttpResponse::ServiceUnavailable().finish(),
                    }
                },
            ),
        )
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle, connection, queue)
}

/// Baseline 2: lapin publishing with confirms, `concurrency` publishes in flight.
async fn raw_broker(concurrency: u64, duration: Duration) -> Phase {
    let (connection, channel, queue) = quorum_queue_with_confirms("raw").await;
    let payload = Arc::new(body(1));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (channel, queue, payload) = (channel.clone(), queue.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let sent = Instant::now();
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                let confirmed = async {
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &payload,
                            properties,
                        )
                        .await?
                        .await
                }
                .await;
                latencies.push(sent.elapsed().as_micros() as u64);
                match confirmed {
                    Ok(c) if c.is_ack() => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed, latencies)
        }));
    }
    let mut phase = Phase {
        name: "raw broker: lapin confirmed publish",
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await.unwrap();
        phase.ok += ok;
        phase.failed += failed;
        phase.latencies_us.extend(latencies);
    }
    phase.elapsed = started.elapsed();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    phase
}

#[tokio::main]
async fn main() {
    let seconds = env_number("BENCH_SECONDS", 10);
    let concurrency = env_number("BENCH_CONCURRENCY", 32);
    let duration = Duration::from_secs(seconds);
    let workers = env_number(
        "BENCH_HTTP_WORKERS",
        std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
    ) as usize;

    // The service, with its own queue names and Redis keys.
    // AIRCALL_INGEST_* variables apply, for experiments (e.g. turning the redelivery marker off).
    let (mut settings, tag) = common::bench_settings("intake");
    settings.serve.workers = workers;
    let ctx = Context::new(settings).unwrap();
    ctx.broker
        .connect()
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (deploy/local/services.sh starts it)");
    let id = ConnectionId::parse("bench").unwrap();
    let record = ConnectionRecord {
        api_token_sealed: ctx
            .keys
            .encrypt(&SecretString::from("api-token"), id.as_str()),
        webhook_token_fingerprint: ctx.keys.fingerprint(TOKEN),
        id,
        api_id: "bench".into(),
        webhook_id: "bench".into(),
        status: ConnectionStatus::Active,
        created_at_ms: 0,
    };
    ctx.connections
        .create(&record, &Default::default())
        .await
        .expect("Redis on 127.0.0.1:6379");
    let cancel = CancellationToken::new();
    ctx.start_background(&cancel);
    let server = ctx
        .serve(TcpListener::bind("127.0.0.1:0").unwrap(), &cancel)
        .unwrap();
    let intake_url = format!("http://{}/webhooks/aircall/bench", server.addr);

    eprintln!("warming up…");
    let _ = closed_loop(
        "warm-up",
        &intake_url,
        concurrency,
        Duration::from_secs(2),
        "queued",
    )
    .await;

    eprintln!("bare actix ({seconds} s)…");
    let (bare_url, bare) = bare_actix(workers);
    let bare_phase = closed_loop(
        "bare actix: read + parse JSON",
        &bare_url,
        concurrency,
        duration,
        "queued",
    )
    .await;
    bare.stop(true).await;

    eprintln!("raw broker ({seconds} s)…");
    let raw_phase = raw_broker(concurrency, duration).await;

    eprintln!("actix + confirmed publish ({seconds} s)…");
    let (hop_url, hop, hop_connection, hop_queue) = actix_publish(workers).await;
    let hop_phase = closed_loop(
        "reference: actix + confirmed publish, no checks",
        &hop_url,
        concurrency,
        duration,
        "queued",
    )
    .await;
    hop.stop(true).await;
    if let Ok(channel) = hop_connection.create_channel().await {
        let _ = channel
            .queue_delete(hop_queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = hop_connection.close(200, "done".into()).await;

    eprintln!("intake ({seconds} s)…");
    let intake_phase = closed_loop(
        "intake: POST /webhooks/aircall/{id}",
        &intake_url,
        concurrency,
        duration,
        "queued",
    )
    .await;

    let half = intake_phase.rate() / 2.0;
    eprintln!("intake at half its peak, {half:.0}/s ({seconds} s)…");
    let half_phase = open_loop(
        "intake at half its peak (open loop)",
        &intake_url,
        half,
        duration,
    )
    .await;

    println!(
        "\nconcurrency {concurrency}, {seconds} s per phase, {workers} HTTP workers, body {} bytes\n",
        body(1).len()
    );
    println!("| phase | ok/s | failed | p50 ms | p99 ms | max ms | vs raw broker |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", bare_phase.row(Some(&raw_phase)));
    println!("{}", raw_phase.row(None));
    println!("{}", hop_phase.row(Some(&raw_phase)));
    println!("{}", intake_phase.row(Some(&raw_phase)));
    println!("{}", half_phase.row(None));

    cancel.cancel();
    let names = ctx.broker.names().clone();
    if let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        aircall_ingest::queue::topology::delete(&channel, &names).await;
        let _ = connection.close(200, "done".into()).await;
    }
    let mut redis = ctx.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{tag}:*"))
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
    }
}
