//! Issue 7, "Tokens and files": what a token must carry, what its claims may
//! hold, `chatd token` never making up a secret, absolute paths at start-up
//! and private files on disk.

mod required;

on_both_backends! {
    tokens_are_required_and_checked: crate::tokens::required::tokens_are_required_and_checked,
    tokens_without_exp_are_refused_unless_allowed: crate::tokens::tokens_without_exp_are_refused_unless_allowed,
    a_token_not_yet_valid_is_refused: crate::tokens::a_token_not_yet_valid_is_refused,
    format_characters_in_sub_are_refused: crate::tokens::format_characters_in_sub_are_refused,
    format_characters_are_stripped_from_name: crate::tokens::format_characters_are_stripped_from_name,
    a_token_with_an_aud_claim_is_accepted: crate::tokens::a_token_with_an_aud_claim_is_accepted,
    each_refusal_says_what_is_wrong: crate::tokens::each_refusal_says_what_is_wrong,
}

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::*;
use chatd::proto::{self, chat_service_client::ChatServiceClient};
use serde_json::json;
use tonic::Code;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with the test servers' secret.
fn sign(claims: serde_json::Value) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, claims)
}

fn sign_with(alg: jsonwebtoken::Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A client that calls with `token`.
async fn client_with(server: &TestServer, token: &str) -> Client {
    ChatServiceClient::with_interceptor(server.channel().await, Bearer::new(token))
}

/// ListMembers of "lobby" with `token`: the cheapest authenticated call.
async fn call(server: &TestServer, token: &str) -> Result<Vec<proto::Member>, tonic::Status> {
    let mut client = client_with(server, token).await;
    let request = proto::ListMembersRequest {
        room: "lobby".into(),
        ..Default::default()
    };
    within(client.list_members(request))
        .await
        .map(|r| r.into_inner().members)
}

/// Asserts UNAUTHENTICATED with a message containing every one of `words`.
fn assert_refused(result: Result<Vec<proto::Member>, tonic::Status>, words: &[&str]) {
    match result {
        Ok(members) => panic!("expected UNAUTHENTICATED naming {words:?}, got {members:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            for word in words {
                assert!(
                    status.message().contains(word),
                    "{word:?} not in {status:?}"
                );
            }
        }
    }
}

async fn tokens_without_exp_are_refused_unless_allowed(backend: Backend) {
    let db = TestDb::create(backend).await;
    let token = sign(json!({"sub": "alice", "iat": now()}));

    let server = TestServer::start(&db).await;
    assert_refused(call(&server, &token).await, &["`exp`"]);
    // The same token with an `exp` is fine.
    call(&server, &sign(json!({"sub": "alice", "exp": now() + 60})))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = TestServer::start_with(config(&db.url, &["--jwt-allow-no-exp"])).await;
    call(&server, &token).await.unwrap();
    // Allowing tokens without `exp` still refuses expired ones.
    assert_refused(
        call(&server, &sign(json!({"sub": "alice", "exp": now() - 3600}))).await,
        &["expired"],
    );
    server.shutdown().await.unwrap();
}

async fn a_token_not_yet_valid_is_refused(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let t = now();
    let later = sign(json!({"sub": "alice", "nbf": t + 3600, "exp": t + 7200}));
    assert_refused(call(&server, &later).await, &["not valid yet", "`nbf`"]);
    // nbf in the past is fine.
    let earlier = sign(json!({"sub": "alice", "nbf": t - 60, "exp": t + 60}));
    call(&server, &earlier).await.unwrap();
    server.shutdown().await.unwrap();
}

async fn format_characters_in_sub_are_refused(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let exp = now() + 3600;
    // A right-to-left override, a zero-width space, a byte-order mark, a
    // left-to-right isolate: all general category Cf.
    for sub in [
        "nimda\u{202E}",
        "ad\u{200B}min",
        "\u{FEFF}admin",
        "a\u{2066}b",
    ] {
        let token = sign(json!({"sub": sub, "exp": exp}));
        assert_refused(call(&server, &token).await, &["`sub`", "format characters"]);
    }
    server.shutdown().await.unwrap();
}

async fn format_characters_are_stripped_from_name(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let exp = now() + 3600;
    let dave = sign(json!({"sub": "dave", "name": "\u{202E}Da\u{200B}ve\u{2069}", "exp": exp}));
    let ghost = sign(json!({"sub": "ghost", "name": "\u{200B}\u{202E}", "exp": exp}));
    let mut dave = client_with(&server, &dave).await;
    let mut ghost = client_with(&server, &ghost).await;
    let (_dave_stream, _) = join(&mut dave, "strip", None).await;
    let (_ghost_stream, _) = join(&mut ghost, "strip", None).await;

    let mut members: Vec<(String, String)> = list_members(&mut dave, "strip")
        .await
        .into_iter()
        .map(|m| (m.user_id, m.display_name))
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            ("dave".to_string(), "Dave".to_string()),
            // Nothing left: the user id stands in, as for no name.
            ("ghost".to_string(), "ghost".to_string()),
        ]
    );
    let sent = send(&mut dave, "strip", "hello").await;
    assert_eq!(sent.sender.unwrap().display_name, "Dave");
    let page = newest_page(&mut ghost, "strip").await;
    let names: Vec<String> = page
        .messages
        .into_iter()
        .map(|m| m.sender.unwrap().display_name)
        .collect();
    assert_eq!(names, ["Dave"]);
    server.shutdown().await.unwrap();
}

async fn a_token_with_an_aud_claim_is_accepted(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let exp = now() + 3600;
    for aud in [json!("chat.example.com"), json!(["chat", "other"])] {
        let token = sign(json!({"sub": "alice", "aud": aud, "exp": exp}));
        call(&server, &token)
            .await
            .unwrap_or_else(|e| panic!("aud {aud}: {e:?}"));
    }
    server.shutdown().await.unwrap();
}

async fn each_refusal_says_what_is_wrong(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let t = now();
    let forged = chatd::auth::Keys::new(b"another-secret-0123456789")
        .mint("alice", None, Some(Duration::from_secs(60)))
        .unwrap();
    let cases: Vec<(String, &[&str])> = vec![
        (sign(json!({"sub": "a", "exp": t - 3600})), &["expired"]),
        (
            sign(json!({"sub": "a", "exp": t + 60, "nbf": t + 600})),
            &["not valid yet"],
        ),
        (forged, &["signature"]),
        (
            sign_with(
                jsonwebtoken::Algorithm::HS384,
                json!({"sub": "a", "exp": t + 60}),
            ),
            &["HS256"],
        ),
        (sign(json!({"sub": "a"})), &["`exp`"]),
        (sign(json!({"sub": "a", "exp": "tomorrow"})), &["`exp`"]),
        (sign(json!({"exp": t + 60})), &["`sub`", "missing"]),
        (
            sign(json!({"sub": " ", "exp": t + 60})),
            &["`sub`", "empty"],
        ),
        (
            sign(json!({"sub": "x".repeat(129), "exp": t + 60})),
            &["`sub`", "128 bytes"],
        ),
        (sign(json!({"sub": "a\u{202E}", "exp": t + 60})), &["`sub`"]),
        (
            sign(json!({"sub": "a", "name": "n".repeat(65), "exp": t + 60})),
            &["`name`"],
        ),
        ("not.a.jwt".to_string(), &["malformed"]),
    ];
    for (token, words) in cases {
        assert_refused(call(&server, &token).await, words);
    }
    server.shutdown().await.unwrap();
}

/// A directory of this test's own, canonical (as chatd's current directory
/// reports it), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "chatd-tokens-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir.canonicalize().unwrap())
    }

    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The chatd binary run in `cwd` with an empty environment: no
/// CHAT_JWT_SECRET, CHAT_DATA_DIR or DATABASE_URL from the test's own.
fn chatd_in(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
    command.current_dir(cwd).env_clear();
    command
}

#[test]
fn token_command_never_creates_a_secret() {
    let cwd = TempDir::new("nosecret");
    // The default data directory, relative to another directory.
    let output = chatd_in(&cwd.0).args(["token", "alice"]).output().unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let looked_at = cwd.0.join("chatd-data").join("jwt-secret");
    for word in [
        "CHAT_DATA_DIR",
        "CHAT_JWT_SECRET",
        looked_at.to_str().unwrap(),
    ] {
        assert!(stderr.contains(word), "{word:?} not in {stderr}");
    }
    assert_eq!(
        cwd.entries(),
        Vec::<PathBuf>::new(),
        "chatd token made files"
    );

    // A data directory given that has no secret either.
    let elsewhere = cwd.0.join("elsewhere");
    let output = chatd_in(&cwd.0)
        .args(["token", "alice"])
        .env("CHAT_DATA_DIR", "elsewhere")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(elsewhere.join("jwt-secret").to_str().unwrap()),
        "{stderr}"
    );
    assert!(!elsewhere.exists());
}

/// Kills the child process if the test ends before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Starts the chatd binary through `/bin/sh -c script` (the binary is `$0`)
/// in `cwd` with an empty environment, and returns it with its start-up log
/// lines, up to the one naming where history is stored.
async fn start_chatd(cwd: &Path, script: &str) -> (KillOnDrop, Vec<String>) {
    let child = Command::new("/bin/sh")
        .args(["-c", script])
        .arg(env!("CARGO_BIN_EXE_chatd"))
        .current_dir(cwd)
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(64);
    // Reads chatd's stderr until chatd exits, also after the test stops
    // listening: a reader that left would close the pipe under chatd,
    // whose next log line would then fail (and its later lines, which say
    // what happened, would be lost).
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("chatd: {line}");
            let _ = lines_tx.blocking_send(line);
        }
    });
    let mut startup = Vec::new();
    while !startup
        .iter()
        .any(|l: &String| l.contains("history is stored"))
    {
        match within(lines_rx.recv()).await {
            Some(line) => startup.push(line),
            None => panic!("chatd ended during start-up: {startup:#?}"),
        }
    }
    (child, startup)
}

/// A first start in an empty directory, with the default (relative) data
/// directory, SQLite and a generated secret, under umask 000 so that only
/// chatd's own modes protect its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_makes_private_files_and_logs_absolute_paths() {
    let cwd = TempDir::new("firststart");
    let (_child, startup) =
        start_chatd(&cwd.0, "umask 000 && exec \"$0\" serve --addr 127.0.0.1:0").await;
    let find = |what: &str| -> &String {
        startup
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in {startup:#?}"))
    };
    let data = cwd.0.join("chatd-data");
    let secret = data.join("jwt-secret");
    let db = data.join("chat.db");
    let secret_line = find("generated a token secret");
    assert!(
        secret_line.contains(&format!("path={}", secret.display())),
        "{secret_line}"
    );
    let data_line = find("data directory");
    assert!(
        data_line.contains(&format!("path={}", data.display())),
        "{data_line}"
    );
    let db_line = find("history is stored");
    assert!(
        db_line.ends_with(&format!("SQLite at {}", db.display())),
        "{db_line}"
    );
    let addr = find("addr=")
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();

    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&secret), 0o600, "secret");
    assert_eq!(mode(&db), 0o600, "database");

    // `chatd token` from the same directory reads the server's secret...
    let output = chatd_in(&cwd.0)
        .args(["token", "erin", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    // ...and a write makes SQLite open its -wal and -shm files.
    let channel = within(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let mut client = ChatServiceClient::with_interceptor(channel, Bearer::new(&token));
    send(&mut client, "files", "hi").await;
    for suffix in ["-wal", "-shm"] {
        let path = data.join(format!("chat.db{suffix}"));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let no_warning = startup
        .iter()
        .all(|l| !l.contains("other users can access"));
    assert!(no_warning, "{startup:#?}");
}

/// chatd makes the database file private in a directory it did not create,
/// and leaves that directory's mode alone (it warns instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_in_an_existing_directory_is_private_and_the_directory_untouched() {
    let db = TestDb::create(Backend::Sqlite).await;
    let db_path = PathBuf::from(db.url.strip_prefix("sqlite://").unwrap());
    let dir = db_path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start(&db).await;
    let mut client = server.client("alice").await;
    send(&mut client, "files", "hi").await;
    assert_eq!(
        mode(dir),
        0o755,
        "chatd changed a directory it did not make"
    );
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("chat.db{suffix}"));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    server.shutdown().await.unwrap();
}

/// A data directory that exists with looser permissions is left as it is,
/// and start-up says so, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_data_directory_is_warned_about_and_left_alone() {
    let cwd = TempDir::new("opendir");
    let data = cwd.0.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_child, startup) = start_chatd(
        &cwd.0,
        "exec \"$0\" serve --addr 127.0.0.1:0 --data-dir data",
    )
    .await;
    let warned = startup.iter().any(|l| {
        l.contains("WARN")
            && l.contains("other users can access")
            && l.contains(&format!("path={} ", data.display()))
    });
    assert!(warned, "{startup:#?}");
    assert_eq!(
        mode(&data),
        0o755,
        "chatd changed a directory it did not make"
    );
    assert_eq!(mode(&data.join("chat.db")), 0o600, "database");
    assert_eq!(mode(&data.join("jwt-secret")), 0o600, "secret");
}

/// chatd keeps serving when its stderr goes away (a log collector that
/// restarts, a pipe reader gone): lines it cannot write are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_does_not_stop_the_server() {
    let cwd = TempDir::new("closedstderr");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .current_dir(&cwd.0)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    // Read up to the address, then close the pipe before the rest of the
    // start-up lines (the page's address, the token hint) are written.
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines.next()?.ok()?;
            if let Some(rest) = line.split(" addr=").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
    });
    let addr = within(addr)
        .await
        .unwrap()
        .expect("chatd logged its address");
    let output = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["token", "closed", "--ttl", "10m"])
        .current_dir(&cwd.0)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let channel = within(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("chatd still listens");
    let mut client = ChatServiceClient::with_interceptor(channel, Bearer::new(&token));
    send(&mut client, "still-here", "hello").await;
    assert!(child.0.try_wait().unwrap().is_none(), "chatd exited");
}
