//! The scenarios and the client plumbing they share.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatd::auth::Keys;
use chatd::proto::chat_service_client::ChatServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{JoinRoomRequest, ListHistoryRequest, SendMessageRequest};
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
use crate::procstat::{self, Usage};
use crate::report::{Latency, Report};

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

    async fn channel(&self) -> Result<Channel> {
        Endpoint::from_shared(self.common.addr.clone())
            .map_err(|e| format!("--addr: {e}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.common.addr))
    }

    async fn channels(&self, n: usize) -> Result<Vec<Channel>> {
        let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        let mut set = JoinSet::new();
        for i in 0..n {
            let endpoint = Endpoint::from_shared(self.common.addr.clone())
                .map_err(|e| format!("--addr: {e}"))?
                .tcp_nodelay(true);
            let gate = gate.clone();
            set.spawn(async move {
                let _permit = gate.acquire().await;
                (i, endpoint.connect().await)
            });
        }
        let mut out: Vec<Option<Channel>> = vec![None; n];
        while let Some(joined) = set.join_next().await {
            let (i, channel) = joined.map_err(|e| e.to_string())?;
            out[i] = Some(channel.map_err(|e| format!("connecting: {e}"))?);
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

    fn sample(&self) -> Option<procstat::Sample> {
        self.common
            .server_pid
            .and_then(|pid| procstat::sample(pid).ok())
    }

    fn usage(&self, before: Option<procstat::Sample>) -> Option<Usage> {
        Some(Usage {
            before: before?,
            after: self.sample()?,
        })
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
    let mut grpc = tonic::client::Grpc::new(InterceptedService::new(channel, meta));
    grpc.ready().await.map_err(|e| format!("connection: {e}"))?;
    let path = http::uri::PathAndQuery::from_static("/chat.v1.ChatService/JoinRoom");
    let codec = tonic_prost::ProstCodec::<JoinRoomRequest, lite::Response>::default();
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

// ---------------------------------------------------------------- fanout

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// JoinRoom streams per connection (1 = a connection each).
    #[arg(long, default_value_t = 1)]
    streams_per_conn: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages per second per sender; 0 sends as fast as acks come back.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Extra bytes of content per message.
    #[arg(long, default_value_t = 0)]
    payload: usize,
}

#[derive(Default)]
struct SubscriberResult {
    received: u64,
    out_of_order: u64,
    resyncs: u64,
    latency: Option<Histogram<u64>>,
}

pub async fn fanout(ctx: &Context, a: FanoutArgs) -> Result<Report> {
    let per_conn = a.streams_per_conn.max(1);
    let total_subs = a.rooms * a.subscribers;
    let expected = (a.senders * a.messages) as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    eprintln!("opening {total_subs} subscriber streams...");
    let channels = ctx.channels(total_subs.div_ceil(per_conn)).await?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(total_subs.max(1));
    let mut subscribers = JoinSet::new();
    for s in 0..total_subs {
        let room = ctx.room(s % a.rooms.max(1));
        let channel = channels[s / per_conn].clone();
        let meta = ctx.meta(&format!("sub-{s}"))?;
        let ready = ready_tx.clone();
        let delivered = delivered.clone();
        subscribers.spawn(async move {
            let mut out = SubscriberResult::default();
            let mut stream = match join_lite(channel, meta, room).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return out;
                }
            };
            let mut next_seq = match stream.message().await {
                Ok(Some(lite::Response {
                    joined: Some(j), ..
                })) => j.last_seq + 1,
                _ => 1,
            };
            let _ = ready.send(Ok(())).await;
            drop(ready);
            let mut hist = histogram();
            while out.received < expected {
                match stream.message().await {
                    Ok(Some(lite::Response {
                        message: Some(m), ..
                    })) => {
                        if m.seq != next_seq {
                            out.out_of_order += 1;
                        }
                        next_seq = m.seq + 1;
                        out.received += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(us) = std::str::from_utf8(&m.content).ok().and_then(latency_us)
                        {
                            let _ = hist.record(us);
                        }
                    }
                    Ok(Some(lite::Response {
                        joined: Some(_), ..
                    })) => out.resyncs += 1,
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            out.latency = Some(hist);
            out
        });
    }
    drop(ready_tx);
    for _ in 0..total_subs {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("subscribers ended before joining".into()),
        }
    }
    eprintln!("all subscribers joined; sending");

    let mut senders: JoinSet<Result<()>> = JoinSet::new();
    let padding = "x".repeat(a.payload);
    let mut sender_clients = Vec::new();
    for r in 0..a.rooms {
        for s in 0..a.senders {
            let channel = ctx.channel().await?;
            sender_clients.push((
                ctx.room(r),
                ctx.client(channel, &format!("sender-{r}-{s}"))?,
            ));
        }
    }
    let before = ctx.sample();
    let start = Instant::now();
    let progress = Progress::start("fanout", "deliveries", delivered.clone());
    for (room, client) in sender_clients {
        let padding = padding.clone();
        let (messages, rate) = (a.messages, a.rate);
        senders.spawn(async move {
            let mut pacer = Pacer::new(rate);
            let mut in_flight = InFlight::new(rate);
            for _ in 0..messages {
                let at = pacer.next().await;
                let request = SendMessageRequest {
                    room: room.clone(),
                    content: stamped(at, &padding),
                    ..Default::default()
                };
                let mut client = client.clone();
                in_flight
                    .run(async move { client.send_message(request).await.map(|_| ()) })
                    .await
                    .map_err(|e| format!("send: {e}"))?;
            }
            in_flight.finish().await.map_err(|e| format!("send: {e}"))?;
            Ok(())
        });
    }
    while let Some(done) = senders.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let sent_at = start.elapsed();
    let mut hist = histogram();
    let (mut received, mut out_of_order, mut resyncs) = (0, 0, 0);
    while let Some(done) = subscribers.join_next().await {
        let r = done.map_err(|e| e.to_string())?;
        received += r.received;
        out_of_order += r.out_of_order;
        resyncs += r.resyncs;
        if let Some(h) = r.latency {
            let _ = hist.add(h);
        }
    }
    let elapsed = start.elapsed();
    drop(progress);
    let usage = ctx.usage(before);
    let expected_total = expected * total_subs as u64;
    let params = json!({
        "rooms": a.rooms, "subscribers_per_room": a.subscribers, "streams_per_conn": per_conn,
        "senders_per_room": a.senders, "messages_per_sender": a.messages, "rate_per_sender": a.rate,
        "payload": a.payload,
    });
    let mut report = ctx.report("fanout", params, elapsed);
    let messages_sent = (a.rooms * a.senders * a.messages) as f64;
    report
        .figure("deliveries", received as f64)
        .figure("deliveries/s", received as f64 / elapsed.as_secs_f64())
        .figure("messages sent", messages_sent)
        .figure("sends/s", messages_sent / sent_at.as_secs_f64())
        .figure("lost", expected_total.saturating_sub(received) as f64)
        .figure("out of order", out_of_order as f64)
        .figure("lagged (resyncs)", resyncs as f64);
    if let Some(u) = usage {
        report.figure(
            "server cpu µs/delivery",
            u.cpu().as_secs_f64() * 1e6 / received.max(1) as f64,
        );
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    report
        .check("nothing lost", received == expected_total)
        .check("in order, no gaps", out_of_order == 0);
    Ok(report)
}

// ---------------------------------------------------------------- send

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Concurrent senders, each on its own connection.
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Rooms the sends spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Total sends per second (open loop); 0 sends as fast as acks come back.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Extra bytes of content per message.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Skip checking that every acknowledged message is in history.
    #[arg(long)]
    no_verify: bool,
}

pub async fn send(ctx: &Context, a: SendArgs) -> Result<Report> {
    let senders = a.senders.max(1);
    let rooms = a.rooms.max(1);
    let channels = ctx.channels(senders).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let per_sender_rate = a.rate / senders as f64;
    let padding = "x".repeat(a.payload);
    let before = ctx.sample();
    let start = Instant::now();
    let deadline = start + a.duration;
    let progress = Progress::start("send", "acks", acked.clone());
    let mut set = JoinSet::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let client = ctx.client(channel, &format!("sender-{i}"))?;
        let room_names: Vec<String> = (0..rooms).map(|r| ctx.room(r)).collect();
        let acked = acked.clone();
        let padding = padding.clone();
        set.spawn(async move {
            let mut hist = histogram();
            let mut stored: Vec<(usize, u64)> = Vec::new();
            let mut errors = 0u64;
            let mut pacer = Pacer::new(per_sender_rate);
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut in_flight = InFlight::new(per_sender_rate);
            let mut record = |outcome: Result<(usize, u64, u64), Status>| match outcome {
                Ok((r, seq, at)) => {
                    let _ = hist.record(now_us().saturating_sub(at).max(1));
                    acked.fetch_add(1, Ordering::Relaxed);
                    stored.push((r, seq));
                }
                Err(_) => errors += 1,
            };
            while Instant::now() < deadline {
                let at = pacer.next().await;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let r = (x % room_names.len() as u64) as usize;
                let request = SendMessageRequest {
                    room: room_names[r].clone(),
                    content: stamped(at, &padding),
                    ..Default::default()
                };
                let mut client = client.clone();
                let send = async move {
                    let resp = client.send_message(request).await?;
                    let seq = resp.into_inner().message.map_or(0, |m| m.seq);
                    Ok((r, seq, at))
                };
                for outcome in in_flight.run_collect(send).await {
                    record(outcome);
                }
            }
            for outcome in in_flight.drain().await {
                record(outcome);
            }
            (hist, stored, errors, client)
        });
    }
    let mut hist = histogram();
    let mut stored = Vec::new();
    let mut errors = 0;
    let mut client = None;
    while let Some(done) = set.join_next().await {
        let (h, s, e, c) = done.map_err(|e| e.to_string())?;
        let _ = hist.add(h);
        stored.extend(s);
        errors += e;
        client = Some(c);
    }
    let elapsed = start.elapsed();
    drop(progress);
    let usage = ctx.usage(before);
    let params = json!({
        "senders": senders, "rooms": rooms, "duration_s": a.duration.as_secs_f64(), "rate": a.rate,
        "payload": a.payload,
    });
    let mut report = ctx.report("send", params, elapsed);
    let acks = stored.len() as f64;
    report
        .figure("acknowledged sends", acks)
        .figure("acknowledged sends/s", acks / elapsed.as_secs_f64())
        .figure("errors", errors as f64);
    if let Some(u) = usage {
        report.figure(
            "server cpu µs/send",
            u.cpu().as_secs_f64() * 1e6 / acks.max(1.0),
        );
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    if !a.no_verify
        && let Some(mut client) = client
    {
        let (found, gapless) = verify_history(ctx, &mut client, rooms, &stored).await?;
        report.figure("acknowledged found in history", found as f64);
        report
            .check(
                "every acknowledged send is in history",
                found == stored.len(),
            )
            .check("history seqs are gapless", gapless);
    }
    report.check("no errors", errors == 0);
    Ok(report)
}

/// Pages through each room's history and counts the acknowledged
/// (room, seq) pairs found; also whether each room's seqs are 1..=n.
async fn verify_history(
    ctx: &Context,
    client: &mut Client,
    rooms: usize,
    acked: &[(usize, u64)],
) -> Result<(usize, bool)> {
    let mut found = 0;
    let mut gapless = true;
    for r in 0..rooms {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = client
                .list_history(ListHistoryRequest {
                    room: ctx.room(r),
                    page_size: 500,
                    before_seq: None,
                    after_seq: Some(after),
                })
                .await
                .map_err(|e| format!("list_history: {e}"))?
                .into_inner();
            if page.messages.is_empty() {
                break;
            }
            seqs.extend(page.messages.iter().map(|m| m.seq));
            after = page.messages.last().map_or(after, |m| m.seq);
            if !page.has_more {
                break;
            }
        }
        gapless &= seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1);
        let have: std::collections::HashSet<u64> = seqs.into_iter().collect();
        found += acked
            .iter()
            .filter(|(room, seq)| *room == r && have.contains(seq))
            .count();
    }
    Ok((found, gapless))
}

// ---------------------------------------------------------------- idle

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Streams per connection; with more than 1, the extra streams are
    /// opened in a second phase and measured on their own.
    #[arg(long, default_value_t = 1)]
    streams_per_conn: usize,
    /// Rooms the streams spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// How long to let memory settle before reading it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

pub async fn idle(ctx: &Context, a: IdleArgs) -> Result<Report> {
    let before = ctx.sample();
    let start = Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("idle", "streams", opened.clone());
    let channels = ctx.channels(a.clients).await?;
    let mut streams = Vec::with_capacity(a.clients * a.streams_per_conn.max(1));
    let open = |phase: usize| {
        let mut set = JoinSet::new();
        let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        for (i, channel) in channels.iter().enumerate() {
            let client = ctx.client(channel.clone(), &format!("idle-{i}-{phase}"));
            let room = ctx.room(i % a.rooms.max(1));
            let gate = gate.clone();
            let opened = opened.clone();
            set.spawn(async move {
                let _permit = gate.acquire().await;
                let mut client = client?;
                let mut stream = client
                    .join_room(JoinRoomRequest {
                        room,
                        resume_after_seq: None,
                    })
                    .await
                    .map_err(|e| format!("join: {e}"))?
                    .into_inner();
                stream.message().await.map_err(|e| format!("joined: {e}"))?;
                opened.fetch_add(1, Ordering::Relaxed);
                Ok::<_, String>(stream)
            });
        }
        set
    };
    let mut set = open(0);
    while let Some(done) = set.join_next().await {
        streams.push(done.map_err(|e| e.to_string())??);
    }
    let joined_in = start.elapsed();
    tokio::time::sleep(a.settle).await;
    let with_conns = ctx.sample();
    let mut extra_streams = 0;
    for phase in 1..a.streams_per_conn.max(1) {
        let mut set = open(phase);
        while let Some(done) = set.join_next().await {
            streams.push(done.map_err(|e| e.to_string())??);
            extra_streams += 1;
        }
    }
    if extra_streams > 0 {
        tokio::time::sleep(a.settle).await;
    }
    let with_streams = ctx.sample();
    drop(progress);
    let elapsed = start.elapsed();
    let params =
        json!({"clients": a.clients, "streams_per_conn": a.streams_per_conn, "rooms": a.rooms});
    let mut report = ctx.report("idle", params, elapsed);
    report
        .figure("connections", a.clients as f64)
        .figure("streams", streams.len() as f64)
        .figure(
            "joins/s (first stream per connection)",
            a.clients as f64 / joined_in.as_secs_f64(),
        );
    if let (Some(b), Some(c)) = (before, with_conns) {
        report.figure(
            "server RSS KB per connection+stream",
            c.rss.saturating_sub(b.rss) as f64 / 1024.0 / a.clients.max(1) as f64,
        );
    }
    if let (Some(c), Some(s)) = (with_conns, with_streams)
        && extra_streams > 0
    {
        report.figure(
            "server RSS KB per extra stream",
            s.rss.saturating_sub(c.rss) as f64 / 1024.0 / extra_streams as f64,
        );
    }
    if let Some(u) = ctx.usage(before) {
        report.server = Some(u.into());
    }
    report.check(
        "every stream joined",
        streams.len() == a.clients * a.streams_per_conn.max(1),
    );
    drop(streams);
    Ok(report)
}

// ---------------------------------------------------------------- history

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Messages to put in the room first (0: use what is there).
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Concurrent readers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to read.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    page_size: u32,
}

pub async fn history(ctx: &Context, a: HistoryArgs) -> Result<Report> {
    let room = ctx.room(0);
    if a.messages > 0 {
        eprintln!("storing {} messages...", a.messages);
        let channels = ctx.channels(64).await?;
        let next = Arc::new(AtomicU64::new(0));
        let mut set = JoinSet::new();
        for (i, channel) in channels.into_iter().enumerate() {
            let mut client = ctx.client(channel, &format!("writer-{i}"))?;
            let (room, next, total) = (room.clone(), next.clone(), a.messages as u64);
            set.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = SendMessageRequest {
                        room: room.clone(),
                        content: "history message".into(),
                        ..Default::default()
                    };
                    client
                        .send_message(request)
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
    }
    let channels = ctx.channels(a.clients.max(1)).await?;
    let done_count = Arc::new(AtomicU64::new(0));
    let before = ctx.sample();
    let start = Instant::now();
    let deadline = start + a.duration;
    let progress = Progress::start("history", "pages", done_count.clone());
    let mut set = JoinSet::new();
    let newest = a.messages.max(1) as u64;
    for (i, channel) in channels.into_iter().enumerate() {
        let mut client = ctx.client(channel, &format!("reader-{i}"))?;
        let (room, done_count, page_size) = (room.clone(), done_count.clone(), a.page_size);
        set.spawn(async move {
            let mut hist = histogram();
            let mut rows = 0u64;
            let mut x = (i as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let before_seq = Some(2 + x % newest);
                let at = now_us();
                let page = client
                    .list_history(ListHistoryRequest {
                        room: room.clone(),
                        page_size,
                        before_seq,
                        after_seq: None,
                    })
                    .await
                    .map_err(|e| format!("list_history: {e}"))?;
                let _ = hist.record(now_us().saturating_sub(at).max(1));
                rows += page.into_inner().messages.len() as u64;
                done_count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>((hist, rows))
        });
    }
    let mut hist = histogram();
    let mut rows = 0;
    while let Some(done) = set.join_next().await {
        let (h, r) = done.map_err(|e| e.to_string())??;
        let _ = hist.add(h);
        rows += r;
    }
    let elapsed = start.elapsed();
    drop(progress);
    let pages = hist.len() as f64;
    let params = json!({"messages": a.messages, "clients": a.clients, "page_size": a.page_size});
    let mut report = ctx.report("history", params, elapsed);
    report
        .figure("pages", pages)
        .figure("pages/s", pages / elapsed.as_secs_f64())
        .figure("messages/s returned", rows as f64 / elapsed.as_secs_f64());
    if let Some(u) = ctx.usage(before) {
        report.figure(
            "server cpu µs/page",
            u.cpu().as_secs_f64() * 1e6 / pages.max(1.0),
        );
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    report.check("pages returned messages", rows > 0);
    Ok(report)
}

// ---------------------------------------------------------------- churn

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Concurrent clients joining and leaving, each on its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to churn.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

pub async fn churn(ctx: &Context, a: ChurnArgs) -> Result<Report> {
    let room = ctx.room(0);
    let mut watcher = ctx.client(ctx.channel().await?, "watcher")?;
    let mut watch = watcher
        .join_room(JoinRoomRequest {
            room: room.clone(),
            resume_after_seq: None,
        })
        .await
        .map_err(|e| format!("watcher join: {e}"))?
        .into_inner();
    watch
        .message()
        .await
        .map_err(|e| format!("watcher joined: {e}"))?;
    let presence = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let watching = {
        let (presence, resyncs) = (presence.clone(), resyncs.clone());
        tokio::spawn(async move {
            while let Ok(Some(event)) = watch.message().await {
                match event.event {
                    Some(Event::MemberJoined(_)) | Some(Event::MemberLeft(_)) => {
                        presence.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Event::Joined(_)) => {
                        resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };

    let channels = ctx.channels(a.clients.max(1)).await?;
    let joins = Arc::new(AtomicU64::new(0));
    let before = ctx.sample();
    let start = Instant::now();
    let deadline = start + a.duration;
    let progress = Progress::start("churn", "joins", joins.clone());
    let mut set = JoinSet::new();
    let mut clients = Vec::new();
    for (i, channel) in channels.into_iter().enumerate() {
        // One token per user up front: minting is not what is measured.
        let users: Vec<Client> = (0..8)
            .map(|k| ctx.client(channel.clone(), &format!("churn-{i}-{k}")))
            .collect::<Result<_>>()?;
        clients.push(users);
    }
    for mut users in clients {
        let (room, joins) = (room.clone(), joins.clone());
        set.spawn(async move {
            let mut hist = histogram();
            let mut k = 0;
            while Instant::now() < deadline {
                let client = &mut users[k % 8];
                k += 1;
                let at = now_us();
                let mut stream = client
                    .join_room(JoinRoomRequest {
                        room: room.clone(),
                        resume_after_seq: None,
                    })
                    .await
                    .map_err(|e| format!("join: {e}"))?
                    .into_inner();
                stream.message().await.map_err(|e| format!("joined: {e}"))?;
                let _ = hist.record(now_us().saturating_sub(at).max(1));
                joins.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
            Ok::<_, String>(hist)
        });
    }
    let mut hist = histogram();
    while let Some(done) = set.join_next().await {
        let _ = hist.add(done.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed();
    drop(progress);
    let usage = ctx.usage(before);
    // Presence events trail the last leave slightly: wait for them (or 5 s).
    let total_joins = joins.load(Ordering::Relaxed);
    let wait_until = Instant::now() + Duration::from_secs(5);
    while presence.load(Ordering::Relaxed) < 2 * total_joins && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.abort();
    let events = presence.load(Ordering::Relaxed);
    let params = json!({"clients": a.clients, "duration_s": a.duration.as_secs_f64()});
    let mut report = ctx.report("churn", params, elapsed);
    report
        .figure("joins", total_joins as f64)
        .figure("joins/s", total_joins as f64 / elapsed.as_secs_f64())
        .figure("presence events seen by a watcher", events as f64)
        .figure("presence events expected", 2.0 * total_joins as f64)
        .figure("watcher resyncs", resyncs.load(Ordering::Relaxed) as f64);
    if let Some(u) = usage {
        report.figure(
            "server cpu µs/join",
            u.cpu().as_secs_f64() * 1e6 / total_joins.max(1) as f64,
        );
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    Ok(report)
}
