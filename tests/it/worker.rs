//! The import worker end to end: the simulator's webhooks reach `serve`, jobs go through the
//! real RabbitMQ, the worker imports recordings into real storage, outcomes land in the real
//! Redis. Failure cases drive [`Importer::process`] step by step instead of sleeping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aircall_ingest::aircall::CallId;
use aircall_ingest::config::Settings;
use aircall_ingest::connections::{
    self, ConnectionId, ConnectionStatus, Outcome, OutcomeQuery, OutcomeRecord,
};
use aircall_ingest::import::job::CallImported;
use aircall_ingest::import::metadata::CallMetadata;
use aircall_ingest::import::rules::{PayingUsers, PendingReason, SkipReason};
use aircall_ingest::import::{Handled, Importer, Report};
use aircall_ingest::queue::{ImportJob, Message, Trigger};
use aircall_ingest::sim::{
    AudioKind, CallSpec, CompanyInfo, CompanySpec, Faults, RunningSimulator, SimSettings,
    audio_sha256,
};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::helpers::{
    TestApp, amqp, eventually_async, queue_depth, roomy_sim, service_settings, start_sim,
    take_messages,
};

const CONNECTION: &str = "acme";

/// A scratch directory for one test's storage.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aircall-ingest-{test}-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything a worker test needs: the simulator with one company connected through the real
/// connect flow, `serve`, storage in a scratch directory, and a queue bound to `call.imported`.
pub(crate) struct Harness {
    pub(crate) sim: RunningSimulator,
    pub(crate) company: CompanyInfo,
    pub(crate) app: TestApp,
    pub(crate) root: PathBuf,
    events: lapin::Consumer,
    events_link: crate::helpers::Amqp,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Harness {
    pub(crate) async fn start(
        test: &str,
        sim: SimSettings,
        tweak: impl FnOnce(&mut Settings),
    ) -> Harness {
        let spec = CompanySpec {
            agents: 3,
            ..CompanySpec::default()
        };
        Self::start_with(test, sim, spec, tweak).await
    }

    /// As [`Harness::start`], with a company made from `spec`.
    pub(crate) async fn start_with(
        test: &str,
        sim: SimSettings,
        spec: CompanySpec,
        tweak: impl FnOnce(&mut Settings),
    ) -> Harness {
        let sim = start_sim(sim).await;
        let company = sim.state.add_company(spec).unwrap();
        let root = scratch(test);
        let mut settings = service_settings(test);
        settings.aircall_base_url = sim.base_url.clone();
        settings.storage.root = root.clone();
        settings.import.recording_hosts = vec!["127.0.0.1".into()];
        settings.worker.lease_ms = 2_000;
        settings.worker.shutdown_timeout_ms = 2_000;
        settings.queue.retry_delays_ms = vec![200, 400, 800];
        settings.aircall.max_attempts = 2;
        tweak(&mut settings);
        let app = TestApp::spawn(settings).await;

        // Connect through the real flow, so the simulator sends webhooks to this app.
        let ctx = &app.ctx;
        let id = ConnectionId::parse(CONNECTION).unwrap();
        let api_token = secrecy::SecretString::from(company.api_token.clone());
        let client = ctx.aircall.client(
            aircall_ingest::aircall::Credentials {
                api_id: company.api_id.clone(),
                api_token: api_token.clone(),
            },
            CONNECTION,
            CancellationToken::new(),
        );
        connections::connect(connections::ConnectRequest {
            id: id.clone(),
            client: &client,
            api_id: &company.api_id,
            api_token: &api_token,
            public_url: &Url::parse(&app.url).unwrap(),
            store: &ctx.connections,
            outcomes: &ctx.outcomes,
            state: &ctx.reconciler().state,
            keys: &ctx.keys,
            users: &Default::default(),
            now_ms: 0,
        })
        .await
        .unwrap();
        let paying = company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.clone());
        assert!(
            ctx.connections
                .set_paying_users(&id, &PayingUsers::new(paying), 0)
                .await
                .unwrap()
        );

        // A downstream consumer's queue, bound before any event is published.
        let link = amqp().await;
        let events_queue = format!("{}.test-events", ctx.broker.names().import);
        link.channel
            .queue_declare(
                events_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        link.channel
            .queue_bind(
                events_queue.as_str().into(),
                ctx.broker.names().events.as_str().into(),
                "call.imported".into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let events = link
            .channel
            .basic_consume(
                events_queue.as_str().into(),
                "test-events".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        Harness {
            sim,
            company,
            app,
            root,
            events,
            events_link: link,
            worker: None,
        }
    }

    pub(crate) fn id(&self) -> ConnectionId {
        ConnectionId::parse(CONNECTION).unwrap()
    }

    pub(crate) fn importer(&self) -> Importer {
        self.app.ctx.importer(&CancellationToken::new()).unwrap()
    }

    pub(crate) fn start_worker(&mut self) {
        let cancel = CancellationToken::new();
        let task = self.app.ctx.start_worker(&cancel).unwrap();
        self.worker = Some((cancel, task));
    }

    pub(crate) async fn stop_worker(&mut self) {
        if let Some((cancel, task)) = self.worker.take() {
            cancel.cancel();
            let _ = task.await;
        }
    }

    pub(crate) fn paying_agent(&self) -> String {
        self.company
            .agents
            .iter()
            .find(|a| a.paying)
            .unwrap()
            .email
            .clone()
    }

    pub(crate) fn unpaid_agent(&self) -> String {
        self.company
            .agents
            .iter()
            .find(|a| !a.paying)
            .map(|a| a.email.clone())
            .unwrap_or_else(|| "nobody@unpaid.example".into())
    }

    /// A call by a paying agent with a recording of `bytes`, announced by webhooks.
    pub(crate) fn call(&self, bytes: u64) -> CallSpec {
        CallSpec {
            agent_email: Some(self.paying_agent()),
            recording_bytes: Some(bytes),
            ..CallSpec::default()
        }
    }

    pub(crate) fn add_call(&self, spec: &CallSpec) -> u64 {
        self.sim.state.add_call(self.company.id, spec).unwrap()
    }

    pub(crate) async fn outcome(&self, call: u64) -> Option<OutcomeRecord> {
        self.app
            .ctx
            .outcomes
            .get(&self.id(), CallId(call))
            .await
            .unwrap()
    }

    /// Waits until `call` has an outcome matching `wanted`.
    pub(crate) async fn wait_outcome(
        &self,
        call: u64,
        wanted: impl Fn(&OutcomeRecord) -> bool,
    ) -> OutcomeRecord {
        let found = eventually_async(Duration::from_secs(20), || async {
            self.outcome(call).await.is_some_and(|r| wanted(&r))
        })
        .await;
        let record = self.outcome(call).await;
        assert!(found, "call {call}: outcome {record:?}");
        record.unwrap()
    }

    /// Waits for the import jobs of `call` to be queued, and takes them.
    async fn jobs_of(&self, call: u64, at_least: usize) -> Vec<ImportJob> {
        let mut jobs = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while jobs.len() < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no job for call {call}"
            );
            for Message::ImportCall(job) in self.app.take_jobs().await {
                if job.call_id.0 == call {
                    jobs.push(job);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        jobs
    }

    /// The next `call.imported` event, within a few seconds.
    async fn next_event(&mut self) -> Option<CallImported> {
        let delivery = tokio::time::timeout(Duration::from_secs(5), self.events.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(serde_json::from_slice(&delivery.data).unwrap())
    }

    /// Events that arrive within `wait`.
    pub(crate) async fn events_within(&mut self, wait: Duration) -> Vec<CallImported> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout_at(deadline, self.events.next()).await
        {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            events.push(serde_json::from_slice(&delivery.data).unwrap());
        }
        events
    }

    /// Every file under the storage root, relative.
    pub(crate) fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.root, &self.root, &mut files);
        files.sort();
        files
    }

    pub(crate) async fn stop(mut self) {
        self.stop_worker().await;
        self.app.stop().await;
        self.sim.stop().await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_becomes_a_stored_recording_with_metadata_and_an_event() {
    let mut h = Harness::start("worker-e2e", roomy_sim(), |_| {}).await;
    h.start_worker();
    let mut spec = h.call(150_000);
    spec.with_contact = true;
    let call = h.add_call(&spec);

    let record = h
        .wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let stored = record.stored.clone().unwrap();
    let truth = h.sim.state.calls_truth(h.company.id, true).unwrap();
    let truth = truth.iter().find(|t| t.id == call).unwrap();
    let started = time::OffsetDateTime::from_unix_timestamp(truth.started_at).unwrap();
    let day = format!(
        "{:04}/{:02}/{:02}",
        started.year(),
        u8::from(started.month()),
        started.day()
    );
    assert_eq!(
        stored.recording_key,
        format!("{CONNECTION}/{day}/{call}.mp3")
    );
    let file = h.root.join(&stored.recording_key);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 150_000);
    assert_eq!(
        sha256_file(&file),
        audio_sha256(call, AudioKind::Recording, 150_000)
    );
    assert_eq!(Some(&stored.sha256), truth.recording_sha256.as_ref());

    // The metadata document carries every field of the design's table.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.root.join(&stored.metadata_key)).unwrap()).unwrap();
    for field in [
        "call_id",
        "direction",
        "status",
        "started_at",
        "ended_at",
        "duration_s",
        "recording",
        "user",
        "contact",
        "internal_number",
        "external_number",
        "connection_id",
        "trigger",
        "imported_at",
    ] {
        assert!(!json[field].is_null(), "metadata lacks {field}: {json:#}");
    }
    let metadata: CallMetadata = serde_json::from_value(json).unwrap();
    assert_eq!(metadata.call_id, CallId(call));
    assert_eq!(metadata.recording.sha256, stored.sha256);
    assert_eq!(metadata.recording.size_bytes, 150_000);
    assert_eq!(
        metadata.user.as_ref().unwrap().email.as_deref(),
        Some(h.paying_agent().as_str())
    );
    assert_eq!(metadata.trigger, Trigger::Webhook);
    assert!(metadata.contact.as_ref().unwrap().name.is_some());
    assert!(metadata.internal_number.as_ref().unwrap().digits.is_some());
    assert!(metadata.recording.location.starts_with("file:///"));

    // One event, carrying the metadata; the second webhook (comm_assets_generated) adds none.
    let event = h.next_event().await.expect("a call.imported event");
    assert_eq!(event.kind, "call.imported");
    assert_eq!(event.event_id, format!("{CONNECTION}:{call}"));
    assert_eq!(event.metadata, metadata);
    assert!(
        h.events_within(Duration::from_millis(1_500))
            .await
            .is_empty()
    );
    assert_eq!(h.files().len(), 2, "{:?}", h.files());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_skip_reason_is_recorded_with_its_reason() {
    let mut h = Harness::start("worker-skips", roomy_sim(), |s| {
        s.import.max_recording_bytes = 100_000;
    })
    .await;
    h.start_worker();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let paying = h.paying_agent();
    let cases: Vec<(&str, CallSpec)> = vec![
        (
            "outside_window",
            CallSpec {
                started_at: Some(now - 14 * 86_400 - 600),
                ..h.call(10_000)
            },
        ),
        (
            "no_user",
            CallSpec {
                agent_email: None,
                ..h.call(10_000)
            },
        ),
        (
            "user_not_matched",
            CallSpec {
                agent_email: Some(h.unpaid_agent()),
                ..h.call(10_000)
            },
        ),
        (
            "no_recording",
            CallSpec {
                started_at: Some(now - 2 * 86_400),
                recording_bytes: None,
                ..h.call(0)
            },
        ),
        ("recording_too_large", h.call(100_001)),
        (
            "recording_too_large",
            CallSpec {
                without_content_length: true,
                ..h.call(300_000)
            },
        ),
    ];
    let mut calls = Vec::new();
    for (reason, spec) in &cases {
        calls.push((*reason, h.add_call(spec)));
    }
    // At the limit exactly: imported.
    let at_limit = h.add_call(&CallSpec {
        agent_email: Some(paying),
        ..h.call(100_000)
    });
    for (reason, call) in &calls {
        let record = h
            .wait_outcome(*call, |r| r.outcome == Outcome::Skipped)
            .await;
        assert_eq!(record.reason.as_deref(), Some(*reason), "call {call}");
        assert!(!record.explanation().is_empty());
    }
    h.wait_outcome(at_limit, |r| r.outcome == Outcome::Imported)
        .await;

    // Queryable by outcome and reason, newest first.
    let page = h
        .app
        .ctx
        .outcomes
        .list(
            &h.id(),
            &OutcomeQuery {
                reason: Some("recording_too_large".into()),
                limit: 10,
                ..OutcomeQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.items[0].decided_at_ms >= page.items[1].decided_at_ms);
    let counts = h.app.ctx.outcomes.counts(&h.id()).await.unwrap();
    assert_eq!(counts.get("outcome:skipped"), Some(&6), "{counts:?}");
    assert_eq!(counts.get("outcome:imported"), Some(&1), "{counts:?}");
    let unmatched = h.outcome(calls[2].1).await.unwrap();
    assert!(
        unmatched
            .explanation()
            .contains(unmatched.agent_email.as_deref().unwrap()),
        "{}",
        unmatched.explanation()
    );

    // No partial or oversized file anywhere: only the call at the limit is stored.
    let files = h.files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.contains(&at_limit.to_string())));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_recording_is_pending_then_imported_when_aircall_announces_it() {
    let mut h = Harness::start("worker-pending", roomy_sim(), |_| {}).await;
    h.start_worker();
    let call = h.add_call(&CallSpec {
        recording_delay_s: 600,
        ..h.call(20_000)
    });
    let pending = h
        .wait_outcome(call, |r| r.outcome == Outcome::Pending)
        .await;
    assert_eq!(
        pending.reason.as_deref(),
        Some(PendingReason::RecordingNotReady.as_str())
    );
    assert!(pending.recheck_at_ms.unwrap() > pending.decided_at_ms);
    let due = h
        .app
        .ctx
        .outcomes
        .due_pending(&h.id(), i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(due, vec![CallId(call)]);

    // Ten minutes later Aircall posts call.comm_assets_generated with the recording.
    h.sim.state.advance_clock(Duration::from_secs(601));
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let due = h
        .app
        .ctx
        .outcomes
        .due_pending(&h.id(), i64::MAX, 10)
        .await
        .unwrap();
    assert!(due.is_empty(), "no longer pending: {due:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_delivered_five_times_at_once_is_imported_once() {
    let mut h = Harness::start("worker-dupes", roomy_sim(), |_| {}).await;
    let call = h.add_call(&h.call(2_000_000));
    let jobs = h.jobs_of(call, 1).await;
    // Five deliveries of the same job, all waiting before a worker starts.
    for _ in 0..5 {
        let message = Message::ImportCall(jobs[0].clone());
        h.app
            .ctx
            .broker
            .publish(&message, Duration::from_secs(5))
            .await
            .unwrap();
    }
    h.start_worker();
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    // Let every deferred copy come back and find the import done.
    let import_queue = h.app.ctx.broker.names().import.clone();
    let retry_queue = h.app.ctx.broker.names().retries[0].clone();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            queue_depth(&import_queue).await == 0 && queue_depth(&retry_queue).await == 0
        })
        .await
    );
    let events = h.events_within(Duration::from_secs(2)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(h.files().len(), 2, "{:?}", h.files());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_mid_download_is_redelivered_and_completed_without_leftovers() {
    let mut h = Harness::start("worker-killed", roomy_sim(), |s| {
        s.worker.shutdown_timeout_ms = 0;
    })
    .await;
    let size = 150 * 1024 * 1024;
    let call = h.add_call(&h.call(size));
    h.start_worker();
    // Kill the worker while the recording is being written.
    let storage = h
        .app
        .ctx
        .importer(&CancellationToken::new())
        .unwrap()
        .storage;
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            !storage.partial_files().unwrap().is_empty()
        })
        .await,
        "the download never started"
    );
    h.stop_worker().await;
    assert!(
        storage.partial_files().unwrap().is_empty(),
        "an aborted task cleans up"
    );
    assert!(h.outcome(call).await.is_none());

    // A new worker gets the job again (after the dead one's lease lapses) and completes it.
    h.start_worker();
    let record = h
        .wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let file = h.root.join(record.stored.unwrap().recording_key);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    assert_eq!(
        sha256_file(&file),
        audio_sha256(call, AudioKind::Recording, size)
    );
    assert!(storage.partial_files().unwrap().is_empty());
    assert_eq!(h.files().len(), 2, "{:?}", h.files());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_download_is_retried_into_a_correct_file() {
    let h = Harness::start("worker-truncated", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            truncate_recording_share: 1.0,
            ..Faults::default()
        },
    );
    let call = h.add_call(&h.call(500_000));
    let job = h.jobs_of(call, 1).await.remove(0);
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(&report, Report::Retrying { attempt: 1, error } if error.code() == "download_failed"),
        "{report:?}"
    );
    assert!(importer.storage.partial_files().unwrap().is_empty());
    assert!(h.files().is_empty(), "{:?}", h.files());

    // The retry queue hands the job back; the download now completes.
    h.sim
        .state
        .set_faults(Some(h.company.id), Faults::default());
    let retried = h.jobs_of(call, 1).await.remove(0);
    assert_eq!(retried.attempt, 1);
    assert_eq!(retried.failure.as_ref().unwrap().code, "download_failed");
    let report = importer.process(retried).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    let record = h.outcome(call).await.unwrap();
    let file = h.root.join(record.stored.unwrap().recording_key);
    assert_eq!(
        sha256_file(&file),
        audio_sha256(call, AudioKind::Recording, 500_000)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_recording_link_is_fetched_again() {
    let h = Harness::start("worker-expired", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    let call = h.add_call(&h.call(40_000));
    let job = h.jobs_of(call, 1).await.remove(0);
    assert!(job.snapshot.as_ref().unwrap().recording.is_some());
    // Two hours pass at Aircall: the link in the webhook has expired.
    h.sim.state.advance_clock(Duration::from_secs(2 * 3600));
    let before = h.sim.state.stats(h.company.id).unwrap();
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    let after = h.sim.state.stats(h.company.id).unwrap();
    let fetches =
        |s: &aircall_ingest::sim::RequestStats| s.by_endpoint.get("get_call").copied().unwrap_or(0);
    assert_eq!(fetches(&after) - fetches(&before), 1, "{after:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_fetch_waits_for_aircall_s_window() {
    let sim = SimSettings {
        send_retry_after: true,
        ..roomy_sim()
    };
    let h = Harness::start("worker-429", sim, |s| {
        s.aircall.max_attempts = 3;
        s.aircall.max_rate_limit_wait_ms = 5_000;
    })
    .await;
    let importer = h.importer();
    let call = h.add_call(&h.call(10_000));
    let mut job = h.jobs_of(call, 1).await.remove(0);
    // A job without a usable snapshot needs GET /v1/calls/:id.
    job.snapshot = None;
    // Other integrations have spent the company's budget: Aircall answers 429 for a moment.
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            rate_limit_429_share: 1.0,
            ..Faults::default()
        },
    );
    let state = h.sim.state.clone();
    let company = h.company.id;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        state.set_faults(Some(company), Faults::default());
    });
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    let stats = h.sim.state.stats(h.company.id).unwrap();
    assert!(
        stats.by_status.get(&429).copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_every_attempt_ends_in_the_dead_letter_queue_with_its_error() {
    let mut h = Harness::start("worker-dead", roomy_sim(), |_| {}).await;
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            error_5xx_share: 1.0,
            ..Faults::default()
        },
    );
    // A reconciliation job carries no snapshot: the worker must ask Aircall, which fails.
    let job = ImportJob::new(
        CONNECTION,
        CallId(5_999_999_999),
        Trigger::Reconciliation,
        0,
    );
    h.app
        .ctx
        .broker
        .publish(&Message::ImportCall(job), Duration::from_secs(5))
        .await
        .unwrap();
    h.start_worker();
    let dead_queue = h.app.ctx.broker.names().dead.clone();
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            queue_depth(&dead_queue).await == 1
        })
        .await
    );
    let dead = take_messages(&dead_queue).await;
    let Message::ImportCall(dead) = &dead[0];
    assert_eq!(dead.attempt, 3, "every retry queue was used");
    let failure = dead.failure.as_ref().unwrap();
    assert_eq!(failure.code, "aircall_unavailable");
    assert!(failure.message.contains("unavailable"), "{failure:?}");
    let record = h.outcome(5_999_999_999).await.unwrap();
    assert_eq!(record.outcome, Outcome::Failed);
    assert_eq!(record.reason.as_deref(), Some("aircall_unavailable"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_mark_the_connection_and_park_the_job() {
    let h = Harness::start("worker-creds", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    // The customer revoked the key: the stored token no longer works.
    let id = h.id();
    let mut record = h.app.ctx.connections.get(&id).await.unwrap().unwrap();
    record.api_token_sealed = h
        .app
        .ctx
        .keys
        .encrypt(&secrecy::SecretString::from("revoked"), CONNECTION);
    h.app.ctx.connections.delete(&id).await.unwrap();
    assert!(
        h.app
            .ctx
            .connections
            .create(&record, &Default::default())
            .await
            .unwrap()
    );
    let job = ImportJob::new(
        CONNECTION,
        CallId(5_000_000_001),
        Trigger::Reconciliation,
        0,
    );
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(&report, Report::DeadLettered(e) if e.code() == "invalid_credentials"),
        "{report:?}"
    );
    let connection = h.app.ctx.connections.get(&id).await.unwrap().unwrap();
    assert_eq!(connection.status, ConnectionStatus::InvalidCredentials);
    let dead = take_messages(&h.app.ctx.broker.names().dead).await;
    assert_eq!(dead.len(), 1);
    let record = h.outcome(5_000_000_001).await.unwrap();
    assert!(
        record.explanation().contains("API ID"),
        "{}",
        record.explanation()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_url_on_another_host_is_never_fetched_and_aircall_is_asked_instead() {
    let h = Harness::start("worker-ssrf", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    // A trap that notes any connection made to it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = trap.local_addr().unwrap().port();
    let touched = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noted = touched.clone();
    tokio::spawn(async move {
        while trap.accept().await.is_ok() {
            noted.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let call = h.add_call(&h.call(10_000));
    let mut job = h.jobs_of(call, 1).await.remove(0);
    // A forged but validly tokened webhook naming an internal address (here: a host that is
    // not among the recording hosts, yet reachable).
    let snapshot = job.snapshot.as_mut().unwrap();
    snapshot.recording = Some(format!("http://localhost:{port}/latest/meta-data/"));
    let before = h.sim.state.stats(h.company.id).unwrap();
    let report = importer.process(job.clone()).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    assert!(!touched.load(std::sync::atomic::Ordering::SeqCst));
    let after = h.sim.state.stats(h.company.id).unwrap();
    let fetches =
        |s: &aircall_ingest::sim::RequestStats| s.by_endpoint.get("get_call").copied().unwrap_or(0);
    assert_eq!(
        fetches(&after) - fetches(&before),
        1,
        "the real call was fetched"
    );

    // When Aircall itself names a host outside the list, the job is parked with the reason.
    let other = h.add_call(&h.call(10_000));
    let mut job = h.jobs_of(other, 1).await.remove(0);
    job.snapshot = None;
    let strict = Importer {
        downloader: aircall_ingest::import::download::Downloader::new(
            &aircall_ingest::config::ImportSettings {
                recording_hosts: vec!["storage.example.com".into()],
                ..Default::default()
            },
            false,
        )
        .unwrap(),
        ..importer
    };
    let report = strict.process(job).await.unwrap();
    assert!(
        matches!(&report, Report::DeadLettered(e) if e.code() == "recording_url_refused"),
        "{report:?}"
    );
    h.stop().await;
}

/// Found by the sustained-load benchmark: a job that waited in a backlog longer than
/// `import.recording_url_fresh_ms` was fetched from Aircall even when its snapshot alone rules
/// the call out, so a backlog of such jobs cost a 60-a-minute budget one request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_snapshot_still_decides_a_call_its_recording_cannot_bring_in() {
    let h = Harness::start("worker-old-skip", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    let fetches = || {
        h.sim
            .state
            .stats(h.company.id)
            .unwrap()
            .by_endpoint
            .get("get_call")
            .copied()
            .unwrap_or(0)
    };
    let backlog_ms = 3_600_000;
    let unpaid = h.add_call(&CallSpec {
        agent_email: Some(h.unpaid_agent()),
        ..h.call(10_000)
    });
    let mut job = h.jobs_of(unpaid, 1).await.remove(0);
    job.received_at_ms -= backlog_ms;
    let before = fetches();
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(
            report,
            Report::Done(Handled::Skipped(SkipReason::UserNotMatched))
        ),
        "{report:?}"
    );
    assert_eq!(fetches(), before, "decided without asking Aircall");

    // A call the recording decides is fetched again: the old link may be dead.
    let paid = h.add_call(&h.call(10_000));
    let mut job = h.jobs_of(paid, 1).await.remove(0);
    job.received_at_ms -= backlog_ms;
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    assert_eq!(fetches(), before + 1, "the call was fetched once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_for_an_unpaid_agent_is_decided_again_once_the_agent_pays() {
    let h = Harness::start("worker-users", roomy_sim(), |_| {}).await;
    let importer = h.importer();
    let agent = h.unpaid_agent();
    let call = h.add_call(&CallSpec {
        agent_email: Some(agent.clone()),
        ..h.call(10_000)
    });
    let job = h.jobs_of(call, 1).await.remove(0);
    let report = importer.process(job.clone()).await.unwrap();
    assert!(
        matches!(
            report,
            Report::Done(Handled::Skipped(SkipReason::UserNotMatched))
        ),
        "{report:?}"
    );
    let mut users = vec![format!("  {}  ", agent.to_uppercase())];
    users.push(h.paying_agent());
    h.app
        .ctx
        .connections
        .set_paying_users(&h.id(), &PayingUsers::new(users), 0)
        .await
        .unwrap();
    let report = importer.process(job).await.unwrap();
    assert!(
        matches!(report, Report::Done(Handled::Imported)),
        "{report:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_go_to_s3_compatible_storage() {
    let moto = crate::s3::MotoServer::start().await;
    let bucket = format!("worker-{:08x}", fastrand::u32(..));
    moto.create_bucket(&bucket).await;
    let storage_settings = moto.settings(&bucket, "calls");
    let mut h = Harness::start("worker-s3", roomy_sim(), |s| {
        s.storage = storage_settings;
    })
    .await;
    h.start_worker();
    // Above one multipart part (5 MiB), so the upload streams in parts.
    let size = 7 * 1024 * 1024;
    let call = h.add_call(&h.call(size));
    let record = h
        .wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let stored = record.stored.unwrap();
    assert_eq!(
        stored.location,
        format!("s3://{bucket}/calls/{}", stored.recording_key)
    );
    let storage = h.importer().storage;
    let audio = storage.get(&stored.recording_key).await.unwrap().unwrap();
    assert_eq!(audio.len() as u64, size);
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&audio)),
        audio_sha256(call, AudioKind::Recording, size)
    );
    let metadata: CallMetadata =
        serde_json::from_slice(&storage.get(&stored.metadata_key).await.unwrap().unwrap()).unwrap();
    assert_eq!(metadata.recording.location, stored.location);
    assert_eq!(moto.open_multipart_uploads(&bucket).await, 0);
    assert!(h.files().is_empty(), "nothing local: {:?}", h.files());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_mid_download_leaves_one_complete_file() {
    let mut h = Harness::start("worker-sigkill", roomy_sim(), |_| {}).await;
    let size = 150 * 1024 * 1024;
    let call = h.add_call(&h.call(size));
    let s = &h.app.ctx.settings;
    let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_aircall-ingest"))
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AIRCALL_INGEST_MODE", "development")
        .env("AIRCALL_INGEST_REDIS_KEY_PREFIX", &s.redis_key_prefix)
        .env("AIRCALL_INGEST_QUEUE__PREFIX", &s.queue.prefix)
        .env("AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS", "200,400,800")
        .env("AIRCALL_INGEST_STORAGE__ROOT", &h.root)
        .env("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1")
        .env("AIRCALL_INGEST_AIRCALL_BASE_URL", h.sim.base_url.as_str())
        .env("AIRCALL_INGEST_WORKER__LEASE_MS", "2000")
        .env("AIRCALL_INGEST_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let storage = h.importer().storage;
    let started = eventually_async(Duration::from_secs(30), || async {
        !storage.partial_files().unwrap().is_empty()
    })
    .await;
    // SIGKILL: no cleanup, no ack, the lease left to lapse.
    process.kill().unwrap();
    process.wait().unwrap();
    assert!(started, "the worker process never started downloading");
    assert!(
        !storage.partial_files().unwrap().is_empty(),
        "a killed process leaves its temporary file"
    );
    assert!(h.outcome(call).await.is_none());

    h.start_worker();
    let record = h
        .wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let file = h.root.join(record.stored.unwrap().recording_key);
    assert_eq!(
        sha256_file(&file),
        audio_sha256(call, AudioKind::Recording, size)
    );
    assert!(
        storage.partial_files().unwrap().is_empty(),
        "the next import cleaned up"
    );
    assert_eq!(h.files().len(), 2, "{:?}", h.files());
    let events = h.events_within(Duration::from_secs(2)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_is_dead_lettered_and_the_worker_goes_on() {
    let mut h = Harness::start("worker-poison", roomy_sim(), |_| {}).await;
    h.start_worker();
    let broker = &h.app.ctx.broker;
    broker
        .publish_bytes(
            aircall_ingest::queue::broker::Envelope {
                id: Some("poison"),
                kind: Some("import_call"),
            },
            br#"{"type":"import_call","version":99}"#,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let dead_queue = broker.names().dead.clone();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            queue_depth(&dead_queue).await == 1
        })
        .await
    );
    // The next job is imported as usual.
    let call = h.add_call(&h.call(10_000));
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported)
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_rabbitmq_subscribes_again() {
    let mut h = Harness::start("worker-cancelled", roomy_sim(), |_| {}).await;
    h.start_worker();
    let first = h.add_call(&h.call(10_000));
    h.wait_outcome(first, |r| r.outcome == Outcome::Imported)
        .await;
    // Deleting the queue cancels its consumers (basic.cancel from RabbitMQ).
    let link = amqp().await;
    link.channel
        .queue_delete(
            h.app.ctx.broker.names().import.as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
    link.close().await;
    // The worker declares the queue again and consumes from it.
    let import_queue = h.app.ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            consumers(&import_queue).await > 0
        })
        .await,
        "the worker subscribed again"
    );
    let second = h.add_call(&h.call(10_000));
    h.wait_outcome(second, |r| r.outcome == Outcome::Imported)
        .await;
    h.stop().await;
}

/// Consumers of `queue` (a passive declare).
async fn consumers(queue: &str) -> u32 {
    let link = amqp().await;
    let declared = link
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    link.close().await;
    declared.map(|d| d.consumer_count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_import_in_flight_finishes_and_the_rest_waits_in_the_queue() {
    let mut h = Harness::start("worker-drain", roomy_sim(), |s| {
        s.worker.concurrency = 1;
        s.worker.prefetch = 1;
        s.worker.shutdown_timeout_ms = 30_000;
    })
    .await;
    let size = 60 * 1024 * 1024;
    let first = h.add_call(&CallSpec {
        notify: false,
        ..h.call(size)
    });
    let second = h.add_call(&CallSpec {
        notify: false,
        ..h.call(size)
    });
    for call in [first, second] {
        let mut job = ImportJob::new(CONNECTION, CallId(call), Trigger::Manual, 0);
        job.snapshot = None;
        h.app
            .ctx
            .broker
            .publish(&Message::ImportCall(job), Duration::from_secs(5))
            .await
            .unwrap();
    }
    h.start_worker();
    let storage = h.importer().storage;
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            !storage.partial_files().unwrap().is_empty()
        })
        .await
    );
    // SIGTERM while the first import downloads.
    h.stop_worker().await;
    let done: Vec<bool> = vec![
        h.outcome(first)
            .await
            .is_some_and(|r| r.outcome == Outcome::Imported),
        h.outcome(second)
            .await
            .is_some_and(|r| r.outcome == Outcome::Imported),
    ];
    assert_eq!(
        done.iter().filter(|d| **d).count(),
        1,
        "exactly the one in flight finished"
    );
    let import_queue = h.app.ctx.broker.names().import.clone();
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            queue_depth(&import_queue).await == 1
        })
        .await,
        "the job not started is back in the queue"
    );
    assert!(storage.partial_files().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_aircall_does_not_let_the_lease_lapse_under_its_holder() {
    let h = Harness::start("worker-slow-lease", roomy_sim(), |s| {
        s.worker.lease_ms = 1_500;
        s.aircall.request_timeout_ms = 10_000;
        s.aircall.read_timeout_ms = 10_000;
    })
    .await;
    let importer = h.importer();
    let call = h.add_call(&h.call(50_000));
    let mut job = h.jobs_of(call, 1).await.remove(0);
    job.snapshot = None;
    // Aircall answers in 3 s: twice the lease.
    h.sim.state.set_faults(
        Some(h.company.id),
        Faults {
            latency_ms: 3_000,
            ..Faults::default()
        },
    );
    let first = tokio::spawn({
        let importer = importer.clone();
        let job = job.clone();
        async move { importer.process(job).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let second = importer.process(job).await.unwrap();
    assert!(matches!(second, Report::Deferred), "{second:?}");
    let first = first.await.unwrap();
    assert!(
        matches!(first, Report::Done(Handled::Imported)),
        "{first:?}"
    );

    // A write fenced by a lease its writer lost is refused.
    let record = h.outcome(call).await.unwrap();
    let lease_key = aircall_ingest::import::lease::lease_key(
        &h.app.ctx.settings.redis_key_prefix,
        &h.id(),
        CallId(call),
    );
    let written = h
        .app
        .ctx
        .outcomes
        .record_fenced(&h.id(), &record, Some((&lease_key, "not-the-holder")))
        .await
        .unwrap();
    assert_eq!(written, aircall_ingest::connections::Recorded::LeaseLost);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nobody_is_bound_for_is_kept_not_dropped() {
    let mut h = Harness::start("worker-unrouted", roomy_sim(), |_| {}).await;
    // The only consumer's queue goes away.
    h.events_link
        .channel
        .queue_delete(
            format!("{}.test-events", h.app.ctx.broker.names().import)
                .as_str()
                .into(),
            Default::default(),
        )
        .await
        .unwrap();
    h.start_worker();
    let call = h.add_call(&h.call(10_000));
    h.wait_outcome(call, |r| r.outcome == Outcome::Imported && r.announced)
        .await;
    let unrouted = h.app.ctx.broker.names().unrouted.clone();
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            queue_depth(&unrouted).await == 1
        })
        .await
    );
    let kept = take_raw(&unrouted).await;
    let event: CallImported = serde_json::from_slice(&kept[0]).unwrap();
    assert_eq!(event.metadata.call_id, CallId(call));
    h.stop().await;
}

/// Takes every message of `queue`, as bytes.
async fn take_raw(queue: &str) -> Vec<Vec<u8>> {
    let link = amqp().await;
    let mut bodies = Vec::new();
    while let Some(delivery) = link
        .channel
        .basic_get(queue.into(), Default::default())
        .await
        .unwrap()
    {
        bodies.push(delivery.data.clone());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    link.close().await;
    bodies
}
