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
    intake: Intake,
    readiness: Readiness,
    admin: Admin,
    workers: usize,
    shutdown: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<HttpServerHandle> {
    listener
        .set_nonblocking(true)
        .context("cannot configure the HTTP socket")?;
    let addr = listener
        .local_addr()
        .context("the HTTP socket has no address")?;
    let intake = web::Data::new(intake);
    let readiness = web::Data::new(readiness);
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
            .route("/healthz", web::get().to(healthz))
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

/// Liveness: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness of the webhook endpoint: it can hold a job while either RabbitMQ (directly) or Redis
/// (the spool) takes it. A RabbitMQ outage alone must not take every `serve` out of its Service:
/// the spool exists for exactly that. The body shows each dependency.
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
    let ready = redis_up || broker_up;
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
