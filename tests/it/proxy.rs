//! A TCP proxy between the service and RabbitMQ or Redis that a test can break: `cut` closes
//! every connection and refuses new ones (the server went away), `freeze` keeps connections
//! open but stops forwarding (the server hangs), `restore` brings it back. Other tests keep
//! using the real servers undisturbed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const UP: u8 = 0;
const CUT: u8 = 1;
const FROZEN: u8 = 2;

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    changes: watch::Sender<u8>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(UP));
        let (changes, _) = watch::channel(UP);
        let proxy = FaultProxy {
            addr,
            mode: mode.clone(),
            changes: changes.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if mode.load(Ordering::SeqCst) != UP {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = inbound.into_split();
                let (server_read, server_write) = outbound.into_split();
                tokio::spawn(pipe(client_read, server_write, changes.subscribe()));
                tokio::spawn(pipe(server_read, client_write, changes.subscribe()));
            }
        });
        proxy
    }

    pub fn url(&self, scheme: &str, rest: &str) -> url::Url {
        url::Url::parse(&format!("{scheme}://{}{rest}", self.addr)).unwrap()
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        // send_replace: the value must change even when no connection listens right now.
        self.changes.send_replace(mode);
    }

    /// The server went away: live connections close, new ones are refused.
    pub fn cut(&self) {
        self.set(CUT);
    }

    /// The server hangs: connections stay open, nothing goes through.
    pub fn freeze(&self) {
        self.set(FROZEN);
    }

    pub fn restore(&self) {
        self.set(UP);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut changes: watch::Receiver<u8>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mode = *changes.borrow_and_update();
        match mode {
            CUT => return,
            FROZEN => {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Data read just as the proxy froze is held until it thaws or is cut.
                    while *changes.borrow() == FROZEN {
                        if changes.changed().await.is_err() {
                            return;
                        }
                    }
                    if *changes.borrow() == CUT || to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
