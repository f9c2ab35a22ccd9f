//! Revocations between nodes: a NATS notice for at once, the access revision in storage as the floor.
//!
//! - A node that revokes a grant applies it itself, then [`spawn`]'s
//!   publisher announces it (sealed) on `<cluster>.access.revoked`; every
//!   node subscribes to it for as long as it runs and applies what arrives
//!   as far as storage confirms it
//!   ([`crate::access::Access::revalidate_users`]: for the users with
//!   streams or cached grants here, a private room without a grant ends
//!   their streams with PERMISSION_DENIED and drops their cached grants; a
//!   public room is never revoked).
//! - Bans, mutes and their lifting travel the same way: the notice names
//!   the user and the room, or no room for a sanction on every room. A
//!   receiver forgets its cached sanctions of those users and re-checks
//!   their streams in storage, which finds bans in force too (the stream
//!   ends with the ban's refusal).
//! - NATS core is at most once, so every node also reads the access
//!   revision (bumped in the revoking transaction) every
//!   [`super::POLL_CONNECTED`] ([`super::POLL_DISCONNECTED`] while NATS is
//!   down) and, when it moved, forgets its cached sanctions and re-checks
//!   its open streams and cached grants in storage ([`crate::access::Access::revalidate`]). So a node that
//!   missed a notice ends the stream within that interval (plus one
//!   database call).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Cluster;
use crate::access::{ANNOUNCE_QUEUE, Access, Revocation};
use crate::domain::{RoomName, USER_IDS_MAX, user_id_problem};
use crate::storage::Store;

/// A revocation on the wire; no user ids: a room was made private, and
/// each node re-checks its streams in it. An empty room (with user ids): a
/// sanction on every room.
#[derive(Clone, PartialEq, prost::Message)]
struct RevocationNotice {
    #[prost(string, tag = "1")]
    room: String,
    #[prost(string, repeated, tag = "2")]
    user_ids: Vec<String>,
}

/// The subject revocations travel on.
fn subject(cluster: &Cluster) -> String {
    cluster.subject("access.revoked")
}

/// Starts, on `tracker`, the publisher of this node's revocations, the
/// subscription to the other nodes' and the poll of the access revision;
/// all end at `stop`.
pub fn spawn(
    cluster: &Cluster,
    access: &Arc<Access>,
    store: &Store,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    let (tx, rx) = mpsc::channel(ANNOUNCE_QUEUE);
    access.announce_to(tx);
    tracker.spawn(publish(cluster.clone(), rx, stop.clone()));
    tracker.spawn(follow(cluster.clone(), access.clone(), stop.clone()));
    tracker.spawn(poll(
        cluster.clone(),
        access.clone(),
        store.clone(),
        stop.clone(),
    ));
}

/// Publishes this node's revocations.
async fn publish(cluster: Cluster, mut rx: mpsc::Receiver<Revocation>, stop: CancellationToken) {
    let subject = subject(&cluster);
    loop {
        let (room, users) = tokio::select! {
            () = stop.cancelled() => return,
            next = rx.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let notice = RevocationNotice {
            room: room.as_ref().map(RoomName::to_string).unwrap_or_default(),
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        };
        let payload = notice.encode_to_vec();
        let published = tokio::select! {
            () = stop.cancelled() => return,
            published = cluster.publish(subject.clone(), &payload) => published,
        };
        if let Err(e) = published {
            tracing::debug!(error = %e, "publishing a revocation failed; the other nodes poll for it");
        }
    }
}

/// Applies the other nodes' revocations as they arrive; retries the
/// subscription when it fails.
async fn follow(cluster: Cluster, access: Arc<Access>, stop: CancellationToken) {
    let subject = subject(&cluster);
    loop {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = cluster.subscribe(subject.clone()) => s,
        };
        let Ok(mut subscriber) = subscribed else {
            tracing::debug!("subscribing to revocations failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(super::POLL_DISCONNECTED) => continue,
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let Some(opened) = cluster.open(&message) else {
                continue;
            };
            let Some((room, users)) = read(&cluster, opened.payload) else {
                continue;
            };
            // Storage decides, not the notice: a room made private (no
            // users named), the named users' grants and bans are checked
            // there.
            let checked = tokio::select! {
                () = stop.cancelled() => return,
                checked = async {
                    match &room {
                        Some(room) if users.is_empty() => access.revalidate_room(room).await,
                        room => access.revalidate_users(room.as_ref(), &users).await,
                    }
                } => checked,
            };
            if let Err(e) = checked {
                tracing::debug!(room = ?room, error = %e, "checking a revocation failed; the poll will");
            }
        }
    }
}

/// A revocation notice's room (`None`: every room) and users, if valid
/// (else counted): a normalized room name, or "" with at least one user.
fn read(cluster: &Cluster, payload: Bytes) -> Option<Revocation> {
    let checked = RevocationNotice::decode(payload)
        .map_err(|e| e.to_string())
        .and_then(|notice| {
            let room = if notice.room.is_empty() {
                if notice.user_ids.is_empty() {
                    return Err("no room and no user".into());
                }
                None
            } else {
                let room = RoomName::parse(&notice.room).map_err(|e| e.to_string())?;
                if room.as_str() != notice.room {
                    return Err("a room not normalized".into());
                }
                Some(room)
            };
            if notice.user_ids.len() > USER_IDS_MAX {
                return Err("too many users".into());
            }
            if let Some(problem) = notice.user_ids.iter().find_map(|u| user_id_problem(u)) {
                return Err(format!("a user id {problem}"));
            }
            Ok((room, notice.user_ids.into_iter().map(Arc::from).collect()))
        });
    match checked {
        Ok(read) => Some(read),
        Err(why) => {
            cluster.invalid(|| format!("a revocation: {why}"));
            None
        }
    }
}

/// Reads the access revision every poll interval and re-checks this
/// node's streams and cached grants when it moved.
async fn poll(cluster: Cluster, access: Arc<Access>, store: Store, stop: CancellationToken) {
    let mut seen: Option<i64> = None;
    let mut failing = false;
    loop {
        let interval = if cluster.link.is_connected() {
            super::POLL_CONNECTED
        } else {
            super::POLL_DISCONNECTED
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let checked = async {
            let revision = store.access_revision().await?;
            // The first time too: a notice may have been missed before.
            if seen != Some(revision) {
                access.revalidate().await?;
            }
            Ok::<_, crate::error::Error>(revision)
        };
        let checked = tokio::select! {
            () = stop.cancelled() => return,
            checked = checked => checked,
        };
        match checked {
            Ok(revision) => {
                seen = Some(revision);
                if failing {
                    failing = false;
                    tracing::info!("polling the access revision works again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "polling the access revision failed");
            }
            Err(_) => {}
        }
    }
}
