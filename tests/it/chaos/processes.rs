//! The parts the chaos run starts, stops and breaks: processes of the real binary, a Redis of
//! the run's own, and the machine's RabbitMQ.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// One process of the real binary, restartable, its output appended to one log file.
pub(super) struct Process {
    pub(super) name: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
    /// `/readyz` of the process.
    pub(super) ready_url: String,
    pub(super) child: Option<Child>,
}

impl Process {
    pub(super) fn start(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub(super) fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    /// Waits for the process to exit; its status, or `None` if it is still running.
    pub(super) async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis of the run's own, persistent (append-only file) like a production Redis, so a
/// restart keeps what was written.
pub(super) struct PrivateRedis {
    pub(super) port: u16,
    pub(super) dir: PathBuf,
    pub(super) child: Option<Child>,
}

impl PrivateRedis {
    pub(super) async fn start(dir: PathBuf) -> PrivateRedis {
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(super) async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/local/services.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            crate::helpers::eventually(Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await,
            "the run's Redis listens"
        );
    }

    /// SIGTERM (Redis writes its append-only file and exits), `down` of nothing, then again.
    pub(super) async fn restart(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        tokio::time::sleep(down).await;
        self.spawn().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) fn exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "?".into(),
        },
        None => "still running".into(),
    }
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(super) async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let status = tokio::task::spawn_blocking({
        let args = args.clone();
        move || {
            Command::new("rabbitmqctl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("rabbitmqctl runs here")
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// The machine's RabbitMQ, stopped (`rabbitmqctl stop_app`) until [`BrokerStopped::start`]; if
/// the run fails in between, dropping it starts RabbitMQ again, so a failed run does not leave
/// the machine without its broker.
pub(super) struct BrokerStopped {
    started: bool,
}

impl BrokerStopped {
    pub(super) async fn stop() -> BrokerStopped {
        let stopped = BrokerStopped { started: false };
        rabbitmqctl(&["stop_app"]).await;
        stopped
    }

    pub(super) async fn start(mut self) {
        rabbitmqctl(&["start_app"]).await;
        self.started = true;
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if !self.started {
            let _ = Command::new("rabbitmqctl")
                .arg("start_app")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
