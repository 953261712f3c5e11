//! Settings of every role: typed, with documented defaults, read from (in order of precedence,
//! lowest first) the defaults below, an optional TOML file (`--config FILE`) and
//! `AIRCALL_INGEST_*` environment variables, where `__` separates nesting levels
//! (`AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS=3` sets `aircall.max_attempts`).
//!
//! Loading validates everything once; every problem is reported with the setting's key, the
//! environment variable that sets it and where the bad value came from. Secrets are `secrecy`
//! types: they never reach `Debug`, a log line or the printed configuration.
//!
//! This module never reads the current directory for a configuration file: the path is explicit.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// Prefix of every environment variable the service reads.
pub const ENV_PREFIX: &str = "AIRCALL_INGEST_";
/// Separator of nesting levels in environment variable names.
pub const ENV_NESTING: &str = "__";

/// Admin token used in development mode when none is configured. Never valid in production.
pub const DEVELOPMENT_ADMIN_TOKEN: &str = "dev-admin-token-not-for-production";
/// Secret key used in development mode when none is configured.
pub const DEVELOPMENT_SECRET_KEY: &[u8; 32] = b"development-key-not-for-prod-use";

/// Every setting of the service. Field comments are the reference documentation; the README's
/// configuration table mirrors them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `production` (the default) refuses to start without `admin_token` and `secret_key`;
    /// `development` fills them with well-known local values and warns about it.
    pub mode: Mode,
    /// RabbitMQ, e.g. `amqp://user:password@rabbitmq:5672/%2f`.
    pub amqp_url: SecretUrl,
    /// Redis, e.g. `redis://:password@redis:6379/0`.
    pub redis_url: SecretUrl,
    /// Prefix of every Redis key this service writes, so several deployments can share a Redis.
    pub redis_key_prefix: String,
    /// Timeout of one Redis command, and of connecting to Redis, in milliseconds.
    pub redis_timeout_ms: u64,
    /// Aircall's public API, without the `/v1` (the simulator's address in local runs).
    pub aircall_base_url: Url,
    /// Where Aircall reaches this service: webhooks are registered at
    /// `{public_url}/webhooks/aircall/{connection}`. Must be HTTPS in production.
    pub public_url: Url,
    /// Bearer token of the admin API. At least 16 characters.
    #[serde(serialize_with = "redact_option")]
    pub admin_token: Option<SecretString>,
    /// 32 random bytes, base64 or hex: encrypts stored Aircall credentials and keys the webhook
    /// token fingerprints. Generate one with `openssl rand -base64 32`.
    #[serde(serialize_with = "redact_option")]
    pub secret_key: Option<SecretString>,
    /// Where recordings and their metadata are stored.
    pub storage: StorageSettings,
    /// The `serve` role.
    pub serve: ServeSettings,
    /// Webhook intake.
    pub intake: IntakeSettings,
    /// RabbitMQ names and delivery policy.
    pub queue: QueueSettings,
    /// The Aircall API client and the shared rate-limit budget.
    pub aircall: AircallSettings,
    /// The import rules and recording downloads.
    pub import: ImportSettings,
    /// The `worker` role.
    pub worker: WorkerSettings,
    /// The `reconcile` role.
    pub reconcile: ReconcileSettings,
    /// How long per-call outcome records are kept.
    pub retention: RetentionSettings,
    /// Logging.
    pub log: LogSettings,
    /// Address of the small HTTP listener of `worker` and `reconcile` (`/metrics`, `/healthz`,
    /// `/readyz`), e.g. `0.0.0.0:9091`; empty for none. `serve` and `all` serve the same paths on
    /// `serve.listen`.
    pub metrics_listen: String,
    /// After SIGTERM or SIGINT, the most the whole process takes to stop, in milliseconds:
    /// longer than every drain (`serve.shutdown_timeout_ms`, `worker.shutdown_timeout_ms`) and
    /// shorter than the orchestrator's grace period (Kubernetes: 30 s by default). Past it the
    /// process exits with status 1; what it was still doing is redelivered by RabbitMQ.
    pub shutdown_deadline_ms: u64,
    /// `AIRCALL_INGEST_*` variables that are not settings (Kubernetes, for one, sets
    /// `AIRCALL_INGEST_SERVICE_HOST` and friends for a Service of that name). Ignored, and
    /// reported at start so a typo does not go unnoticed.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// Run mode; see [`Settings::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Development,
    #[default]
    Production,
}

/// Settings of the HTTP role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// Address the HTTP server binds (`serve --listen` overrides it).
    pub listen: String,
    /// HTTP worker threads (0: one per CPU).
    pub workers: usize,
    /// Time in-flight requests get to finish on shutdown, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

/// Settings of the webhook endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// Largest webhook body accepted, in bytes (Aircall's are a few KiB).
    pub max_body_bytes: usize,
    /// How long a webhook waits for RabbitMQ to confirm its job before the job goes to the
    /// Redis spool instead, in milliseconds.
    pub broker_confirm_timeout_ms: u64,
    /// The most one webhook answer may take, every step included, in milliseconds; each step
    /// gets what is left. Aircall gives up after 5 s.
    pub answer_budget_ms: u64,
    /// How long an accepted (connection, event, call) is remembered to shed Aircall's obvious
    /// redeliveries, in milliseconds (0 turns it off). The worker is idempotent regardless.
    pub dedupe_ttl_ms: u64,
    /// How often a connection's webhook fingerprint held in memory is read again from Redis, in
    /// the background, in milliseconds. A webhook is checked against the held one, however old,
    /// with no Redis read; a token that does not match it is checked against Redis at once.
    pub connection_cache_ttl_ms: u64,
    /// How often the spool drainer looks for spooled jobs, in milliseconds.
    pub spool_drain_interval_ms: u64,
    /// Spooled jobs moved to RabbitMQ per round trip.
    pub spool_drain_batch: usize,
    /// `Retry-After` sent with a 503 when neither RabbitMQ nor Redis can hold a job, in seconds.
    pub retry_after_s: u64,
}

/// RabbitMQ topology and delivery policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Prefix of every exchange and queue name, so deployments can share a virtual host.
    pub prefix: String,
    /// Delay before each retry of a failed import, in milliseconds; one retry queue per entry,
    /// and the number of entries is the number of retries before the dead-letter queue.
    pub retry_delays_ms: Vec<u64>,
    /// Deliveries of one message (crashes included) after which RabbitMQ itself dead-letters it,
    /// so a message that kills its worker every time cannot loop forever.
    pub delivery_limit: u32,
    /// Time allowed to connect to RabbitMQ, in milliseconds.
    pub connect_timeout_ms: u64,
}

/// Settings of the Aircall API client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AircallSettings {
    /// Time allowed to open a TCP + TLS connection to Aircall, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest silence while reading an answer from Aircall, in milliseconds.
    pub read_timeout_ms: u64,
    /// Time allowed for one whole API request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests per window one Aircall company may receive from all our processes together,
    /// until Aircall's `X-AircallApi-Limit` header says otherwise.
    pub requests_per_window: u32,
    /// Length of the rate-limit window, in milliseconds (Aircall counts per minute).
    pub rate_limit_window_ms: u64,
    /// Extra time a spent request keeps counting against the budget, in milliseconds, so that
    /// requests granted together but delayed differently on the way still fit Aircall's window.
    pub rate_limit_margin_ms: u64,
    /// Attempts per API request (the first included) on transient errors and 429s.
    pub max_attempts: u32,
    /// First backoff after a transient error, in milliseconds; doubles per attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest backoff after a transient error, in milliseconds.
    pub backoff_max_ms: u64,
    /// Longest single wait on a 429 when Aircall's headers ask for more, in milliseconds.
    pub max_rate_limit_wait_ms: u64,
    /// A listed time range holding more calls than this is split in halves before paging, so no
    /// request ever crosses Aircall's 10,000-result cap.
    pub listing_split_threshold: u32,
}

/// The import rules (see the design's table) and how recordings are fetched.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportSettings {
    /// Calls that started longer ago than this, in days, are skipped `outside_window`.
    pub window_days: u32,
    /// Largest recording imported, in bytes (200 MB); larger ones are skipped
    /// `recording_too_large`.
    pub max_recording_bytes: u64,
    /// How long after an answered call ended its recording is still waited for, in hours;
    /// until then the call is `pending`, afterwards skipped `no_recording`.
    pub recording_wait_hours: u32,
    /// Import the voicemail of an unanswered call as its recording.
    pub import_voicemails: bool,
    /// Hosts recording URLs may point to (`*.example.com` matches subdomains). Any other host
    /// is refused and never fetched. In production only HTTPS URLs are fetched.
    pub recording_hosts: Vec<String>,
    /// How long a job's recording URL is trusted when it carries no expiry of its own, in
    /// milliseconds from the webhook's arrival; older, the call is fetched again.
    pub recording_url_fresh_ms: u64,
    /// Time allowed to connect to the recording host, in milliseconds.
    pub download_connect_timeout_ms: u64,
    /// Longest silence while downloading a recording, in milliseconds.
    pub download_read_timeout_ms: u64,
    /// First re-check of a pending call, in milliseconds after it was found pending; each later
    /// re-check waits twice as long, up to `pending_recheck_max_ms`.
    pub pending_recheck_initial_ms: u64,
    /// Longest wait between two re-checks of a pending call, in milliseconds.
    pub pending_recheck_max_ms: u64,
}

/// Settings of the `worker` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Imports one worker process runs at once.
    pub concurrency: usize,
    /// Jobs RabbitMQ hands a worker before it acknowledges any (at least `concurrency`, or
    /// slots sit idle; more only holds jobs back from other workers).
    pub prefetch: u16,
    /// How long a worker's claim on a call lasts without renewal, in milliseconds; a crashed
    /// worker's claim lapses after this, and another delivery of the call proceeds.
    pub lease_ms: u64,
    /// On shutdown, the time in-flight imports get to finish, in milliseconds; unfinished jobs
    /// are left unacknowledged, so RabbitMQ gives them to another worker.
    pub shutdown_timeout_ms: u64,
}

/// Settings of the `reconcile` role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Time between two passes over one connection, in milliseconds (15 minutes).
    pub interval_ms: u64,
    /// Up to this much is added, at random, to each connection's next due time, in
    /// milliseconds. (Connections are spread over the cycle anyway: each keeps a place in it,
    /// from its id.)
    pub jitter_ms: u64,
    /// Passes one process runs at once, each on its own connection (its own lock and Aircall
    /// budget). A slow or failing connection holds one of them, never the others.
    pub concurrency: usize,
    /// A pass that sent no Aircall request for this long, in milliseconds, is abandoned as
    /// failed (a hung pass, or an Aircall that does not answer) and its connection tried again a
    /// third of an interval later. A pass that keeps making progress, however slowly (a first
    /// import of a big company at Aircall's 60 requests a minute), is never cut short.
    pub stall_timeout_ms: u64,
    /// How often the loop looks for due connections (and for new connections whose first
    /// import can start), in milliseconds.
    pub tick_ms: u64,
    /// How far before the watermark a later pass lists again, in seconds: long enough for a
    /// call that started before it and ended after it (recordings stop at 4 hours). Passes
    /// list this far back once every `full_overlap_every_ms`, `short_overlap_s` otherwise (calls
    /// in progress at a pass are pending and re-checked by id in between).
    pub overlap_s: u64,
    /// How far before the watermark the passes in between list again, in seconds.
    pub short_overlap_s: u64,
    /// How often a pass lists the whole `overlap_s` again, in milliseconds.
    pub full_overlap_every_ms: u64,
    /// Calls that started in the last this many seconds are left to the next pass (the
    /// listing's end is "a minute ago").
    pub lag_s: u64,
    /// Calls queued by a connection's first import at most (the most recent eligible ones).
    pub first_import_max_calls: usize,
    /// A pass holds its connection's lock this long without renewal, in milliseconds.
    pub lock_ms: u64,
    /// Due pending calls re-checked per pass at most.
    pub pending_batch: usize,
    /// Run reports kept per connection.
    pub reports_kept: usize,
}

/// How long per-call outcome records are kept, so Redis holds recent activity, not history.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// An outcome record is removed once its decision is older than `import.window_days` plus
    /// this many days: such a call started outside the import window, so no later look can
    /// import it (again). Removal is done by the reconciler after each pass over a connection,
    /// `max_per_pass` records at most each time; the records left by a disconnect expire after
    /// the same time.
    pub days_beyond_window: u32,
    /// Outcome records one reconciliation pass removes at most (in batches of 1,000), so a
    /// connection with a long history catches up over a few passes, none of them long.
    pub max_per_pass: usize,
}

/// Where recordings and metadata go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `local` (files under `root`) or `s3` (any S3-compatible object storage).
    pub backend: StorageBackend,
    /// Root directory of local storage.
    pub root: PathBuf,
    /// S3 bucket (required with `backend = "s3"`).
    pub s3_bucket: String,
    /// Key prefix inside the bucket (empty: none).
    pub s3_prefix: String,
    /// S3 region.
    pub s3_region: String,
    /// Endpoint of an S3-compatible service such as MinIO (empty: AWS).
    pub s3_endpoint: String,
    /// Access key id (empty: taken from the standard `AWS_*` variables or the instance role).
    pub s3_access_key_id: String,
    /// Secret access key, with `s3_access_key_id`.
    #[serde(serialize_with = "redact_option")]
    pub s3_secret_access_key: Option<SecretString>,
    /// Allow a plain-HTTP `s3_endpoint` (local test servers only).
    pub s3_allow_http: bool,
}

/// Storage implementation; see [`StorageSettings::backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    #[default]
    Local,
    S3,
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,aircall_ingest=debug` (`RUST_LOG` overrides it).
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Production,
            amqp_url: SecretUrl::parse_static("amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis_url: SecretUrl::parse_static("redis://127.0.0.1:6379/"),
            redis_key_prefix: "aircall-ingest".into(),
            redis_timeout_ms: 1_000,
            aircall_base_url: static_url("https://api.aircall.io/"),
            public_url: static_url("http://127.0.0.1:8080/"),
            admin_token: None,
            secret_key: None,
            storage: StorageSettings::default(),
            serve: ServeSettings::default(),
            intake: IntakeSettings::default(),
            queue: QueueSettings::default(),
            aircall: AircallSettings::default(),
            import: ImportSettings::default(),
            worker: WorkerSettings::default(),
            reconcile: ReconcileSettings::default(),
            retention: RetentionSettings::default(),
            log: LogSettings::default(),
            metrics_listen: String::new(),
            shutdown_deadline_ms: 28_000,
            ignored_env: Vec::new(),
        }
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            broker_confirm_timeout_ms: 1_000,
            answer_budget_ms: 3_000,
            dedupe_ttl_ms: 10 * 60 * 1_000,
            connection_cache_ttl_ms: 10_000,
            spool_drain_interval_ms: 500,
            spool_drain_batch: 100,
            retry_after_s: 30,
        }
    }
}

impl IntakeSettings {
    pub fn broker_confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.broker_confirm_timeout_ms)
    }
    pub fn answer_budget(&self) -> Duration {
        Duration::from_millis(self.answer_budget_ms)
    }
    pub fn dedupe_ttl(&self) -> Duration {
        Duration::from_millis(self.dedupe_ttl_ms)
    }
    pub fn connection_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.connection_cache_ttl_ms)
    }
    pub fn spool_drain_interval(&self) -> Duration {
        Duration::from_millis(self.spool_drain_interval_ms)
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            prefix: "aircall-ingest".into(),
            retry_delays_ms: vec![5_000, 30_000, 120_000, 600_000, 1_800_000],
            delivery_limit: 20,
            connect_timeout_ms: 5_000,
        }
    }
}

impl QueueSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl ServeSettings {
    /// Worker threads to run: the setting, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        }
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Default for AircallSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            requests_per_window: 60,
            rate_limit_window_ms: 60_000,
            rate_limit_margin_ms: 250,
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            max_rate_limit_wait_ms: 120_000,
            listing_split_threshold: 9_000,
        }
    }
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            window_days: 14,
            max_recording_bytes: 200 * 1024 * 1024,
            recording_wait_hours: 24,
            import_voicemails: false,
            // Aircall serves recordings from signed links on its AWS storage.
            recording_hosts: vec!["*.amazonaws.com".into(), "*.aircall.io".into()],
            recording_url_fresh_ms: 5 * 60 * 1_000,
            download_connect_timeout_ms: 10_000,
            download_read_timeout_ms: 30_000,
            pending_recheck_initial_ms: 5 * 60 * 1_000,
            pending_recheck_max_ms: 6 * 3_600 * 1_000,
        }
    }
}

impl ImportSettings {
    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.window_days) * 86_400)
    }
    pub fn recording_wait(&self) -> Duration {
        Duration::from_secs(u64::from(self.recording_wait_hours) * 3_600)
    }
    pub fn recording_url_fresh(&self) -> Duration {
        Duration::from_millis(self.recording_url_fresh_ms)
    }
    pub fn download_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.download_connect_timeout_ms)
    }
    pub fn download_read_timeout(&self) -> Duration {
        Duration::from_millis(self.download_read_timeout_ms)
    }
    /// When to look at a call again after it was found pending `checks` times in a row.
    pub fn pending_recheck_after(&self, checks: u32) -> Duration {
        Duration::from_millis(self.pending_recheck_initial_ms)
            .saturating_mul(1 << checks.saturating_sub(1).min(20))
            .min(Duration::from_millis(self.pending_recheck_max_ms))
    }
}

impl Settings {
    /// See [`Settings::shutdown_deadline_ms`].
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            prefetch: 8,
            lease_ms: 60_000,
            shutdown_timeout_ms: 20_000,
        }
    }
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval_ms: 15 * 60 * 1_000,
            jitter_ms: 60 * 1_000,
            concurrency: 16,
            stall_timeout_ms: 5 * 60 * 1_000,
            tick_ms: 10_000,
            overlap_s: 4 * 3_600 + 15 * 60,
            short_overlap_s: 5 * 60,
            full_overlap_every_ms: 3_600 * 1_000,
            lag_s: 60,
            first_import_max_calls: 200,
            lock_ms: 60_000,
            pending_batch: 500,
            reports_kept: 20,
        }
    }
}

impl ReconcileSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    pub fn lock(&self) -> Duration {
        Duration::from_millis(self.lock_ms)
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            days_beyond_window: 30,
            max_per_pass: 10_000,
        }
    }
}

impl RetentionSettings {
    /// How long after its decision an outcome record is kept: the import window plus
    /// `days_beyond_window`.
    pub fn outcome_ttl(&self, import: &ImportSettings) -> Duration {
        Duration::from_secs(
            (u64::from(import.window_days) + u64::from(self.days_beyond_window)) * 86_400,
        )
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            root: PathBuf::from("./data"),
            s3_bucket: String::new(),
            s3_prefix: String::new(),
            s3_region: "us-east-1".into(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: None,
            s3_allow_http: false,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

impl AircallSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_millis(self.rate_limit_window_ms)
    }
    pub fn rate_limit_margin(&self) -> Duration {
        Duration::from_millis(self.rate_limit_margin_ms)
    }
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
    pub fn max_rate_limit_wait(&self) -> Duration {
        Duration::from_millis(self.max_rate_limit_wait_ms)
    }
}

impl Settings {
    /// Reads the configuration from the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Reads the configuration from the optional file and the given environment variables
    /// (those without the `AIRCALL_INGEST_` prefix are ignored), then validates it.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            layers.add_file(path)?;
        }
        // Bad variables are left out so the rest can still be checked: all problems at once.
        let mut problems = layers.add_env(env);
        match layers.deserialize() {
            Ok(mut settings) => {
                settings.ignored_env = std::mem::take(&mut layers.ignored);
                problems.extend(settings.problems().into_iter().map(|p| layers.locate(p)));
                if problems.is_empty() {
                    return Ok(settings);
                }
            }
            Err(problem) => problems.push(problem),
        }
        Err(ConfigError { problems })
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The secrets the service roles need, after checking what production mode requires of
    /// them: every secret set and an HTTPS `public_url`. In development mode the well-known local
    /// values stand in for missing secrets.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        let mut problems = Vec::new();
        let dev = self.mode == Mode::Development;
        if !dev && self.public_url.scheme() != "https" {
            problems.push(Problem::new(
                "public_url",
                "must be HTTPS in production mode (Aircall only delivers webhooks over HTTPS)",
            ));
        }
        if !dev && self.aircall_base_url.scheme() != "https" {
            problems.push(Problem::new(
                "aircall_base_url",
                "must be HTTPS in production mode (requests carry the API credentials)",
            ));
        }
        let admin_token = match (&self.admin_token, dev) {
            (Some(token), _) => Some(token.clone()),
            (None, true) => Some(SecretString::from(DEVELOPMENT_ADMIN_TOKEN)),
            (None, false) => {
                problems.push(Problem::new(
                    "admin_token",
                    "is required in production mode",
                ));
                None
            }
        };
        let secret_key = match (&self.secret_key, dev) {
            (Some(key), _) => match decode_secret_key(key.expose_secret()) {
                Ok(key) => Some(key),
                Err(why) => {
                    problems.push(Problem::new("secret_key", why));
                    None
                }
            },
            (None, true) => Some(*DEVELOPMENT_SECRET_KEY),
            (None, false) => {
                problems.push(Problem::new(
                    "secret_key",
                    "is required in production mode (generate one with `openssl rand -base64 32`)",
                ));
                None
            }
        };
        match (admin_token, secret_key) {
            (Some(admin_token), Some(secret_key)) if problems.is_empty() => Ok(Secrets {
                admin_token,
                secret_key: SecretKey(SecretBox::new(Box::new(secret_key))),
                using_development_defaults: self.admin_token.is_none() || self.secret_key.is_none(),
            }),
            _ => Err(ConfigError {
                problems: problems.into_iter().map(|p| p.located(None)).collect(),
            }),
        }
    }

    /// The effective configuration as TOML, secrets replaced by `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Every semantic problem of already well-typed settings (mode-independent; what production
    /// mode requires on top is checked by [`Settings::secrets`]).
    fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let amqp_scheme = self.amqp_url.0.scheme();
        require(
            &mut p,
            matches!(amqp_scheme, "amqp" | "amqps"),
            "amqp_url",
            format!("must be an amqp:// or amqps:// URL, got scheme `{amqp_scheme}`"),
        );
        let redis_scheme = self.redis_url.0.scheme();
        require(
            &mut p,
            matches!(redis_scheme, "redis" | "rediss"),
            "redis_url",
            format!("must be a redis:// or rediss:// URL, got scheme `{redis_scheme}`"),
        );
        require(
            &mut p,
            !self.redis_key_prefix.is_empty()
                && !self
                    .redis_key_prefix
                    .contains(|c: char| c.is_whitespace() || c == '{'),
            "redis_key_prefix",
            "must be non-empty, without whitespace or `{`".into(),
        );
        require(
            &mut p,
            is_http(&self.aircall_base_url),
            "aircall_base_url",
            format!("must be an http(s) URL, got `{}`", self.aircall_base_url),
        );
        require(
            &mut p,
            !self.aircall_base_url.path().trim_end_matches('/').ends_with("/v1"),
            "aircall_base_url",
            "must not end with /v1: the client adds the API version itself (use https://api.aircall.io)"
                .into(),
        );
        require(
            &mut p,
            is_http(&self.public_url),
            "public_url",
            format!("must be an http(s) URL, got `{}`", self.public_url),
        );
        if let Some(token) = &self.admin_token {
            require(
                &mut p,
                token.expose_secret().chars().count() >= 16,
                "admin_token",
                "must be at least 16 characters long".into(),
            );
        }
        if let Some(Err(why)) = self
            .secret_key
            .as_ref()
            .map(|k| decode_secret_key(k.expose_secret()))
        {
            p.push(Problem::new("secret_key", why));
        }
        let storage = &self.storage;
        match storage.backend {
            StorageBackend::Local => require(
                &mut p,
                !storage.root.as_os_str().is_empty(),
                "storage.root",
                "must not be empty with the local backend".into(),
            ),
            StorageBackend::S3 => {
                require(
                    &mut p,
                    !storage.s3_bucket.is_empty(),
                    "storage.s3_bucket",
                    "is required with the s3 backend".into(),
                );
                require(
                    &mut p,
                    storage.s3_endpoint.is_empty()
                        || Url::parse(&storage.s3_endpoint).is_ok_and(|u| is_http(&u)),
                    "storage.s3_endpoint",
                    format!("must be an http(s) URL, got `{}`", storage.s3_endpoint),
                );
                require(
                    &mut p,
                    storage.s3_access_key_id.is_empty() == storage.s3_secret_access_key.is_none(),
                    "storage.s3_secret_access_key",
                    "must be set together with storage.s3_access_key_id".into(),
                );
            }
        }
        require(
            &mut p,
            !self.import.recording_hosts.is_empty()
                && self
                    .import
                    .recording_hosts
                    .iter()
                    .all(|h| valid_host_pattern(h)),
            "import.recording_hosts",
            "must list host names such as `storage.example.com` or `*.example.com`".into(),
        );
        require(
            &mut p,
            (1_000..=3_600_000).contains(&self.shutdown_deadline_ms)
                && self.shutdown_deadline_ms > self.serve.shutdown_timeout_ms
                && self.shutdown_deadline_ms > self.worker.shutdown_timeout_ms,
            "shutdown_deadline_ms",
            format!(
                "must be from 1000 to 3600000 and longer than serve.shutdown_timeout_ms ({}) and worker.shutdown_timeout_ms ({}), got {}",
                self.serve.shutdown_timeout_ms,
                self.worker.shutdown_timeout_ms,
                self.shutdown_deadline_ms
            ),
        );
        require(
            &mut p,
            self.metrics_listen.is_empty()
                || self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "metrics_listen",
            format!(
                "must be empty or an address such as 0.0.0.0:9091, got `{}`",
                self.metrics_listen
            ),
        );
        require(
            &mut p,
            self.serve.listen.parse::<std::net::SocketAddr>().is_ok(),
            "serve.listen",
            format!(
                "must be an address such as 0.0.0.0:8080, got `{}`",
                self.serve.listen
            ),
        );
        require(
            &mut p,
            !self.queue.prefix.is_empty()
                && self.queue.prefix.len() <= 100
                && self
                    .queue
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "queue.prefix",
            "must be 1 to 100 letters, digits, `-`, `_` or `.`".into(),
        );
        let delays = &self.queue.retry_delays_ms;
        require(
            &mut p,
            !delays.is_empty()
                && delays.len() <= 20
                && delays.iter().all(|d| (100..=86_400_000).contains(d))
                && delays.windows(2).all(|w| w[0] < w[1]),
            "queue.retry_delays_ms",
            "must list 1 to 20 growing delays, each from 100 ms to one day".into(),
        );
        let (i, q) = (&self.intake, &self.queue);
        let a = &self.aircall;
        let ranges: &[(u64, &str, u64, u64)] = &[
            (
                i.max_body_bytes as u64,
                "intake.max_body_bytes",
                1_024,
                16 * 1024 * 1024,
            ),
            (
                i.broker_confirm_timeout_ms,
                "intake.broker_confirm_timeout_ms",
                10,
                4_000,
            ),
            (
                i.answer_budget_ms,
                "intake.answer_budget_ms",
                i.broker_confirm_timeout_ms + 200,
                4_500,
            ),
            (i.dedupe_ttl_ms, "intake.dedupe_ttl_ms", 0, 7 * 86_400_000),
            (
                i.connection_cache_ttl_ms,
                "intake.connection_cache_ttl_ms",
                0,
                3_600_000,
            ),
            (
                i.spool_drain_interval_ms,
                "intake.spool_drain_interval_ms",
                10,
                60_000,
            ),
            (
                i.spool_drain_batch as u64,
                "intake.spool_drain_batch",
                1,
                10_000,
            ),
            (i.retry_after_s, "intake.retry_after_s", 1, 3_600),
            (q.delivery_limit.into(), "queue.delivery_limit", 1, 1_000),
            (self.serve.workers as u64, "serve.workers", 0, 256),
            (
                self.serve.shutdown_timeout_ms,
                "serve.shutdown_timeout_ms",
                100,
                600_000,
            ),
            (
                q.connect_timeout_ms,
                "queue.connect_timeout_ms",
                100,
                120_000,
            ),
            (self.redis_timeout_ms, "redis_timeout_ms", 1, 60_000),
            (
                a.connect_timeout_ms,
                "aircall.connect_timeout_ms",
                100,
                120_000,
            ),
            (a.read_timeout_ms, "aircall.read_timeout_ms", 100, 600_000),
            (
                a.request_timeout_ms,
                "aircall.request_timeout_ms",
                100,
                600_000,
            ),
            (
                a.requests_per_window.into(),
                "aircall.requests_per_window",
                1,
                100_000,
            ),
            (
                a.rate_limit_window_ms,
                "aircall.rate_limit_window_ms",
                100,
                3_600_000,
            ),
            (
                a.rate_limit_margin_ms,
                "aircall.rate_limit_margin_ms",
                0,
                60_000,
            ),
            (a.max_attempts.into(), "aircall.max_attempts", 1, 20),
            (self.import.window_days.into(), "import.window_days", 1, 180),
            (
                self.import.max_recording_bytes,
                "import.max_recording_bytes",
                1,
                100 * 1024 * 1024 * 1024,
            ),
            (
                self.import.recording_wait_hours.into(),
                "import.recording_wait_hours",
                0,
                30 * 24,
            ),
            (
                self.import.recording_url_fresh_ms,
                "import.recording_url_fresh_ms",
                0,
                86_400_000,
            ),
            (
                self.import.download_connect_timeout_ms,
                "import.download_connect_timeout_ms",
                100,
                120_000,
            ),
            (
                self.import.download_read_timeout_ms,
                "import.download_read_timeout_ms",
                100,
                600_000,
            ),
            (
                self.worker.concurrency as u64,
                "worker.concurrency",
                1,
                1_024,
            ),
            (
                self.worker.prefetch.into(),
                "worker.prefetch",
                self.worker.concurrency as u64,
                u64::from(u16::MAX),
            ),
            (self.worker.lease_ms, "worker.lease_ms", 300, 3_600_000),
            (
                self.import.pending_recheck_initial_ms,
                "import.pending_recheck_initial_ms",
                100,
                86_400_000,
            ),
            (
                self.import.pending_recheck_max_ms,
                "import.pending_recheck_max_ms",
                self.import.pending_recheck_initial_ms,
                7 * 86_400_000,
            ),
            (
                self.reconcile.interval_ms,
                "reconcile.interval_ms",
                1_000,
                86_400_000,
            ),
            (
                self.reconcile.jitter_ms,
                "reconcile.jitter_ms",
                0,
                86_400_000,
            ),
            (self.reconcile.tick_ms, "reconcile.tick_ms", 100, 3_600_000),
            (
                self.reconcile.concurrency as u64,
                "reconcile.concurrency",
                1,
                1_000,
            ),
            (
                self.reconcile.stall_timeout_ms,
                "reconcile.stall_timeout_ms",
                1_000,
                86_400_000,
            ),
            (self.reconcile.overlap_s, "reconcile.overlap_s", 0, 86_400),
            (
                self.reconcile.short_overlap_s,
                "reconcile.short_overlap_s",
                0,
                self.reconcile.overlap_s,
            ),
            (
                self.reconcile.full_overlap_every_ms,
                "reconcile.full_overlap_every_ms",
                0,
                7 * 86_400_000,
            ),
            (self.reconcile.lag_s, "reconcile.lag_s", 0, 3_600),
            (
                self.reconcile.first_import_max_calls as u64,
                "reconcile.first_import_max_calls",
                0,
                100_000,
            ),
            (self.reconcile.lock_ms, "reconcile.lock_ms", 300, 3_600_000),
            (
                self.reconcile.pending_batch as u64,
                "reconcile.pending_batch",
                1,
                100_000,
            ),
            (
                self.reconcile.reports_kept as u64,
                "reconcile.reports_kept",
                1,
                10_000,
            ),
            (
                self.retention.days_beyond_window.into(),
                "retention.days_beyond_window",
                1,
                3_650,
            ),
            (
                self.retention.max_per_pass as u64,
                "retention.max_per_pass",
                1,
                1_000_000,
            ),
            (
                self.worker.shutdown_timeout_ms,
                "worker.shutdown_timeout_ms",
                0,
                600_000,
            ),
            (
                a.backoff_initial_ms,
                "aircall.backoff_initial_ms",
                1,
                600_000,
            ),
            (
                a.backoff_max_ms,
                "aircall.backoff_max_ms",
                a.backoff_initial_ms.max(1),
                3_600_000,
            ),
            (
                a.max_rate_limit_wait_ms,
                "aircall.max_rate_limit_wait_ms",
                1,
                3_600_000,
            ),
            (
                a.listing_split_threshold.into(),
                "aircall.listing_split_threshold",
                50,
                9_950,
            ),
        ];
        for &(value, key, min, max) in ranges {
            require(
                &mut p,
                (min..=max).contains(&value),
                key,
                format!("must be between {min} and {max}, got {value}"),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(Problem::new(
                "log.level",
                format!("is not a valid filter: {e}"),
            ));
        }
        p
    }
}

fn require(problems: &mut Vec<Problem>, ok: bool, key: &str, message: String) {
    if !ok {
        problems.push(Problem::new(key, message));
    }
}

/// `host.example.com` or `*.example.com`: letters, digits, `-` and `.`, or an IP address.
fn valid_host_pattern(pattern: &str) -> bool {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
}

fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host().is_some()
}

/// Accepts 32 bytes written as standard base64 or as 64 hex digits.
fn decode_secret_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "must be 32 bytes written as base64 or as 64 hex digits".to_string())?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must decode to exactly 32 bytes, got {}", bytes.len()))
}

/// The secrets of a running service, resolved from the settings.
pub struct Secrets {
    pub admin_token: SecretString,
    pub secret_key: SecretKey,
    /// True when a development default stands in for a missing secret.
    pub using_development_defaults: bool,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

/// The 32-byte server key.
pub struct SecretKey(SecretBox<[u8; 32]>);

impl SecretKey {
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// A URL that may carry a password; `Debug`, `Display` and serialization hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    fn parse_static(text: &'static str) -> Self {
        Self(static_url(text))
    }
    /// The URL with its password, for the one place that connects with it.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl From<Url> for SecretUrl {
    fn from(url: Url) -> Self {
        Self(url)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        if url.password().is_none() {
            return f.write_str(url.as_str());
        }
        write!(
            f,
            "{}://{}:[redacted]@{}",
            url.scheme(),
            url.username(),
            &url[url::Position::BeforeHost..]
        )
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The error names what is wrong, never the text: it may hold a password.
        let text = String::deserialize(d)?;
        Url::parse(&text)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("is not a valid URL ({e})")))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn redact_option<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_str("[not set]"),
    }
}

fn static_url(text: &'static str) -> Url {
    // The defaults above are literals checked by `defaults_are_valid` in the tests.
    Url::parse(text).unwrap_or_else(|e| panic!("default URL {text} is invalid: {e}"))
}

/// The environment variable that sets a key: `aircall.max_attempts` →
/// `AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS`.
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', ENV_NESTING).to_ascii_uppercase()
    )
}

/// Invalid configuration: every problem found, each naming its setting.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<LocatedProblem>,
}

/// One problem with one setting.
#[derive(Debug, Clone)]
pub struct LocatedProblem {
    /// Dotted key, e.g. `aircall.max_attempts`.
    pub key: String,
    /// The environment variable that sets it.
    pub env_var: String,
    /// Where the offending value came from, when it did not come from the defaults.
    pub origin: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "  - {} ({}): {}", p.key, p.env_var, p.message)?;
            match &p.origin {
                Some(origin) => writeln!(f, " [set by {origin}]")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug)]
struct Problem {
    key: String,
    message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
    fn located(self, origin: Option<String>) -> LocatedProblem {
        LocatedProblem {
            env_var: env_var_for(&self.key),
            key: self.key,
            origin,
            message: self.message,
        }
    }
}

/// The file and environment layers merged into one TOML table, remembering where each value
/// came from so problems can point at it.
#[derive(Default)]
struct Layers {
    table: toml::Table,
    origins: HashMap<String, String>,
    /// Variables with the prefix that name no setting.
    ignored: Vec<String>,
}

impl Layers {
    fn add_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let fail = |message: String| ConfigError {
            problems: vec![LocatedProblem {
                key: "--config".into(),
                env_var: "-".into(),
                origin: Some(path.display().to_string()),
                message,
            }],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| fail(format!("is not valid TOML: {e}")))?;
        let origin = format!("file {}", path.display());
        let mut leaves = Vec::new();
        collect_leaves(&table, "", &mut leaves);
        for key in leaves {
            self.origins.insert(key, origin.clone());
        }
        self.table = table;
        Ok(())
    }

    /// Adds the `AIRCALL_INGEST_*` variables; returns the problems of those it had to leave out.
    fn add_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Vec<LocatedProblem> {
        // The defaults tell each variable's type, since environment values are all text.
        let schema = toml::Table::try_from(Settings::default()).unwrap_or_default();
        let mut problems = Vec::new();
        let mut vars: Vec<_> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split(ENV_NESTING)
                .map(str::to_ascii_lowercase)
                .collect();
            let key = path.join(".");
            let origin = format!("environment variable {name}");
            if path.iter().any(String::is_empty) {
                problems.push(LocatedProblem {
                    key,
                    env_var: name,
                    origin: Some(origin),
                    message: "is not a valid setting name".into(),
                });
                continue;
            }
            let Some(known) = lookup(&schema, &path) else {
                self.ignored.push(name);
                continue;
            };
            match coerce(known, &raw) {
                Ok(value) => {
                    insert(&mut self.table, &path, value);
                    self.origins.insert(key, origin);
                }
                Err(message) => problems.push(LocatedProblem {
                    key,
                    env_var: name,
                    origin: Some(origin),
                    message,
                }),
            }
        }
        problems
    }

    /// Serde stops at the first problem, so this reports one (the file's: the variables were
    /// checked already).
    fn deserialize(&self) -> Result<Settings, LocatedProblem> {
        let value = toml::Value::Table(self.table.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            let message = e.into_inner().to_string();
            // For an unknown field the path names its parent; the message names the field.
            self.locate(Problem::new(key, message.trim_end()))
        })
    }

    fn locate(&self, problem: Problem) -> LocatedProblem {
        let origin = self.origins.get(&problem.key).cloned();
        problem.located(origin)
    }
}

fn collect_leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => collect_leaves(t, &key, out),
            _ => out.push(key),
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    match (rest.is_empty(), value) {
        (true, v) => Some(v),
        (false, toml::Value::Table(t)) => lookup(t, rest),
        (false, _) => None,
    }
}

/// Environment values are text; the default's type says what the text must be.
fn coerce(schema: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match schema {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("must be a whole number, got `{raw}`")),
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("must be a number, got `{raw}`")),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("must be true or false, got `{raw}`")),
        },
        // A comma-separated list, each item read like the default's items.
        toml::Value::Array(items) => {
            let item_schema = items
                .first()
                .cloned()
                .unwrap_or(toml::Value::String(String::new()));
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|item| coerce(&item_schema, item))
                .collect::<Result<Vec<_>, _>>()
                .map(toml::Value::Array)
        }
        toml::Value::Table(_) => {
            Err("names a group of settings, not one setting; use `__` to reach its fields".into())
        }
        // Text, including the optional secrets (their schema entry is the redaction text).
        toml::Value::String(_) | toml::Value::Datetime(_) => {
            Ok(toml::Value::String(raw.to_string()))
        }
    }
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.mode, Mode::Production);
        assert_eq!(s.aircall.requests_per_window, 60);
    }

    #[test]
    fn env_var_names_follow_the_nesting_rule() {
        assert_eq!(
            env_var_for("aircall.max_attempts"),
            "AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS"
        );
        assert_eq!(
            env_var_for("aircall_base_url"),
            "AIRCALL_INGEST_AIRCALL_BASE_URL"
        );
    }
}
