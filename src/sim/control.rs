//! `/_sim/…`: the simulator's control API, for demos and tests driving a simulator in another
//! process (in-process tests call [`SimState`] directly). Unauthenticated by design: the
//! simulator is a local test double.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::model::{CallSpec, CompanySpec, Faults};
use super::state::SimState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/_sim")
            .app_data(web::JsonConfig::default().error_handler(|err, _| {
                let message = err.to_string();
                actix_web::error::InternalError::from_response(
                    err,
                    HttpResponse::BadRequest().json(json!({"message": message})),
                )
                .into()
            }))
            .route("/companies", web::get().to(companies))
            .route("/companies", web::post().to(add_company))
            .route("/companies/{id}", web::get().to(company))
            .route("/companies/{id}/calls", web::get().to(calls))
            .route("/companies/{id}/calls", web::post().to(add_call))
            .route("/companies/{id}/faults", web::put().to(company_faults))
            .route("/companies/{id}/events", web::post().to(emit_event))
            .route("/companies/{id}/stats", web::get().to(stats))
            .route("/companies/{id}/webhooks", web::get().to(webhooks))
            .route("/companies/{id}/api_keys", web::post().to(generate_api_key))
            .route("/api_keys/{api_id}", web::delete().to(revoke_api_key))
            .route(
                "/companies/{id}/webhooks/{webhook}/deactivate",
                web::post().to(deactivate),
            )
            .route("/faults", web::put().to(faults))
            .route("/clock/advance", web::post().to(advance_clock))
            .route("/clock", web::get().to(clock)),
    );
}

async fn generate_api_key(state: web::Data<SimState>, id: web::Path<u64>) -> HttpResponse {
    match state.generate_api_key(*id) {
        Some((api_id, api_token)) => {
            HttpResponse::Created().json(json!({ "api_id": api_id, "api_token": api_token }))
        }
        None => missing("company"),
    }
}

async fn revoke_api_key(state: web::Data<SimState>, api_id: web::Path<String>) -> HttpResponse {
    if state.revoke_api_key(&api_id) {
        HttpResponse::NoContent().finish()
    } else {
        missing("API key")
    }
}

fn missing(what: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "message": format!("no such {what}") }))
}

fn found<T: serde::Serialize>(value: Option<T>, what: &str) -> HttpResponse {
    match value {
        Some(v) => HttpResponse::Ok().json(v),
        None => missing(what),
    }
}

async fn companies(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.companies())
}

async fn add_company(state: web::Data<SimState>, spec: web::Json<CompanySpec>) -> HttpResponse {
    match state.add_company(spec.into_inner()) {
        Ok(info) => HttpResponse::Created().json(info),
        Err(message) => HttpResponse::Conflict().json(json!({ "message": message })),
    }
}

async fn company(state: web::Data<SimState>, id: web::Path<u64>) -> HttpResponse {
    found(state.company_info(*id), "company")
}

#[derive(Deserialize)]
struct TruthQuery {
    #[serde(default)]
    sha256: bool,
}

async fn calls(
    state: web::Data<SimState>,
    id: web::Path<u64>,
    q: web::Query<TruthQuery>,
) -> HttpResponse {
    found(state.calls_truth(*id, q.sha256), "company")
}

async fn add_call(
    state: web::Data<SimState>,
    id: web::Path<u64>,
    spec: web::Json<CallSpec>,
) -> HttpResponse {
    match state.add_call(*id, &spec) {
        Some(call) => HttpResponse::Created().json(json!({ "id": call })),
        None => missing("company"),
    }
}

async fn company_faults(
    state: web::Data<SimState>,
    id: web::Path<u64>,
    faults: web::Json<Faults>,
) -> HttpResponse {
    if state.set_faults(Some(*id), faults.into_inner()) {
        HttpResponse::NoContent().finish()
    } else {
        missing("company")
    }
}

async fn faults(state: web::Data<SimState>, faults: web::Json<Faults>) -> HttpResponse {
    state.set_faults(None, faults.into_inner());
    HttpResponse::NoContent().finish()
}

async fn stats(state: web::Data<SimState>, id: web::Path<u64>) -> HttpResponse {
    found(state.stats(*id), "company")
}

async fn webhooks(state: web::Data<SimState>, id: web::Path<u64>) -> HttpResponse {
    found(state.webhooks(*id), "company")
}

async fn deactivate(state: web::Data<SimState>, path: web::Path<(u64, String)>) -> HttpResponse {
    let (company, webhook) = path.into_inner();
    if state.deactivate_webhook(company, &webhook) {
        HttpResponse::NoContent().finish()
    } else {
        missing("webhook")
    }
}

#[derive(Deserialize)]
struct EventSpec {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

async fn emit_event(
    state: web::Data<SimState>,
    id: web::Path<u64>,
    spec: web::Json<EventSpec>,
) -> HttpResponse {
    let EventSpec { event, data } = spec.into_inner();
    if state.emit_event(*id, &event, data) {
        HttpResponse::Accepted().finish()
    } else {
        missing("company")
    }
}

#[derive(Deserialize)]
struct Advance {
    seconds: u64,
}

async fn advance_clock(state: web::Data<SimState>, body: web::Json<Advance>) -> HttpResponse {
    state.advance_clock(Duration::from_secs(body.seconds));
    HttpResponse::Ok().json(json!({ "now": state.clock.now_s() }))
}

async fn clock(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "now": state.clock.now_s() }))
}
