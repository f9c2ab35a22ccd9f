//! Issue 9, "Limits per user", "Identity providers" and "TLS": the send and
//! join rates and the stream cap (secure/limits.rs), RS256 / ES256 / EdDSA
//! tokens from a JWKS file or URL (with key rotation), every refused
//! provider token, and TLS for gRPC and grpc-web with a certificate swapped
//! under open streams (secure/tls.rs).

mod limits;
mod tls;

on_both_backends! {
    a_send_over_the_rate_is_refused_and_not_stored: crate::secure::limits::a_send_over_the_rate_is_refused_and_not_stored,
    the_stream_cap_names_its_limit: crate::secure::limits::the_stream_cap_names_its_limit,
    a_join_over_the_rate_is_refused_and_leaves_no_trace: crate::secure::limits::a_join_over_the_rate_is_refused_and_leaves_no_trace,
    reads_over_the_rate_are_refused_and_others_unaffected: crate::secure::limits::reads_over_the_rate_are_refused_and_others_unaffected,
    many_resumes_of_one_user_all_complete: crate::secure::limits::many_resumes_of_one_user_all_complete,
    provider_tokens_from_a_jwks_file: crate::secure::provider_tokens_from_a_jwks_file,
    every_bad_provider_token_is_unauthenticated: crate::secure::every_bad_provider_token_is_unauthenticated,
    provider_keys_from_a_url_rotate_in: crate::secure::provider_keys_from_a_url_rotate_in,
    grpc_and_grpc_web_over_tls: crate::secure::tls::grpc_and_grpc_web_over_tls,
    a_certificate_swapped_under_an_open_stream: crate::secure::tls::a_certificate_swapped_under_an_open_stream,
    a_plaintext_or_silent_client_on_the_tls_port_fails: crate::secure::tls::a_plaintext_or_silent_client_on_the_tls_port_fails,
}

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::helpers::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatd::proto::{self, chat_service_client::ChatServiceClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

const RSA_KEY: &str = include_str!("../../fixtures/rsa-test-key.pem");
const RSA_PUBLIC_KEY: &str = include_str!("../../fixtures/rsa-test-key.pub.pem");
const RSA_JWK: &str = include_str!("../../fixtures/rsa-test-key.jwk.json");
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "chatd";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- providers

/// A provider's signing keys: RSA (the fixture), P-256 and Ed25519 (made
/// now), each with its JWK.
struct ProviderKeys {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    ec_jwk: Value,
    ed_jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-256 key: its signing key and public JWK (without `kid`).
fn ec_key() -> (EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw(); // 0x04 || x || y
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    (
        EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk,
    )
}

impl ProviderKeys {
    fn new() -> Self {
        let (ec, ec_jwk) = ec_key();
        let ed_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed_pair.public_key_raw())});
        ProviderKeys {
            rsa: EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            ec,
            ed: EncodingKey::from_ed_pem(ed_pair.serialize_pem().as_bytes()).unwrap(),
            ec_jwk,
            ed_jwk,
        }
    }

    /// The JWKS with kids rsa-1, ec-1 and ed-1.
    fn jwks(&self) -> Value {
        let mut rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
        rsa["kid"] = json!("rsa-1");
        rsa["use"] = json!("sig");
        let mut ec = self.ec_jwk.clone();
        ec["kid"] = json!("ec-1");
        let mut ed = self.ed_jwk.clone();
        ed["kid"] = json!("ed-1");
        ed["alg"] = json!("EdDSA");
        json!({"keys": [rsa, ec, ed]})
    }
}

/// Claims from the test issuer for the test audience.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The JWKS written to a file of the test's own.
fn jwks_file(jwks: &Value) -> tempfile_path::TempPath {
    let path = tempfile_path::TempPath::new("jwks.json");
    std::fs::write(&path.0, jwks.to_string()).unwrap();
    path
}

/// A file path removed when dropped.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);

    impl TempPath {
        pub fn new(name: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            TempPath(
                std::env::temp_dir()
                    .join(format!("chatd-secure-{}-{n}-{name}", std::process::id())),
            )
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// SendMessage to "lobby" with `token`: who the server says sent it.
async fn sender_of(server: &TestServer, token: &str) -> Result<String, tonic::Status> {
    let mut client =
        ChatServiceClient::with_interceptor(server.channel().await, Bearer::new(token));
    let request = proto::SendMessageRequest {
        room: "lobby".into(),
        content: "hi".into(),
        ..Default::default()
    };
    send_request(&mut client, request)
        .await
        .map(|m| m.sender.map(|s| s.user_id).unwrap_or_default())
}

fn provider_args(jwks: &str) -> Vec<&str> {
    vec![
        "--jwt-jwks",
        jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]
}

async fn provider_tokens_from_a_jwks_file(backend: Backend) {
    let db = TestDb::create(backend).await;
    let keys = ProviderKeys::new();
    let file = jwks_file(&keys.jwks());
    let server = TestServer::start_with(config(&db.url, &provider_args(file.as_str()))).await;
    let cases = [
        (Algorithm::RS256, "rsa-1", &keys.rsa, "rita"),
        (Algorithm::ES256, "ec-1", &keys.ec, "eric"),
        (Algorithm::EdDSA, "ed-1", &keys.ed, "edna"),
    ];
    for (alg, kid, key, user) in cases {
        let token = sign(alg, Some(kid), key, &claims(user));
        assert_eq!(sender_of(&server, &token).await.unwrap(), user, "{alg:?}");
    }
    // HS256 with the secret still works beside them (minted with the
    // server's issuer and audience).
    assert_eq!(
        sender_of(&server, &server.token("hugo")).await.unwrap(),
        "hugo"
    );
    server.shutdown().await.unwrap();

    // Start-up fails clearly on a JWKS that cannot be used.
    let missing = tempfile_path::TempPath::new("missing.json");
    let garbage = jwks_file(&json!({"keys": "not a list"}));
    let no_keys = jwks_file(&json!({"keys": []}));
    for spec in [
        missing.as_str(),
        garbage.as_str(),
        no_keys.as_str(),
        "ftp://idp.example/jwks",
        "https://",
        "http://127.0.0.1:1/jwks",
    ] {
        let err = within(chatd::Application::build(config(
            &db.url,
            &["--jwt-jwks", spec],
        )))
        .await
        .err()
        .unwrap_or_else(|| panic!("{spec} was accepted"))
        .to_string();
        assert!(err.starts_with("CHAT_JWT_JWKS"), "{spec}: {err}");
    }
}

async fn every_bad_provider_token_is_unauthenticated(backend: Backend) {
    let db = TestDb::create(backend).await;
    let keys = ProviderKeys::new();
    let file = jwks_file(&keys.jwks());
    let server = TestServer::start_with(config(&db.url, &provider_args(file.as_str()))).await;
    let good = claims("mallory");
    let with = |field: &str, value: Value| {
        let mut c = good.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        c
    };
    let header_none = b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let alg_none = format!("{header_none}.{}.", b64(good.to_string().as_bytes()));
    let hs_with_public_key = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(RSA_PUBLIC_KEY.as_bytes()),
        &good,
    );
    let hs_with_jwk = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(RSA_JWK.as_bytes()),
        &good,
    );
    let (other_ec, _) = ec_key();
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("alg none", alg_none, &["alg"]),
        (
            "HS256 signed with the public key",
            hs_with_public_key,
            &["signature"],
        ),
        ("HS256 signed with the JWK", hs_with_jwk, &["signature"]),
        (
            "RS256 naming the EC key",
            sign(Algorithm::RS256, Some("ec-1"), &keys.rsa, &good),
            &["does not fit", "ec-1"],
        ),
        (
            "ES256 naming the RSA key",
            sign(Algorithm::ES256, Some("rsa-1"), &keys.ec, &good),
            &["does not fit", "rsa-1"],
        ),
        (
            "unknown kid",
            sign(Algorithm::ES256, Some("nobody"), &keys.ec, &good),
            &["`kid`", "nobody"],
        ),
        (
            "no kid",
            sign(Algorithm::RS256, None, &keys.rsa, &good),
            &["`kid`"],
        ),
        (
            "another key under a known kid",
            sign(Algorithm::ES256, Some("ec-1"), &other_ec, &good),
            &["signature"],
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::ES256,
                Some("ec-1"),
                &keys.ec,
                &with("iss", json!("https://evil.example")),
            ),
            &["`iss`", "CHAT_JWT_ISSUER"],
        ),
        (
            "no issuer",
            sign(
                Algorithm::ES256,
                Some("ec-1"),
                &keys.ec,
                &with("iss", Value::Null),
            ),
            &["`iss`"],
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                Some("ec-1"),
                &keys.ec,
                &with("aud", json!("someone-else")),
            ),
            &["`aud`", "CHAT_JWT_AUDIENCE"],
        ),
        (
            "no audience",
            sign(
                Algorithm::ES256,
                Some("ec-1"),
                &keys.ec,
                &with("aud", Value::Null),
            ),
            &["`aud`"],
        ),
        (
            "HS256 without the issuer",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "mallory", "exp": now() + 600, "aud": AUDIENCE}),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
            &["`iss`"],
        ),
    ];
    for (what, token, words) in cases {
        let status = match sender_of(&server, &token).await {
            Ok(user) => panic!("{what}: accepted as {user}"),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        for word in words {
            assert!(
                status.message().contains(word),
                "{what}: {word:?} not in {status:?}"
            );
        }
    }
    // The same claims, rightly signed, pass: the refusals were for the
    // reasons tested.
    let token = sign(Algorithm::ES256, Some("ec-1"), &keys.ec, &good);
    assert_eq!(sender_of(&server, &token).await.unwrap(), "mallory");
    let mut alice = server.client("alice").await;
    let page = newest_page(&mut alice, "lobby").await;
    assert_eq!(page.messages.len(), 1, "no refused send was stored");
    server.shutdown().await.unwrap();
}

/// A JWKS provider over HTTP that the test controls: it serves `document`,
/// or never answers while `hang` is set, and counts requests.
struct Provider {
    url: String,
    state: Arc<Mutex<ProviderState>>,
    requests: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

struct ProviderState {
    document: Value,
    hang: bool,
}

impl Provider {
    async fn start(document: Value) -> Provider {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let state = Arc::new(Mutex::new(ProviderState {
            document,
            hang: false,
        }));
        let (count, requests) = tokio::sync::watch::channel(0usize);
        let count = Arc::new(count);
        let shared = state.clone();
        // Aborted with the provider; its connection tasks with it.
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let state = shared.clone();
                let count = count.clone();
                let service = hyper::service::service_fn(move |_request| {
                    let state = state.clone();
                    let count = count.clone();
                    async move {
                        let (body, hang) = {
                            let s = state.lock().unwrap();
                            (s.document.to_string(), s.hang)
                        };
                        count.send_modify(|n| *n += 1);
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                conns.spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
            }
        });
        Provider {
            url,
            state,
            requests,
            task,
        }
    }

    fn set(&self, document: Value, hang: bool) {
        let mut s = self.state.lock().unwrap();
        s.document = document;
        s.hang = hang;
    }

    fn requests(&self) -> usize {
        *self.requests.borrow()
    }

    /// Waits for a request after the first `seen`.
    async fn requested_after(&self, seen: usize) {
        let mut requests = self.requests.clone();
        within(requests.wait_for(|n| *n > seen)).await.unwrap();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provider_keys_from_a_url_rotate_in(backend: Backend) {
    let db = TestDb::create(backend).await;
    let keys = ProviderKeys::new();
    let provider = Provider::start(keys.jwks()).await;
    let server = TestServer::start_with(config(&db.url, &provider_args(&provider.url))).await;
    assert_eq!(provider.requests(), 1, "fetched once at start-up");
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &keys.rsa),
        (Algorithm::ES256, "ec-1", &keys.ec),
        (Algorithm::EdDSA, "ed-1", &keys.ed),
    ] {
        let token = sign(alg, Some(kid), key, &claims("rita"));
        assert_eq!(sender_of(&server, &token).await.unwrap(), "rita");
    }

    // The provider rotates in ec-2. The first token naming it is refused
    // and makes chatd fetch again (at most once per 10 s): within seconds
    // it is accepted.
    let (new_key, new_jwk) = ec_key();
    let mut rotated = keys.jwks();
    let mut jwk = new_jwk;
    jwk["kid"] = json!("ec-2");
    rotated["keys"].as_array_mut().unwrap().push(jwk);
    provider.set(rotated, false);
    let token = sign(Algorithm::ES256, Some("ec-2"), &new_key, &claims("nina"));
    let accepted = within(async {
        loop {
            let asked = provider.requests();
            match sender_of(&server, &token).await {
                Ok(user) => break user,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                    assert!(status.message().contains("ec-2"), "{status:?}");
                    // Wait for the fetch it asked for, not for time.
                    provider.requested_after(asked).await;
                }
            }
        }
    })
    .await;
    assert_eq!(accepted, "nina");

    // A provider that hangs blocks no check: known keys keep working and an
    // unknown kid is refused at once.
    provider.set(json!({"keys": []}), true);
    let unknown = sign(Algorithm::ES256, Some("ec-3"), &new_key, &claims("nina"));
    let status = sender_of(&server, &unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    for _ in 0..3 {
        assert_eq!(sender_of(&server, &token).await.unwrap(), "nina");
    }
    server.shutdown().await.unwrap();
}
