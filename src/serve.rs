//! The `serve` role's HTTP server: the webhook endpoint, liveness and readiness. Built on a
//! listener the caller bound, so tests run it on port 0; stopped gracefully (in-flight requests
//! finish) when the process's cancellation token fires.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use redis::aio::ConnectionManager;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa_actix_web::AppExt as _;

use crate::admin::{self, Admin};
use crate::intake::{self, Intake};
use crate::queue::Broker;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub redis: ConnectionManager,
    pub broker: Broker,
    /// Ready while either Redis or RabbitMQ is up (`serve`: the spool covers a broker outage);
    /// otherwise both are needed (`worker`, `reconcile`).
    pub either_suffices: bool,
}

/// What `/metrics` renders.
#[derive(Clone)]
pub struct Metrics {
    pub handle: metrics_exporter_prometheus::PrometheusHandle,
    pub sampler: crate::metrics::Sampler,
}

/// The parts of the `serve` role's HTTP server.
pub struct Parts {
    pub intake: Intake,
    pub readiness: Readiness,
    pub admin: Admin,
    pub metrics: Metrics,
}

/// A running HTTP server.
pub struct HttpServerHandle {
    pub addr: SocketAddr,
    stopped: tokio::task::JoinHandle<()>,
}

impl HttpServerHandle {
    /// Waits until the server stopped (after the cancellation token fired).
    pub async fn stopped(self) {
        let _ = self.stopped.await;
    }
}

/// Starts serving on `listener` with `workers` threads; stops when `cancel` fires, giving
/// in-flight requests `shutdown` to finish.
pub fn start(
    listener: TcpListener,
    parts: Parts,
    workers: usize,
    shutdown: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<HttpServerHandle> {
    let Parts {
        intake,
        readiness,
        admin,
        metrics,
    } = parts;
    listener
        .set_nonblocking(true)
        .context("cannot configure the HTTP socket")?;
    let addr = listener
        .local_addr()
        .context("the HTTP socket has no address")?;
    let intake = web::Data::new(intake);
    let readiness = web::Data::new(readiness);
    let metrics = web::Data::new(metrics);
    let openapi = web::Data::new(admin::OpenApiDocument(
        serde_json::to_value(admin::openapi(admin.clone()))
            .context("cannot render the OpenAPI document")?,
    ));
    let routes_admin = admin.clone();
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(intake.clone())
            .app_data(readiness.clone())
            .app_data(openapi.clone())
            .app_data(metrics.clone())
            // Before the `/api` scope, whose every route needs the admin token.
            .service(
                web::resource("/api/openapi.json")
                    .route(web::get().to(admin::openapi_json))
                    .default_service(web::to(admin::method_not_allowed_get)),
            )
            .into_utoipa_app();
        admin::mount(app, routes_admin.clone())
            .into_app()
            .configure(intake::routes)
            .configure(crate::console::routes)
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(render_metrics))
            .route("/readyz", web::get().to(readyz))
            .default_service(web::to(crate::web::not_found))
    })
    .workers(workers.max(1))
    // Signals reach the process's cancellation token, which stops this server below.
    .disable_signals()
    .shutdown_timeout(shutdown.as_secs().max(1))
    .listen(listener)
    .context("cannot serve HTTP")?
    .run();
    let handle = server.handle();
    let running = tokio::spawn(server);
    let stopped = tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(true).await;
        let _ = running.await;
        admin.wait_for_syncs().await;
    });
    Ok(HttpServerHandle { addr, stopped })
}

/// Starts the small listener of `worker` and `reconcile`: `/metrics`, `/healthz`, `/readyz`.
pub fn start_probes(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<HttpServerHandle> {
    listener
        .set_nonblocking(true)
        .context("cannot configure the metrics socket")?;
    let addr = listener
        .local_addr()
        .context("the metrics socket has no address")?;
    let readiness = web::Data::new(readiness);
    let metrics = web::Data::new(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(readiness.clone())
            .app_data(metrics.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render_metrics))
            .default_service(web::to(crate::web::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .context("cannot serve metrics")?
    .run();
    let handle = server.handle();
    let running = tokio::spawn(server);
    let stopped = tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(true).await;
        let _ = running.await;
    });
    Ok(HttpServerHandle { addr, stopped })
}

/// Prometheus's scrape.
async fn render_metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render(&metrics.handle, &metrics.sampler).await)
}

/// Liveness: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness. The webhook endpoint can hold a job while either RabbitMQ (directly) or Redis (the
/// spool) takes it: a RabbitMQ outage alone must not take every `serve` out of its Service, the
/// spool exists for exactly that. A worker or a reconciler needs both. The body shows each.
async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let ping = tokio::time::timeout(Duration::from_secs(1), async {
        redis::cmd("PING")
            .query_async::<String>(&mut readiness.redis.clone())
            .await
    })
    .await;
    let redis_up = matches!(ping, Ok(Ok(_)));
    let broker_up = readiness.broker.is_connected();
    let state = |up: bool| if up { "up" } else { "down" };
    let ready = if readiness.either_suffices {
        redis_up || broker_up
    } else {
        redis_up && broker_up
    };
    let body = json!({
        "status": match (redis_up, broker_up) {
            (true, true) => "ready",
            (false, false) => "not_ready",
            _ => "degraded",
        },
        "redis": state(redis_up),
        "rabbitmq": state(broker_up),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
