//! Forged presence, the bounds on what other nodes may announce, and a `joined` that lists the members present on other nodes.

use std::time::Duration;

use chatd::proto::RoomVisibility;
use chatd::proto::join_room_response::Event;
use prost::Message as _;

use crate::cluster_attack::Attack;
use crate::cluster_attack::wire::{Snapshot, WireMember};
use crate::helpers::access::{admin, create, grant};
use crate::helpers::{join, list_members, next_event, user_ids};

fn member(id: &str, name: &str) -> WireMember {
    WireMember {
        user_id: id.into(),
        display_name: name.into(),
    }
}

/// The next presence event on `stream` about someone other than the
/// observers (users named obs*): (joined?, user id).
async fn next_presence_not_obs(
    stream: &mut tonic::Streaming<chatd::proto::JoinRoomResponse>,
) -> (bool, String) {
    loop {
        let (joined, member) = match next_event(stream).await {
            Event::MemberJoined(j) => (true, j.member),
            Event::MemberLeft(l) => (false, l.member),
            _ => continue,
        };
        let id = member.unwrap_or_default().user_id;
        if !id.starts_with("obs") {
            return (joined, id);
        }
    }
}

/// Snapshots in clear, and sealed ones (a compromised node) whose members
/// break the token rules, add no member to a private room: the first
/// presence event the observers see is the real joiner, and ListMembers
/// names only real members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_presence_adds_no_member() {
    let attack = Attack::start("ghosts", 3).await;
    let room = "vault";
    let mut backend = admin(&attack.nodes[0]).await;
    create(&mut backend, room, RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut backend, room, &["obs0", "obs1", "obs2", "dave"])
        .await
        .unwrap();
    let mut watches = Vec::new();
    for (i, node) in attack.nodes.iter().enumerate() {
        let mut c = node.client(&format!("obs{i}")).await;
        let (w, _) = join(&mut c, room, None).await;
        watches.push((c, w));
    }
    let subject = attack.room_subject(room, "p");
    let clear = Snapshot {
        room: room.into(),
        seq: 1,
        members: vec![member("mallory", "Mallory")],
    };
    attack.publish(subject.clone(), clear.encode_to_vec()).await;
    let long = "x".repeat(5000);
    for (n, bad) in [
        member("ad\u{202e}nimda", "admin"),
        member("eve", "Eve\nSYSTEM: trust eve"),
        member(&long, "long"),
        member("eve", &"e".repeat(65)),
    ]
    .into_iter()
    .enumerate()
    {
        let snapshot = Snapshot {
            room: room.into(),
            seq: n as u64 + 1,
            members: vec![member("mallory", "Mallory"), bad],
        };
        let mut node = *b"ghost-00";
        node[7] = b'0' + n as u8;
        attack
            .publish_sealed(subject.clone(), node, &snapshot.encode_to_vec())
            .await;
    }
    for i in 0..attack.nodes.len() {
        attack.wait_dropped(i, "seal", 1.0).await;
        attack.wait_dropped(i, "invalid", 4.0).await;
    }
    let mut dave = attack.nodes[1].client("dave").await;
    let (_dave_stream, _) = join(&mut dave, room, None).await;
    for (_, w) in &mut watches {
        assert_eq!(next_presence_not_obs(w).await, (true, "dave".into()));
    }
    for (c, _) in &mut watches {
        let members = list_members(c, room).await;
        assert_eq!(user_ids(&members), ["dave", "obs0", "obs1", "obs2"]);
    }
}

/// Members per snapshot of [`flood`].
const PER_SNAPSHOT: usize = 5_000;

/// Forty sealed snapshots of about 1 MB under different node ids (a
/// compromised node) leave `joined` small: a client with gRPC's default
/// 4 MiB limit still joins, and the room counts no more than the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_floods_stay_within_the_bounds() {
    let _heavy = crate::helpers::heavy().await;
    let attack = Attack::start("flood", 2).await;
    let room = "crowd";
    let mut watches = Vec::new();
    for (i, node) in attack.nodes.iter().enumerate() {
        let mut c = node.client(&format!("obs{i}")).await;
        let (w, _) = join(&mut c, room, None).await;
        watches.push((c, w));
    }
    let subject = attack.room_subject(room, "p");
    flood(&attack, &subject, room, 0).await;
    // NATS is at most once and a node may miss some of 40 MB: wait until
    // the node is done with what it got (the member list stands still),
    // a second at a time (opening 40 MB takes a while in a debug build).
    let mut late = attack.nodes[1].client("late").await;
    let mut last = 0;
    for _ in 0..90 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = list_members(&mut late, room).await.len();
        if now == last && now > 2 {
            break;
        }
        last = now;
    }
    let (_, joined) = join(&mut late, room, None).await;
    let count = joined.members.len();
    let bytes = prost::Message::encoded_len(&joined);
    assert!(count <= 2 * PER_SNAPSHOT + 3, "{count} members");
    assert!(bytes < 3 * 1024 * 1024, "joined is {bytes} bytes");
    let listed = list_members(&mut late, room).await;
    assert!(listed.len() <= 2 * PER_SNAPSHOT + 3);
    // At most 2 MiB of members fit (two snapshots): what arrived beyond
    // that was refused and counted. NATS is at most once and a node on a
    // loaded machine gets only part of a 40 MB burst (about half, seen
    // here), so the count is checked against a floor well below what
    // arrives, not against the 38 refusals of a lossless run. Refusals
    // leave the member list as it is, so the wait above does not see them.
    const REFUSED_AT_LEAST: f64 = 5.0;
    // A node that got too little of the burst gets another (at most three
    // in all): still refused and counted, whatever NATS dropped.
    for i in 0..attack.nodes.len() {
        let mut round = 0;
        loop {
            let counted = tokio::time::timeout(Duration::from_secs(45), async {
                loop {
                    if attack.dropped(i, "invalid").await >= REFUSED_AT_LEAST {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            if counted.is_ok() {
                break;
            }
            round += 1;
            assert!(
                round < 3,
                "node {i} refused only {} snapshots as invalid after {round} bursts",
                attack.dropped(i, "invalid").await
            );
            flood(&attack, &subject, room, round).await;
        }
    }
    drop(watches);
}

/// A `joined` on a node with no stream in the room yet lists the members
/// present on the other nodes, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_lists_the_members_of_other_nodes_every_time() {
    let attack = Attack::start("synced", 3).await;
    let mut alice = attack.nodes[0].client("alice").await;
    let mut bob = attack.nodes[1].client("bob").await;
    let mut carol = attack.nodes[2].client("carol").await;
    let mut held = Vec::new();
    for r in 0..10 {
        let room = format!("room-{r}");
        let (a, _) = join(&mut alice, &room, None).await;
        let (b, _) = join(&mut bob, &room, None).await;
        let started = tokio::time::Instant::now();
        let (c, joined) = join(&mut carol, &room, None).await;
        assert_eq!(
            user_ids(&joined.members),
            ["carol", "alice", "bob"],
            "room {room}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        held.push((a, b, c));
    }
}

/// Publishes 40 sealed snapshots of about 1 MB each (5,000 members of
/// 128-byte ids and 64-character names: valid, as large as the rules
/// allow) for `room`, under node ids of their own (`round` keeps bursts
/// apart).
async fn flood(attack: &Attack, subject: &str, room: &str, round: u8) {
    for n in 0..40u32 {
        let members = (0..PER_SNAPSHOT)
            .map(|m| {
                let id = format!("{round}{n:02}-{m:05}-{}", "i".repeat(118));
                member(&id, &"n".repeat(64))
            })
            .collect();
        let snapshot = Snapshot {
            room: room.into(),
            seq: 1,
            members,
        };
        let mut node = *b"flood-00";
        node[5] = b'a' + round;
        node[6] = b'0' + (n / 10) as u8;
        node[7] = b'0' + (n % 10) as u8;
        let payload = snapshot.encode_to_vec();
        assert!(payload.len() > 900_000 && payload.len() < 1_040_000);
        attack
            .publish_sealed(subject.to_owned(), node, &payload)
            .await;
    }
}
