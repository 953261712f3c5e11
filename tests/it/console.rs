//! The operator console end to end in real headless Chromium: `serve` with its admin API and a
//! worker against real Redis and RabbitMQ, the simulator playing Aircall. This test prepares
//! what the browser looks at (an imported call, a call by an unknown agent, a real dead letter),
//! then runs `tests/console/console.test.mjs` (Playwright driving Debian's `chromium`) and
//! checks what the clicks did on the service's side. Screenshots of every page land in
//! `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

use aircall_ingest::config::DEVELOPMENT_ADMIN_TOKEN;
use aircall_ingest::sim::{CallSpec, CompanySpec, Faults};
use reqwest::Method;
use serde_json::json;

use crate::admin::AdminTest;
use crate::helpers::eventually_async;

/// The browser the tests drive (Debian's package; `CHROMIUM` overrides).
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Node.js: `NODE`, else the one `deploy/local/browser.sh` fetched where the system's is too
/// old, else the system's.
fn node() -> PathBuf {
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/node/bin/node");
    std::env::var_os("NODE")
        .map(PathBuf::from)
        .or_else(|| fetched.is_file().then_some(fetched))
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// The most the browser steps may take (they take seconds).
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

fn console_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_connects_explains_each_call_and_replays_dead_letters() {
    let tests = console_tests();
    assert!(
        tests.join("node_modules/playwright-core").is_dir() && chromium().is_file(),
        "the console tests need Playwright and Chromium: deploy/local/test.sh installs both \
         (npm ci --prefix tests/console; apt-get install chromium)"
    );
    let mut t = AdminTest::start("console", |s| {
        s.aircall.max_attempts = 2;
        s.queue.retry_delays_ms = vec![100];
    })
    .await;
    t.start_worker();
    let http = reqwest::Client::new();
    let base = t.app.url.trim_end_matches('/').to_string();
    let page = http.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    let missing = http
        .get(format!("{base}/console/assets/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let seeded = "support";
    t.connect(seeded).await;
    t.wait_report_after(seeded, 0).await;

    // An imported call, a call by an agent the platform does not know…
    let imported = t.add_call(&t.call());
    let unknown_agent = t.unpaid();
    let skipped = t.add_call(&CallSpec {
        agent_email: Some(unknown_agent.clone()),
        ..t.call()
    });
    t.wait_call(seeded, imported, |c| c["outcome"] == "imported")
        .await;
    t.wait_call(seeded, skipped, |c| c["reason"] == "user_not_matched")
        .await;

    // …and a call whose recording download always breaks off: after its attempts, a dead letter.
    let breaking = Faults {
        truncate_recording_share: 1.0,
        ..Faults::default()
    };
    assert!(t.sim.state.set_faults(Some(t.company.id), breaking));
    // Announced by no webhook (Aircall posts two events per call: two jobs), found by a pass: one job.
    let dead = t.add_call(&CallSpec {
        notify: false,
        ..t.call()
    });
    let (status, _) = t
        .send(
            Method::POST,
            &format!("/api/connections/{seeded}/sync"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    assert!(
        eventually_async(Duration::from_secs(30), || async {
            t.get("/api/dead-letters").await.1["total"] == json!(1)
        })
        .await,
        "{}",
        t.get("/api/dead-letters").await.1
    );
    assert!(
        t.sim
            .state
            .set_faults(Some(t.company.id), Faults::default())
    );

    // A company nobody connected yet, for the browser to connect.
    let fresh = t
        .sim
        .state
        .add_company(CompanySpec {
            agents: 2,
            ..CompanySpec::default()
        })
        .unwrap();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let imported_bytes = t.call().recording_bytes.unwrap();

    let run = {
        let mut command = Command::new(node());
        command
            .kill_on_drop(true)
            .current_dir(&tests)
            .args(["--test", "console.test.mjs"])
            .env("CONSOLE_URL", &base)
            .env("ADMIN_TOKEN", DEVELOPMENT_ADMIN_TOKEN)
            .env("GOOD_API_ID", &fresh.api_id)
            .env("GOOD_API_TOKEN", &fresh.api_token)
            .env("SEEDED_CONNECTION", seeded)
            .env("UNKNOWN_AGENT", &unknown_agent)
            .env("IMPORTED_CALL", imported.to_string())
            .env("IMPORTED_BYTES", imported_bytes.to_string())
            .env("DEAD_LETTER_CALL", dead.to_string())
            .env("SCREENSHOTS", &screenshots)
            .env("CHROMIUM", chromium());
        tokio::time::timeout(BROWSER_DEADLINE, command.output())
            .await
            .expect("the browser steps finish within 5 minutes")
            .expect("node runs")
    };
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{output}");
    assert!(run.status.success(), "the browser tests failed:\n{output}");

    // What the clicks did: acme is connected and active with the users typed in…
    let (status, acme) = t.get("/api/connections/acme").await;
    assert_eq!(status, 200, "{acme}");
    assert_eq!(acme["status"], "active", "{acme}");
    assert_eq!(acme["api_id"], json!(fresh.api_id));
    let (_, users) = t.get("/api/connections/acme/users").await;
    assert_eq!(
        users["emails"],
        json!(["ana@acme.example", "carla@acme.example"])
    );
    // …refused credentials connected nothing…
    for refused in ["globex", "initech"] {
        let (status, _) = t.get(&format!("/api/connections/{refused}")).await;
        assert_eq!(status, 404, "{refused} was connected");
    }
    // …and the replayed dead letter was imported once the recording could be downloaded.
    let replayed = t
        .wait_call(seeded, dead, |c| c["outcome"] == "imported")
        .await;
    assert_eq!(replayed["recording"]["bytes"], json!(imported_bytes));
    let (_, dead_letters) = t.get("/api/dead-letters").await;
    assert_eq!(dead_letters["total"], json!(0), "{dead_letters}");
    t.stop().await;
}
