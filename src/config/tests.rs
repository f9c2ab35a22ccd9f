//! Unit tests of the command line: defaults, subcommands, bad values.

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("chatd").chain(args.iter().copied()))
}

#[test]
fn defaults_and_subcommands() {
    let cli = parse(&[]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.config.addr.to_string(), "127.0.0.1:50051");
    assert!(cli.config.validate().is_ok());
    assert!(matches!(
        parse(&["serve"]).unwrap().command,
        Some(Command::Serve(_))
    ));
    let cli = parse(&["token", "alice", "--name", "Alice", "--ttl", "1h"]).unwrap();
    match cli.command {
        Some(Command::Token(t)) => assert_eq!(
            (t.user_id.as_str(), t.ttl, t.admin),
            ("alice", Duration::from_secs(3600), false)
        ),
        other => panic!("unexpected {other:?}"),
    }
    match parse(&["token", "backend", "--admin"]).unwrap().command {
        Some(Command::Token(t)) => assert!(t.admin),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn tokens_without_exp_are_refused_unless_allowed() {
    assert!(!parse(&[]).unwrap().config.jwt_allow_no_exp);
    assert!(
        parse(&["--jwt-allow-no-exp"])
            .unwrap()
            .config
            .jwt_allow_no_exp
    );
}

#[test]
fn bad_values_name_their_setting() {
    let err = parse(&["--addr", "nope"]).unwrap_err().to_string();
    assert!(err.contains("CHAT_ADDR"), "{err}");
    let err = parse(&["--cors-origins", "https://a.example,ftp://x"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("CHAT_CORS_ORIGINS"), "{err}");
    let err = parse(&["--max-message-bytes", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("CHAT_MAX_MESSAGE_BYTES"), "{err}");
    let cli = parse(&["--handshake-timeout", "0s"]).unwrap();
    assert!(
        cli.config
            .validate()
            .unwrap_err()
            .contains("CHAT_HANDSHAKE_TIMEOUT")
    );
    let err = parse(&["--max-connections-per-ip", "many"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("CHAT_MAX_CONNECTIONS_PER_IP"), "{err}");
    let err = parse(&["--db-timeout", "10ms"]).unwrap_err().to_string();
    assert!(err.contains("CHAT_DB_TIMEOUT"), "{err}");
    assert_eq!(
        parse(&[]).unwrap().config.db_timeout,
        Duration::from_secs(4)
    );
    assert_eq!(
        parse(&[]).unwrap().config.first_call_timeout,
        Duration::from_secs(10)
    );
    for bad in ["500ms", "11m", "soon"] {
        let err = parse(&["--first-call-timeout", bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CHAT_FIRST_CALL_TIMEOUT"), "{bad}: {err}");
    }
    let cli = parse(&["--max-message-bytes", "100000"]).unwrap();
    assert!(
        cli.config
            .validate()
            .unwrap_err()
            .contains("CHAT_MAX_REQUEST_BYTES")
    );
}

#[test]
fn cluster_keys_are_required_checked_and_never_repeated() {
    const KEY: &str = "Y2hhdGQgdGVzdCBjbHVzdGVyIGtleSwgMzIgYnl0ZXM=";
    let nats = ["--nats-url", "nats://127.0.0.1:4222"];
    let err = parse(&nats).unwrap().config.validate().unwrap_err();
    assert!(
        err.contains("CHAT_CLUSTER_KEY") && err.contains("chatd cluster-key"),
        "{err}"
    );
    for bad in [
        "not base64!",
        "c2hvcnQ=",
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==",
    ] {
        let cli = parse(&[nats[0], nats[1], "--cluster-key", bad]).unwrap();
        let err = cli.config.validate().unwrap_err();
        assert!(
            err.contains("CHAT_CLUSTER_KEY") && !err.contains(bad),
            "{err}"
        );
    }
    // Padding is optional.
    for key in [KEY, KEY.trim_end_matches('=')] {
        let cli = parse(&[nats[0], nats[1], "--cluster-key", key]).unwrap();
        assert!(cli.config.validate().is_ok());
        let (current, previous) = cli.config.cluster_keys().unwrap().unwrap();
        assert_eq!((&current[..5], previous), (&b"chatd"[..], None));
        assert!(!format!("{:?}", cli.config).contains(key));
    }
    let cli = parse(&[
        nats[0],
        nats[1],
        "--cluster-key",
        KEY,
        "--cluster-key-previous",
        KEY,
    ])
    .unwrap();
    assert!(
        cli.config
            .validate()
            .unwrap_err()
            .contains("CHAT_CLUSTER_KEY_PREVIOUS")
    );
    for (flag, name) in [
        ("--cluster-key", "CHAT_CLUSTER_KEY"),
        ("--nats-creds", "CHAT_NATS_CREDS"),
        ("--nats-ca", "CHAT_NATS_CA"),
    ] {
        let err = parse(&[flag, "x"]).unwrap().config.validate().unwrap_err();
        assert!(err.contains(name) && err.contains("CHAT_NATS_URL"), "{err}");
    }
    assert!(matches!(
        parse(&["cluster-key"]).unwrap().command,
        Some(Command::ClusterKey)
    ));
}

#[test]
fn webhook_settings_go_together_and_the_secret_is_never_repeated() {
    const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let url = ["--webhook-url", "https://backend.example/chatd"];
    let validate = |args: &[&str]| parse(args).unwrap().config.validate();
    let err = validate(&url).unwrap_err();
    assert!(
        err.contains("CHAT_WEBHOOK_SECRET") && err.contains("CHAT_WEBHOOK_URL"),
        "{err}"
    );
    let err = validate(&["--webhook-secret", SECRET]).unwrap_err();
    assert!(
        err.contains("CHAT_WEBHOOK_SECRET")
            && err.contains("CHAT_WEBHOOK_URL")
            && !err.contains(SECRET),
        "{err}"
    );
    let short = "whsec_c2hvcnQ=";
    let err = validate(&[url[0], url[1], "--webhook-secret", short]).unwrap_err();
    assert!(
        err.contains("CHAT_WEBHOOK_SECRET")
            && err.contains("CHAT_WEBHOOK_URL")
            && !err.contains(short),
        "{err}"
    );
    let config = parse(&[url[0], url[1], "--webhook-secret", SECRET])
        .unwrap()
        .config;
    assert!(config.validate().is_ok());
    let hooks = config.webhooks().unwrap().expect("on");
    assert_eq!(
        (hooks.secret.len(), hooks.timeout),
        (32, Duration::from_secs(10))
    );
    assert_eq!(hooks.max_age, Duration::from_secs(72 * 3600));
    assert!(!format!("{config:?}").contains(SECRET));
    assert!(parse(&["--webhook-url", "ftp://backend.example/"]).is_err());
    assert!(parse(&[url[0], url[1], "--webhook-timeout", "10m"]).is_err());
    assert!(parse(&[]).unwrap().config.webhooks().unwrap().is_none());
}
