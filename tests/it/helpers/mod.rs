//! Test harness: a database per test, a real chatd on a loopback port, and
//! clients that carry a token.
//!
//! Every await in the tests goes through [`within`], so a hang fails the
//! test instead of blocking the suite.

/// Runs each named test body once on PostgreSQL and once on SQLite: the
/// tests are `postgres::NAME` and `sqlite::NAME`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident: $body:path),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body(crate::helpers::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body(crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
    };
}

pub mod access;
pub mod cluster;
pub mod connections;
pub mod memory;
pub mod metrics;
pub mod sanctions;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chatd::auth::Keys;
use chatd::config::{Cli, Config};
use chatd::proto::chat_service_client::ChatServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse};
use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

/// The secret test servers sign tokens with.
pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("a test step took longer than {STEP:?}"),
    }
}

/// Awaits every future of `tasks` at once, in this task, and returns their
/// outputs in the order given. The first one to fail (panic) unwinds
/// through here and drops the others before they can fail too, so a test
/// whose hundred clients all time out reports one failure, not a hundred.
pub async fn all_or_first_failure<F: Future>(tasks: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    tasks
        .into_iter()
        .collect::<futures_util::stream::FuturesOrdered<F>>()
        .collect()
        .await
}

/// How long a heavy test may wait for the others to finish.
const HEAVY_WAIT: Duration = Duration::from_secs(900);

/// Held by the heavy tests (thousands of streams or connections, floods
/// through several nodes) while they run: one at a time, so on a small
/// machine they do not starve each other (or the others) past their
/// deadlines.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    match tokio::time::timeout(HEAVY_WAIT, HEAVY.lock()).await {
        Ok(guard) => guard,
        Err(_) => panic!("waited {HEAVY_WAIT:?} for the other heavy tests"),
    }
}

/// Whether this is CI (`CI` set and not empty): a test that needs what the
/// machine may lack (root for a tmpfs, nginx) fails there instead of
/// skipping.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The admin URL tests create their databases with.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Which storage backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database of this test's own, dropped (or deleted) when the value is.
pub struct TestDb {
    /// The `DATABASE_URL` chatd gets.
    pub url: String,
    kind: Kind,
}

enum Kind {
    Postgres { name: String },
    Sqlite { dir: std::path::PathBuf },
}

/// A name no other test (or test run) uses.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

impl TestDb {
    /// The SQLite database's directory (chatd's data directory in tests
    /// that run the binary); `None` for PostgreSQL.
    pub fn dir(&self) -> Option<std::path::PathBuf> {
        match &self.kind {
            Kind::Sqlite { dir } => Some(dir.clone()),
            Kind::Postgres { .. } => None,
        }
    }

    pub async fn create(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => Self::postgres().await,
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique_name("chatd_test"));
                std::fs::create_dir_all(&dir).expect("create test directory");
                let url = format!("sqlite://{}", dir.join("chat.db").display());
                TestDb {
                    url,
                    kind: Kind::Sqlite { dir },
                }
            }
        }
    }

    pub async fn postgres() -> TestDb {
        let admin = admin_url();
        let name = unique_name("chatd_test");
        let mut conn = within(AsyncPgConnection::establish(&admin))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {admin}: {e}\n\
                 The tests need a PostgreSQL server they may create databases on: start one \
                 (bash .ci/run does) or set DATABASE_URL to its admin URL."
                )
            });
        within(diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn))
            .await
            .expect("create test database");
        let url = match admin.rfind('/') {
            Some(i) if i > admin.find("://").map_or(0, |s| s + 2) => {
                let query = admin[i..].find('?').map(|q| &admin[i + q..]).unwrap_or("");
                format!("{}/{name}{query}", &admin[..i])
            }
            _ => panic!("DATABASE_URL {admin} has no database part"),
        };
        TestDb {
            url,
            kind: Kind::Postgres { name },
        }
    }

    /// The PostgreSQL database's name.
    pub fn pg_name(&self) -> &str {
        match &self.kind {
            Kind::Postgres { name } => name,
            Kind::Sqlite { .. } => panic!("not a PostgreSQL test database"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = match &self.kind {
            Kind::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
                return;
            }
            Kind::Postgres { name } => name.clone(),
        };
        let admin = admin_url();
        // Drop cannot await; a short-lived runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
                        let _ = diesel::sql_query(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        ))
                        .execute(&mut conn)
                        .await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        })
        .join();
    }
}

/// The flags every test server gets: a loopback port 0, the test database
/// and the test secret.
pub fn server_args(db_url: &str) -> [&str; 6] {
    [
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        db_url,
        "--jwt-secret",
        SECRET,
    ]
}

/// chatd's configuration for tests: port 0, the test database, the test
/// secret. `extra` are more flags.
pub fn config(db_url: &str, extra: &[&str]) -> Config {
    let mut args = vec!["chatd"];
    args.extend(server_args(db_url));
    if !extra.contains(&"--shutdown-grace") {
        args.extend_from_slice(&["--shutdown-grace", "3s"]);
    }
    // Tests of other rules send, join and poll in bursts: the per-user
    // send, join and read rates are off unless a test sets them.
    if !extra.contains(&"--user-send-rate") {
        args.extend_from_slice(&["--user-send-rate", "0"]);
    }
    if !extra.contains(&"--user-join-rate") {
        args.extend_from_slice(&["--user-join-rate", "0"]);
    }
    if !extra.contains(&"--user-read-rate") {
        args.extend_from_slice(&["--user-read-rate", "0"]);
    }
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
        .expect("test config parses")
        .config
}

/// Follows the stderr of a chatd process started by a test: echoes each
/// line (prefixed `chatd:`) on a thread of its own, keeps it in `log` when
/// given, and resolves with the address the start-up line names (` addr=`,
/// not a library's `socket_addr=`).
pub fn follow_stderr(
    stderr: std::process::ChildStderr,
    log: Option<Arc<std::sync::Mutex<Vec<String>>>>,
) -> oneshot::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (addr_tx, addr_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("chatd: {line}");
            if let Some(rest) = line.split(" addr=").nth(1)
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            if let Some(log) = &log {
                log.lock().expect("log lock").push(line);
            }
        }
    });
    addr_rx
}

/// A chatd running in this process on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, with `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    pub keys: Arc<Keys>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<chatd::Result<()>>>,
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(config(&db.url, &[])).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let app = within(chatd::Application::build(config))
            .await
            .expect("chatd builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let keys = app.keys();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            keys,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self, user: &str) -> String {
        self.keys
            .mint(user, None, Some(Duration::from_secs(3600)))
            .expect("mint")
    }

    pub async fn channel(&self) -> Channel {
        within(
            Endpoint::from_shared(self.url())
                .expect("endpoint")
                .connect(),
        )
        .await
        .expect("connect to chatd")
    }

    /// A client whose calls carry a token for `user`.
    pub async fn client(&self, user: &str) -> Client {
        ChatServiceClient::with_interceptor(self.channel().await, Bearer::new(&self.token(user)))
    }

    /// A client on a connection whose HTTP/2 flow-control windows are
    /// `window` bytes.
    pub async fn client_with_window(&self, user: &str, window: u32) -> Client {
        let channel = within(
            Endpoint::from_shared(self.url())
                .expect("endpoint")
                .initial_stream_window_size(window)
                .initial_connection_window_size(window)
                .connect(),
        )
        .await
        .expect("connect to chatd");
        ChatServiceClient::with_interceptor(channel, Bearer::new(&self.token(user)))
    }

    /// Signals shutdown and waits for chatd to finish.
    pub async fn shutdown(mut self) -> chatd::Result<()> {
        self.stop.take().map(|s| s.send(()));
        let task = self.task.take().expect("running");
        within(task).await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Bearer(format!("Bearer {token}").parse().expect("ascii token"))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Client =
    ChatServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Opens a JoinRoom stream and returns it with its `joined` event.
pub async fn join(
    client: &mut Client,
    room: &str,
    resume_after_seq: Option<u64>,
) -> (Streaming<JoinRoomResponse>, proto::Joined) {
    let request = proto::JoinRoomRequest {
        room: room.into(),
        resume_after_seq,
    };
    let mut stream = within(client.join_room(request))
        .await
        .expect("join")
        .into_inner();
    match next_event(&mut stream).await {
        Event::Joined(joined) => (stream, joined),
        other => panic!("first event should be joined, got {other:?}"),
    }
}

/// The stream's next event of any kind.
pub async fn next_any_event(stream: &mut Streaming<JoinRoomResponse>) -> Event {
    within(stream.message())
        .await
        .expect("stream status")
        .expect("stream open")
        .event
        .expect("event set")
}

/// The stream's next event, typing and read markers left out: those
/// live-only events come between the others whenever someone types or
/// reads (a sender's own message moves their marker), and the tests that
/// check them read them with [`next_any_event`].
pub async fn next_event(stream: &mut Streaming<JoinRoomResponse>) -> Event {
    loop {
        match next_any_event(stream).await {
            Event::Typing(_) | Event::ReadMarker(_) => continue,
            other => return other,
        }
    }
}

/// The stream's next event, which must be a message.
pub async fn next_message(stream: &mut Streaming<JoinRoomResponse>) -> proto::Message {
    match next_event(stream).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Sends a text message and returns it as stored.
pub async fn send(client: &mut Client, room: &str, text: &str) -> proto::Message {
    send_request(
        client,
        proto::SendMessageRequest {
            room: room.into(),
            content: text.into(),
            ..Default::default()
        },
    )
    .await
    .expect("send")
}

pub async fn send_request(
    client: &mut Client,
    request: proto::SendMessageRequest,
) -> Result<proto::Message, Status> {
    within(client.send_message(request))
        .await
        .map(|r| r.into_inner().message.expect("message in response"))
}

/// The newest page (default size) of `room`'s history.
pub async fn newest_page(client: &mut Client, room: &str) -> proto::ListHistoryResponse {
    let request = proto::ListHistoryRequest {
        room: room.into(),
        ..Default::default()
    };
    within(client.list_history(request))
        .await
        .expect("list history")
        .into_inner()
}

/// `room`'s current members.
pub async fn list_members(client: &mut Client, room: &str) -> Vec<proto::Member> {
    let request = proto::ListMembersRequest {
        room: room.into(),
        ..Default::default()
    };
    within(client.list_members(request))
        .await
        .expect("list members")
        .into_inner()
        .members
}

/// The seqs of `messages`.
pub fn seqs(messages: &[proto::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Member user ids, in the order given.
pub fn user_ids(members: &[proto::Member]) -> Vec<&str> {
    members.iter().map(|m| m.user_id.as_str()).collect()
}

pub mod database;
