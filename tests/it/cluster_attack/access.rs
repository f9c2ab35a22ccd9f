//! Forged revocations, a passive listener on every subject, and an unsealed sync request.

use std::time::Duration;

use chatd::proto::RoomVisibility;
use futures_util::StreamExt;
use prost::Message as _;

use crate::cluster_attack::wire::{Revocation, SyncRequest};
use crate::cluster_attack::{Attack, FAKE_NODE, next_message_not};
use crate::helpers::access::{admin, create, grant};
use crate::helpers::{join, list_members, send, within};

/// Revocations in clear, and sealed ones (a compromised node) naming a
/// public room's user and a private room's user who still holds a grant,
/// end no stream: every stream still delivers the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_revocations_end_no_stream() {
    let attack = Attack::start("revoke", 3).await;
    let (public, private) = ("open", "board");
    let mut backend = admin(&attack.nodes[0]).await;
    create(&mut backend, private, RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut backend, private, &["carol"]).await.unwrap();
    let mut streams = Vec::new();
    for node in &attack.nodes {
        let mut bob = node.client("bob").await;
        let (b, _) = join(&mut bob, public, None).await;
        let mut carol = node.client("carol").await;
        let (c, _) = join(&mut carol, private, None).await;
        streams.push((bob, b, carol, c));
    }
    let subject = attack.subject("access.revoked");
    let forged = [
        Revocation {
            room: public.into(),
            user_ids: vec!["bob".into()],
        },
        Revocation {
            room: private.into(),
            user_ids: vec!["carol".into()],
        },
    ];
    for revocation in &forged {
        let payload = revocation.encode_to_vec();
        attack.publish(subject.clone(), payload.clone()).await;
        attack
            .publish_sealed(subject.clone(), FAKE_NODE, &payload)
            .await;
    }
    for i in 0..attack.nodes.len() {
        attack.wait_dropped(i, "seal", 2.0).await;
    }
    // The sealed ones are checked against storage: give the check time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sender = attack.nodes[0].client("carol").await;
    let to_public = send(&mut sender, public, "still here?").await;
    let to_private = send(&mut sender, private, "still here!").await;
    for (_, b, _, c) in &mut streams {
        assert_eq!(next_message_not(b, "").await.seq, to_public.seq);
        assert_eq!(next_message_not(c, "").await.seq, to_private.seq);
    }
}

/// A passive listener on `<cluster>.>` during a private conversation,
/// joins and ListMembers finds neither the room's name, nor a member id,
/// nor a message's text in any subject or payload; an unsealed sync
/// request with the listener's inbox gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_listener_learns_nothing_and_gets_no_answer() {
    let attack = Attack::start("listen", 3).await;
    let room = "dm:alice-secret:bob-secret";
    let mut everything = within(attack.raw.subscribe(format!("{}.>", attack.cluster)))
        .await
        .expect("subscribe");
    let mut inboxes = within(attack.raw.subscribe("_INBOX.>"))
        .await
        .expect("subscribe");
    within(attack.raw.flush()).await.expect("flush");

    let mut backend = admin(&attack.nodes[0]).await;
    create(&mut backend, room, RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut backend, room, &["alice-secret", "bob-secret"])
        .await
        .unwrap();
    let mut alice = attack.nodes[0].client("alice-secret").await;
    let (mut a, _) = join(&mut alice, room, None).await;
    let mut bob = attack.nodes[1].client("bob-secret").await;
    let (mut b, _) = join(&mut bob, room, None).await;
    let texts = ["meet at the old mill", "bring the blue folder"];
    for text in texts {
        send(&mut alice, room, text).await;
        next_message_not(&mut a, "").await;
        next_message_not(&mut b, "").await;
    }
    let mut lister = attack.nodes[2].client("alice-secret").await;
    let members = list_members(&mut lister, room).await;
    assert_eq!(members.len(), 2);

    let secrets = [room, "alice-secret", "bob-secret", texts[0], texts[1]];
    let mut seen = 0;
    for sub in [&mut everything, &mut inboxes] {
        // What arrived so far, and what comes within a short while.
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(message)) = tokio::time::timeout_at(until, sub.next()).await {
            seen += 1;
            let payload = String::from_utf8_lossy(&message.payload);
            for secret in secrets {
                assert!(!message.subject.contains(secret), "{}", message.subject);
                assert!(
                    !payload.contains(secret),
                    "{secret} in a payload on {}",
                    message.subject
                );
            }
        }
    }
    assert!(seen > 10, "the listener heard only {seen} messages");

    // An unsealed sync request, as the old protocol took it.
    let inbox = attack.raw.new_inbox();
    let mut answers = within(attack.raw.subscribe(inbox.clone()))
        .await
        .expect("subscribe");
    let request = SyncRequest {
        room: room.into(),
        reply: inbox.clone(),
    }
    .encode_to_vec();
    within(
        attack
            .raw
            .publish_with_reply(attack.subject("sync"), inbox.clone(), request.into()),
    )
    .await
    .expect("publish");
    within(attack.raw.publish_with_reply(
        format!("{}.room.{room}.s", attack.cluster),
        inbox,
        "node".into(),
    ))
    .await
    .expect("publish");
    within(attack.raw.flush()).await.expect("flush");
    for i in 0..attack.nodes.len() {
        attack.wait_dropped(i, "seal", 1.0).await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(1000), answers.next()).await;
    assert!(
        quiet.is_err(),
        "an unsealed request was answered: {quiet:?}"
    );
}
