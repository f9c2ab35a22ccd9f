//! The node directory: which nodes of the cluster are alive, so that a presence sync knows whose answers to wait for.
//!
//! Every node announces itself (sealed) on `<cluster>.node` when it
//! connects and after each reconnection (asking the others to announce
//! themselves at once), every third of `CHAT_PRESENCE_TIMEOUT`, and when it
//! shuts down (so it leaves the directory at once). A node not heard from
//! for the presence timeout leaves the directory. An announcement older
//! than the newest one heard from its node is ignored, also for
//! [`MAX_SKEW`] after the node left: a replayed announcement cannot bring a
//! node back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::seal::{MAX_SKEW, NodeId, Opened};

/// The most nodes the directory holds (live, and left within
/// [`MAX_SKEW`], each).
pub const MAX_NODES: usize = 1024;
/// How long after announcing itself (with a request to answer) a node
/// treats its directory as possibly incomplete: a sync started meanwhile
/// waits at least until then (within its own bound).
pub const SETTLE: Duration = Duration::from_millis(250);

/// A node's announcement; the node is the sealed message's sender.
#[derive(Clone, PartialEq, prost::Message)]
struct Announcement {
    /// Sent by a node that just (re)connected: every node that hears it
    /// announces itself at once.
    #[prost(bool, tag = "1")]
    hello: bool,
    /// Sent by a node that shuts down: it leaves the directory at once.
    #[prost(bool, tag = "2")]
    leaving: bool,
}

/// When a node was last heard, by its clock and by this node's.
#[derive(Debug, Clone, Copy)]
struct Heard {
    sent_ms: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Nodes {
    live: HashMap<NodeId, Heard>,
    /// Nodes that left or went silent, remembered for [`MAX_SKEW`].
    gone: HashMap<NodeId, Heard>,
}

/// The live nodes of the cluster other than this one.
#[derive(Debug)]
pub(crate) struct Directory {
    timeout: Duration,
    /// Never held across `.await`.
    nodes: Mutex<Nodes>,
    /// Until when the directory may be incomplete ([`SETTLE`]).
    settled_at: Mutex<Instant>,
}

impl Directory {
    pub(crate) fn new(timeout: Duration) -> Self {
        Directory {
            timeout,
            nodes: Mutex::new(Nodes::default()),
            settled_at: Mutex::new(Instant::now() + SETTLE),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live nodes, this one left out.
    pub(crate) fn live(&self) -> Vec<NodeId> {
        self.lock().live.keys().copied().collect()
    }

    /// Until when a sync should wait even once every known node answered.
    pub(crate) fn settled_at(&self) -> Instant {
        *self.settled_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsettle(&self) {
        *self.settled_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + SETTLE;
    }

    /// Records an announcement; returns whether it was news (not a replay
    /// of an older one).
    fn heard(&self, node: NodeId, sent_ms: u64, leaving: bool) -> bool {
        let mut nodes = self.lock();
        let newest = nodes.live.get(&node).or_else(|| nodes.gone.get(&node));
        if newest.is_some_and(|h| h.sent_ms >= sent_ms) {
            return false;
        }
        let heard = Heard {
            sent_ms,
            at: Instant::now(),
        };
        if leaving {
            nodes.live.remove(&node);
            if nodes.gone.len() < MAX_NODES {
                nodes.gone.insert(node, heard);
            }
        } else if nodes.live.len() < MAX_NODES || nodes.live.contains_key(&node) {
            nodes.gone.remove(&node);
            nodes.live.insert(node, heard);
        }
        true
    }

    /// Drops nodes silent for the presence timeout and forgets departed
    /// ones after [`MAX_SKEW`].
    fn expire(&self) {
        let mut nodes = self.lock();
        let Nodes { live, gone } = &mut *nodes;
        gone.retain(|_, h| h.at.elapsed() < MAX_SKEW);
        live.retain(|node, h| {
            let keep = h.at.elapsed() < self.timeout;
            if !keep && gone.len() < MAX_NODES {
                gone.insert(*node, *h);
            }
            keep
        });
    }
}

/// Announces this node.
async fn announce(cluster: &Cluster, hello: bool, leaving: bool) {
    let payload = Announcement { hello, leaving }.encode_to_vec();
    if let Err(e) = cluster.publish(cluster.subject("node"), &payload).await {
        tracing::debug!(error = %e, "announcing this node failed");
    }
}

/// Handles one announcement.
async fn receive(cluster: &Cluster, directory: &Directory, opened: Opened) {
    let Ok(announcement) = Announcement::decode(opened.payload) else {
        cluster.invalid(|| "an undecodable node announcement".into());
        return;
    };
    let news = directory.heard(opened.node, opened.sent_ms, announcement.leaving);
    if news && announcement.hello && !announcement.leaving {
        announce(cluster, false, false).await;
    }
}

/// Keeps the directory: subscribes to `<cluster>.node`, announces this
/// node, expires silent ones; at `stop`, announces that this node leaves.
pub(crate) async fn run(cluster: Cluster, directory: Arc<Directory>, stop: CancellationToken) {
    let mut subscriber = loop {
        match cluster.subscribe(cluster.subject("node")).await {
            Ok(subscriber) => break subscriber,
            Err(e) => {
                tracing::debug!(error = %e, "subscribing to node announcements failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    directory.unsettle();
    announce(&cluster, true, false).await;
    let mut tick = tokio::time::interval(directory.timeout / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => {
                    if let Some(opened) = cluster.open(&message) {
                        receive(&cluster, &directory, opened).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                directory.expire();
                announce(&cluster, false, false).await;
            }
            () = cluster.link.reconnected_for_nodes() => {
                directory.unsettle();
                announce(&cluster, true, false).await;
            }
        }
    }
    announce(&cluster, false, true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId([n; 8])
    }

    #[test]
    fn replays_and_departures() {
        let d = Directory::new(Duration::from_secs(10));
        assert!(d.heard(node(1), 100, false));
        assert!(!d.heard(node(1), 100, false), "a replay is no news");
        assert!(!d.heard(node(1), 50, false));
        assert_eq!(d.live(), vec![node(1)]);
        assert!(d.heard(node(1), 200, true));
        assert!(d.live().is_empty());
        // A replayed announcement from before it left does not bring it back.
        assert!(!d.heard(node(1), 150, false));
        assert!(d.live().is_empty());
        // A later one (a real node reconnecting) does.
        assert!(d.heard(node(1), 300, false));
        assert_eq!(d.live(), vec![node(1)]);
    }

    #[test]
    fn the_directory_is_bounded() {
        let d = Directory::new(Duration::from_secs(10));
        for i in 0..(MAX_NODES + 10) {
            let mut id = [0u8; 8];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            d.heard(NodeId(id), 1, false);
        }
        assert_eq!(d.live().len(), MAX_NODES);
    }
}
