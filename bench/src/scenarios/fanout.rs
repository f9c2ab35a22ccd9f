//! `fanout`: R rooms x S subscribers, senders pushing messages to every room.

use super::*;

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
    /// After the last send is acknowledged, wait at most this long for the
    /// deliveries still due; whatever has not arrived then counts as lost
    /// (instead of the run hanging until --timeout).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[derive(Default)]
struct SubscriberResult {
    /// Index into `--addr` of the server this subscriber's stream is on.
    server: usize,
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for s in 0..total_subs {
        let room = ctx.room(s % a.rooms.max(1));
        let channel = channels[s / per_conn].clone();
        let server = ctx.server_of(s / per_conn);
        let meta = ctx.meta(&format!("sub-{s}"))?;
        let ready = ready_tx.clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        subscribers.spawn(async move {
            let mut out = SubscriberResult {
                server,
                ..Default::default()
            };
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
                let next = tokio::select! {
                    next = stream.message() => next,
                    _ = stop.wait_for(|stop| *stop) => break,
                };
                match next {
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
    // Senders take the servers in turn too, so with several --addr every
    // server has senders (and every subscriber gets messages sent through
    // other servers than its own).
    let mut senders_on = vec![0usize; ctx.servers()];
    for r in 0..a.rooms {
        for s in 0..a.senders {
            let server = ctx.server_of(r * a.senders + s);
            senders_on[server] += 1;
            let channel = ctx.channel_to(server).await?;
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
    let drain = a.drain;
    let drained = tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        let _ = stop_tx.send(true);
    });
    let mut hist = histogram();
    let (mut received, mut out_of_order, mut resyncs) = (0, 0, 0);
    // Per server: subscribers, deliveries, latency.
    let mut on: Vec<(u64, u64, Histogram<u64>)> =
        (0..ctx.servers()).map(|_| (0, 0, histogram())).collect();
    while let Some(done) = subscribers.join_next().await {
        let r = done.map_err(|e| e.to_string())?;
        received += r.received;
        out_of_order += r.out_of_order;
        resyncs += r.resyncs;
        let place = &mut on[r.server];
        place.0 += 1;
        place.1 += r.received;
        if let Some(h) = r.latency {
            let _ = hist.add(&h);
            let _ = place.2.add(h);
        }
    }
    drained.abort();
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
        if let Some(db) = ctx.database(&u) {
            report.figure(
                "database cpu µs/delivery",
                db.cpu().as_secs_f64() * 1e6 / received.max(1) as f64,
            );
            report.database = Some(db);
        }
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    if ctx.servers() > 1 {
        report.placement = on
            .iter()
            .enumerate()
            .map(|(i, (subs, got, h))| {
                let l = Latency::from_micros(h);
                json!({
                    "addr": ctx.addr(i), "subscribers": subs, "senders": senders_on[i],
                    "deliveries": got, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms,
                })
            })
            .collect();
    }
    report
        .check("nothing lost", received == expected_total)
        .check("in order, no gaps", out_of_order == 0);
    Ok(report)
}
