//! `aircall-ingest`: parse the command line, load the configuration, set up logging, run the
//! chosen role. Everything else lives in the library.

use std::process::ExitCode;

use aircall_ingest::{app, cli::Cli, config::Settings, shutdown, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    for name in &settings.ignored_env {
        tracing::warn!(variable = %name, "ignoring an AIRCALL_INGEST_ variable that is not a setting");
    }
    let cancel = shutdown::on_signals();
    let deadline = settings.shutdown_deadline();
    tokio::select! {
        result = app::run(cli.command, settings, cancel.clone()) => match result {
            Ok(code) => code,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "stopped on an error");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        () = shutdown::deadline(&cancel, deadline) => {
            tracing::error!(
                deadline_ms = deadline.as_millis() as u64,
                "shutdown took longer than shutdown_deadline_ms; exiting (unfinished jobs go back to RabbitMQ)"
            );
            ExitCode::FAILURE
        }
    }
}
