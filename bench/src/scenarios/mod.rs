//! The scenarios, one file each, and the client plumbing they share.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatd::auth::Keys;
use chatd::proto::chat_service_client::ChatServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{
    self, EditMessageRequest, JoinRoomRequest, JoinRoomResponse, ListHistoryRequest, ReactRequest,
    SendMessageRequest,
};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::Common;
use crate::dbstat::{DbSnapshot, DbUse};
use crate::procstat::{self, Usage};
use crate::report::{Latency, Report};

mod churn;
mod fanout;
mod history;
mod idle;
mod joins;
mod large_room;
mod presence_kill;
mod send;

pub use churn::{ChurnArgs, churn};
pub use fanout::{FanoutArgs, fanout};
pub use history::{HistoryArgs, history};
pub use idle::{IdleArgs, idle};
pub use joins::{JoinsArgs, joins};
pub use large_room::{LargeRoomArgs, large_room};
pub use presence_kill::{PresenceKillArgs, presence_kill};
pub use send::{SendArgs, send};

type Result<T, E = String> = std::result::Result<T, E>;
type Client = ChatServiceClient<InterceptedService<Channel, Meta>>;

/// How many connections are opened at once while setting up.
const CONNECT_PARALLELISM: usize = 128;

/// Microseconds since the harness started: the clock stamped into message
/// content and read back on delivery (sender and receivers share it).
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Opens a JoinRoom stream on `room` (from its newest message) and reads
/// its first event, which the server promises is the `joined`; `who` names
/// the stream in errors.
async fn join_stream(
    client: &mut Client,
    room: &str,
    who: &str,
) -> Result<(tonic::Streaming<JoinRoomResponse>, Option<Event>)> {
    let mut stream = client
        .join_room(JoinRoomRequest {
            room: room.to_string(),
            resume_after_seq: None,
        })
        .await
        .map_err(|e| format!("{who} join: {e}"))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| format!("{who} joined: {e}"))?;
    Ok((stream, first.and_then(|r| r.event)))
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Metadata on every call: a bearer token when a secret is known, and
/// `x-user` for peers that take identity from it.
#[derive(Clone)]
pub struct Meta {
    auth: Option<MetadataValue<Ascii>>,
    user: MetadataValue<Ascii>,
}

impl Interceptor for Meta {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request.metadata_mut().insert("x-user", self.user.clone());
        Ok(request)
    }
}

/// What every scenario needs: where the server is, how to sign in, and the
/// server's process to watch.
pub struct Context {
    common: Common,
    keys: Option<Keys>,
    prefix: String,
}

impl Context {
    pub fn new(common: Common) -> Result<Self> {
        let secret = match (&common.secret, &common.data_dir) {
            _ if common.no_auth => None,
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(dir)) => {
                let path = dir.join(chatd::auth::SECRET_FILE);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Some(text.trim().as_bytes().to_vec())
            }
            (None, None) => None,
        };
        let prefix = common.room_prefix.clone().unwrap_or_else(|| {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            format!("bench-{stamp}")
        });
        Ok(Context {
            keys: secret.map(|s| Keys::new(&s)),
            common,
            prefix,
        })
    }

    fn room(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// How many servers (`--addr`) the connections are spread over.
    fn servers(&self) -> usize {
        self.common.addr.len().max(1)
    }

    /// The server that the `i`-th connection of a group goes to:
    /// round-robin over `--addr`.
    fn server_of(&self, i: usize) -> usize {
        i % self.servers()
    }

    fn addr(&self, server: usize) -> &str {
        self.common
            .addr
            .get(server)
            .map_or("http://127.0.0.1:50051", String::as_str)
    }

    fn endpoint(&self, server: usize) -> Result<Endpoint> {
        Ok(Endpoint::from_shared(self.addr(server).to_string())
            .map_err(|e| format!("--addr {}: {e}", self.addr(server)))?
            .tcp_nodelay(true))
    }

    /// A connection to the first server.
    async fn channel(&self) -> Result<Channel> {
        self.channel_to(0).await
    }

    /// A connection to `--addr` number `server`.
    async fn channel_to(&self, server: usize) -> Result<Channel> {
        self.endpoint(server)?
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr(server)))
    }

    /// `n` connections, the `i`-th to server [`Self::server_of`]`(i)`.
    async fn channels(&self, n: usize) -> Result<Vec<Channel>> {
        let servers: Vec<usize> = (0..n).map(|i| self.server_of(i)).collect();
        self.channels_to(&servers).await
    }

    /// A connection to each of the given servers (indices into `--addr`).
    async fn channels_to(&self, servers: &[usize]) -> Result<Vec<Channel>> {
        let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        let mut set = JoinSet::new();
        for (i, &server) in servers.iter().enumerate() {
            let endpoint = self.endpoint(server)?;
            let addr = self.addr(server).to_string();
            let gate = gate.clone();
            set.spawn(async move {
                let _permit = gate.acquire().await;
                (i, endpoint.connect().await.map_err(|e| (addr, e)))
            });
        }
        let mut out: Vec<Option<Channel>> = vec![None; servers.len()];
        while let Some(joined) = set.join_next().await {
            let (i, channel) = joined.map_err(|e| e.to_string())?;
            out[i] = Some(channel.map_err(|(addr, e)| format!("connecting to {addr}: {e}"))?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn client(&self, channel: Channel, user: &str) -> Result<Client> {
        Ok(
            ChatServiceClient::with_interceptor(channel, self.meta(user)?)
                .max_decoding_message_size(64 << 20),
        )
    }

    fn meta(&self, user: &str) -> Result<Meta> {
        let auth = match &self.keys {
            Some(keys) => {
                let token = keys
                    .mint(user, None, Some(Duration::from_secs(24 * 3600)))
                    .map_err(|e| e.to_string())?;
                Some(
                    format!("Bearer {token}")
                        .parse()
                        .map_err(|_| "token is not ASCII".to_string())?,
                )
            }
            None => None,
        };
        let user = user
            .parse()
            .map_err(|_| format!("user {user} is not ASCII"))?;
        Ok(Meta { auth, user })
    }

    /// Every `--server-pid` now; `None` without one, or if one cannot be read.
    fn sample(&self) -> Option<procstat::Snapshot> {
        if self.common.server_pid.is_empty() {
            return None;
        }
        let mut snapshot = procstat::Snapshot::take(&self.common.server_pid).ok()?;
        snapshot.1 = self.common.db_name.as_deref().map(DbSnapshot::take);
        Some(snapshot)
    }

    fn usage(&self, before: Option<procstat::Snapshot>) -> Option<Usage> {
        Some(Usage {
            before: before?,
            after: self.sample()?,
        })
    }

    /// The database's CPU over `usage`, with `--db-name`.
    fn database(&self, usage: &Usage) -> Option<DbUse> {
        usage.database(self.common.db_name.as_deref()?)
    }

    fn report(&self, scenario: &str, params: serde_json::Value, elapsed: Duration) -> Report {
        Report::new(scenario, &self.common.label, params, elapsed)
    }
}

/// JoinRoomResponse as the fan-out subscribers read it: only the fields
/// they measure; prost skips the rest without allocating.
mod lite {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(message, optional, tag = "1")]
        pub joined: Option<Joined>,
        #[prost(message, optional, tag = "2")]
        pub message: Option<Message>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Joined {
        #[prost(uint64, tag = "3")]
        pub last_seq: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(uint64, tag = "2")]
        pub seq: u64,
        #[prost(bytes = "bytes", tag = "5")]
        pub content: bytes::Bytes,
    }
}

/// Opens a JoinRoom stream whose events are decoded only as far as the
/// measurements need (see [`lite`]), to keep the load generator cheap.
async fn join_lite(
    channel: Channel,
    meta: Meta,
    room: String,
) -> Result<tonic::Streaming<lite::Response>> {
    join_as(channel, meta, room).await
}

/// Opens a JoinRoom stream whose events are decoded as `T` (a message
/// with only the fields a scenario reads; prost skips the others).
async fn join_as<T: prost::Message + Default + Send + 'static>(
    channel: Channel,
    meta: Meta,
    room: String,
) -> Result<tonic::Streaming<T>> {
    let mut grpc = tonic::client::Grpc::new(InterceptedService::new(channel, meta));
    grpc.ready().await.map_err(|e| format!("connection: {e}"))?;
    let path = http::uri::PathAndQuery::from_static("/chat.v1.ChatService/JoinRoom");
    let codec = tonic_prost::ProstCodec::<JoinRoomRequest, T>::default();
    let request = Request::new(JoinRoomRequest {
        room,
        resume_after_seq: None,
    });
    grpc.server_streaming(request, path, codec)
        .await
        .map(|r| r.into_inner())
        .map_err(|e| format!("join: {e}"))
}

/// Prints a progress line every second until dropped.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    fn start(what: &'static str, unit: &'static str, counter: Arc<AtomicU64>) -> Self {
        Progress(tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = counter.load(Ordering::Relaxed);
                eprintln!(
                    "[{what} {:>4.0}s] {now} {unit}, {} {unit}/s",
                    start.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The content of a bench message: the send time, then padding.
fn stamped(sent_us: u64, padding: &str) -> String {
    format!("{sent_us} {padding}")
}

fn latency_us(content: &str) -> Option<u64> {
    let sent: u64 = content.split(' ').next()?.parse().ok()?;
    Some(now_us().saturating_sub(sent).max(1))
}

/// Sends paced at `rate` per second (open loop) or back to back (rate 0).
struct Pacer {
    start: Instant,
    interval: Option<Duration>,
    n: u64,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            n: 0,
        }
    }

    /// Waits for the next send's scheduled time and returns it in `now_us`
    /// terms, so latency counts from the schedule, not from a late start.
    async fn next(&mut self) -> u64 {
        let Some(interval) = self.interval else {
            return now_us();
        };
        let due = self.start + interval.mul_f64(self.n as f64);
        self.n += 1;
        let late = Instant::now().saturating_duration_since(due);
        tokio::time::sleep_until(due.into()).await;
        now_us().saturating_sub(late.as_micros() as u64)
    }
}

/// Runs sends one at a time (closed loop, rate 0) or concurrently up to a
/// bound (open loop), so a paced sender never waits for an ack.
struct InFlight<T> {
    gate: Arc<Semaphore>,
    tasks: JoinSet<Result<T, Status>>,
    closed_loop: bool,
}

/// Open-loop sends one sender may have waiting for their acks.
const MAX_IN_FLIGHT: usize = 1024;

impl<T: Send + 'static> InFlight<T> {
    fn new(rate: f64) -> Self {
        InFlight {
            gate: Arc::new(Semaphore::new(if rate > 0.0 { MAX_IN_FLIGHT } else { 1 })),
            tasks: JoinSet::new(),
            closed_loop: rate <= 0.0,
        }
    }

    /// Starts `send` once a slot is free; returns the outcomes of the sends
    /// that have finished meanwhile.
    async fn run_collect<F>(&mut self, send: F) -> Vec<Result<T, Status>>
    where
        F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        let permit = self.gate.clone().acquire_owned().await;
        self.tasks.spawn(async move {
            let _permit = permit;
            send.await
        });
        let mut done = Vec::new();
        // Closed loop: wait for this very send.
        if self.closed_loop
            && let Some(Ok(outcome)) = self.tasks.join_next().await
        {
            done.push(outcome);
        }
        while let Some(Ok(outcome)) = self.tasks.try_join_next() {
            done.push(outcome);
        }
        done
    }

    async fn run<F>(&mut self, send: F) -> Result<(), Status>
    where
        F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        self.run_collect(send)
            .await
            .into_iter()
            .try_for_each(|r| r.map(|_| ()))
    }

    async fn drain(&mut self) -> Vec<Result<T, Status>> {
        let mut done = Vec::new();
        while let Some(Ok(outcome)) = self.tasks.join_next().await {
            done.push(outcome);
        }
        done
    }

    async fn finish(&mut self) -> Result<(), Status> {
        self.drain()
            .await
            .into_iter()
            .try_for_each(|r| r.map(|_| ()))
    }
}
