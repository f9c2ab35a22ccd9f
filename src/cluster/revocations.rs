//! Revocations between nodes: a NATS notice for at once, the access revision in storage as the floor.
//!
//! - A node that revokes a grant applies it itself, then [`spawn`]'s
//!   publisher announces it on `<cluster>.access.revoked`; every node
//!   subscribes to it for as long as it runs and applies what arrives
//!   ([`crate::access::Access::apply_revocation`]: streams end with
//!   PERMISSION_DENIED, the user leaves the room, cached grants go).
//! - NATS core is at most once, so every node also reads the access
//!   revision (bumped in the revoking transaction) every
//!   [`bus::POLL_CONNECTED`] ([`bus::POLL_DISCONNECTED`] while NATS is
//!   down) and, when it moved, re-checks its open streams and cached grants
//!   in storage ([`crate::access::Access::revalidate`]). So a node that
//!   missed a notice ends the stream within that interval (plus one
//!   database call).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Cluster, bus};
use crate::access::{ANNOUNCE_QUEUE, Access, Revocation};
use crate::domain::RoomName;
use crate::storage::Store;

/// A revocation on the wire; no user ids: a room was made private, and
/// each node re-checks its streams in it.
#[derive(Clone, PartialEq, prost::Message)]
struct Notice {
    #[prost(string, tag = "1")]
    room: String,
    #[prost(string, repeated, tag = "2")]
    user_ids: Vec<String>,
}

/// The subject revocations travel on.
fn subject(cluster: &Cluster) -> String {
    format!("{}.access.revoked", cluster.name)
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
        let notice = Notice {
            room: room.to_string(),
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        };
        let payload = Bytes::from(notice.encode_to_vec());
        let published = tokio::select! {
            () = stop.cancelled() => return,
            published = cluster.client.publish(subject.clone(), payload) => published,
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
            s = tokio::time::timeout(bus::POLL_CONNECTED, cluster.client.subscribe(subject.clone())) => s,
        };
        let Ok(Ok(mut subscriber)) = subscribed else {
            tracing::debug!("subscribing to revocations failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(bus::POLL_DISCONNECTED) => continue,
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
            match Notice::decode(message.payload) {
                Ok(notice) => match RoomName::parse(&notice.room) {
                    Ok(room) => {
                        let users: Vec<Arc<str>> =
                            notice.user_ids.into_iter().map(Arc::from).collect();
                        if users.is_empty() {
                            // A room made private: re-check its streams here.
                            let checked = tokio::select! {
                                () = stop.cancelled() => return,
                                checked = access.revalidate_room(&room) => checked,
                            };
                            if let Err(e) = checked {
                                tracing::debug!(room = %room, error = %e, "re-checking a room made private failed; the poll will");
                            }
                        } else {
                            access.apply_revocation(&room, &users);
                        }
                    }
                    Err(_) => tracing::warn!(room = %notice.room, "revocation of an invalid room"),
                },
                Err(e) => tracing::warn!(error = %e, "undecodable revocation"),
            }
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
            bus::POLL_CONNECTED
        } else {
            bus::POLL_DISCONNECTED
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
            Ok::<_, crate::Error>(revision)
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
