//! `idle`: N idle JoinRoom streams, server memory per stream and per connection.

use super::*;

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
                let (stream, _) = join_stream(&mut client, &room, "idle").await?;
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
    let total = |s: &Option<procstat::Snapshot>| s.as_ref().map(procstat::Snapshot::total);
    let (before_rss, with_conns, with_streams) =
        (total(&before), total(&with_conns), total(&with_streams));
    if let (Some(b), Some(c)) = (before_rss, with_conns) {
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
