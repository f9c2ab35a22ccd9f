//! `joins`: N users joining one room one after another, each waiting for its `joined`.
//!
//! Every user has its own connection, opened (and its token minted) before
//! the clock starts. Each stream stays open and is drained by its own task,
//! so every earlier member receives the later members' `member_joined`: the
//! presence fan-out is part of what is measured. At the end each stream must
//! have seen exactly the members that joined after it, and each `joined`
//! must have listed everyone before it.
//!
//! With `--present N` the room first gets N members (joined concurrently,
//! [`STREAMS_PER_CONNECTION`] to a connection, untimed), who then receive
//! every timed join's `member_joined` too: what a join costs in a large room.

use super::*;

#[derive(Debug, Clone, Args)]
pub struct JoinsArgs {
    /// Users joining, one after another, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Members already in the room before the timed joins.
    #[arg(long, default_value_t = 0)]
    present: usize,
    /// How long to wait for the last presence events after the last join.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

/// How many of the `--present` members' streams share a connection.
const STREAMS_PER_CONNECTION: usize = 100;

/// Joins `count` members to `room` (untimed), each stream drained by a
/// task of `drains` ([`drain`]).
async fn fill(
    ctx: &Context,
    room: &str,
    count: usize,
    seen: &Arc<AtomicU64>,
    counted: &Arc<AtomicU64>,
    drains: &mut JoinSet<()>,
) -> Result<()> {
    let channels = ctx.channels(count.div_ceil(STREAMS_PER_CONNECTION)).await?;
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut opening = JoinSet::new();
    for i in 0..count {
        let client = ctx.client(
            channels[i / STREAMS_PER_CONNECTION].clone(),
            &format!("present-{i}"),
        );
        let (room, gate) = (room.to_string(), gate.clone());
        opening.spawn(async move {
            let _permit = gate.acquire().await;
            let (stream, _) = join_stream(&mut client?, &room, &format!("present {i}")).await?;
            Ok::<_, String>(stream)
        });
    }
    while let Some(opened) = opening.join_next().await {
        let stream = opened.map_err(|e| e.to_string())??;
        drains.spawn(drain(stream, seen.clone(), counted.clone()));
    }
    Ok(())
}

/// Reads `stream` until it ends, counting into `seen` the `member_joined`
/// of the timed joiners (user ids starting `joins-`), and raising
/// `counted` to the member count of a re-sent `joined` (a room of over
/// 500 members sends a burst of arrivals as one count).
async fn drain(
    mut stream: tonic::Streaming<JoinRoomResponse>,
    seen: Arc<AtomicU64>,
    counted: Arc<AtomicU64>,
) {
    // The stream's own `joined` was read when it opened.
    while let Ok(Some(event)) = stream.message().await {
        match event.event {
            Some(Event::MemberJoined(j))
                if j.member
                    .as_ref()
                    .is_some_and(|m| m.user_id.starts_with("joins-")) =>
            {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            Some(Event::Joined(j)) => {
                counted.fetch_max(u64::from(j.member_count), Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

pub async fn joins(ctx: &Context, a: JoinsArgs) -> Result<Report> {
    let room = ctx.room(0);
    let presence = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let mut drains = JoinSet::new();
    if a.present > 0 {
        let started = Instant::now();
        fill(ctx, &room, a.present, &presence, &counted, &mut drains).await?;
        eprintln!(
            "joins: {} members present after {:.1?}",
            a.present,
            started.elapsed()
        );
    }
    let channels = ctx.channels(a.clients).await?;
    let clients: Vec<Client> = channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| ctx.client(channel, &format!("joins-{i}")))
        .collect::<Result<_>>()?;
    let joined = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("joins", "joins", joined.clone());
    let mut hist = histogram();
    let mut short_lists = 0u64;
    let before = ctx.sample();
    let start = Instant::now();
    for (i, mut client) in clients.into_iter().enumerate() {
        let at = now_us();
        let (stream, first) = join_stream(&mut client, &room, &format!("join {i}")).await?;
        let _ = hist.record(now_us().saturating_sub(at).max(1));
        match first {
            Some(Event::Joined(j)) => {
                // At most 500 listed; the count is everyone.
                let everyone = a.present + i + 1;
                short_lists += u64::from(
                    j.members.len() != everyone.min(500) || j.member_count as usize != everyone,
                )
            }
            other => return Err(format!("join {i}: first event {other:?}, not joined")),
        }
        joined.fetch_add(1, Ordering::Relaxed);
        drains.spawn(drain(stream, presence.clone(), counted.clone()));
    }
    let elapsed = start.elapsed();
    let usage = ctx.usage(before);
    drop(progress);
    // Every stream i gets one member_joined per later user, every present
    // member one per timed user.
    let n = a.clients as u64;
    let expected = n * n.saturating_sub(1) / 2 + a.present as u64 * n;
    let wait_until = Instant::now() + a.drain;
    let everyone = (a.present + a.clients) as u64;
    let told = || {
        presence.load(Ordering::Relaxed) == expected || counted.load(Ordering::Relaxed) == everyone
    };
    while !told() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = presence.load(Ordering::Relaxed);
    drains.abort_all();
    let params = json!({"clients": a.clients, "present": a.present});
    let mut report = ctx.report("joins", params, elapsed);
    report
        .figure("joins", n as f64)
        .figure("seconds for all joins", elapsed.as_secs_f64())
        .figure("joins/s", n as f64 / elapsed.as_secs_f64())
        .figure("member_joined events seen", events as f64)
        .figure("member_joined events expected", expected as f64);
    if let Some(u) = usage {
        report.figure(
            "server cpu µs/join",
            u.cpu().as_secs_f64() * 1e6 / n.max(1) as f64,
        );
        if let Some(db) = ctx.database(&u) {
            report.figure(
                "database cpu µs/join",
                db.cpu().as_secs_f64() * 1e6 / n.max(1) as f64,
            );
        }
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    report.check(
        "every joined counted everyone before it (listing up to 500)",
        short_lists == 0,
    );
    report.check(
        "every member_joined arrived (or, over 500 members, the final count)",
        told(),
    );
    Ok(report)
}
