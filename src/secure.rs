//! The security settings at start-up: identity-provider keys (`CHAT_JWT_JWKS`) and TLS (`CHAT_TLS_*`), and the tasks that keep them fresh.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Keys;
use crate::config::Config;
use crate::error::Result;
use crate::jwks::{self, Jwks};
use crate::tls::{self, Tls};

/// What was loaded at start-up; see [`Secure::spawn`].
#[derive(Debug)]
pub struct Secure {
    jwks: Option<Arc<Jwks>>,
    tls: Option<Tls>,
}

impl Secure {
    /// Loads the JWKS document and the TLS files; start-up fails naming the
    /// setting that does not load.
    pub async fn load(config: &Config) -> Result<Secure> {
        let jwks = match &config.jwt_jwks {
            Some(spec) => {
                let jwks = Jwks::load(spec).await?;
                tracing::info!(
                    source = %jwks.describe(),
                    kids = ?jwks.kids(),
                    "tokens: also RS256, ES256 and EdDSA from the identity provider (CHAT_JWT_JWKS)"
                );
                Some(jwks)
            }
            None => None,
        };
        if let Some(issuer) = &config.secret.jwt_issuer {
            tracing::info!(issuer, "tokens: `iss` must be CHAT_JWT_ISSUER");
        }
        if let Some(audience) = &config.secret.jwt_audience {
            tracing::info!(audience, "tokens: `aud` must name CHAT_JWT_AUDIENCE");
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = Tls::load(cert, key)?;
                tracing::info!(cert = %cert.display(), "TLS only (CHAT_TLS_CERT), ALPN h2 and http/1.1; reloaded when the files change or on SIGHUP");
                Some(tls)
            }
            _ => None,
        };
        Ok(Secure { jwks, tls })
    }

    /// `keys`, also taking tokens from the identity provider when there is
    /// one.
    pub fn keys(&self, keys: Keys) -> Keys {
        match &self.jwks {
            Some(jwks) => keys.with_jwks(jwks.clone()),
            None => keys,
        }
    }

    /// Starts the JWKS refresh and the certificate watch on `tracker`, both
    /// ending at `stop`; returns the TLS to accept connections with.
    pub fn spawn(self, tracker: &TaskTracker, stop: &CancellationToken) -> Option<Tls> {
        if let Some(jwks) = self.jwks {
            tracker.spawn(jwks::refresh(jwks, stop.clone()));
        }
        if let Some(tls) = &self.tls {
            tracker.spawn(tls::watch(tls.clone(), stop.clone()));
        }
        self.tls
    }
}
