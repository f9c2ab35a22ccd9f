//! The value parsers of the flags that clap does not check by itself.

use std::time::Duration;

use crate::storage::Location;

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m, 24h)"))
}

/// A database deadline: at least 100 ms (statements need time), at most
/// 10 minutes.
pub(super) fn parse_db_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(format!("{s} is outside 100ms..=10m"));
    }
    Ok(d)
}

pub(super) fn parse_database_url(s: &str) -> Result<String, String> {
    // The data directory only matters when the URL is unset.
    Location::parse(Some(s), std::path::Path::new(".")).map(|_| s.to_owned())
}

pub(super) fn parse_cluster_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} must be 1 to 64 of a-z, A-Z, 0-9, '-' and '_'"
        ))
    }
}

/// A presence timeout: at least 1 s (nodes announce themselves every third
/// of it), at most 10 minutes.
pub(super) fn parse_presence_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        return Err(format!("{s} is outside 1s..=10m"));
    }
    Ok(d)
}

/// A first-call deadline: at least 1 s (a client needs a round trip or
/// two after its handshake), at most 10 minutes.
pub(super) fn parse_first_call_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        return Err(format!("{s} is outside 1s..=10m"));
    }
    Ok(d)
}

pub(super) fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && http::HeaderValue::from_str(s).is_ok()
        && !s.ends_with('/');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an origin like https://app.example.com"
        ))
    }
}
