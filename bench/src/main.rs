//! chatd-bench: load and latency for any server speaking chat.v1.
//!
//! Drives chatd (or any chat.v1 server, such as the grpc-node peer) over
//! real gRPC connections and prints what it measured: a progress line while
//! it runs, a table at the end, or JSON with `--json`. With `--server-pid`
//! it also reads the server's CPU time and memory from `/proc`, so figures
//! can be given per delivery whatever the load generator costs.
//!
//! Scenarios: `fanout`, `send`, `idle`, `history`, `churn`, `joins`, `presence-kill`
//! (see `--help` of each). With several `--addr` (the nodes of a cluster)
//! the connections are spread over them round-robin.
//!
//! Against chatd, start the server with its per-user limits off or raised
//! (`CHAT_USER_SEND_RATE=0`, `CHAT_USER_MAX_STREAMS` above the streams one
//! user opens), as `scripts/bench.sh` does: a senders' bucket would cap the
//! rate this measures.

mod dbstat;
mod procstat;
mod report;
mod scenarios;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::report::Report;

#[derive(Debug, Parser)]
#[command(name = "chatd-bench", about = "Load and latency for chat.v1 servers")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Settings every scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The server's URL. Several (comma-separated or repeated), e.g. the
    /// nodes of a cluster: connections are spread over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: Vec<String>,
    /// Secret to mint tokens with (chatd's CHAT_JWT_SECRET). Without it and
    /// without --data-dir, calls carry no token (for peers without auth).
    #[arg(long, global = true, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// chatd's data directory, to read a generated secret from.
    #[arg(long, global = true)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Send no token even if a secret is known.
    #[arg(long, global = true)]
    pub no_auth: bool,
    /// The server's process id, to report its CPU and memory. Several
    /// (comma-separated or repeated): figures are summed over them, and
    /// each is also reported on its own.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The PostgreSQL database the server uses, when PostgreSQL runs on
    /// this machine: the CPU of its backends (found by process title) and
    /// of the shared WAL writer, checkpointer and background writer is
    /// read from /proc and reported beside the server's. Needs
    /// `--server-pid`.
    #[arg(long, global = true)]
    pub db_name: Option<String>,
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// A name for the server in the report.
    #[arg(long, global = true, default_value = "server")]
    pub label: String,
    /// Prefix for room names, so runs do not share rooms.
    #[arg(long, global = true)]
    pub room_prefix: Option<String>,
    /// Give up on the whole run after this long.
    #[arg(long, global = true, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// R rooms x S subscribers, senders pushing messages to every room.
    Fanout(scenarios::FanoutArgs),
    /// C concurrent senders over many rooms: acknowledged sends/s.
    Send(scenarios::SendArgs),
    /// N idle JoinRoom streams: server memory per stream and connection.
    Idle(scenarios::IdleArgs),
    /// ListHistory requests/s on a room with a long history.
    History(scenarios::HistoryArgs),
    /// Clients joining and leaving continuously: joins/s with presence.
    Churn(scenarios::ChurnArgs),
    /// Users joining one room one after another: time for all, with presence.
    Joins(scenarios::JoinsArgs),
    /// One room of N members (100 streams to a connection), then timed
    /// joins into it: memory per member, CPU and bytes per join.
    LargeRoom(scenarios::LargeRoomArgs),
    /// Users on one node leave (or the node is killed): time until another
    /// node's stream sees every member_left.
    PresenceKill(scenarios::PresenceKillArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let common = cli.common.clone();
    let result = runtime.block_on(async move {
        let ctx = scenarios::Context::new(common.clone())?;
        let work = async {
            match cli.scenario {
                Scenario::Fanout(a) => scenarios::fanout(&ctx, a).await,
                Scenario::Send(a) => scenarios::send(&ctx, a).await,
                Scenario::Idle(a) => scenarios::idle(&ctx, a).await,
                Scenario::History(a) => scenarios::history(&ctx, a).await,
                Scenario::Churn(a) => scenarios::churn(&ctx, a).await,
                Scenario::Joins(a) => scenarios::joins(&ctx, a).await,
                Scenario::LargeRoom(a) => scenarios::large_room(&ctx, a).await,
                Scenario::PresenceKill(a) => scenarios::presence_kill(&ctx, a).await,
            }
        };
        match tokio::time::timeout(common.timeout, work).await {
            Ok(report) => report,
            Err(_) => Err(format!("gave up after {:?}", common.timeout)),
        }
    });
    match result {
        Ok(report) => {
            print(&report, cli.common.json);
            if report.failed() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chatd-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print(report: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("chatd-bench: {e}"),
        }
    } else {
        println!("{}", report.table());
    }
}
