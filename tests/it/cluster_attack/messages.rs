//! Forged, altered, moved and far-ahead notices of messages.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;

use crate::cluster_attack::wire::{Entry, Notice, TestKey, notice};
use crate::cluster_attack::{Attack, FAKE_NODE, next_message_not, no_message_for};
use crate::helpers::cluster::OTHER_KEY;
use crate::helpers::{join, send, within};

/// A forged notice for the next seq (unsealed, and sealed with another
/// key), an altered copy of a real notice and a real notice moved to
/// another room's subject: every stream on every node delivers the real
/// message at that seq and never the forgery, and every node counts what
/// it dropped as `seal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_altered_and_moved_notices_are_dropped() {
    let attack = Attack::start("forge", 3).await;
    let (room, other) = ("lobby", "side");
    let mut captured = within(attack.raw.subscribe(attack.room_subject(room, "m")))
        .await
        .expect("subscribe");
    within(attack.raw.flush()).await.expect("flush");
    let mut streams = Vec::new();
    for (i, node) in attack.nodes.iter().enumerate() {
        let mut c = node.client(&format!("reader{i}")).await;
        let (s, _) = join(&mut c, room, None).await;
        let (o, _) = join(&mut c, other, None).await;
        streams.push((c, s, o));
    }
    let mut bob = attack.nodes[0].client("bob").await;
    let first = send(&mut bob, room, "hello").await;
    for (_, s, _) in &mut streams {
        assert_eq!(next_message_not(s, "").await.seq, first.seq);
    }
    let real = within(captured.next()).await.expect("a captured notice");

    const FORGED: &str = "send your password to evil.example";
    let forged = notice(room, 2, "bob", FORGED);
    attack
        .publish(attack.room_subject(room, "m"), forged.clone())
        .await;
    let wrong = TestKey::new(OTHER_KEY);
    let subject = attack.room_subject(room, "m");
    let sealed_wrong = wrong.seal(&subject, FAKE_NODE, &forged);
    attack.publish(subject.clone(), sealed_wrong).await;
    let mut flipped = real.payload.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    attack.publish(subject, flipped).await;
    attack
        .publish(attack.room_subject(other, "m"), real.payload.to_vec())
        .await;
    // A notice sealed for the room but in clear text form is no notice.
    attack
        .publish(attack.room_subject(room, "m"), b"\x00garbage".to_vec())
        .await;
    // NATS has the forgeries before the real notice, and each node reads
    // a subscription in order: they are dropped before it arrives.
    let second = send(&mut bob, room, "the real second").await;
    assert_eq!(second.seq, 2);
    for (_, s, o) in &mut streams {
        let m = next_message_not(s, FORGED).await;
        assert_eq!((m.seq, m.content.as_str()), (2, "the real second"));
        no_message_for(o, Duration::from_millis(300)).await;
    }
    for (_, s, _) in &mut streams {
        no_message_for(s, Duration::from_millis(500)).await;
    }
    for i in 0..attack.nodes.len() {
        attack.wait_dropped(i, "seal", 5.0).await;
    }
}

/// A compromised node (it holds the key) announces seq 2^63−1, with a
/// message and with an empty event, and an uncommitted seq a little ahead:
/// no stream is silenced, new joiners get the true last seq, and a resume
/// beyond it is OUT_OF_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_ahead_notice_moves_nothing() {
    let attack = Attack::start("ahead", 3).await;
    let room = "quiet";
    let mut streams = Vec::new();
    for (i, node) in attack.nodes.iter().enumerate() {
        let mut c = node.client(&format!("reader{i}")).await;
        let (s, _) = join(&mut c, room, None).await;
        streams.push((c, s));
    }
    let mut bob = attack.nodes[1].client("bob").await;
    send(&mut bob, room, "one").await;
    for (_, s) in &mut streams {
        assert_eq!(next_message_not(s, "").await.seq, 1);
    }

    const FORGED: &str = "the room ends here";
    let top = i64::MAX as u64;
    let subject = attack.room_subject(room, "m");
    for payload in [
        notice(room, top, "bob", FORGED),
        prost::Message::encode_to_vec(&Notice {
            entries: vec![Entry {
                seq: top,
                event: Vec::new(),
            }],
        }),
        // Within the slack, but never committed: held behind the gap, then
        // dropped once storage says it does not exist.
        notice(room, 40, "bob", FORGED),
    ] {
        attack
            .publish_sealed(subject.clone(), FAKE_NODE, &payload)
            .await;
    }
    // Past the gap-fill hold (20 ms) with margin.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 2..=3u64 {
        let sent = send(&mut bob, room, "still talking").await;
        assert_eq!(sent.seq, n);
        for (_, s) in &mut streams {
            let m = next_message_not(s, FORGED).await;
            assert_eq!(m.seq, n);
        }
    }
    for (i, node) in attack.nodes.iter().enumerate() {
        let mut c = node.client(&format!("late{i}")).await;
        let (_, joined) = join(&mut c, room, None).await;
        assert_eq!(joined.last_seq, 3, "node {i}");
        let request = chatd::proto::JoinRoomRequest {
            room: room.into(),
            resume_after_seq: Some(1_000_000),
        };
        let refused = match within(c.join_room(request)).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                within(stream.message())
                    .await
                    .expect_err("a resume beyond the last seq is refused")
            }
        };
        assert_eq!(refused.code(), Code::OutOfRange, "node {i}: {refused:?}");
    }
    for (_, s) in &mut streams {
        no_message_for(s, Duration::from_millis(500)).await;
    }
    for i in 0..attack.nodes.len() {
        attack.wait_dropped(i, "invalid", 2.0).await;
    }
}
