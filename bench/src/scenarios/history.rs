//! `history`: ListHistory requests/s on a room with a long history.

use super::*;

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
