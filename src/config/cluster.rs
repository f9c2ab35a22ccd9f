//! The settings that secure a cluster: the key that seals traffic between nodes, and how to reach NATS safely.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use clap::Args;

use super::Config;

/// The bytes of a cluster key.
pub const CLUSTER_KEY_BYTES: usize = 32;

/// How to make a key, for error messages.
const MAKE_ONE: &str =
    "make one with `chatd cluster-key` (32 random bytes in base64) and give every node the same";

/// A secret setting: kept out of `Debug` output and clap's messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    #[cfg(test)]
    pub(super) fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Always accepted as given: the value is checked by
/// [`Config::cluster_keys`], whose messages never repeat it.
pub(super) fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// Cluster only: the key that seals traffic between nodes and how to reach
/// a NATS that is locked down.
#[derive(Debug, Clone, Args)]
pub struct ClusterSecurity {
    /// Cluster only, required with CHAT_NATS_URL: 32 random bytes in base64
    /// (`chatd cluster-key` prints one), the same on every node. Every
    /// payload between nodes is encrypted and authenticated with it, and
    /// room names are hashed with it in NATS subjects.
    #[arg(
        long = "cluster-key",
        env = "CHAT_CLUSTER_KEY",
        value_name = "CHAT_CLUSTER_KEY",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub cluster_key: Option<Secret>,

    /// Cluster only, during a key rotation: a second key whose traffic is
    /// accepted (never used to seal); must differ from CHAT_CLUSTER_KEY.
    #[arg(
        long = "cluster-key-previous",
        env = "CHAT_CLUSTER_KEY_PREVIOUS",
        value_name = "CHAT_CLUSTER_KEY_PREVIOUS",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub cluster_key_previous: Option<Secret>,

    /// Cluster only: a NATS credentials file (.creds: a user JWT and its
    /// nkey seed) to connect with.
    #[arg(
        long = "nats-creds",
        env = "CHAT_NATS_CREDS",
        value_name = "CHAT_NATS_CREDS"
    )]
    pub nats_creds: Option<PathBuf>,

    /// Cluster only: a PEM file of the CA to trust for the NATS server's
    /// certificate (with a tls:// URL, or a server that requires TLS).
    #[arg(long = "nats-ca", env = "CHAT_NATS_CA", value_name = "CHAT_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
}

/// A key from its setting: standard base64, with or without padding, of
/// exactly [`CLUSTER_KEY_BYTES`].
fn decode_key(setting: &str, raw: &Secret) -> Result<[u8; CLUSTER_KEY_BYTES], String> {
    let engine = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(raw.expose().trim())
        .map_err(|_| format!("{setting} is not base64; {MAKE_ONE}"))?;
    <[u8; CLUSTER_KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{setting} must be {CLUSTER_KEY_BYTES} bytes, got {}; {MAKE_ONE}",
            bytes.len()
        )
    })
}

/// The current key and, during a rotation, the previous one.
pub type ClusterKeys = ([u8; CLUSTER_KEY_BYTES], Option<[u8; CLUSTER_KEY_BYTES]>);

impl Config {
    /// The cluster keys, decoded; `None` without `CHAT_NATS_URL`. The
    /// message names the setting and never repeats its value.
    pub fn cluster_keys(&self) -> Result<Option<ClusterKeys>, String> {
        let security = &self.cluster_security;
        let Some(_) = &self.nats_url else {
            return Ok(None);
        };
        let Some(raw) = &security.cluster_key else {
            return Err(format!(
                "CHAT_CLUSTER_KEY is required with CHAT_NATS_URL: it seals the traffic between nodes; {MAKE_ONE}"
            ));
        };
        let current = decode_key("CHAT_CLUSTER_KEY", raw)?;
        let previous = match &security.cluster_key_previous {
            Some(raw) => Some(decode_key("CHAT_CLUSTER_KEY_PREVIOUS", raw)?),
            None => None,
        };
        if previous == Some(current) {
            return Err(
                "CHAT_CLUSTER_KEY_PREVIOUS must differ from CHAT_CLUSTER_KEY (set it only while rotating keys)"
                    .into(),
            );
        }
        Ok(Some((current, previous)))
    }

    /// The cluster settings agree: the key and the NATS settings only with
    /// `CHAT_NATS_URL`, and a good key with it.
    pub(super) fn validate_cluster(&self) -> Result<(), String> {
        let security = &self.cluster_security;
        if self.nats_url.is_none() {
            let set = [
                ("CHAT_CLUSTER_KEY", security.cluster_key.is_some()),
                (
                    "CHAT_CLUSTER_KEY_PREVIOUS",
                    security.cluster_key_previous.is_some(),
                ),
                ("CHAT_NATS_CREDS", security.nats_creds.is_some()),
                ("CHAT_NATS_CA", security.nats_ca.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{name} is set but CHAT_NATS_URL is not: it is for a cluster node (set CHAT_NATS_URL, or unset {name})"
                ));
            }
            return Ok(());
        }
        self.cluster_keys().map(|_| ())
    }
}
