//! Configuration: defaults, then the file, then the environment; every bad value reported by
//! the name of its setting; secrets never shown.

use std::path::PathBuf;

use aircall_ingest::config::{ConfigError, LogFormat, Mode, Settings};
use secrecy::ExposeSecret;

fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_from(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// A TOML file that disappears with the test.
struct TempToml(PathBuf);

fn file(contents: &str) -> TempToml {
    let path = std::env::temp_dir().join(format!("aircall-ingest-{:016x}.toml", fastrand::u64(..)));
    std::fs::write(&path, contents).unwrap();
    TempToml(path)
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn every_invalid_value_is_reported_by_the_name_of_its_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("AIRCALL_INGEST_MODE", "staging", "mode"),
        ("AIRCALL_INGEST_AMQP_URL", "not a url", "amqp_url"),
        ("AIRCALL_INGEST_AMQP_URL", "http://rabbit:5672", "amqp_url"),
        ("AIRCALL_INGEST_REDIS_URL", "mysql://db", "redis_url"),
        (
            "AIRCALL_INGEST_REDIS_KEY_PREFIX",
            "has space",
            "redis_key_prefix",
        ),
        ("AIRCALL_INGEST_REDIS_TIMEOUT_MS", "0", "redis_timeout_ms"),
        (
            "AIRCALL_INGEST_REDIS_TIMEOUT_MS",
            "soon",
            "redis_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL_BASE_URL",
            "ftp://api.aircall.io",
            "aircall_base_url",
        ),
        ("AIRCALL_INGEST_PUBLIC_URL", "relative/path", "public_url"),
        ("AIRCALL_INGEST_ADMIN_TOKEN", "short", "admin_token"),
        ("AIRCALL_INGEST_SECRET_KEY", "c2hvcnQ=", "secret_key"),
        ("AIRCALL_INGEST_SECRET_KEY", "not base64!", "secret_key"),
        ("AIRCALL_INGEST_STORAGE__ROOT", "", "storage.root"),
        ("AIRCALL_INGEST_WORKER__PREFETCH", "2", "worker.prefetch"),
        (
            "AIRCALL_INGEST_IMPORT__RECORDING_HOSTS",
            "a b",
            "import.recording_hosts",
        ),
        ("AIRCALL_INGEST_SERVE__LISTEN", "localhost", "serve.listen"),
        (
            "AIRCALL_INGEST_AIRCALL__CONNECT_TIMEOUT_MS",
            "0",
            "aircall.connect_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__READ_TIMEOUT_MS",
            "-5",
            "aircall.read_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__REQUEST_TIMEOUT_MS",
            "1e9",
            "aircall.request_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__REQUESTS_PER_WINDOW",
            "0",
            "aircall.requests_per_window",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__RATE_LIMIT_WINDOW_MS",
            "10",
            "aircall.rate_limit_window_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__RATE_LIMIT_MARGIN_MS",
            "999999",
            "aircall.rate_limit_margin_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS",
            "0",
            "aircall.max_attempts",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS",
            "three",
            "aircall.max_attempts",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__BACKOFF_INITIAL_MS",
            "0",
            "aircall.backoff_initial_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__BACKOFF_MAX_MS",
            "1",
            "aircall.backoff_max_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__MAX_RATE_LIMIT_WAIT_MS",
            "0",
            "aircall.max_rate_limit_wait_ms",
        ),
        (
            "AIRCALL_INGEST_AIRCALL__LISTING_SPLIT_THRESHOLD",
            "20000",
            "aircall.listing_split_threshold",
        ),
        ("AIRCALL_INGEST_LOG__FORMAT", "xml", "log.format"),
        ("AIRCALL_INGEST_LOG__LEVEL", "info,[", "log.level"),
        ("AIRCALL_INGEST_AIRCALL", "x", "aircall"),
        (
            "AIRCALL_INGEST_AIRCALL_BASE_URL",
            "https://api.aircall.io/v1",
            "aircall_base_url",
        ),
        (
            "AIRCALL_INGEST_INTAKE__MAX_BODY_BYTES",
            "10",
            "intake.max_body_bytes",
        ),
        (
            "AIRCALL_INGEST_INTAKE__BROKER_CONFIRM_TIMEOUT_MS",
            "10000",
            "intake.broker_confirm_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_INTAKE__DEDUPE_TTL_MS",
            "x",
            "intake.dedupe_ttl_ms",
        ),
        (
            "AIRCALL_INGEST_INTAKE__CONNECTION_CACHE_TTL_MS",
            "-1",
            "intake.connection_cache_ttl_ms",
        ),
        (
            "AIRCALL_INGEST_INTAKE__SPOOL_DRAIN_INTERVAL_MS",
            "1",
            "intake.spool_drain_interval_ms",
        ),
        (
            "AIRCALL_INGEST_INTAKE__SPOOL_DRAIN_BATCH",
            "0",
            "intake.spool_drain_batch",
        ),
        (
            "AIRCALL_INGEST_INTAKE__RETRY_AFTER_S",
            "0",
            "intake.retry_after_s",
        ),
        ("AIRCALL_INGEST_QUEUE__PREFIX", "has space", "queue.prefix"),
        (
            "AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS",
            "5000,x",
            "queue.retry_delays_ms",
        ),
        (
            "AIRCALL_INGEST_QUEUE__RETRY_DELAYS_MS",
            "5000,1",
            "queue.retry_delays_ms",
        ),
        (
            "AIRCALL_INGEST_QUEUE__DELIVERY_LIMIT",
            "0",
            "queue.delivery_limit",
        ),
        (
            "AIRCALL_INGEST_QUEUE__CONNECT_TIMEOUT_MS",
            "5",
            "queue.connect_timeout_ms",
        ),
        (
            "AIRCALL_INGEST_RETENTION__DAYS_BEYOND_WINDOW",
            "0",
            "retention.days_beyond_window",
        ),
        (
            "AIRCALL_INGEST_RETENTION__DAYS_BEYOND_WINDOW",
            "3651",
            "retention.days_beyond_window",
        ),
        (
            "AIRCALL_INGEST_RETENTION__MAX_PER_PASS",
            "0",
            "retention.max_per_pass",
        ),
    ];
    for (var, value, key) in cases {
        let error = load(&[(var, value)]).expect_err(&format!("{var}={value:?} must be refused"));
        let problem = error
            .problems
            .iter()
            .find(|p| {
                p.key == *key
                    || p.message
                        .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(key)))
            })
            .unwrap_or_else(|| panic!("{var}={value:?}: no problem names {key}: {error}"));
        let text = error.to_string();
        assert!(
            text.contains(key),
            "{var}={value:?}: message does not name {key}: {text}"
        );
        assert!(
            text.contains(var),
            "{var}={value:?}: message does not name {var}: {text}"
        );
        assert!(!problem.message.is_empty());
    }
}

#[test]
fn variables_that_are_not_settings_are_ignored_and_reported() {
    // Kubernetes sets these for a Service named aircall-ingest.
    let s = load(&[
        ("AIRCALL_INGEST_SERVICE_HOST", "10.0.0.1"),
        ("AIRCALL_INGEST_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ("AIRCALL_INGEST_REDIS_ULR", "redis://typo"),
    ])
    .unwrap();
    assert_eq!(
        s.ignored_env,
        [
            "AIRCALL_INGEST_PORT_8080_TCP_ADDR",
            "AIRCALL_INGEST_REDIS_ULR",
            "AIRCALL_INGEST_SERVICE_HOST"
        ]
    );
}

#[test]
fn a_url_that_does_not_parse_never_echoes_its_password() {
    let error = load(&[(
        "AIRCALL_INGEST_REDIS_URL",
        "redis://:SECRETPW@redis:63x79/0",
    )])
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("redis_url"), "{text}");
    assert!(!text.contains("SECRETPW"), "{text}");
}

#[test]
fn production_needs_https_towards_aircall() {
    let s = load(&[
        ("AIRCALL_INGEST_ADMIN_TOKEN", "a-very-long-admin-token"),
        (
            "AIRCALL_INGEST_SECRET_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("AIRCALL_INGEST_PUBLIC_URL", "https://ingest.example.com"),
        ("AIRCALL_INGEST_AIRCALL_BASE_URL", "http://api.aircall.io"),
    ])
    .unwrap();
    let error = s.secrets().unwrap_err().to_string();
    assert!(error.contains("aircall_base_url"), "{error}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let error = load(&[
        ("AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS", "x"),
        ("AIRCALL_INGEST_REDIS_URL", "http://redis"),
        ("AIRCALL_INGEST_AIRCALL__BACKOFF_INITIAL_MS", "0"),
    ])
    .unwrap_err();
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 3, "{error}");
    assert!(keys.contains(&"aircall.max_attempts"));
    assert!(keys.contains(&"redis_url"));
    assert!(keys.contains(&"aircall.backoff_initial_ms"));
}

#[test]
fn the_environment_overrides_the_file_which_overrides_the_defaults() {
    let toml = file(
        "redis_key_prefix = \"from-file\"\n[aircall]\nmax_attempts = 7\nbackoff_max_ms = 5000\n[log]\nformat = \"json\"\n",
    );
    let env = [(
        "AIRCALL_INGEST_AIRCALL__MAX_ATTEMPTS".to_string(),
        "9".to_string(),
    )];

    let s = Settings::load_from(Some(&toml.0), env).unwrap();

    assert_eq!(s.aircall.max_attempts, 9, "environment wins");
    assert_eq!(s.aircall.backoff_max_ms, 5_000, "file wins over default");
    assert_eq!(s.redis_key_prefix, "from-file");
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.aircall.requests_per_window, 60, "default");
}

#[test]
fn a_bad_file_value_names_the_setting_and_the_file() {
    let toml = file("[aircall]\nmax_attempts = \"many\"\n");
    let error = Settings::load_from(Some(&toml.0), Vec::new()).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("aircall.max_attempts"), "{text}");
    assert!(text.contains(&toml.0.display().to_string()), "{text}");

    let unreadable = Settings::load_from(
        Some(std::path::Path::new("/nonexistent/x.toml")),
        Vec::new(),
    );
    assert!(unreadable.unwrap_err().to_string().contains("cannot read"));
    let broken = file("[aircall\n");
    assert!(
        Settings::load_from(Some(&broken.0), Vec::new())
            .unwrap_err()
            .to_string()
            .contains("TOML")
    );
}

#[test]
fn numeric_looking_secrets_stay_text() {
    let s = load(&[("AIRCALL_INGEST_ADMIN_TOKEN", "12345678901234567890")]).unwrap();
    assert_eq!(
        s.admin_token.unwrap().expose_secret(),
        "12345678901234567890"
    );
}

#[test]
fn production_refuses_to_start_without_its_secrets_and_development_fills_them() {
    let production = load(&[]).unwrap();
    let error = production.secrets().unwrap_err().to_string();
    assert!(
        error.contains("admin_token") && error.contains("AIRCALL_INGEST_ADMIN_TOKEN"),
        "{error}"
    );
    assert!(
        error.contains("secret_key") && error.contains("AIRCALL_INGEST_SECRET_KEY"),
        "{error}"
    );
    assert!(error.contains("public_url"), "{error}");

    let development = load(&[("AIRCALL_INGEST_MODE", "development")]).unwrap();
    assert_eq!(development.mode, Mode::Development);
    assert!(development.secrets().unwrap().using_development_defaults);

    let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let configured = load(&[
        ("AIRCALL_INGEST_ADMIN_TOKEN", "a-very-long-admin-token"),
        ("AIRCALL_INGEST_SECRET_KEY", key),
        ("AIRCALL_INGEST_PUBLIC_URL", "https://ingest.example.com"),
    ])
    .unwrap();
    let secrets = configured.secrets().unwrap();
    assert!(!secrets.using_development_defaults);
    assert_eq!(secrets.secret_key.expose()[0], 0x01);
}

#[test]
fn secrets_never_show_in_debug_or_in_the_printed_configuration() {
    let s = load(&[
        (
            "AIRCALL_INGEST_ADMIN_TOKEN",
            "admin-token-that-must-not-leak",
        ),
        (
            "AIRCALL_INGEST_SECRET_KEY",
            "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWsxMjM=",
        ),
        (
            "AIRCALL_INGEST_AMQP_URL",
            "amqp://user:amqp-password-leak@rabbit:5672/%2f",
        ),
        (
            "AIRCALL_INGEST_REDIS_URL",
            "redis://:redis-password-leak@redis:6379/0",
        ),
    ])
    .unwrap();
    let shown = [
        format!("{s:?}"),
        s.to_redacted_toml(),
        format!("{:?}", s.secrets().ok()),
    ];
    for text in shown {
        for secret in [
            "admin-token-that-must-not-leak",
            "c2VjcmV0",
            "amqp-password-leak",
            "redis-password-leak",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
    assert!(
        s.to_redacted_toml()
            .contains("amqp://user:[redacted]@rabbit:5672/%2f")
    );
}
