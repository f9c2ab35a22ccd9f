//! `churn`: clients joining and leaving continuously, joins/s with presence.

use super::*;

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
    let (mut watch, _) = join_stream(&mut watcher, &room, "watcher").await?;
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
                let (stream, _) = join_stream(client, &room, "churn").await?;
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
