//! Typing flags and read markers between nodes: live only, so NATS's
//! at-most-once is enough (one that is lost is never replayed anyway).
//!
//! A node announces what its own users do on the room's `.t` (typing) and
//! `.r` (read marker) subjects, sealed like every payload, from a bounded
//! queue ([`RELAY_QUEUE`]; beyond it an event stays on its node). A
//! receiver believes one only if it opens, decodes as that kind, and names
//! a member a token could have made, with a seq storage could hold.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Cluster;
use super::members::{WireMember, check};
use crate::domain::{Identity, RoomName, SEQ_MAX};
use crate::proto::JoinRoomResponse;
use crate::proto::join_room_response::Event;
use crate::rooms::{Outgoing, OutgoingKind, Rooms};

/// Ephemeral events waiting to be published.
const RELAY_QUEUE: usize = 1024;
/// How long one publish may take before the event is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The subject kind of an ephemeral event.
pub(crate) fn kind(kind: OutgoingKind) -> &'static str {
    match kind {
        OutgoingKind::Typing => "t",
        OutgoingKind::ReadMarker => "r",
    }
}

/// Hands `rooms`' ephemeral announcements to a task that publishes them,
/// until `stop`.
pub fn spawn_relay(
    cluster: &Cluster,
    rooms: &Arc<Rooms>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(RELAY_QUEUE);
    rooms.relay_ephemeral(tx);
    let cluster = cluster.clone();
    tracker.spawn(async move {
        loop {
            let out = tokio::select! {
                () = stop.cancelled() => return,
                out = rx.recv() => match out {
                    Some(out) => out,
                    None => return,
                },
            };
            let subject = cluster.room_subject(&out.room, kind(out.kind));
            match tokio::time::timeout(PUBLISH_TIMEOUT, cluster.publish(subject, &out.bytes)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "publishing an ephemeral event failed"),
                Err(_) => tracing::debug!("publishing an ephemeral event timed out"),
            }
        }
    });
}

/// Delivers an ephemeral event another node announced in `room`, if it
/// proves to be one; else says why not.
pub(crate) fn receive(
    rooms: &Rooms,
    room: &RoomName,
    kind: &str,
    payload: Bytes,
) -> Result<(), String> {
    let event = JoinRoomResponse::decode(payload)
        .map_err(|_| "an ephemeral event that does not decode".to_owned())?
        .event;
    let member = match &event {
        Some(Event::Typing(t)) if kind == "t" => t.member.clone(),
        Some(Event::ReadMarker(r)) if kind == "r" => r.member.clone(),
        _ => return Err(format!("a `.{kind}` message that is not its kind of event")),
    };
    let member = member.ok_or_else(|| "an ephemeral event without a member".to_owned())?;
    let checked = check(vec![WireMember {
        user_id: member.user_id,
        display_name: member.display_name,
    }])?;
    let Some((user_id, display_name)) = checked.members.into_iter().next() else {
        return Err("an ephemeral event without a member".into());
    };
    let who = Identity {
        user_id,
        display_name,
        admin: false,
    };
    match event {
        Some(Event::Typing(t)) => rooms.typing_from_peer(room, &who, t.typing),
        Some(Event::ReadMarker(r)) if (1..=SEQ_MAX).contains(&r.seq) => {
            rooms.read_marker_from_peer(room, &who, r.seq)
        }
        _ => return Err("a read marker with a seq storage cannot hold".into()),
    }
    Ok(())
}
