//! Key rotation, the start-up refusals, `chatd cluster-key`, and NATS locked down with a password or TLS.

use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::cluster_attack::{Attack, message_at, next_message_not};
use crate::helpers::cluster::{CLUSTER_KEY, Nats, NodeProcess, OTHER_KEY, unique_cluster};
use crate::helpers::metrics::{sample, scrape, wait_for};
use crate::helpers::{TestDb, TestServer, config, join, send, within};

/// A third key, unrelated to the cluster's.
const STRANGER_KEY: &str = "c3RyYW5nZXIncyBjbHVzdGVyIGtleSwgMzIgYnl0ZXM=";

/// `chatd_nats_notifications_missed_total` of a node: messages that only
/// the storage poll brought.
async fn missed(node: &TestServer) -> f64 {
    let text = scrape(node.metrics_addr.expect("metrics")).await;
    sample(&text, "chatd_nats_notifications_missed_total", &[]).unwrap_or(0.0)
}

/// The middle of a rotation (one node current=K2/previous=K1, another
/// current=K1/previous=K2) delivers live both ways; a node with an
/// unrelated key is refused (counted as `seal`), while its messages still
/// reach the others' streams through the PostgreSQL poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_delivery_live_and_a_stranger_is_refused() {
    let db = TestDb::postgres().await;
    let nats = Nats::start().await;
    let cluster = unique_cluster("rotate");
    let (k1, k2) = (CLUSTER_KEY, OTHER_KEY);
    let a = Attack::node(
        &db,
        &nats,
        &cluster,
        &["--cluster-key", k2, "--cluster-key-previous", k1],
    )
    .await;
    let b = Attack::node(
        &db,
        &nats,
        &cluster,
        &["--cluster-key", k1, "--cluster-key-previous", k2],
    )
    .await;
    let room = "rolling";
    let mut on_a = a.client("reader-a").await;
    let (mut sa, _) = join(&mut on_a, room, None).await;
    let mut on_b = b.client("reader-b").await;
    let (mut sb, joined) = join(&mut on_b, room, None).await;
    // Presence crosses too: B's joined lists A's reader.
    assert_eq!(
        crate::helpers::user_ids(&joined.members),
        ["reader-b", "reader-a"]
    );
    for (n, (from, to)) in [(&mut on_a, &mut sb), (&mut on_b, &mut sa)]
        .into_iter()
        .enumerate()
    {
        let started = tokio::time::Instant::now();
        let sent = send(from, room, "across the rotation").await;
        // The receiving node's own earlier message comes first.
        assert_eq!(
            message_at(to, sent.seq).await.seq,
            sent.seq,
            "direction {n}"
        );
        // Live: well below the poll interval (2 s).
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    assert_eq!(missed(&a).await + missed(&b).await, 0.0);

    let stranger = Attack::node(&db, &nats, &cluster, &["--cluster-key", STRANGER_KEY]).await;
    let mut on_c = stranger.client("stranger").await;
    let sent = send(&mut on_c, room, "from the stranger").await;
    for s in [&mut sa, &mut sb] {
        let m = message_at(s, sent.seq).await;
        assert_eq!((m.seq, m.content.as_str()), (sent.seq, "from the stranger"));
    }
    for node in [&a, &b] {
        wait_for(
            node.metrics_addr.expect("metrics"),
            "chatd_nats_dropped_total",
            &[("reason", "seal")],
            |v| v.unwrap_or(0.0) >= 1.0,
        )
        .await;
    }
    assert!(missed(&a).await >= 1.0 && missed(&b).await >= 1.0);
}

/// The error `Application::build` stops with for `extra` flags.
async fn refused(db: &TestDb, extra: &[&str]) -> String {
    match within(chatd::Application::build(config(&db.url, extra))).await {
        Ok(_) => panic!("{extra:?} must be refused"),
        Err(e) => e.to_string(),
    }
}

/// A cluster without a key, with a bad key or a key without NATS, and a
/// missing credentials file stop start-up naming the setting;
/// `chatd cluster-key` prints 32 bytes of base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_bad_cluster_settings() {
    let db = TestDb::postgres().await;
    let nats = [
        "--nats-url",
        "nats://127.0.0.1:4222",
        "--cluster-name",
        "refusals",
    ];
    let e = refused(&db, &nats).await;
    assert!(
        e.contains("CHAT_CLUSTER_KEY") && e.contains("chatd cluster-key"),
        "{e}"
    );
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    for bad in ["not base64 at all!", short.as_str()] {
        let mut args = nats.to_vec();
        args.extend(["--cluster-key", bad]);
        let e = refused(&db, &args).await;
        assert!(e.contains("CHAT_CLUSTER_KEY"), "{e}");
        assert!(!e.contains(bad), "the message repeats the key: {e}");
    }
    let e = refused(&db, &["--cluster-key", CLUSTER_KEY]).await;
    assert!(
        e.contains("CHAT_CLUSTER_KEY") && e.contains("CHAT_NATS_URL"),
        "{e}"
    );
    let mut args = nats.to_vec();
    args.extend([
        "--cluster-key",
        CLUSTER_KEY,
        "--cluster-key-previous",
        CLUSTER_KEY,
    ]);
    let e = refused(&db, &args).await;
    assert!(e.contains("CHAT_CLUSTER_KEY_PREVIOUS"), "{e}");
    let mut args = nats.to_vec();
    args.extend([
        "--cluster-key",
        CLUSTER_KEY,
        "--nats-creds",
        "/nonexistent/chatd.creds",
    ]);
    let e = refused(&db, &args).await;
    assert!(e.contains("CHAT_NATS_CREDS"), "{e}");

    let output = within(tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("cluster-key")
            .output()
    }))
    .await
    .expect("task")
    .expect("run chatd cluster-key");
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).expect("utf-8");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .expect("base64");
    assert_eq!(bytes.len(), 32);
}

/// Two nodes deliver to each other through NATS (not the poll).
async fn delivers_live(a: &TestServer, b: &TestServer, room: &str) {
    for node in [a, b] {
        wait_for(
            node.metrics_addr.expect("metrics"),
            "chatd_nats_connected",
            &[],
            |v| v == Some(1.0),
        )
        .await;
    }
    let mut reader = b.client("reader").await;
    let (mut stream, _) = join(&mut reader, room, None).await;
    let mut writer = a.client("writer").await;
    let sent = send(&mut writer, room, "over a locked-down NATS").await;
    assert_eq!(next_message_not(&mut stream, "").await.seq, sent.seq);
    assert_eq!(missed(b).await, 0.0);
}

/// NATS with a user and password in the URL: nodes connect and deliver
/// live, and the password never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_password_in_the_url() {
    let db = TestDb::postgres().await;
    let nats = Nats::start_with(&["--user", "chatd", "--pass", "s3cret-pw"]).await;
    let url = format!("nats://chatd:s3cret-pw@127.0.0.1:{}", nats.port);
    let cluster = unique_cluster("password");
    let args = |url: &str| -> Vec<String> {
        [
            "--nats-url",
            url,
            "--cluster-name",
            &cluster,
            "--cluster-key",
            CLUSTER_KEY,
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let owned = args(&url);
    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let a = TestServer::start_with(config(&db.url, &refs)).await;
    let b = TestServer::start_with(config(&db.url, &refs)).await;
    delivers_live(&a, &b, "guarded").await;

    // The binary, logging at debug level: the password never shows.
    let mut process_args = refs.clone();
    process_args.truncate(6);
    let process =
        NodeProcess::spawn_with_env(&db.url, &process_args, &[("RUST_LOG", "debug")]).await;
    let mut c = process.client("probe").await;
    join(&mut c, "guarded", None).await;
    assert!(process.count("NATS connected") >= 1);
    assert_eq!(process.count("s3cret-pw"), 0);
}

/// A CA and a certificate for 127.0.0.1 it signed, in PEM files in a
/// directory of the test's own.
fn tls_files() -> (std::path::PathBuf, [std::path::PathBuf; 3]) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chatd test NATS CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = std::env::temp_dir().join(unique_cluster("nats_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    std::fs::write(&files[0], ca.pem()).unwrap();
    std::fs::write(&files[1], cert.pem()).unwrap();
    std::fs::write(&files[2], key.serialize_pem()).unwrap();
    (dir, files)
}

/// NATS that speaks TLS only: nodes with a tls:// URL and CHAT_NATS_CA
/// connect and deliver live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_a_ca_file() {
    let db = TestDb::postgres().await;
    let (dir, [ca, cert, key]) = tls_files();
    let (cert, key, ca) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    let nats = Nats::start_with(&["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let cluster = unique_cluster("tls");
    let args = [
        "--nats-url",
        &url,
        "--cluster-name",
        &cluster,
        "--cluster-key",
        CLUSTER_KEY,
        "--nats-ca",
        &ca,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let a = TestServer::start_with(config(&db.url, &args)).await;
    let b = TestServer::start_with(config(&db.url, &args)).await;
    delivers_live(&a, &b, "encrypted").await;
    drop((a, b));
    let _ = std::fs::remove_dir_all(dir);
}
