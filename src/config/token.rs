//! The arguments of `chatd token`, which mints a token with the server's secret.

use std::time::Duration;

use clap::Args;

use super::SecretArgs;
use super::parse::parse_duration;

/// `chatd token <user-id> [--name NAME] [--ttl DURATION] [--admin]`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    pub user_id: String,
    /// Display name (`name` claim); defaults to the user id.
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid, e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Mint an admin token (`"admin": true`): for the app backend, it may
    /// call AdminService and passes every room check.
    #[arg(long)]
    pub admin: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
}
