//! The webhook endpoint: `POST /webhooks/aircall/{connection}`.
//!
//! A `200` always means the job is durably held: confirmed by RabbitMQ (`queued`), or written to
//! the Redis spool while RabbitMQ cannot confirm in time (`spooled`). Events this service does not
//! handle are answered `ignored` so Aircall does not retry them. Everything refused gets a JSON
//! error with a stable code and nothing is queued. Every answer comes within
//! `intake.answer_budget_ms` (3 s by default), inside Aircall's 5 s: each step gets what is left.
//!
//! This module never logs a token, and never blocks on a broker it knows is down.

pub mod envelope;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use redis::aio::ConnectionManager;
use serde_json::json;
use tracing::{info, warn};

use crate::aircall::models::HANDLED_EVENTS;
use crate::config::IntakeSettings;
use crate::connections::{ConnectionId, ConnectionStore};
use crate::crypto::Keys;
use crate::queue::message::new_job_id;
use crate::queue::{Broker, IMPORT_JOB_VERSION, ImportJob, Message, Spool, Trigger};
use crate::web::ApiError;
use envelope::EnvelopeError;

/// What the webhook endpoint needs.
#[derive(Clone)]
pub struct Intake {
    pub connections: ConnectionStore,
    pub keys: Arc<Keys>,
    pub broker: Broker,
    pub spool: Spool,
    pub redis: ConnectionManager,
    pub settings: IntakeSettings,
    /// Prefix of the redelivery markers.
    pub key_prefix: String,
}

/// How an accepted webhook was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Confirmed by RabbitMQ.
    Queued,
    /// Held in the Redis spool; the drainer will move it to RabbitMQ.
    Spooled,
    /// An event this service does not import from.
    Ignored,
    /// The same (connection, event, call) was accepted moments ago.
    Duplicate,
}

impl Accepted {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Spooled => "spooled",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/aircall/{connection}")
            .route(web::post().to(receive))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "webhooks are POSTed",
    )
    .error_response()
}

/// The most a redelivery-marker lookup may take: it is an optimisation that fails open.
const MARKER_WAIT: Duration = Duration::from_millis(100);

/// What one request turned into, for the log line.
#[derive(Default)]
struct Trace {
    event: Option<String>,
    call_id: Option<u64>,
}

async fn receive(
    intake: web::Data<Intake>,
    connection: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_job_id, str::to_string);
    let mut trace = Trace::default();
    let outcome = intake
        .handle(&connection, &req, payload, &request_id, started, &mut trace)
        .await;
    let latency_us = started.elapsed().as_micros() as u64;
    crate::metrics::webhook(
        trace.event.as_deref(),
        match &outcome {
            Ok(accepted) => accepted.as_str(),
            Err(error) => error.code,
        },
        started.elapsed(),
    );
    // The path is not trusted: log at most its first 64 characters.
    let connection: String = connection.chars().take(64).collect();
    let event = trace.event.as_deref();
    let call_id = trace.call_id;
    let mut response = match outcome {
        Ok(accepted) => {
            info!(
                connection,
                event,
                call_id,
                outcome = accepted.as_str(),
                latency_us,
                request_id,
                "webhook accepted"
            );
            HttpResponse::Ok().json(json!({ "status": accepted.as_str() }))
        }
        Err(error) => {
            let status = error.status.as_u16();
            if error.status.is_server_error() || error.status == StatusCode::UNAUTHORIZED {
                warn!(
                    connection,
                    event,
                    call_id,
                    outcome = error.code,
                    status,
                    latency_us,
                    request_id,
                    "webhook refused"
                );
            } else {
                info!(
                    connection,
                    event,
                    call_id,
                    outcome = error.code,
                    status,
                    latency_us,
                    request_id,
                    "webhook refused"
                );
            }
            error.error_response()
        }
    };
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    response
}

fn from_envelope(e: EnvelopeError) -> ApiError {
    let code = match e {
        EnvelopeError::InvalidJson(_) => "invalid_json",
        EnvelopeError::NotAnEnvelope(_) => "not_an_envelope",
        EnvelopeError::InvalidCallId(_) => "invalid_call_id",
    };
    ApiError::bad_request(code, e.to_string())
}

impl Intake {
    async fn handle(
        &self,
        connection: &str,
        req: &HttpRequest,
        payload: web::Payload,
        request_id: &str,
        started: Instant,
        trace: &mut Trace,
    ) -> Result<Accepted, ApiError> {
        let budget = self.settings.answer_budget();
        let left = || budget.saturating_sub(started.elapsed());
        crate::web::require_json(req).map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the webhook as application/json",
            )
        })?;
        let unknown = || ApiError::not_found("unknown_connection", "no connection has this id");
        let id = ConnectionId::parse(connection).map_err(|_| unknown())?;
        let body =
            crate::web::read_body(req, payload, self.settings.max_body_bytes, left()).await?;
        // The fingerprint this process holds, however old, costs no Redis read (whatever the
        // number of connections); without one, or when the token does not match it (it may
        // have changed), Redis says.
        let cached = self.connections.cached_fingerprint(&id);
        let lookup = || async {
            match self.connections.webhook_fingerprint(&id, left() / 2).await {
                Ok(Some(fingerprint)) => Ok(fingerprint),
                Ok(None) => Err(unknown()),
                Err(e) => {
                    warn!(error = %e, connection = %id, "cannot look up a connection");
                    Err(self.unavailable())
                }
            }
        };
        let fingerprint = match cached {
            Some(fingerprint) => fingerprint,
            None => lookup().await?,
        };
        let body = envelope::parse(&body).map_err(from_envelope)?;
        let token = body.token().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "the body carries no token",
            )
        })?;
        let matches = self.keys.token_matches(&token, &fingerprint)
            || (cached.is_some() && self.keys.token_matches(&token, &lookup().await?));
        if !matches {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not this connection's webhook token",
            ));
        }
        let envelope = body.envelope().map_err(from_envelope)?;
        trace.event = Some(envelope.event.to_string());
        if !HANDLED_EVENTS.contains(&envelope.event.as_ref()) {
            return Ok(Accepted::Ignored);
        }
        let call_id = envelope.call_id().map_err(from_envelope)?;
        trace.call_id = Some(call_id.0);
        let marker = format!(
            "{}:intake:seen:{{{id}}}:{}:{call_id}",
            self.key_prefix, envelope.event
        );
        if self.seen(&marker).await {
            return Ok(Accepted::Duplicate);
        }
        let message = Message::ImportCall(ImportJob {
            version: IMPORT_JOB_VERSION,
            job_id: new_job_id(),
            connection_id: id.to_string(),
            call_id,
            trigger: Trigger::Webhook,
            snapshot: envelope.snapshot(),
            event: Some(envelope.event.into_owned()),
            event_at: envelope.timestamp,
            received_at_ms: time::OffsetDateTime::now_utc()
                .unix_timestamp_nanos()
                .div_euclid(1_000_000) as i64,
            request_id: Some(request_id.to_string()),
            attempt: 0,
            failure: None,
        });
        let body = message.encode();
        // Leave the spool half of what remains, should RabbitMQ not confirm.
        let confirm_wait = self.settings.broker_confirm_timeout().min(left() / 2);
        let accepted = match self
            .broker
            .publish_bytes((&message).into(), &body, confirm_wait)
            .await
        {
            Ok(()) => Accepted::Queued,
            Err(e) => {
                warn!(error = %e, connection = %id, call_id = call_id.0, "RabbitMQ did not confirm a job; spooling it");
                match tokio::time::timeout(left(), self.spool.push(&body)).await {
                    Ok(Ok(())) => Accepted::Spooled,
                    failed => {
                        let reason = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "Redis did not answer in time".to_string(),
                        };
                        warn!(error = reason, connection = %id, call_id = call_id.0, "cannot spool a job either");
                        return Err(self.unavailable());
                    }
                }
            }
        };
        self.remember(marker);
        Ok(accepted)
    }

    fn unavailable(&self) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the webhook cannot be stored right now; retry later",
        )
        .retry_after(self.settings.retry_after_s)
    }

    /// The body, refused with 413 past the limit (by its announced length, or while reading).
    /// Whether this (connection, event, call) was stored moments ago. Fails open: when Redis
    /// cannot tell quickly, the webhook is handled (the worker is idempotent).
    async fn seen(&self, marker: &str) -> bool {
        if self.settings.dedupe_ttl().is_zero() {
            return false;
        }
        let exists = tokio::time::timeout(MARKER_WAIT, async {
            redis::cmd("EXISTS")
                .arg(marker)
                .query_async::<i64>(&mut self.redis.clone())
                .await
        })
        .await;
        matches!(exists, Ok(Ok(1)))
    }

    /// Records a stored webhook, after it was stored and without delaying the answer: a marker
    /// written before a crash between marking and storing would shed Aircall's retry of a job
    /// nobody holds.
    fn remember(&self, marker: String) {
        let ttl = self.settings.dedupe_ttl();
        if ttl.is_zero() {
            return;
        }
        let mut redis = self.redis.clone();
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&marker)
                .arg("1")
                .arg("PX")
                .arg(ttl.as_millis() as u64);
            let _ = tokio::time::timeout(Duration::from_secs(1), set.query_async::<()>(&mut redis))
                .await;
        });
    }
}
