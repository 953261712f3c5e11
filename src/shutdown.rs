//! One cancellation token for the whole process, cancelled on SIGTERM or SIGINT. Every role,
//! every sleep and every server is tied to it; nothing here exits the process.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled when the process receives SIGTERM or SIGINT (Ctrl-C).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        info!(signal, "shutdown requested");
        cancel.cancel();
    });
    token
}

/// Fires `deadline` after `cancel` fired: the bound on the whole shutdown.
pub async fn deadline(cancel: &CancellationToken, deadline: std::time::Duration) {
    cancel.cancelled().await;
    tokio::time::sleep(deadline).await;
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the process");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}
