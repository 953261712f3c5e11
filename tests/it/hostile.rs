//! Hostile requests to the webhook endpoint and the admin API: each gets a clear 4xx, nothing
//! is queued or spooled, and the service stays healthy.

use std::time::Duration;

use aircall_ingest::config::DEVELOPMENT_ADMIN_TOKEN;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, queue_depth, service_settings};

const TOKEN: &str = "hostile-webhook-token";

/// The status line's code of a raw HTTP exchange (0 when the server closed without answering).
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_clear_4xx_and_leave_nothing_behind() {
    let app = TestApp::spawn(service_settings("hostile")).await;
    app.add_connection("acme", TOKEN).await;
    let http = reqwest::Client::new();
    let webhook = format!("{}/webhooks/aircall/acme", app.url);
    let admin = format!("{}/api/connections", app.url);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_envelope = format!(
        r#"{{"resource":"call","event":"call.ended","timestamp":1,"token":"{TOKEN}","data":{deep}}}"#
    );
    let duplicate_token = format!(
        r#"{{"resource":"call","event":"call.ended","timestamp":1,"token":"wrong","token":"{TOKEN}","data":{{"id":1}}}}"#
    );
    let cases: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        (
            "deep nesting, webhook",
            &webhook,
            deep_envelope.into_bytes(),
            false,
        ),
        (
            "deep nesting, admin",
            &admin,
            deep.clone().into_bytes(),
            true,
        ),
        (
            "invalid UTF-8, webhook",
            &webhook,
            b"{\"token\":\"\xff\xfe\",\"event\":\"call.ended\"}".to_vec(),
            false,
        ),
        (
            "invalid UTF-8, admin",
            &admin,
            b"{\"id\":\"\xff\",\"api_id\":\"a\",\"api_token\":\"b\"}".to_vec(),
            true,
        ),
        (
            "wrong types, admin",
            &admin,
            br#"{"id":[1],"api_id":{},"api_token":null}"#.to_vec(),
            true,
        ),
        ("not an object, admin", &admin, b"42".to_vec(), true),
        (
            "duplicate keys, webhook",
            &webhook,
            duplicate_token.into_bytes(),
            false,
        ),
        (
            "duplicate keys, admin",
            &admin,
            br#"{"id":"a","id":"b","api_id":"x","api_token":"y"}"#.to_vec(),
            true,
        ),
        ("empty body, admin", &admin, Vec::new(), true),
    ];
    for (name, url, body, with_token) in cases {
        let mut request = http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if with_token {
            request = request.bearer_auth(DEVELOPMENT_ADMIN_TOKEN);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{name}: {status} {answer}");
        assert!(answer["error"]["code"].is_string(), "{name}: {answer}");
    }

    // Header abuse, spoken raw: a 100 KB header, then 500 headers.
    let addr = app.url.trim_start_matches("http://").to_string();
    let huge = format!(
        "POST /webhooks/aircall/acme HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(100 * 1024)
    );
    let status = raw_status(&addr, huge.as_bytes()).await;
    assert!((400..500).contains(&status), "huge header: {status}");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!(
        "POST /webhooks/aircall/acme HTTP/1.1\r\nHost: x\r\n{many}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let status = raw_status(&addr, many.as_bytes()).await;
    assert!((400..500).contains(&status), "many headers: {status}");
    // Huge bodies: 2 MB announced, refused 413 from the announced length before any of it is
    // read (the webhook's limit is `intake.max_body_bytes`, the admin API's 1 MiB).
    for (path, auth) in [
        ("/webhooks/aircall/acme", String::new()),
        (
            "/api/connections",
            format!("Authorization: Bearer {DEVELOPMENT_ADMIN_TOKEN}\r\n"),
        ),
    ] {
        let huge = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"token\":\"",
            2 << 20
        );
        let status = raw_status(&addr, huge.as_bytes()).await;
        assert_eq!(status, 413, "huge body on {path}");
    }
    // A slow client: headers, then a body that never comes. The webhook's answer budget (3 s)
    // ends it with a 408; the admin API gives a body 10 s.
    let slow = "POST /webhooks/aircall/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    let started = std::time::Instant::now();
    let status = raw_status(&addr, slow.as_bytes()).await;
    assert_eq!(status, 408, "slow client");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let slow_admin = format!(
        "POST /api/connections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEVELOPMENT_ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let status = raw_status(&addr, slow_admin.as_bytes()).await;
    assert_eq!(status, 408, "slow admin client");

    // Nothing queued or spooled, and the service still answers.
    assert_eq!(queue_depth(&app.ctx.broker.names().import).await, 0);
    assert_eq!(app.spool_depth().await, 0);
    let health = http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ok = app
        .post(
            "acme",
            &json!({"resource": "user", "event": "user.created", "timestamp": 1, "token": TOKEN, "data": {"id": 1}}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    app.stop().await;
}
