//! The chaos run's service: its processes started and connected to the simulator, the faults
//! inflicted on them and the recovery from each, the wait for everything to settle.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aircall_ingest::config::DEVELOPMENT_SECRET_KEY;
use aircall_ingest::queue::QueueNames;
use aircall_ingest::sim::{
    CallTruth, CompanyInfo, CompanySpec, Faults, RunningSimulator, SimSettings,
};
use serde_json::{Value, json};

use super::processes::{BrokerStopped, PrivateRedis, Process, exit, free_port, rabbitmqctl};
use super::verdict::{eligible, stored_files};
use super::{ADMIN_TOKEN, CONNECTION, Plan};
use crate::helpers::{amqp, queue_depth};

pub(super) struct Run {
    pub(super) dir: PathBuf,
    pub(super) storage_root: PathBuf,
    pub(super) sim: RunningSimulator,
    pub(super) company: CompanyInfo,
    pub(super) redis: PrivateRedis,
    pub(super) serve: Process,
    pub(super) workers: Vec<Process>,
    pub(super) reconcile: Process,
    pub(super) serve_url: String,
    pub(super) names: QueueNames,
    pub(super) prefix: String,
    pub(super) http: reqwest::Client,
}

impl Run {
    pub(super) async fn start() -> Run {
        let id = format!("{:08x}", fastrand::u32(..));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{id}"));
        let storage_root = dir.join("data");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let redis = PrivateRedis::start(dir.join("redis")).await;

        let sim = RunningSimulator::start(
            SimSettings {
                seed: 8,
                webhook_delay: Duration::from_secs(2),
                webhook_retry_initial: Duration::from_secs(1),
                workers: 2,
                ..SimSettings::default()
            },
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        // Sixty calls of the last ten days for the first import; the live ones come from
        // `stream_calls`.
        let company = sim
            .state
            .add_company(CompanySpec {
                name: Some("Chaos".into()),
                seed: 8,
                agents: 6,
                history_calls: 60,
                history_days: 10,
                ..CompanySpec::default()
            })
            .unwrap();

        let prefix = format!("chaos-{id}");
        let serve_port = free_port();
        let serve_url = format!("http://127.0.0.1:{serve_port}");
        let retry_delays_ms = "1000,2000,5000,10000,20000";
        let base: Vec<(String, String)> = [
            ("AIRCALL_INGEST_MODE", "development".to_string()),
            ("AIRCALL_INGEST_REDIS_URL", redis.url()),
            ("AIRCALL_INGEST_REDIS_KEY_PREFIX", prefix.clone()),
            ("AIRCALL_INGEST_QUEUE__PREFIX", prefix.clone()),
            (
                "AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS",
                retry_delays_ms.into(),
            ),
            (
                "AIRCALL_INGEST_AIRCALL_BASE_URL",
                sim.base_url.as_str().into(),
            ),
            ("AIRCALL_INGEST_PUBLIC_URL", serve_url.clone()),
            (
                "AIRCALL_INGEST_STORAGE__ROOT",
                storage_root.to_string_lossy().into(),
            ),
            ("AIRCALL_INGEST_IMPORT__RECORDING_HOSTS", "127.0.0.1".into()),
            (
                "AIRCALL_INGEST_IMPORT__PENDING_RECHECK_INITIAL_MS",
                "10000".into(),
            ),
            (
                "AIRCALL_INGEST_IMPORT__PENDING_RECHECK_MAX_MS",
                "30000".into(),
            ),
            ("AIRCALL_INGEST_WORKER__LEASE_MS", "15000".into()),
            ("AIRCALL_INGEST_RECONCILE__INTERVAL_MS", "30000".into()),
            ("AIRCALL_INGEST_RECONCILE__JITTER_MS", "5000".into()),
            ("AIRCALL_INGEST_RECONCILE__TICK_MS", "1000".into()),
            ("AIRCALL_INGEST_RECONCILE__LAG_S", "10".into()),
            ("AIRCALL_INGEST_LOG__FORMAT", "json".into()),
            (
                "AIRCALL_INGEST_LOG__LEVEL",
                "info,aircall_ingest=debug".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let process = |name: &str, args: &[&str], port: u16| {
            let mut env = base.clone();
            if name != "serve" {
                env.push((
                    "AIRCALL_INGEST_METRICS_LISTEN".into(),
                    format!("127.0.0.1:{port}"),
                ));
            }
            Process {
                name: name.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env,
                log: dir.join("logs").join(format!("{name}.log")),
                ready_url: format!("http://127.0.0.1:{port}/readyz"),
                child: None,
            }
        };
        let listen = format!("127.0.0.1:{serve_port}");
        let mut run = Run {
            serve: process("serve", &["serve", "--listen", &listen], serve_port),
            workers: vec![
                process("worker-1", &["worker"], free_port()),
                process("worker-2", &["worker"], free_port()),
            ],
            reconcile: process("reconcile", &["reconcile"], free_port()),
            names: QueueNames::new(&aircall_ingest::config::QueueSettings {
                prefix: prefix.clone(),
                retry_delays_ms: retry_delays_ms
                    .split(',')
                    .map(|d| d.parse().unwrap())
                    .collect(),
                ..Default::default()
            }),
            dir,
            storage_root,
            sim,
            company,
            redis,
            serve_url,
            prefix,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        run.serve.start();
        for worker in &mut run.workers {
            worker.start();
        }
        run.reconcile.start();
        assert!(
            run.all_ready(Duration::from_secs(60)).await,
            "every process started; see {}",
            run.dir.join("logs").display()
        );
        run.connect().await;
        // Faults only once connected: connecting is an operator's act, not part of the run.
        run.sim.state.set_faults(
            None,
            Faults {
                drop_webhook_share: 0.20,
                duplicate_webhook_share: 0.05,
                webhook_jitter_ms: 1_500,
                error_5xx_share: 0.05,
                rate_limit_429_share: 0.05,
                truncate_recording_share: 0.05,
                latency_ms: 0,
            },
        );
        run
    }

    /// Connects the company through the admin API, its paying agents as paying users.
    pub(super) async fn connect(&self) {
        let users: Vec<&str> = self
            .company
            .agents
            .iter()
            .filter(|a| a.paying)
            .map(|a| a.email.as_str())
            .collect();
        let response = self
            .admin(reqwest::Method::POST, "/connections")
            .json(&json!({
                "id": CONNECTION,
                "api_id": self.company.api_id,
                "api_token": self.company.api_token,
                "users": users,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    pub(super) fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api{path}", self.serve_url))
            .bearer_auth(ADMIN_TOKEN)
    }

    pub(super) fn processes(&self) -> impl Iterator<Item = &Process> {
        std::iter::once(&self.serve)
            .chain(&self.workers)
            .chain(std::iter::once(&self.reconcile))
    }

    /// Whether every process answers `/readyz` with 200, waiting up to `within`.
    pub(super) async fn all_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let mut ready = true;
            for process in self.processes() {
                let ok = self
                    .http
                    .get(&process.ready_url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ready &= ok;
            }
            if ready {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ids of the calls with a stored metadata document.
    pub(super) fn stored_ids(&self) -> BTreeSet<u64> {
        stored_files(&self.storage_root)
            .into_iter()
            .filter(|(_, ext, _)| ext == "json")
            .map(|(id, _, _)| id)
            .collect()
    }

    /// When a call that ended after `since_s` (simulator time) was first seen stored.
    pub(super) async fn first_import_after(
        &self,
        since_s: i64,
        within: Duration,
    ) -> Option<Instant> {
        let started = Instant::now();
        while started.elapsed() < within {
            let ended: HashMap<u64, i64> = self
                .sim
                .state
                .calls_truth(self.company.id, false)
                .unwrap()
                .into_iter()
                .filter_map(|t| Some((t.id, t.ended_at?)))
                .collect();
            if self
                .stored_ids()
                .iter()
                .any(|id| ended.get(id).is_some_and(|end| *end > since_s))
            {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    pub(super) async fn spool_depth(&self) -> Option<u64> {
        let client = redis::Client::open(self.redis.url()).ok()?;
        let manager = redis::aio::ConnectionManager::new(client).await.ok()?;
        aircall_ingest::queue::spool::Spool::new(manager, &self.prefix)
            .depth()
            .await
            .ok()
    }

    /// Runs the faults in order, each at its share of the traffic time after a warm-up of 45 s
    /// (calls last up to 4 minutes, so calls end at a steady rate only after a while), or when
    /// the one before has recovered if that is later; measures how each was recovered from.
    pub(super) async fn inflict_faults(&mut self, plan: &Plan, t0: Instant) -> Vec<FaultRecord> {
        let warm_up = Duration::from_secs(45);
        let window = plan
            .traffic
            .saturating_sub(warm_up + Duration::from_secs(15));
        let schedule = [
            (0.0, Fault::KillWorker),
            (0.15, Fault::RestartRabbitmq),
            (0.35, Fault::RestartRedis),
            (0.50, Fault::KillWorker),
            (0.65, Fault::RestartServe),
            (0.80, Fault::RestartRabbitmq),
        ];
        let mut records = Vec::new();
        for (share, fault) in schedule {
            let due = warm_up + window.mul_f64(share);
            tokio::time::sleep(due.saturating_sub(t0.elapsed())).await;
            let at = t0.elapsed();
            let started = Instant::now();
            let detail = self.inflict(fault).await;
            let outage = started.elapsed();
            let restored_s = self.sim.state.clock.now_s();
            let restored = Instant::now();
            if fault == Fault::RestartRabbitmq {
                rabbitmqctl(&["await_startup"]).await;
            }
            let ready = self
                .all_ready(Duration::from_secs(120))
                .await
                .then(|| restored.elapsed());
            let spool_drained = if fault == Fault::RestartRabbitmq {
                let mut drained = None;
                while restored.elapsed() < Duration::from_secs(120) {
                    if self.spool_depth().await == Some(0) {
                        drained = Some(restored.elapsed());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drained
            } else {
                None
            };
            let flowing = self
                .first_import_after(restored_s, Duration::from_secs(120))
                .await
                .map(|seen| seen - restored);
            let record = FaultRecord {
                fault,
                detail,
                at,
                outage,
                ready,
                spool_drained,
                flowing,
            };
            println!("[chaos] {record}");
            records.push(record);
        }
        records
    }

    pub(super) async fn inflict(&mut self, fault: Fault) -> String {
        match fault {
            Fault::KillWorker => {
                let worker = &mut self.workers[0];
                worker.signal("KILL");
                let status = worker.wait_exit(Duration::from_secs(10)).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                worker.start();
                format!(
                    "worker-1 SIGKILL (exit: {}), started again after 1 s",
                    exit(status)
                )
            }
            Fault::RestartRabbitmq => {
                let stopped = BrokerStopped::stop().await;
                // Webhooks keep coming: what serve could not hand to RabbitMQ waits in the spool.
                let down = Instant::now();
                let mut spooled = 0;
                while down.elapsed() < Duration::from_secs(10) {
                    spooled = spooled.max(self.spool_depth().await.unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                stopped.start().await;
                format!("`rabbitmqctl stop_app`, 10 s down, `start_app`; {spooled} jobs spooled")
            }
            Fault::RestartRedis => {
                self.redis.restart(Duration::from_secs(5)).await;
                "SIGTERM, 5 s down, started again on its append-only file".into()
            }
            Fault::RestartServe => {
                self.serve.signal("TERM");
                let status = self.serve.wait_exit(Duration::from_secs(40)).await;
                self.serve.start();
                format!("SIGTERM (exit: {}), started again at once", exit(status))
            }
        }
    }

    /// After the traffic: waits for retries and re-checks, asks for one reconcile pass, then
    /// waits until nothing is in flight and every call eligible when the pass started is stored
    /// (or the settle time is over). The time it took, and that moment (simulator time): what
    /// was eligible then must be stored.
    pub(super) async fn settle(&self, plan: &Plan) -> (Duration, i64) {
        let started = Instant::now();
        // Every call ended and every recording there (the traffic makes none that ends later
        // than a minute after it), then time for webhook retries, re-checks (at most 30 s apart)
        // and a pass (30 s).
        let last_event_s = self
            .truth()
            .iter()
            .filter_map(|t| t.recording_ready_at.max(t.ended_at))
            .max()
            .unwrap_or(0);
        let quiet_until_s = (last_event_s + 15).max(self.sim.state.clock.now_s() + 70);
        while self.sim.state.clock.now_s() < quiet_until_s {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The pass lists up to `reconcile.lag_s` (10 s) before it starts: everything eligible by
        // then must be stored.
        let required_s = self.sim.state.clock.now_s() - 10;
        let asked_ms = self.sim.state.clock.now_ms();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "the sync was never accepted");
            let response = self
                .admin(
                    reqwest::Method::POST,
                    &format!("/connections/{CONNECTION}/sync"),
                )
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                202 => break,
                409 => tokio::time::sleep(Duration::from_millis(500)).await,
                status => panic!("sync: {status} {}", response.text().await.unwrap()),
            }
        }
        // Until a pass that started after the request has finished.
        let started_after_request = |view: &Value| {
            view["sync"]["last_run_at"]
                .as_str()
                .and_then(|at| {
                    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64 >= asked_ms)
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "the requested pass never finished"
            );
            let view = self.connection_view().await;
            if view["sync"]["running"] == false && started_after_request(&view) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        while started.elapsed() < plan.settle {
            let truth = self.truth();
            let eligible = eligible(&truth, required_s);
            let stored = self.stored_ids();
            let missing = eligible.iter().filter(|t| !stored.contains(&t.id)).count();
            if missing == 0 && self.in_flight().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        (started.elapsed(), required_s)
    }

    /// Stops every process with SIGTERM, all at once; `name: exit status` of each.
    pub(super) async fn stop_all(&mut self) -> Vec<String> {
        for process in self.processes() {
            process.signal("TERM");
        }
        let mut stopped = Vec::new();
        let processes = std::iter::once(&mut self.serve)
            .chain(&mut self.workers)
            .chain(std::iter::once(&mut self.reconcile));
        for process in processes {
            let status = process.wait_exit(Duration::from_secs(40)).await;
            stopped.push(format!("{}: {}", process.name, exit(status)));
        }
        stopped
    }

    pub(super) async fn connection_view(&self) -> Value {
        self.admin(reqwest::Method::GET, &format!("/connections/{CONNECTION}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Jobs waiting in the import and retry queues and the spool.
    pub(super) async fn in_flight(&self) -> u64 {
        let mut total = self.spool_depth().await.unwrap_or(1);
        for queue in std::iter::once(&self.names.import).chain(&self.names.retries) {
            total += u64::from(queue_depth(queue).await);
        }
        total
    }

    pub(super) fn truth(&self) -> Vec<CallTruth> {
        self.sim.state.calls_truth(self.company.id, false).unwrap()
    }

    /// Secrets found in the processes' logs, by name.
    pub(super) fn secrets_in_logs(&self) -> Vec<String> {
        let webhook_tokens: Vec<String> = self
            .sim
            .state
            .webhooks(self.company.id)
            .unwrap()
            .into_iter()
            .map(|w| w.token)
            .collect();
        let secret_key = String::from_utf8_lossy(DEVELOPMENT_SECRET_KEY).to_string();
        let mut secrets = vec![
            ("the Aircall API token", self.company.api_token.clone()),
            ("the admin token", ADMIN_TOKEN.to_string()),
            ("the secret key", secret_key),
            ("the RabbitMQ password", "guest:guest".to_string()),
        ];
        secrets.extend(webhook_tokens.into_iter().map(|t| ("a webhook token", t)));
        let mut found = Vec::new();
        for process in self.processes() {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            for (what, secret) in &secrets {
                if !secret.is_empty() && log.contains(secret.as_str()) {
                    found.push(format!("{what} in {}.log", process.name));
                }
            }
        }
        found
    }

    /// Removes the run's queues, files and Redis; the logs stay (everything stays when the run
    /// failed, to look at).
    pub(super) async fn clean_up(self) {
        let amqp = amqp().await;
        aircall_ingest::queue::topology::delete(&amqp.channel, &self.names).await;
        amqp.close().await;
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let _ = std::fs::remove_dir_all(dir.join("redis"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    KillWorker,
    RestartRabbitmq,
    RestartRedis,
    RestartServe,
}

#[derive(Debug)]
pub(super) struct FaultRecord {
    pub(super) fault: Fault,
    pub(super) detail: String,
    /// From the start of the traffic.
    pub(super) at: Duration,
    /// From the fault to the part being back.
    pub(super) outage: Duration,
    /// From the part being back to every process ready.
    pub(super) ready: Option<Duration>,
    /// From RabbitMQ being back to the spool being empty.
    pub(super) spool_drained: Option<Duration>,
    /// From the part being back to a call that ended after it being stored.
    pub(super) flowing: Option<Duration>,
}
