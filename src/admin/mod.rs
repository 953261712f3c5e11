//! The admin API under `/api`: what the platform's operators use to connect a customer's Aircall
//! company, keep it healthy and answer "my calls are not being imported".
//!
//! JSON in and out; every request but `GET /api/openapi.json` needs `Authorization: Bearer
//! <admin_token>`, compared in constant time. Refusals are `{"error":{"code","message"}}` with a
//! stable code; request bodies are validated with messages that name the field. The OpenAPI
//! document is collected from the handlers registered here ([`openapi`]), so the document and
//! the routes cannot disagree.
//!
//! Handlers hold no logic of their own beyond validation and mapping: connecting, rotating and
//! disconnecting live in [`crate::connections`], passes in [`crate::reconcile`], dead letters in
//! [`crate::queue::dead_letters`]. Nothing here logs a credential.

mod connections;
mod dead_letters;
mod views;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use anyhow::Context as _;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::{AppExt as _, UtoipaApp};

use crate::app::Context;
use crate::connections::ConnectionId;
use crate::crypto::AdminToken;
use crate::import::lease::Leases;
use crate::import::storage::Storage;
use crate::queue::dead_letters::{DeadLetterError, DeadLetters};
use crate::reconcile::{Pass, Reconciler};
use crate::web::{ApiError, ErrorBody};

pub use views::*;

// The checks body-taking handlers make, reached by the fuzz checks (`crate::fuzzing`).
pub(crate) use connections::{CheckedConnect, check_connect, credentials, paying_users};
pub(crate) use dead_letters::replay_selection;

/// Largest admin request body (a paying-users list of ~10,000 emails fits).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most a client may take to send an admin request's body.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Most dead letters one request reads (and holds unacked while it runs).
const DEAD_LETTER_SCAN: u32 = 10_000;

/// What the admin API works with. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub ctx: Context,
    pub reconciler: Reconciler,
    pub dead_letters: DeadLetters,
    /// Where imported recordings are read from.
    pub storage: Storage,
    token: Arc<AdminToken>,
    /// Passes started from the API run here, and are cancelled with the server.
    syncs: TaskTracker,
    /// At most `reconcile.concurrency` of them at once (a migration connecting thousands of
    /// companies queues their first imports here rather than running them all together).
    sync_places: Arc<tokio::sync::Semaphore>,
    cancel: CancellationToken,
}

impl Admin {
    /// Fails when the storage settings do not work.
    pub fn new(ctx: Context, cancel: CancellationToken) -> anyhow::Result<Self> {
        Ok(Self {
            storage: Storage::from_settings(&ctx.settings.storage).context("storage")?,
            sync_places: Arc::new(tokio::sync::Semaphore::new(
                ctx.settings.reconcile.concurrency.max(1),
            )),
            reconciler: ctx.reconciler(),
            dead_letters: DeadLetters::new(
                ctx.broker.clone(),
                Leases::new(
                    ctx.redis.clone(),
                    &ctx.settings.redis_key_prefix,
                    Duration::from_secs(60),
                ),
                &ctx.settings.redis_key_prefix,
                DEAD_LETTER_SCAN,
            ),
            token: ctx.admin_token.clone(),
            ctx,
            syncs: TaskTracker::new(),
            cancel,
        })
    }

    /// Makes the connection due (so a reconciler picks it up even if this process stops) and
    /// runs a pass now, in the background. Called after a change is stored, so it does not fail
    /// the request: a pass that cannot start now runs at the connection's next due time.
    async fn start_sync(&self, id: &ConnectionId) {
        if let Err(e) = self.reconciler.state.make_due(id).await {
            warn!(connection = %id, error = %e, "cannot mark the connection due");
        }
        let (reconciler, cancel, id) = (self.reconciler.clone(), self.cancel.clone(), id.clone());
        let places = self.sync_places.clone();
        self.syncs.spawn(async move {
            let _place = tokio::select! {
                place = places.acquire_owned() => place,
                // Shutting down: the connection is due, a reconciler takes it.
                () = cancel.cancelled() => return,
            };
            match reconciler.run_connection(&id, &cancel).await {
                Ok(Pass::Ran(_)) => {}
                Ok(Pass::Skipped(why)) => info!(connection = %id, why, "requested sync not run"),
                Err(e) => warn!(connection = %id, error = %e, "requested sync failed"),
            }
        });
    }

    /// Waits for the passes started here (they stop early once the server's token fired).
    pub async fn wait_for_syncs(&self) {
        self.syncs.close();
        self.syncs.wait().await;
    }
}

/// Adds the admin routes under `/api` to an app.
pub fn mount<T>(app: UtoipaApp<T>, admin: Admin) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(
        utoipa_actix_web::scope("/api")
            .app_data(web::Data::new(admin))
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::bad_request("invalid_query", e.to_string()).into()
                }),
            )
            .wrap(actix_web::middleware::from_fn(authorize))
            .configure(connections::routes)
            .configure(dead_letters::routes)
            .default_service(web::to(fallback)),
    )
}

/// What `/api` answers when no route matched: 405 with `Allow` for a documented path asked
/// with another method, else 404.
async fn fallback(req: HttpRequest, document: Option<web::Data<OpenApiDocument>>) -> HttpResponse {
    let allowed = document.and_then(|d| allowed_methods(&d.0, req.path()));
    match allowed {
        Some(methods) => {
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} takes {}", req.path(), methods.join(", ")),
            )
            .error_response();
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")) {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::ALLOW, value);
            }
            response
        }
        None => crate::web::not_found().await,
    }
}

/// The methods the OpenAPI document lists for the path template `path` matches.
fn allowed_methods(document: &serde_json::Value, path: &str) -> Option<Vec<String>> {
    let asked: Vec<&str> = path.split('/').collect();
    document["paths"]
        .as_object()?
        .iter()
        .find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == asked.len()
                && parts
                    .iter()
                    .zip(&asked)
                    .all(|(p, a)| (p.starts_with('{') && !a.is_empty()) || p == a);
            matches.then(|| {
                item.as_object()
                    .into_iter()
                    .flat_map(|methods| methods.keys())
                    .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                    .map(|m| m.to_uppercase())
                    .collect()
            })
        })
}

/// The OpenAPI document of the admin API, collected from the registered handlers.
pub fn openapi(admin: Admin) -> utoipa::openapi::OpenApi {
    let app = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi());
    let (_, mut api) = mount(app, admin).split_for_parts();
    StandardErrors.modify(&mut api);
    api
}

/// Answers a method other than GET on a GET-only resource.
pub async fn method_not_allowed_get() -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource takes GET",
    )
    .error_response();
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("GET"),
    );
    response
}

/// The OpenAPI document, rendered once when the server starts.
pub struct OpenApiDocument(pub serde_json::Value);

/// Serves the OpenAPI document (no token needed: it describes, it does not reveal).
pub async fn openapi_json(document: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok().json(&document.0)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "aircall-ingest admin API",
        description = "Connect customers' Aircall companies, keep them healthy, and see why each call was or was not imported."
    ),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "connections", description = "Aircall companies connected to the platform"),
        (name = "calls", description = "What became of each call, and why"),
        (name = "dead letters", description = "Jobs that used up their attempts"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The `admin_token` setting."))
                    .build(),
            ),
        );
    }
}

/// Adds to every operation the refusals any admin request may get, so the document lists every
/// status the API can answer.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let standard = [
            (
                "400",
                "The request is invalid; the message names the field.",
            ),
            ("401", "Missing or wrong admin token."),
            ("413", "The body is over 1 MiB."),
            ("415", "The body is not application/json."),
            ("408", "The body did not arrive within 10 s."),
            ("500", "An unexpected failure (logged with its cause)."),
            (
                "503",
                "Redis or RabbitMQ is unavailable; retry after `Retry-After` seconds.",
            ),
        ];
        let error = || {
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let has_body = operation.request_body.is_some();
                for (status, description) in standard {
                    if !has_body && (status == "408" || status == "413" || status == "415") {
                        continue;
                    }
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(description)
                                    .content("application/json", error())
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// Lets a request through only with `Authorization: Bearer <admin_token>`.
async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let admin = req.app_data::<web::Data<Admin>>().cloned();
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match (admin, presented) {
        (Some(admin), Some(token)) if admin.token.matches(token) => None,
        (_, None) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send the admin token as `Authorization: Bearer <token>`",
        )),
        _ => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the admin token is wrong",
        )),
    };
    // The route template, never the path itself: a label per connection would grow forever.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    match refusal {
        None => {
            let response = next.call(req).await?;
            crate::metrics::admin_request(&route, response.status().as_u16());
            Ok(response.map_into_left_body())
        }
        Some(error) => {
            crate::metrics::admin_request(&route, error.status.as_u16());
            let mut response = error.error_response();
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// Reads a JSON body into `T`; a refusal names the field at fault.
async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    crate::web::require_json(req)?;
    let body = crate::web::read_body(req, payload, MAX_BODY_BYTES, BODY_DEADLINE).await?;
    parse_json_body(&body)
}

/// Reads the bytes of a JSON request body into `T`: the whole document must be one `T` (nothing
/// after it); a refusal is 400 `invalid_request` and names the field at fault. The pure half of
/// every body-taking handler, public so the fuzz checks read bodies exactly as handlers do.
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("the body is not valid: {inner}")
        } else {
            format!("`{path}`: {inner}")
        };
        ApiError::bad_request("invalid_request", message)
    })?;
    deserializer.end().map_err(|e| {
        ApiError::bad_request("invalid_request", format!("the body is not valid: {e}"))
    })?;
    Ok(value)
}

/// A `limit` query parameter: `default` when absent, 400 outside `1..=max`.
fn page_size(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit`: from 1 to {max}"),
        )),
    }
}

/// A connection id from the path: 404 for one that cannot exist.
fn connection_id(text: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(text).map_err(|_| unknown_connection())
}

fn unknown_connection() -> ApiError {
    ApiError::not_found("unknown_connection", "no connection has this id")
}

fn redis_unavailable(e: redis::RedisError) -> ApiError {
    warn!(error = %e, "admin request: Redis failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
        "Redis is unavailable; try again shortly (GET the resource first: a change may have been stored before the failure)",
    )
    .retry_after(5)
}

fn dead_letter_error(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::Busy => ApiError::new(
            StatusCode::CONFLICT,
            "dead_letters_busy",
            "another listing or replay is reading the dead-letter queue; try again in a moment",
        )
        .retry_after(5),
        DeadLetterError::Redis(e) => redis_unavailable(e),
        DeadLetterError::Broker(e) => {
            warn!(error = %e, "admin request: RabbitMQ failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rabbitmq_unavailable",
                "RabbitMQ is unavailable; try again shortly",
            )
            .retry_after(5)
        }
    }
}

/// How long a request may wait for RabbitMQ to confirm a replayed job.
fn confirm_timeout(admin: &Admin) -> Duration {
    admin.ctx.settings.queue.connect_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, Settings};

    fn document() -> serde_json::Value {
        let settings = Settings {
            mode: Mode::Development,
            ..Settings::default()
        };
        let ctx = Context::new(settings).unwrap();
        serde_json::to_value(openapi(Admin::new(ctx, CancellationToken::new()).unwrap())).unwrap()
    }

    #[tokio::test]
    async fn the_document_lists_every_operation_once_with_its_refusals() {
        let document = document();
        let mut ids = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            assert!(path.starts_with("/api/"), "{path}");
            for (method, operation) in item.as_object().unwrap() {
                ids.push(operation["operationId"].as_str().unwrap().to_string());
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                let has_body = operation.get("requestBody").is_some();
                assert_eq!(responses.contains_key("413"), has_body, "{method} {path}");
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
        assert_eq!(count, 13);
        assert_eq!(
            document["security"],
            serde_json::json!([{ "admin_token": [] }])
        );
        assert_eq!(
            document["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
    }

    #[tokio::test]
    async fn known_paths_asked_with_another_method_are_told_which_methods_they_take() {
        let document = document();
        assert_eq!(
            allowed_methods(&document, "/api/connections/acme/users"),
            Some(vec!["GET".to_string(), "PUT".to_string()])
        );
        assert_eq!(
            allowed_methods(&document, "/api/connections"),
            Some(vec!["GET".to_string(), "POST".to_string()])
        );
        assert_eq!(
            allowed_methods(&document, "/api/connections/acme/nope"),
            None
        );
        assert_eq!(allowed_methods(&document, "/api/connections//users"), None);
    }
}
