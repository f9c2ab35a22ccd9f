//! `presence-kill`: users on one node leave, or that node is killed; time until
//! a stream on another node has seen every `member_left`.
//!
//! A watcher joins the room on the first `--addr`; `--stay` users join on it too
//! and `--users` users on the second `--addr` (the node to kill). Once the
//! watcher has seen every one arrive, the users on the second node go: with
//! `--kill-pid` that process gets SIGKILL, without it the users close their
//! streams (a graceful leave, which a single server can also measure). The
//! watcher then times each `member_left` from that moment, and keeps watching
//! for `--grace` to catch a second `member_left`, a leave of a user who stayed,
//! or a user coming back.

use std::collections::HashMap;

use chatd::proto::JoinRoomResponse;

use super::*;

#[derive(Debug, Clone, Args)]
pub struct PresenceKillArgs {
    /// Users joined on the second --addr, each on its own connection: they leave.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Users joined on the first --addr (the watcher's): they must not leave.
    #[arg(long, default_value_t = 10)]
    stay: usize,
    /// Process to SIGKILL once everyone has joined: the second --addr's
    /// server. Without it the leaving users close their streams instead.
    #[arg(long)]
    kill_pid: Option<u32>,
    /// Give up waiting for the joins, and then for the leaves, after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// After the last member_left, keep watching this long for duplicates.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    grace: Duration,
}

/// What the watcher has seen of each user.
#[derive(Default)]
struct Seen {
    present: bool,
    joins: u64,
    lefts: u64,
    /// When the user first left after the leaving began.
    left_at: Option<Instant>,
}

/// The watcher's view of the room, fed by its stream.
#[derive(Default)]
struct Watch {
    users: HashMap<String, Seen>,
    /// `joined` events after the first (the watcher fell behind).
    resyncs: u64,
}

impl Watch {
    fn apply(&mut self, event: Event, leaving_since: Option<Instant>, at: Instant) {
        let left = |seen: &mut Seen| {
            seen.present = false;
            if let Some(since) = leaving_since
                && seen.left_at.is_none()
                && at >= since
            {
                seen.left_at = Some(at);
            }
        };
        match event {
            Event::MemberJoined(j) => {
                let seen = self
                    .users
                    .entry(j.member.map(|m| m.user_id).unwrap_or_default())
                    .or_default();
                seen.present = true;
                seen.joins += 1;
            }
            Event::MemberLeft(l) => {
                let seen = self
                    .users
                    .entry(l.member.map(|m| m.user_id).unwrap_or_default())
                    .or_default();
                seen.lefts += 1;
                left(seen);
            }
            Event::Joined(j) => {
                // A fresh member list: the exact state, whatever was missed.
                self.resyncs += 1;
                let now: std::collections::HashSet<String> =
                    j.members.into_iter().map(|m| m.user_id).collect();
                for (user, seen) in self.users.iter_mut() {
                    if now.contains(user) {
                        seen.present = true;
                    } else if seen.present {
                        left(seen);
                    }
                }
                for user in now {
                    self.users.entry(user).or_default().present = true;
                }
            }
            // Messages, their changes, typing and read markers: not presence.
            _ => {}
        }
    }

    fn all_present<'a>(&self, mut users: impl Iterator<Item = &'a String>) -> bool {
        users.all(|u| self.users.get(u).is_some_and(|s| s.present))
    }

    fn all_left<'a>(&self, mut users: impl Iterator<Item = &'a String>) -> bool {
        users.all(|u| self.users.get(u).is_some_and(|s| s.left_at.is_some()))
    }
}

/// Reads the watcher's stream until `until` holds or `deadline` passes.
async fn watch_until(
    stream: &mut tonic::Streaming<JoinRoomResponse>,
    watch: &mut Watch,
    leaving_since: Option<Instant>,
    deadline: Instant,
    until: impl Fn(&Watch) -> bool,
) -> Result<bool> {
    while !until(watch) {
        let next = tokio::time::timeout_at(deadline.into(), stream.message()).await;
        match next {
            Err(_) => return Ok(false),
            Ok(Ok(Some(JoinRoomResponse { event: Some(e) }))) => {
                watch.apply(e, leaving_since, Instant::now())
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("the watcher's stream ended".into()),
            Ok(Err(e)) => return Err(format!("the watcher's stream: {e}")),
        }
    }
    Ok(true)
}

/// Opens `names[i]`'s JoinRoom stream on `channels[i]` and keeps reading it
/// (so the server never sees a stalled reader) until the task is aborted.
async fn join_all(
    ctx: &Context,
    room: &str,
    names: &[String],
    channels: Vec<Channel>,
) -> Result<JoinSet<()>> {
    let mut opening = JoinSet::new();
    for (name, channel) in names.iter().zip(channels) {
        let mut client = ctx.client(channel, name)?;
        let room = room.to_string();
        opening.spawn(async move {
            let (stream, _) = join_stream(&mut client, &room, "presence").await?;
            Ok::<_, String>(stream)
        });
    }
    let mut reading = JoinSet::new();
    while let Some(done) = opening.join_next().await {
        let mut stream = done.map_err(|e| e.to_string())??;
        reading.spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    }
    Ok(reading)
}

pub async fn presence_kill(ctx: &Context, a: PresenceKillArgs) -> Result<Report> {
    if a.kill_pid.is_some() && ctx.servers() < 2 {
        return Err(
            "presence-kill --kill-pid needs two --addr: the watcher's node, then the node to kill"
                .into(),
        );
    }
    let room = ctx.room(0);
    let (stay_on, leave_on) = (0, 1 % ctx.servers());
    let stayers: Vec<String> = (0..a.stay).map(|i| format!("pk-stay-{i}")).collect();
    let leavers: Vec<String> = (0..a.users).map(|i| format!("pk-leave-{i}")).collect();

    let mut watcher = ctx.client(ctx.channel_to(stay_on).await?, "pk-watcher")?;
    let (mut stream, first) = join_stream(&mut watcher, &room, "watcher").await?;
    let mut watch = Watch::default();
    match first {
        Some(Event::Joined(_)) => {}
        other => return Err(format!("watcher: expected joined first, got {other:?}")),
    }

    eprintln!(
        "joining {} users on {} and {} on {}...",
        a.stay,
        ctx.addr(stay_on),
        a.users,
        ctx.addr(leave_on)
    );
    let stay_channels = ctx.channels_to(&vec![stay_on; a.stay]).await?;
    let leave_channels = ctx.channels_to(&vec![leave_on; a.users]).await?;
    let staying = join_all(ctx, &room, &stayers, stay_channels).await?;
    let mut leaving = join_all(ctx, &room, &leavers, leave_channels).await?;
    let joined_at = Instant::now();
    let everyone = || stayers.iter().chain(&leavers);
    let converged = watch_until(
        &mut stream,
        &mut watch,
        None,
        joined_at + a.wait,
        |w: &Watch| w.all_present(everyone()),
    )
    .await?;
    if !converged {
        return Err(format!(
            "the watcher did not see every join within {:?}",
            a.wait
        ));
    }
    let join_convergence = joined_at.elapsed();

    let before = ctx.sample();
    let since = Instant::now();
    match a.kill_pid {
        Some(pid) => {
            eprintln!("all joined; SIGKILL to {pid}");
            let pid = libc::pid_t::try_from(pid).map_err(|_| "--kill-pid: out of range")?;
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
            }
        }
        None => {
            eprintln!("all joined; the leaving users close their streams");
            leaving.abort_all();
        }
    }
    let all_left = watch_until(
        &mut stream,
        &mut watch,
        Some(since),
        since + a.wait,
        |w: &Watch| w.all_left(leavers.iter()),
    )
    .await?;
    let converged_in = since.elapsed();
    // Keep watching for duplicates, spurious leaves and returns.
    watch_until(
        &mut stream,
        &mut watch,
        Some(since),
        Instant::now() + a.grace,
        |_: &Watch| false,
    )
    .await?;
    let usage = ctx.usage(before);
    drop(staying);
    leaving.abort_all();

    let mut hist = histogram();
    let mut left = 0u64;
    for user in &leavers {
        if let Some(at) = watch.users.get(user).and_then(|s| s.left_at) {
            left += 1;
            let _ = hist.record((at - since).as_micros().max(1) as u64);
        }
    }
    let once = leavers
        .iter()
        .all(|u| watch.users.get(u).is_some_and(|s| s.lefts == 1));
    let stayed = stayers.iter().all(|u| {
        watch
            .users
            .get(u)
            .is_some_and(|s| s.lefts == 0 && s.present)
    });
    let returned = leavers
        .iter()
        .filter(|u| {
            watch
                .users
                .get(*u)
                .is_some_and(|s| s.joins > 1 || (s.left_at.is_some() && s.present))
        })
        .count();
    let params = json!({
        "users": a.users, "stay": a.stay, "killed": a.kill_pid.is_some(),
        "watcher_addr": ctx.addr(stay_on), "leaving_addr": ctx.addr(leave_on),
    });
    let mut report = ctx.report("presence-kill", params, since.elapsed());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report
        .figure("users leaving", a.users as f64)
        .figure("member_left seen", left as f64)
        .figure("join convergence ms", ms(join_convergence))
        .figure(
            "leave convergence ms (last member_left)",
            if all_left { ms(converged_in) } else { f64::NAN },
        )
        .figure("users back after leaving", returned as f64)
        .figure("watcher resyncs", watch.resyncs as f64);
    if let Some(u) = usage {
        report.server = Some(u.into());
    }
    report.latency = Some(Latency::from_micros(&hist));
    report
        .check("every leaving user left", all_left)
        .check("each left exactly once", once)
        .check("no staying user left", stayed)
        .check("nobody came back", returned == 0);
    Ok(report)
}
