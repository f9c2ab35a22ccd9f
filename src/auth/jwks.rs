//! An identity provider's public keys (`CHAT_JWT_JWKS`): a JWKS document from a file or a URL, kept fresh by an owned task.
//!
//! Token checks read the last good key set without waiting: a provider that
//! is slow or down never blocks them. [`refresh`] fetches the document again
//! every [`REFRESH_EVERY`] and soon after a token names an unknown `kid`,
//! never more than once per [`MIN_FETCH_GAP`]; every fetch has a deadline
//! ([`FETCH_TIMEOUT`]) and a size bound ([`MAX_DOCUMENT_BYTES`]). A failed
//! fetch keeps the keys there are and is logged once until one succeeds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How often the document is fetched again when nothing asks sooner.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The least time between two fetches.
pub const MIN_FETCH_GAP: Duration = Duration::from_secs(10);
/// The deadline of one fetch (connecting, the request and the whole body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document chatd reads.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One verification key: what it decodes and the one algorithm it takes.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// Where the document comes from.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

/// The provider's keys by `kid`, and what keeps them fresh.
pub struct Jwks {
    source: Source,
    /// The last good key set. Never held across `.await`.
    keys: RwLock<Arc<HashMap<String, VerifyingKey>>>,
    /// Wakes [`refresh`] when a token names an unknown `kid`.
    unknown_kid: Notify,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("kids", &self.kids())
            .finish()
    }
}

impl Jwks {
    /// Reads the document once; start-up fails (naming `CHAT_JWT_JWKS`)
    /// when it cannot be read, is not a JWKS or has no usable key.
    pub async fn load(spec: &str) -> Result<Arc<Jwks>> {
        let config = |why: String| Error::Config(format!("CHAT_JWT_JWKS: {why}"));
        let source = if spec.starts_with("http://") || spec.starts_with("https://") {
            let url =
                reqwest::Url::parse(spec).map_err(|e| config(format!("bad URL {spec}: {e}")))?;
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::limited(3))
                .user_agent(concat!("chatd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| config(format!("HTTP client: {e}")))?;
            Source::Url { url, client }
        } else if spec.contains("://") {
            return Err(config(format!(
                "{spec}: expected a file path or an http:// or https:// URL"
            )));
        } else {
            Source::File(PathBuf::from(spec))
        };
        let jwks = Jwks {
            source,
            keys: RwLock::new(Arc::default()),
            unknown_kid: Notify::new(),
        };
        let keys = jwks.fetch().await.map_err(config)?;
        *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(Arc::new(jwks))
    }

    /// The key `kid` names; `None` (and a fetch soon) when there is none.
    pub fn key(&self, kid: &str) -> Option<VerifyingKey> {
        let found = self.current().get(kid).cloned();
        if found.is_none() {
            self.unknown_kid.notify_one();
        }
        found
    }

    /// The `kid`s known now, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.current().keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Where the keys come from, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(path) => path.display().to_string(),
            Source::Url { url, .. } => url.to_string(),
        }
    }

    fn current(&self) -> Arc<HashMap<String, VerifyingKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads and parses the document, within [`FETCH_TIMEOUT`].
    async fn fetch(&self) -> std::result::Result<HashMap<String, VerifyingKey>, String> {
        let body = match tokio::time::timeout(FETCH_TIMEOUT, self.read()).await {
            Ok(body) => body?,
            Err(_) => {
                return Err(format!(
                    "{}: no answer within {FETCH_TIMEOUT:?}",
                    self.describe()
                ));
            }
        };
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: not a JWKS document: {e}", self.describe()))?;
        let keys = usable_keys(&set);
        if keys.is_empty() {
            return Err(format!(
                "{}: no usable key (need `kid` and an RSA, P-256 or Ed25519 signing key)",
                self.describe()
            ));
        }
        Ok(keys)
    }

    /// The document's bytes, at most [`MAX_DOCUMENT_BYTES`].
    async fn read(&self) -> std::result::Result<Vec<u8>, String> {
        let too_large = || {
            format!(
                "{}: larger than {MAX_DOCUMENT_BYTES} bytes",
                self.describe()
            )
        };
        match &self.source {
            Source::File(path) => {
                let what = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
                let len = tokio::fs::metadata(path).await.map_err(what)?.len();
                if len > MAX_DOCUMENT_BYTES as u64 {
                    return Err(too_large());
                }
                tokio::fs::read(path).await.map_err(what)
            }
            Source::Url { url, client } => {
                let what = |e: reqwest::Error| format!("cannot fetch {url}: {e}");
                let mut response = client.get(url.clone()).send().await.map_err(what)?;
                if !response.status().is_success() {
                    return Err(format!("{url} answered HTTP {}", response.status()));
                }
                if response.content_length().unwrap_or(0) > MAX_DOCUMENT_BYTES as u64 {
                    return Err(too_large());
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(what)? {
                    if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

/// The keys chatd can check tokens with, by `kid`. Keys without `kid`, for
/// encryption, or of other types and curves are left out.
fn usable_keys(set: &JwkSet) -> HashMap<String, VerifyingKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(algorithm) = algorithm_of(jwk) else {
            tracing::debug!(kid, "JWKS key skipped: not an RS256, ES256 or EdDSA key");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, VerifyingKey { key, algorithm });
            }
            Err(e) => tracing::warn!(kid, error = %e, "JWKS key skipped: invalid"),
        }
    }
    keys
}

/// The one algorithm a key verifies: RS256 for RSA, ES256 for P-256,
/// EdDSA for Ed25519; a key's own `alg` must agree.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let (algorithm, named) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        _ => return None,
    };
    match &jwk.common.key_algorithm {
        Some(alg) if *alg != named => None,
        _ => Some(algorithm),
    }
}

/// Keeps `jwks` fresh until `stop`; see the module documentation.
pub async fn refresh(jwks: Arc<Jwks>, stop: CancellationToken) {
    let mut last_fetch = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(last_fetch + REFRESH_EVERY) => {}
            () = jwks.unknown_kid.notified() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(last_fetch + MIN_FETCH_GAP) => {}
        }
        last_fetch = Instant::now();
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = jwks.fetch() => fetched,
        };
        match fetched {
            Ok(keys) => {
                let before = jwks.kids();
                *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                let after = jwks.kids();
                if failing || before != after {
                    tracing::info!(kids = ?after, "JWKS keys loaded");
                }
                failing = false;
            }
            Err(why) => {
                if !failing {
                    tracing::warn!(error = %why, "JWKS fetch failed; keeping the keys there are");
                }
                failing = true;
            }
        }
    }
}
