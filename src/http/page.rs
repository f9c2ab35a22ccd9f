//! The chat page: the bundle built from `web/` (committed in `web/dist/`), embedded in the binary and served by GET on the gRPC port.
//!
//! [`PageLayer`] sits outermost in the server's layers and answers every
//! `GET` and `HEAD` itself: the page's files at their paths, 404 for any
//! other path. gRPC and grpc-web calls are `POST` and CORS preflights
//! `OPTIONS`; those pass through untouched, so gRPC, grpc-web, CORS,
//! reflection and health route as before.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles
//! and calls only from this origin; images from any http(s) URL, since
//! users post image links), `no-cache` with an ETag so a new binary's page
//! is picked up at once, and headers against sniffing, framing and
//! referrers.
//!
//! [`log_page_address`] prints where the page is. On a loopback address with
//! chatd's own secret (generated or kept in the data directory), the address
//! carries a short-lived token in its fragment, which browsers never send to
//! a server; anywhere else the page asks for a token minted by `chatd token`.

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderName, HeaderValue,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;

use crate::auth::Keys;
use crate::logs::LogFormat;

/// The user the loopback page address signs in as.
pub const PAGE_USER: &str = "guest";
/// How long the token in the loopback page address is valid.
pub const PAGE_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// What the page may load and call: itself, plus images from http(s) URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src http: https:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The page's files, as `npm run build` in `web/` writes them.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dist/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/dist/style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/dist/favicon.svg"),
    },
    // Browsers and tools that ignore the page's icon link ask for this one.
    Asset {
        path: "/favicon.ico",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/dist/favicon.svg"),
    },
];

/// A strong ETag for `body`: FNV-1a over its bytes (stable across builds
/// and platforms, unlike the std hasher).
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}-{:x}\"", body.len())
}

/// Answers a GET or HEAD: a file of the page, 304 when the client's copy is
/// current, or 404.
fn respond(path: &str, if_none_match: Option<&HeaderValue>) -> Response<Body> {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        let mut response = Response::new(Body::new(Full::new(Bytes::from_static(
            b"404 not found: chatd serves its chat page at / and gRPC or grpc-web (POST)\n",
        ))));
        *response.status_mut() = StatusCode::NOT_FOUND;
        set_common_headers(&mut response, "text/plain; charset=utf-8");
        return response;
    };
    let tag = etag(asset.body);
    let current = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if current {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::new(Full::new(Bytes::from_static(asset.body))))
    };
    set_common_headers(&mut response, asset.content_type);
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(ETAG, tag);
    }
    response
}

fn set_common_headers(response: &mut Response<Body>, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// Serves the page for GET and HEAD; everything else goes to the inner
/// service. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageLayer;

impl<S> tower::Layer<S> for PageLayer {
    type Service = Page<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Page { inner }
    }
}

/// See [`PageLayer`].
#[derive(Debug, Clone)]
pub struct Page<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Page<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            let response = respond(request.uri().path(), request.headers().get(IF_NONE_MATCH));
            Either::Left(ready(Ok(response)))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

/// The page's address for the start-up log: with a token for [`PAGE_USER`]
/// in its fragment when `addr` is a loopback address and `own_secret` (the
/// keys of a secret chatd generated or keeps in its data directory) is
/// given; plain otherwise.
pub fn page_address(addr: SocketAddr, own_secret: Option<&Keys>) -> (String, bool) {
    let plain = format!("http://{addr}/");
    let keys = match own_secret {
        Some(keys) if addr.ip().is_loopback() => keys,
        _ => return (plain, false),
    };
    match keys.mint(PAGE_USER, Some("Guest"), Some(PAGE_TOKEN_TTL)) {
        Ok(token) => (format!("{plain}#token={token}"), true),
        Err(e) => {
            tracing::warn!(error = %e, "cannot mint the chat page's token");
            (plain, false)
        }
    }
}

/// Logs where the chat page is (see [`page_address`]). JSON logs go to log
/// collectors, where a token must not end up: they get the bare address.
pub fn log_page_address(addr: SocketAddr, own_secret: Option<&Keys>, format: LogFormat) {
    if format == LogFormat::Json {
        tracing::info!(
            url = %format!("http://{addr}/"),
            "chat page (paste a token from `chatd token <user-id> [--name NAME]`; JSON logs never carry one)"
        );
        return;
    }
    match page_address(addr, own_secret) {
        (url, true) => tracing::info!(
            "chat page: open {url} (signed in as `{PAGE_USER}` for {}; the part after # never reaches a server)",
            humantime::format_duration(PAGE_TOKEN_TTL)
        ),
        (url, false) => tracing::info!(
            "chat page: {url} (paste a token from `chatd token <user-id> [--name NAME]`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_only_printed_on_loopback_with_chatds_own_secret() {
        let keys = Keys::new(b"a-test-secret-of-enough-bytes");
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let v6: SocketAddr = "[::1]:50051".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();

        let (url, with_token) = page_address(loopback, Some(&keys));
        assert!(with_token);
        let token = url
            .strip_prefix("http://127.0.0.1:50051/#token=")
            .expect("address with a token in the fragment");
        let identity = keys.verify(token).expect("the token verifies");
        assert_eq!(&*identity.user_id, PAGE_USER);

        assert!(page_address(v6, Some(&keys)).1);
        assert_eq!(
            page_address(public, Some(&keys)),
            ("http://0.0.0.0:50051/".to_string(), false)
        );
        assert_eq!(
            page_address(loopback, None),
            ("http://127.0.0.1:50051/".to_string(), false)
        );
    }

    #[test]
    fn etags_differ_by_content() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
    }
}
