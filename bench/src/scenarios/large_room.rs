//! `large-room`: one room filled with N members (S streams to a connection),
//! then timed joins into it; what a member costs and what a join costs.
//!
//! The fill opens every stream with up to `--fill-parallelism` joins in
//! flight and counts the joins that fail (a storage call that timed out
//! shows as one). Each stream is drained by a task that decodes only the
//! `joined` count of a re-sent member list. After the fill settles, the
//! server's RSS per member is read; then `--joins` users join one after
//! another (each on its own connection), and the figures are the server's
//! and database's CPU per join (the presence fan-out to every member
//! included), the join latency and the size of each `joined` on the wire.
//! Finally ListMembers pages through the whole room.

use prost::Message as _;

use super::*;

#[derive(Debug, Clone, Args)]
pub struct LargeRoomArgs {
    /// Members filling the room before the timed joins.
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// Streams per connection while filling.
    #[arg(long, default_value_t = 100)]
    streams_per_conn: usize,
    /// Joins in flight at once while filling.
    #[arg(long, default_value_t = 1000)]
    fill_parallelism: usize,
    /// Timed joins into the full room, one after another.
    #[arg(long, default_value_t = 200)]
    joins: usize,
    /// How long to let the server settle after the fill before reading RSS.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

/// JoinRoomResponse as a member's drain reads it: only a re-sent `joined`.
mod skim {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(message, optional, tag = "1")]
        pub joined: Option<Joined>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Joined {
        #[prost(uint32, tag = "4")]
        pub member_count: u32,
    }
}

/// What the members' drains saw.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    /// Member lists re-sent after presence passed a stream by.
    resyncs: AtomicU64,
}

async fn drain(mut stream: tonic::Streaming<skim::Response>, seen: Arc<Seen>) {
    // The first event is the stream's own `joined`.
    let mut first = true;
    while let Ok(Some(event)) = stream.message().await {
        seen.events.fetch_add(1, Ordering::Relaxed);
        if event.joined.is_some() && !std::mem::take(&mut first) {
            seen.resyncs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills `room` with `a.members` members; the number of joins that failed
/// and the first error.
async fn fill(
    ctx: &Context,
    room: &str,
    a: &LargeRoomArgs,
    seen: &Arc<Seen>,
    drains: &mut JoinSet<()>,
) -> Result<(u64, Option<String>)> {
    let channels = ctx
        .channels(a.members.div_ceil(a.streams_per_conn.max(1)))
        .await?;
    let opened = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("fill", "members", opened.clone());
    let gate = Arc::new(Semaphore::new(a.fill_parallelism.max(1)));
    let mut opening = JoinSet::new();
    for i in 0..a.members {
        let channel = channels[i / a.streams_per_conn.max(1)].clone();
        let meta = ctx.meta(&format!("member-{i:06}"))?;
        let (room, gate, opened) = (room.to_string(), gate.clone(), opened.clone());
        opening.spawn(async move {
            let _permit = gate.acquire().await;
            let stream = join_as::<skim::Response>(channel, meta, room).await;
            opened.fetch_add(u64::from(stream.is_ok()), Ordering::Relaxed);
            stream
        });
    }
    let (mut failed, mut first_error) = (0, None);
    while let Some(done) = opening.join_next().await {
        match done.map_err(|e| e.to_string())? {
            Ok(stream) => {
                drains.spawn(drain(stream, seen.clone()));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    drop(progress);
    Ok((failed, first_error))
}

/// One timed join: its latency (µs), its `joined` and that event's size on
/// the wire (the gRPC frame: 5 bytes and the message).
async fn timed_join(
    ctx: &Context,
    channel: Channel,
    room: &str,
    i: usize,
) -> Result<(
    u64,
    proto::Joined,
    usize,
    tonic::Streaming<JoinRoomResponse>,
)> {
    let mut client = ctx.client(channel, &format!("late-{i:04}"))?;
    let at = now_us();
    let (stream, first) = join_stream(&mut client, room, &format!("late join {i}")).await?;
    let took = now_us().saturating_sub(at).max(1);
    // The response as it came: its size is the event's on the wire.
    let first = JoinRoomResponse { event: first };
    let wire = first.encoded_len() + 5;
    match first.event {
        Some(Event::Joined(joined)) => Ok((took, joined, wire, stream)),
        other => Err(format!("late join {i}: first event {other:?}")),
    }
}

/// Pages through the room's members, 1000 at a time; how many were listed
/// and the member count the last page gave.
async fn list_all(ctx: &Context, room: &str) -> Result<(usize, u32)> {
    let mut client = ctx.client(ctx.channel().await?, "lister")?;
    let (mut listed, mut token) = (0, String::new());
    loop {
        let page = client
            .list_members(proto::ListMembersRequest {
                room: room.to_string(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(|e| format!("list members: {e}"))?
            .into_inner();
        listed += page.members.len();
        if page.next_page_token.is_empty() {
            return Ok((listed, page.member_count));
        }
        token = page.next_page_token;
    }
}

pub async fn large_room(ctx: &Context, a: LargeRoomArgs) -> Result<Report> {
    let room = ctx.room(0);
    let seen = Arc::new(Seen::default());
    let mut drains = JoinSet::new();
    let empty = ctx.sample();
    let started = Instant::now();
    let (failed, first_error) = fill(ctx, &room, &a, &seen, &mut drains).await?;
    let filled_in = started.elapsed();
    let fill_usage = ctx.usage(empty.clone());
    eprintln!("large-room: {} members after {filled_in:.1?}", a.members);
    tokio::time::sleep(a.settle).await;
    let full = ctx.sample();

    let channels = ctx.channels(a.joins).await?;
    let mut hist = histogram();
    let (mut wire_max, mut wire_sum, mut wrong_lists) = (0usize, 0usize, 0u64);
    let mut late = Vec::with_capacity(a.joins);
    let before = ctx.sample();
    let events_before = seen.events.load(Ordering::Relaxed);
    let start = Instant::now();
    for (i, channel) in channels.into_iter().enumerate() {
        let (took, joined, wire, stream) = timed_join(ctx, channel, &room, i).await?;
        let _ = hist.record(took);
        wire_max = wire_max.max(wire);
        wire_sum += wire;
        let count = a.members - failed as usize + i + 1;
        wrong_lists += u64::from(
            joined.member_count as usize != count
                || joined.members.len() != count.min(500)
                || joined.members_truncated != (count > 500)
                || joined.members.first().map(|m| m.user_id.as_str())
                    != Some(&format!("late-{i:04}")),
        );
        late.push(stream);
    }
    let elapsed = start.elapsed();
    // What a join costs includes telling the members: wait (up to the
    // longest presence interval and a margin) until every member has had
    // news of the joins, so that round is inside the measurement.
    let members_now = (a.members - failed as usize) as u64;
    let told_by = Instant::now() + Duration::from_secs(12);
    while seen.events.load(Ordering::Relaxed) - events_before < members_now
        && Instant::now() < told_by
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let told_in = start.elapsed();
    let usage = ctx.usage(before);
    let events = seen.events.load(Ordering::Relaxed) - events_before;
    let (listed, listed_count) = list_all(ctx, &room).await?;
    let present = a.members - failed as usize + a.joins;

    let params = json!({"members": a.members, "streams_per_conn": a.streams_per_conn,
        "fill_parallelism": a.fill_parallelism, "joins": a.joins});
    let mut report = ctx.report("large-room", params, elapsed);
    let n = a.joins.max(1) as f64;
    report
        .figure("members", a.members as f64)
        .figure("joins that failed while filling", failed as f64)
        .figure("seconds to fill", filled_in.as_secs_f64())
        .figure("fill joins/s", a.members as f64 / filled_in.as_secs_f64())
        .figure("timed joins", a.joins as f64)
        .figure("joined bytes on the wire (max)", wire_max as f64)
        .figure("joined bytes on the wire (mean)", wire_sum as f64 / n)
        .figure("events to the members per timed join", events as f64 / n)
        .figure(
            "seconds until the members had news of the joins",
            told_in.as_secs_f64(),
        )
        .figure(
            "member lists re-sent to members (whole run)",
            seen.resyncs.load(Ordering::Relaxed) as f64,
        );
    if let Some(u) = &fill_usage {
        report.figure(
            "server cpu µs/join while filling",
            u.cpu().as_secs_f64() * 1e6 / a.members.max(1) as f64,
        );
    }
    let total = |s: &Option<procstat::Snapshot>| s.as_ref().map(procstat::Snapshot::total);
    if let (Some(e), Some(f)) = (total(&empty), total(&full)) {
        report.figure(
            "server RSS KB per member",
            f.rss.saturating_sub(e.rss) as f64 / 1024.0 / a.members.max(1) as f64,
        );
    }
    if let Some(u) = usage {
        report.figure("server cpu µs/join", u.cpu().as_secs_f64() * 1e6 / n);
        if let Some(db) = ctx.database(&u) {
            report.figure("database cpu µs/join", db.cpu().as_secs_f64() * 1e6 / n);
        }
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    if let Some(e) = first_error {
        eprintln!("large-room: first failed join: {e}");
    }
    report.check("no join failed while filling", failed == 0);
    report.check(
        "every member had news of the timed joins",
        events >= members_now,
    );
    report.check(
        "every timed joined: itself first, 500 listed, the right count",
        wrong_lists == 0,
    );
    report.check(
        "ListMembers paged through every member",
        listed == present && listed_count as usize == present,
    );
    drop(late);
    drains.abort_all();
    Ok(report)
}
