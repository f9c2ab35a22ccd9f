//! `send`: C concurrent senders over many rooms, acknowledged sends/s, checked against history.

use super::*;

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Concurrent closed-loop senders (a user each).
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Connections the senders share, round-robin (0: one per sender).
    #[arg(long, default_value_t = 4)]
    connections: usize,
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
    /// Give every send a fresh `client_message_id` (idempotent sends).
    #[arg(long)]
    idempotent: bool,
    /// Before sending, store this many messages in every room, with
    /// idempotency keys, by the senders' user ids (one INSERT … SELECT
    /// generate_series through `psql`; PostgreSQL only, needs
    /// `--database-url` and a fresh database).
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// The server's database, for `--preload`.
    #[arg(long)]
    database_url: Option<String>,
    /// What each call does: `send` a message; `edit` the sender's own
    /// message of the room (one sent per room first); `react`: add or
    /// remove (in turn) the sender's reaction to it. Edits and reactions
    /// are durable events like messages; history holds messages only, so
    /// they are not checked against it.
    #[arg(long, value_enum, default_value_t = Op::Send)]
    op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    Send,
    Edit,
    React,
}

/// Sends one message to each room as the sender, for `--op edit|react` to
/// change: its seq per room.
async fn own_messages(client: &mut Client, rooms: &[String]) -> Result<Vec<u64>> {
    let mut seqs = Vec::with_capacity(rooms.len());
    for room in rooms {
        let sent = client
            .send_message(SendMessageRequest {
                room: room.clone(),
                content: "to be changed".into(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("send_message: {e}"))?;
        seqs.push(sent.into_inner().message.map_or(0, |m| m.seq));
    }
    Ok(seqs)
}

/// One call of `op` to room `r` (`own`: the sender's message there; `held`:
/// whether the sender holds its reaction, flipped by a reaction call);
/// returns the seq the call stored.
async fn call(
    mut client: Client,
    op: Op,
    room: String,
    content: String,
    client_message_id: String,
    own: u64,
    add: bool,
) -> std::result::Result<u64, Status> {
    let message = match op {
        Op::Send => client
            .send_message(SendMessageRequest {
                room,
                content,
                client_message_id,
                ..Default::default()
            })
            .await?
            .into_inner()
            .message
            .map(|m| m.seq),
        Op::Edit => client
            .edit_message(EditMessageRequest {
                room,
                message_seq: own,
                content,
            })
            .await?
            .into_inner()
            .message
            .map(|m| m.updated_seq),
        Op::React => client
            .react(ReactRequest {
                room,
                message_seq: own,
                reaction: "👍".into(),
                add,
            })
            .await?
            .into_inner()
            .message
            .map(|m| m.updated_seq),
    };
    Ok(message.unwrap_or(0))
}

/// Stores `n` messages in each of the bench's rooms, seqs 1..=n, sent by
/// the bench's users with idempotency keys (so their key index is as large
/// as the room), and makes each room's counter n.
fn preload(ctx: &Context, a: &SendArgs, rooms: usize, senders: usize) -> Result<()> {
    let url = a
        .database_url
        .as_deref()
        .ok_or("--preload needs --database-url")?;
    let mut sql = String::from("BEGIN;");
    for r in 0..rooms {
        // A literal: `--room-prefix` may hold a quote.
        let room = ctx.room(r).replace('\'', "''");
        let n = a.preload;
        sql.push_str(&format!(
            "INSERT INTO rooms (name, last_seq) VALUES ('{room}', {n}); \
             INSERT INTO messages (room, seq, sender_id, sender_name, content_type, content, \
             client_message_id, sent_at_micros) \
             SELECT '{room}', g, 'sender-' || (g % {senders}), 'preload', 1, 'preloaded', \
             'preload-' || g, 0 FROM generate_series(1, {n}) AS g;"
        ));
    }
    sql.push_str("COMMIT; ANALYZE messages; ANALYZE rooms;");
    let out = std::process::Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "preloading: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub async fn send(ctx: &Context, a: SendArgs) -> Result<Report> {
    let senders = a.senders.max(1);
    let rooms = a.rooms.max(1);
    let connections = match a.connections {
        0 => senders,
        n => n.min(senders),
    };
    if a.preload > 0 {
        eprintln!(
            "preloading {} messages into each of {rooms} rooms",
            a.preload
        );
        preload(ctx, &a, rooms, senders)?;
    }
    let channels = ctx.channels(connections).await?;
    let room_names: Vec<String> = (0..rooms).map(|r| ctx.room(r)).collect();
    // `--op edit|react`: each sender's own message per room, sent before
    // the clock starts (all senders at once).
    let mut setup = JoinSet::new();
    for i in 0..senders {
        let mut client = ctx.client(channels[i % connections].clone(), &format!("sender-{i}"))?;
        let (op, names) = (a.op, room_names.clone());
        setup.spawn(async move {
            let own = match op {
                Op::Send => vec![0; names.len()],
                Op::Edit | Op::React => own_messages(&mut client, &names).await?,
            };
            Ok::<_, String>((i, client, own))
        });
    }
    let mut prepared = Vec::with_capacity(senders);
    while let Some(done) = setup.join_next().await {
        prepared.push(done.map_err(|e| e.to_string())??);
    }
    prepared.sort_by_key(|(i, _, _)| *i);
    let acked = Arc::new(AtomicU64::new(0));
    let per_sender_rate = a.rate / senders as f64;
    let padding = "x".repeat(a.payload);
    let before = ctx.sample();
    let start = Instant::now();
    let deadline = start + a.duration;
    let progress = Progress::start("send", "acks", acked.clone());
    let mut set = JoinSet::new();
    for (i, client, own) in prepared {
        let idempotent = a.idempotent;
        let room_names = room_names.clone();
        let op = a.op;
        let acked = acked.clone();
        let padding = padding.clone();
        set.spawn(async move {
            let mut hist = histogram();
            let mut stored: Vec<(usize, u64)> = Vec::new();
            let mut errors = 0u64;
            let mut pacer = Pacer::new(per_sender_rate);
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut in_flight = InFlight::new(per_sender_rate);
            let mut sent = 0u64;
            let mut held = vec![false; room_names.len()];
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
                sent += 1;
                let key = if idempotent {
                    format!("s{i}-{sent}")
                } else {
                    String::new()
                };
                held[r] = !held[r];
                let call = call(
                    client.clone(),
                    op,
                    room_names[r].clone(),
                    stamped(at, &padding),
                    key,
                    own[r],
                    held[r],
                );
                let send = async move { Ok((r, call.await?, at)) };
                for outcome in in_flight.run_collect(send).await {
                    record(outcome);
                }
            }
            for outcome in in_flight.drain().await {
                record(outcome);
            }
            (i, hist, stored, errors, client)
        });
    }
    let mut hist = histogram();
    let mut stored = Vec::new();
    let mut errors = 0;
    let mut client = None;
    // Per server: senders, acks, errors, ack latency.
    let mut on: Vec<(u64, u64, u64, Histogram<u64>)> =
        (0..ctx.servers()).map(|_| (0, 0, 0, histogram())).collect();
    while let Some(done) = set.join_next().await {
        let (i, h, s, e, c) = done.map_err(|e| e.to_string())?;
        let place = &mut on[ctx.server_of(i)];
        place.0 += 1;
        place.1 += s.len() as u64;
        place.2 += e;
        let _ = hist.add(&h);
        let _ = place.3.add(h);
        stored.extend(s);
        errors += e;
        client = Some(c);
    }
    let elapsed = start.elapsed();
    drop(progress);
    let usage = ctx.usage(before);
    let params = json!({
        "senders": senders, "rooms": rooms, "duration_s": a.duration.as_secs_f64(), "rate": a.rate,
        "payload": a.payload, "connections": connections, "idempotent": a.idempotent,
        "preload": a.preload, "op": format!("{:?}", a.op).to_lowercase(),
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
        if let Some(db) = ctx.database(&u) {
            report.figure(
                "database cpu µs/send",
                db.cpu().as_secs_f64() * 1e6 / acks.max(1.0),
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
            .map(|(i, (senders, acks, errors, h))| {
                let l = Latency::from_micros(h);
                json!({
                    "addr": ctx.addr(i), "senders": senders, "acknowledged": acks,
                    "errors": errors, "ack_p50_ms": l.p50_ms, "ack_p99_ms": l.p99_ms,
                })
            })
            .collect();
    }
    // With several servers, history is read back through one of them: every
    // acknowledged send, whichever server stored it, must be there.
    if !a.no_verify
        && a.op == Op::Send
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
