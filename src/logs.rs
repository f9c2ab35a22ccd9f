//! Log output: text for people (the default) or one JSON object per line for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `CHAT_LOG_FORMAT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00Z  INFO chatd::server: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","target":…,"message":…,"key":…}`.
    Json,
}

/// Sends logs to stderr in `format`, filtered by `RUST_LOG` (default
/// `info`); a bad filter is an error naming `RUST_LOG`.
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec)
            .map_err(|e| format!("RUST_LOG: invalid filter {spec:?}: {e}"))?,
        Err(_) => EnvFilter::new("info"),
    };
    // A log line that cannot be written (stderr closed: a log collector
    // restarted, a pipe reader gone) is dropped. The subscriber's default
    // reports it with `eprintln!` to the same closed stderr, which panics:
    // one closed pipe would stop the server.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
