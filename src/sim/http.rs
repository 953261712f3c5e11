//! The simulator's Aircall-facing HTTP surface: `/v1/…` with Basic auth, rate-limit headers and
//! fault injection, and the signed recording links. Behaviour lives in `state.rs`.

use std::collections::HashMap;
use std::io;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Value, json};

use super::model;
use super::recording::{AudioKind, CHUNK_BYTES};
use super::state::{Download, ListQuery, Refusal, SimState};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/ping", web::get().to(ping))
        .route("/v1/calls", web::get().to(list_calls))
        .route("/v1/calls/{id}", web::get().to(get_call))
        .route("/v1/users", web::get().to(list_users))
        .route("/v1/webhooks", web::get().to(list_webhooks))
        .route("/v1/webhooks", web::post().to(create_webhook))
        .route("/v1/webhooks/{id}", web::get().to(get_webhook))
        .route("/v1/webhooks/{id}", web::put().to(update_webhook))
        .route("/v1/webhooks/{id}", web::delete().to(delete_webhook))
        .route("/recordings/{company}/{file}", web::get().to(recording))
        .route("/voicemails/{company}/{file}", web::get().to(voicemail));
}

pub(crate) async fn not_found() -> HttpResponse {
    json_response(404, &json!({"message": "Not Found"}), &[])
}

fn json_response(status: u16, body: &Value, headers: &[(&'static str, String)]) -> HttpResponse {
    let mut builder = HttpResponse::build(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    for (name, value) in headers {
        builder.insert_header((*name, value.as_str()));
    }
    if status == 204 {
        return builder.finish();
    }
    builder
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

/// Authenticates, counts against the rate limit, applies faults and latency, then answers with
/// `handler`'s result and the rate-limit headers.
async fn api(
    state: &SimState,
    req: &HttpRequest,
    endpoint: &'static str,
    handler: impl FnOnce(&model::Company) -> Result<(u16, Value), Refusal>,
) -> HttpResponse {
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let company = match state.authenticate(authorization) {
        Ok(company) => company,
        Err((status, body)) => return json_response(status, &body, &[]),
    };
    let admission = state.admit(company, endpoint);
    if !admission.latency.is_zero() {
        tokio::time::sleep(admission.latency).await;
    }
    let (status, body) = match admission.refusal {
        Some(refused) => refused,
        None => handler(&admission.company).unwrap_or_else(|refused| refused),
    };
    state.record_status(&admission.company, status);
    json_response(status, &body, &admission.headers)
}

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn bad_request(message: &str) -> Refusal {
    (400, json!({ "message": message }))
}

fn list_query(req: &HttpRequest, path: &'static str) -> Result<ListQuery, Refusal> {
    let q = query_map(req);
    let int = |name: &str| -> Result<Option<i64>, Refusal> {
        q.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad_request(&format!("{name} must be an integer")))
            })
            .transpose()
    };
    let flag = |name: &str| q.get(name).is_some_and(|v| v == "true");
    let requested_per_page = int("per_page")?.unwrap_or(20).max(1) as u64;
    Ok(ListQuery {
        path,
        from: int("from")?,
        to: int("to")?,
        page: int("page")?.unwrap_or(1).max(1) as u64,
        requested_per_page,
        // Aircall serves 20 by default and never more than 50.
        per_page: requested_per_page.min(50),
        descending: q.get("order").is_some_and(|o| o == "desc"),
        fetch_contact: flag("fetch_contact"),
        short_urls: flag("fetch_short_urls"),
    })
}

fn json_body(body: &Bytes) -> Result<Value, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(bad_request("Body must be a JSON object")),
    }
}

async fn ping(state: web::Data<SimState>, req: HttpRequest) -> HttpResponse {
    api(&state, &req, "ping", |_| Ok((200, json!({"ping": "pong"})))).await
}

async fn list_calls(state: web::Data<SimState>, req: HttpRequest) -> HttpResponse {
    let query = list_query(&req, "v1/calls");
    api(&state, &req, "list_calls", |company| {
        state.list_calls(company, &query?).map(|v| (200, v))
    })
    .await
}

async fn get_call(
    state: web::Data<SimState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let q = query_map(&req);
    let flag = |name: &str| q.get(name).is_some_and(|v| v == "true");
    api(&state, &req, "get_call", |company| {
        let id: u64 = id
            .parse()
            .map_err(|_| (404, json!({"message": "Not Found"})))?;
        state
            .get_call(company, id, flag("fetch_contact"), flag("fetch_short_urls"))
            .map(|v| (200, v))
    })
    .await
}

async fn list_users(state: web::Data<SimState>, req: HttpRequest) -> HttpResponse {
    let query = list_query(&req, "v1/users");
    api(&state, &req, "list_users", |company| {
        state.list_users(company, &query?).map(|v| (200, v))
    })
    .await
}

async fn list_webhooks(state: web::Data<SimState>, req: HttpRequest) -> HttpResponse {
    let query = list_query(&req, "v1/webhooks");
    api(&state, &req, "list_webhooks", |company| {
        state.list_webhooks(company, &query?).map(|v| (200, v))
    })
    .await
}

async fn create_webhook(state: web::Data<SimState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    api(&state, &req, "create_webhook", |company| {
        state
            .create_webhook(company, &json_body(&body)?)
            .map(|v| (201, v))
    })
    .await
}

async fn get_webhook(
    state: web::Data<SimState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    api(&state, &req, "get_webhook", |company| {
        state.get_webhook(company, &id).map(|v| (200, v))
    })
    .await
}

async fn update_webhook(
    state: web::Data<SimState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: Bytes,
) -> HttpResponse {
    api(&state, &req, "update_webhook", |company| {
        state
            .update_webhook(company, &id, &json_body(&body)?)
            .map(|v| (200, v))
    })
    .await
}

async fn delete_webhook(
    state: web::Data<SimState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    api(&state, &req, "delete_webhook", |company| {
        state
            .delete_webhook(company, &id)
            .map(|()| (200, json!({})))
    })
    .await
}

async fn recording(
    state: web::Data<SimState>,
    req: HttpRequest,
    path: web::Path<(u64, String)>,
) -> HttpResponse {
    audio(&state, &req, path.into_inner(), AudioKind::Recording)
}

async fn voicemail(
    state: web::Data<SimState>,
    req: HttpRequest,
    path: web::Path<(u64, String)>,
) -> HttpResponse {
    audio(&state, &req, path.into_inner(), AudioKind::Voicemail)
}

/// S3 answers errors in XML.
fn s3_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN))
        .content_type("application/xml")
        .body(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ))
}

fn audio(
    state: &SimState,
    req: &HttpRequest,
    (company, file): (u64, String),
    kind: AudioKind,
) -> HttpResponse {
    // S3 refuses a presigned URL that also carries credentials: a client must never send them.
    if req.headers().contains_key(AUTHORIZATION) {
        return s3_error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, \
             Signature query string parameter or the Authorization header should be specified",
        );
    }
    let Some(call) = file
        .strip_suffix(".mp3")
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return s3_error(404, "NoSuchKey", "The specified key does not exist.");
    };
    match state.download(company, call, kind, &query_map(req)) {
        Err((status, code, message)) => s3_error(status, code, message),
        Ok(download) => stream_audio(download),
    }
}

/// Streams an audio file chunk by chunk; a truncation fault ends the stream with an error,
/// which closes the connection mid-body as a broken download would.
fn stream_audio(download: Download) -> HttpResponse {
    let Download {
        source,
        chunked,
        cut_after,
    } = download;
    let size = source.size();
    let stream = futures_util::stream::unfold(
        (source, 0u64, false),
        move |(mut source, sent, failed)| async move {
            if failed {
                return None;
            }
            if let Some(cut) = cut_after.filter(|cut| sent >= *cut) {
                let error = io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("cut after {cut} bytes"),
                );
                return Some((Err(error), (source, sent, true)));
            }
            let room = cut_after.map_or(CHUNK_BYTES as u64, |cut| {
                (cut - sent).min(CHUNK_BYTES as u64)
            });
            let chunk = source.next_chunk(room as usize)?;
            let sent = sent + chunk.len() as u64;
            Some((Ok::<Bytes, io::Error>(chunk), (source, sent, false)))
        },
    );
    let mut builder = HttpResponse::Ok();
    builder.content_type("audio/mpeg");
    if chunked {
        builder.body(BodyStream::new(stream))
    } else {
        builder.body(SizedStream::new(size, stream))
    }
}
