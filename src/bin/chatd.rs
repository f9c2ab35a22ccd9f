//! The chatd binary: parse the command line, then serve, mint a token or make a cluster key.

use std::process::ExitCode;

use chatd::auth::{Keys, TokenPolicy, load_secret};
use chatd::config::{Cli, Command};
use chatd::logs::LogFormat;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(config)) => config.log_format,
        Some(Command::Token(_) | Command::ClusterKey) => LogFormat::Text,
        None => cli.config.log_format,
    };
    if let Err(e) = chatd::logs::init(log_format) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }

    let result = match cli.command {
        // Reads the secret and never creates one: a new one would sign
        // tokens that no running server accepts.
        Some(Command::Token(args)) => {
            load_secret(args.secret.jwt_secret.as_deref(), &args.secret.data_dir)
                .and_then(|(secret, _)| {
                    let policy = TokenPolicy {
                        issuer: args.secret.jwt_issuer.clone(),
                        audience: args.secret.jwt_audience.clone(),
                        ..TokenPolicy::default()
                    };
                    Keys::with_policy(&secret, policy).mint_with(
                        &args.user_id,
                        args.name.as_deref(),
                        Some(args.ttl),
                        args.admin,
                    )
                })
                .map(|token| println!("{token}"))
        }
        Some(Command::ClusterKey) => chatd::cluster::new_key().map(|key| println!("{key}")),
        Some(Command::Serve(config)) => serve(config),
        None => serve(cli.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: chatd::config::Config) -> chatd::Result<()> {
    // Each connection, handshaken or pending, is a file descriptor: take the
    // whole hard limit.
    let connections = u64::from(config.max_connections) + u64::from(config.max_pending_connections);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < connections + 64 => tracing::warn!(
            limit,
            max_connections = config.max_connections,
            max_pending_connections = config.max_pending_connections,
            "the open-files limit is below CHAT_MAX_CONNECTIONS + CHAT_MAX_PENDING_CONNECTIONS; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads as usize);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| chatd::Error::Config(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let app = chatd::Application::build(config).await?;
        app.run_until(shutdown_signal()).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
