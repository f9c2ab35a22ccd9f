//! How a node reaches NATS: credentials (in the URL or a `.creds` file), TLS, and URLs with their secrets redacted.
//!
//! The client library is handed URLs without their user information:
//! `nats://user:pass@host` becomes user and password options and
//! `nats://token@host` a token option, so no secret can reach a log line
//! (the library logs server addresses at debug level). Every URL chatd logs
//! or puts into an error goes through [`redact`].

use std::path::Path;

use async_nats::ConnectOptions;

use crate::error::{Error, Result};

/// Where and how to connect, from `CHAT_NATS_URL`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Target {
    /// The server URLs without user information.
    pub(crate) urls: Vec<String>,
    /// `user:pass@` of the first URL that has one.
    pub(crate) user: Option<(String, String)>,
    /// `token@` (user information without a password).
    pub(crate) token: Option<String>,
}

/// Splits a URL into (scheme and "://", user information, the rest).
fn split(url: &str) -> (&str, Option<&str>, &str) {
    let Some(at_scheme) = url.find("://") else {
        return ("", None, url);
    };
    let (scheme, rest) = url.split_at(at_scheme + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}

/// Percent-decoding of URL user information.
fn decode(raw: &str) -> std::result::Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a '%' in the user information is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user information is not UTF-8".into())
}

/// Reads `CHAT_NATS_URL` (one URL or several, comma separated).
pub(crate) fn parse(raw: &str) -> std::result::Result<Target, String> {
    let mut target = Target::default();
    for url in raw.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, userinfo, rest) = split(url);
        target.urls.push(format!("{scheme}{rest}"));
        let Some(userinfo) = userinfo else { continue };
        if target.user.is_some() || target.token.is_some() {
            continue;
        }
        match userinfo.split_once(':') {
            Some((user, pass)) => target.user = Some((decode(user)?, decode(pass)?)),
            None => target.token = Some(decode(userinfo)?),
        }
    }
    if target.urls.is_empty() {
        return Err("names no server".into());
    }
    Ok(target)
}

/// `raw` with the user information of every URL replaced by `***`.
pub fn redact(raw: &str) -> String {
    raw.split(',')
        .map(|url| match split(url) {
            (scheme, Some(_), rest) => format!("{scheme}***@{rest}"),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `options` with the credentials of `target`, `CHAT_NATS_CREDS` and the
/// CA of `CHAT_NATS_CA`; every file is read now, so a bad one stops
/// start-up naming its setting.
pub(crate) async fn secure(
    mut options: ConnectOptions,
    target: &Target,
    creds: Option<&Path>,
    ca: Option<&Path>,
) -> Result<ConnectOptions> {
    if let Some((user, pass)) = &target.user {
        options = options.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &target.token {
        options = options.token(token.clone());
    }
    if let Some(path) = creds {
        options = options.credentials_file(path).await.map_err(|e| {
            Error::Config(format!(
                "CHAT_NATS_CREDS: cannot use {}: {e} (a NATS .creds file: a user JWT and its nkey seed)",
                path.display()
            ))
        })?;
    }
    if let Some(path) = ca {
        check_ca(path)?;
        options = options.add_root_certificates(path.to_path_buf());
    }
    Ok(options)
}

/// Reads `CHAT_NATS_CREDS` and `CHAT_NATS_CA` when set: a bad file stops
/// start-up (before the node serves) naming its setting.
pub(crate) async fn check_files(creds: Option<&Path>, ca: Option<&Path>) -> Result<()> {
    secure(ConnectOptions::new(), &Target::default(), creds, ca)
        .await
        .map(|_| ())
}

/// The CA file must hold at least one PEM certificate.
fn check_ca(path: &Path) -> Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| {
        Error::Config(format!(
            "CHAT_NATS_CA: cannot use {}: {why} (a PEM file of the CA that signed the NATS server's certificate)",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_logs_never_see_them() {
        let t = parse("nats://alice:s%40cret@nats.example:4222").unwrap();
        assert_eq!(t.urls, ["nats://nats.example:4222"]);
        assert_eq!(t.user, Some(("alice".into(), "s@cret".into())));
        assert_eq!(t.token, None);
        let t = parse("tls://tok3n@a:4222, tls://b:4222").unwrap();
        assert_eq!(t.urls, ["tls://a:4222", "tls://b:4222"]);
        assert_eq!(t.token.as_deref(), Some("tok3n"));
        let t = parse("127.0.0.1:4222").unwrap();
        assert_eq!(t.urls, ["127.0.0.1:4222"]);
        assert!(parse(" , ").is_err());
        assert!(parse("nats://a:%zz@h").is_err());

        assert_eq!(
            redact("nats://alice:s3cret@h:4222,nats://tok@g"),
            "nats://***@h:4222,nats://***@g"
        );
        assert_eq!(redact("nats://h:4222/x@y"), "nats://h:4222/x@y");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }
}
