//! The webhook settings: where events go, the secret that signs them, and how long each request and each event may take.

use std::time::Duration;

use base64::Engine as _;
use clap::Args;

use super::Config;
use super::cluster::Secret;
use super::parse::parse_duration;

/// The Standard Webhooks prefix of a secret.
const SECRET_PREFIX: &str = "whsec_";
/// How many random bytes a secret holds (as the specification says).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Webhooks: every durable event of a room and every access and moderation
/// change, POSTed to the app's backend.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// http:// or https:// URL that receives every event (one POST each,
    /// Standard Webhooks format). Unset: webhooks are off and nothing is
    /// written to the outbox.
    #[arg(
        long = "webhook-url",
        env = "CHAT_WEBHOOK_URL",
        value_name = "CHAT_WEBHOOK_URL",
        value_parser = parse_url
    )]
    pub url: Option<reqwest::Url>,

    /// Required with CHAT_WEBHOOK_URL: `whsec_` followed by base64 of 24 to
    /// 64 random bytes; every request is signed with it.
    #[arg(
        long = "webhook-secret",
        env = "CHAT_WEBHOOK_SECRET",
        value_name = "CHAT_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = super::cluster::parse_secret
    )]
    pub secret: Option<Secret>,

    /// How long one request may take (connecting, sending, the answer's
    /// status); a request still unanswered then is tried again later.
    #[arg(
        long = "webhook-timeout",
        env = "CHAT_WEBHOOK_TIMEOUT",
        value_name = "CHAT_WEBHOOK_TIMEOUT",
        default_value = "10s",
        value_parser = parse_webhook_timeout
    )]
    pub timeout: Duration,

    /// An event still undelivered this long after it happened is dropped
    /// (logged and counted as dropped).
    #[arg(
        long = "webhook-max-age",
        env = "CHAT_WEBHOOK_MAX_AGE",
        value_name = "CHAT_WEBHOOK_MAX_AGE",
        default_value = "72h",
        value_parser = parse_duration
    )]
    pub max_age: Duration,
}

/// The webhook settings, checked.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub url: reqwest::Url,
    /// The secret's bytes (decoded from base64).
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub max_age: Duration,
}

fn parse_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("an http:// or https:// URL with a host is needed".into());
    }
    Ok(url)
}

/// A request deadline: at least 100 ms, at most 5 minutes.
fn parse_webhook_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
        return Err(format!("{s} is outside 100ms..=5m"));
    }
    Ok(d)
}

/// The secret's bytes; the message never repeats the value.
fn decode_secret(raw: &Secret) -> Result<Vec<u8>, String> {
    let bad = || {
        "CHAT_WEBHOOK_SECRET must be `whsec_` followed by base64 of 24 to 64 random bytes \
         (for example: whsec_$(head -c 32 /dev/urandom | base64))"
            .to_owned()
    };
    let encoded = raw.expose().strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad())?;
    if !SECRET_BYTES.contains(&bytes.len()) {
        return Err(bad());
    }
    Ok(bytes)
}

impl Config {
    /// The webhook settings, checked; `None` without `CHAT_WEBHOOK_URL`.
    /// The message names both settings and never repeats the secret.
    pub fn webhooks(&self) -> Result<Option<Webhooks>, String> {
        let args = &self.webhooks;
        match (&args.url, &args.secret) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(
                "CHAT_WEBHOOK_SECRET is required with CHAT_WEBHOOK_URL: every request is signed with it"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "CHAT_WEBHOOK_SECRET is set but CHAT_WEBHOOK_URL is not (set CHAT_WEBHOOK_URL, or unset CHAT_WEBHOOK_SECRET)"
                    .into(),
            ),
            (Some(url), Some(secret)) => Ok(Some(Webhooks {
                url: url.clone(),
                secret: decode_secret(secret).map_err(|e| format!("{e} (with CHAT_WEBHOOK_URL)"))?,
                timeout: args.timeout,
                max_age: args.max_age,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_follow_the_standard_webhooks_form() {
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let secret = |s: String| Secret::new(s);
        assert_eq!(
            decode_secret(&secret(format!("whsec_{}", b64(24)))).map(|b| b.len()),
            Ok(24)
        );
        assert_eq!(
            decode_secret(&secret(format!("whsec_{}", b64(64)))).map(|b| b.len()),
            Ok(64)
        );
        for bad in [
            b64(32),
            format!("whsec_{}", b64(23)),
            format!("whsec_{}", b64(65)),
            "whsec_not base64!".into(),
        ] {
            let err = decode_secret(&secret(bad)).unwrap_err();
            assert!(err.contains("CHAT_WEBHOOK_SECRET"), "{err}");
            assert!(
                !err.contains("not base64"),
                "the value is never repeated: {err}"
            );
        }
    }

    #[test]
    fn urls_are_http_or_https() {
        assert!(parse_url("https://example.com/hooks").is_ok());
        assert!(parse_url("http://127.0.0.1:9000/").is_ok());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("not a url").is_err());
    }
}
