//! Presence sync: ask every live node for its members of one room and gather the answers, within a bound.
//!
//! A node that starts following a room (or answers ListMembers for a room
//! with no stream on it) publishes a sealed request naming the room and a
//! reply inbox on `<cluster>.sync`; every node subscribes to that subject
//! and answers, sealed for the reply subject, with its members of the room
//! (an empty list when it has none). [`gather`] returns once every node in
//! the directory has answered (and the directory has settled), or after
//! [`SYNC_WAIT`].

use futures_util::StreamExt;
use prost::Message as _;
use tokio::time::Instant;

use super::Cluster;
use super::members::{self, Checked, Snapshot};
use super::nodes::{Directory, MAX_NODES};
use super::seal::NodeId;
use crate::domain::RoomName;

pub use crate::rooms::SYNC_WAIT;

/// A request for the members of `room`; answers go to `reply`, which must
/// be the request's NATS reply subject (a captured request re-published
/// with another inbox gets no answer).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SyncRequest {
    #[prost(string, tag = "1")]
    pub(crate) room: String,
    #[prost(string, tag = "2")]
    pub(crate) reply: String,
}

/// One node's answer: its snapshot of the room.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) node: NodeId,
    pub(crate) seq: u64,
    pub(crate) checked: Checked,
}

/// Asks every node for its members of `room` and gathers the answers
/// (checked; invalid ones are counted and left out) until each node of the
/// directory has answered, or [`SYNC_WAIT`] has passed.
pub(crate) async fn gather(
    cluster: &Cluster,
    directory: &Directory,
    room: &RoomName,
) -> Vec<Answer> {
    let deadline = Instant::now() + SYNC_WAIT;
    let inbox = cluster.new_inbox();
    let Ok(mut answers) = cluster.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let request = SyncRequest {
        room: room.to_string(),
        reply: inbox.clone(),
    };
    let asked = cluster
        .request(cluster.subject("sync"), inbox, &request.encode_to_vec())
        .await;
    if let Err(e) = asked {
        tracing::debug!(error = %e, "asking the other nodes for a room's members failed");
        return Vec::new();
    }
    let expected = directory.live();
    let settled = directory.settled_at().min(deadline);
    let mut got: Vec<Answer> = Vec::new();
    loop {
        let all = expected.iter().all(|n| got.iter().any(|a| a.node == *n));
        let until = if all { settled } else { deadline };
        if all && Instant::now() >= until {
            break;
        }
        let message = match tokio::time::timeout_at(until, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) if all => continue,
            Err(_) => break,
        };
        if let Some(answer) = read_answer(cluster, room, &message)
            && got.len() < MAX_NODES
        {
            got.retain(|a| a.node != answer.node || a.seq > answer.seq);
            if !got.iter().any(|a| a.node == answer.node) {
                got.push(answer);
            }
        }
    }
    got
}

/// One answer, opened and checked.
fn read_answer(
    cluster: &Cluster,
    room: &RoomName,
    message: &async_nats::Message,
) -> Option<Answer> {
    let opened = cluster.open(message)?;
    let checked = Snapshot::decode(opened.payload)
        .map_err(|e| e.to_string())
        .and_then(|snapshot| {
            if snapshot.room != room.as_str() {
                return Err("an answer about another room".into());
            }
            members::check(snapshot.members).map(|checked| (snapshot.seq, checked))
        });
    match checked {
        Ok((seq, checked)) => Some(Answer {
            node: opened.node,
            seq,
            checked,
        }),
        Err(why) => {
            cluster.invalid(|| format!("a presence answer: {why}"));
            None
        }
    }
}
