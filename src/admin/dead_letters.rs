//! `/api/dead-letters…`: the jobs that used up their attempts, with their errors, and their
//! replay into the import queue.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};

use super::views::{DeadLettersQuery, ReplayBody};
use super::{Admin, confirm_timeout, dead_letter_error, json_body};
use crate::queue::dead_letters::{DeadLetterPage, Replayed, Selection};
use crate::web::{ApiError, ErrorBody};

pub(super) fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list).service(replay);
}

/// The dead letters, oldest first, each with its error (the job's last failure, or why
/// RabbitMQ gave up on it). Reading takes nothing from the queue.
#[utoipa::path(
    operation_id = "list_dead_letters",
    tag = "dead letters",
    params(DeadLettersQuery),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 409, description = "Another listing or replay is reading the queue (`dead_letters_busy`).", body = ErrorBody),
    )
)]
#[get("/dead-letters")]
async fn list(
    admin: web::Data<Admin>,
    query: web::Query<DeadLettersQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = super::page_size(query.limit, 100, 1000)?;
    let page = admin
        .dead_letters
        .list(query.connection_id.as_deref(), limit)
        .await
        .map_err(dead_letter_error)?;
    Ok(HttpResponse::Ok().json(page))
}

/// Queue dead letters again, as fresh jobs: one (`job_id`) or all (`all: true`, optionally of
/// one `connection_id` and with one `failure_code`). Each job is confirmed by RabbitMQ in the
/// import queue before it leaves the dead letters.
#[utoipa::path(
    operation_id = "replay_dead_letters",
    tag = "dead letters",
    request_body = ReplayBody,
    responses(
        (status = 200, description = "Replayed.", body = Replayed),
        (status = 404, description = "No dead letter has this `job_id` (`dead_letter_not_found`).", body = ErrorBody),
        (status = 409, description = "Another listing or replay is reading the queue (`dead_letters_busy`).", body = ErrorBody),
        (status = 422, description = "The dead letter cannot be read by this version (`dead_letter_unreadable`); it stays.", body = ErrorBody),
    )
)]
#[post("/dead-letters/replay")]
async fn replay(
    admin: web::Data<Admin>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let selection = replay_selection(json_body(&req, payload).await)?;
    let done = admin
        .dead_letters
        .replay(&selection, confirm_timeout(&admin))
        .await
        .map_err(dead_letter_error)?;
    if matches!(selection, Selection::One(_)) && done.replayed == 0 {
        return Err(if done.unreadable > 0 {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "dead_letter_unreadable",
                "this dead letter is not a job this version can read; it stays in the queue",
            )
        } else {
            ApiError::not_found(
                "dead_letter_not_found",
                "no dead letter has this job id (replayed already?)",
            )
        });
    }
    Ok(HttpResponse::Ok().json(done))
}

/// What a replay body, as read, asks for. An untagged enum's own error says only "no variant
/// matched", so every refusal of the body's content says what is expected instead; refusals of
/// the request itself (size, media type, deadline) pass unchanged.
pub(crate) fn replay_selection(body: Result<ReplayBody, ApiError>) -> Result<Selection, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_request",
            "give either `{\"job_id\": …}`, or `{\"all\": true}` (with `connection_id` and `failure_code` to narrow it)",
        )
    };
    match body {
        Ok(ReplayBody::One(one)) if !one.job_id.is_empty() => Ok(Selection::One(one.job_id)),
        Ok(ReplayBody::All(all)) if all.all => Ok(Selection::All {
            connection_id: all.connection_id,
            failure_code: all.failure_code,
        }),
        Ok(_) => Err(invalid()),
        Err(e) if e.code == "invalid_request" => Err(invalid()),
        Err(e) => Err(e),
    }
}
