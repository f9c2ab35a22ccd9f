//! TLS on the one port (`CHAT_TLS_CERT`, `CHAT_TLS_KEY`): a rustls acceptor whose certificate is swapped on reload.
//!
//! The acceptor offers ALPN `h2` and `http/1.1`, so gRPC and grpc-web work
//! over HTTP/2 and HTTP/1.1. Its certificate resolver hands every new
//! handshake the current certificate; [`watch`] (an owned task) loads the
//! files again when they change (polled every [`POLL_EVERY`], loaded once
//! they have stopped changing for one poll) or on SIGHUP. Connections keep
//! the certificate they were made with, so open streams survive a reload. A
//! pair that does not load (unreadable, not PEM, key not matching the
//! certificate) keeps the old certificate and is logged once.
//!
//! [`Io`] is an accepted connection whose TLS handshake runs as it is first
//! read, inside [`crate::net`]' handshake deadline: a silent client
//! is cut at `CHAT_HANDSHAKE_TIMEOUT`, a plaintext one fails at once.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};

/// How often the certificate and key files are checked for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// The server's TLS: the acceptor and the files its certificate comes from.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver {
    /// Never held across `.await`.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl Tls {
    /// Loads the certificate and key; start-up fails naming the setting
    /// whose file does not load.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls> {
        let certified = load_pair(cert, key).map_err(Error::Config)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Starts the TLS handshake of an accepted connection (it runs as the
    /// connection is read).
    pub fn accept(&self, stream: TcpStream) -> Io {
        Io::Handshaking(Box::new(self.acceptor.accept(stream)))
    }

    /// Loads the files again; on failure the old certificate stays.
    fn reload(&self) -> std::result::Result<(), String> {
        let certified = load_pair(&self.cert, &self.key)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }
}

/// The certificate chain in `cert` with the private key in `key`, checked
/// to belong together.
fn load_pair(cert: &Path, key: &Path) -> std::result::Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("CHAT_TLS_CERT: cannot read {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "CHAT_TLS_CERT: no PEM certificate in {}",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "CHAT_TLS_KEY: cannot read a PEM private key from {}: {e}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "CHAT_TLS_CERT / CHAT_TLS_KEY: {} and {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// What a file looked like: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// SIGHUP, where there is one.
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn listen() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(signal) => Hangup(Some(signal)),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; TLS files are still watched");
                    Hangup(None)
                }
            }
        }
        #[cfg(not(unix))]
        Hangup()
    }

    /// The next SIGHUP (cancel-safe).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.0 {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// The TLS of `config` (`CHAT_TLS_CERT`, `CHAT_TLS_KEY`), when both are
/// set; start-up fails naming the file that does not load. [`watch`] keeps
/// the certificate fresh.
pub fn load_configured(config: &Config) -> Result<Option<Tls>> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Tls::load(cert, key)?;
            tracing::info!(cert = %cert.display(), "TLS only (CHAT_TLS_CERT), ALPN h2 and http/1.1; reloaded when the files change or on SIGHUP");
            Ok(Some(tls))
        }
        _ => Ok(None),
    }
}

/// Reloads `tls` when its files change or on SIGHUP, until `stop`.
pub async fn watch(tls: Tls, stop: CancellationToken) {
    let stamps = || (stamp(&tls.cert), stamp(&tls.key));
    let mut hangup = Hangup::listen();
    // What was last loaded (or failed to load), and what the last poll saw.
    let mut loaded = stamps();
    let mut seen = loaded;
    loop {
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => false,
            () = hangup.recv() => true,
        };
        let now = stamps();
        // A change is loaded once the files have stopped changing for one
        // poll, so a pair written one file after the other loads whole.
        let settled = now != loaded && now == seen;
        seen = now;
        if !forced && !settled {
            continue;
        }
        loaded = now;
        match tls.reload() {
            Ok(()) => tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded"),
            Err(why) => tracing::warn!(
                error = %why,
                "TLS certificate not reloaded; serving the previous one"
            ),
        }
    }
}

/// An accepted connection: plain TCP, or TLS (in its handshake, or
/// established).
pub enum Io {
    Plain(TcpStream),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Plain(_) => "Plain",
            Io::Handshaking(_) => "TlsHandshaking",
            Io::Tls(_) => "Tls",
        })
    }
}

impl Io {
    /// Drives the TLS handshake; ready once there is a stream to use.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Io::Handshaking(accept) = self {
            let stream = ready!(Pin::new(accept.as_mut()).poll(cx))?;
            *self = Io::Tls(Box::new(stream));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_handshake(cx))?;
        match &mut *self {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Handshaking(_) => Poll::Pending,
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_handshake(cx))?;
        match &mut *self {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Handshaking(_) => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_handshake(cx))?;
        match &mut *self {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Handshaking(_) => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Handshaking(_) => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Handshaking(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Handshaking(accept) => match accept.get_mut() {
                Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
        }
    }
}
