//! Rooms larger than one `joined` lists: at most 500 members (the caller
//! first) with the room's member count, and ListMembers pages through all.

use chatd::proto;
use chatd::proto::chat_service_client::ChatServiceClient;
use chatd::proto::join_room_response::Event;
use tonic::Code;

use crate::helpers::metrics::{metrics_of, sample, scrape};
use crate::helpers::*;

/// Members of the room besides the late joiner.
const MEMBERS: usize = 620;

async fn page(client: &mut Client, size: u32, token: &str) -> proto::ListMembersResponse {
    let request = proto::ListMembersRequest {
        room: "big".into(),
        page_size: size,
        page_token: token.into(),
    };
    within(client.list_members(request))
        .await
        .expect("list members")
        .into_inner()
}

pub async fn a_large_room_lists_500_and_pages_the_rest(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let channel = server.channel().await;
    let client_for = |user: &str| {
        ChatServiceClient::with_interceptor(channel.clone(), Bearer::new(&server.token(user)))
    };
    let ids: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:04}")).collect();
    let mut streams = Vec::new();
    for chunk in ids.chunks(62) {
        let joins = chunk.iter().map(|id| {
            let mut client = client_for(id);
            async move { join(&mut client, "big", None).await.0 }
        });
        streams.extend(all_or_first_failure(joins).await);
    }

    // A late joiner: itself first, then 499 others in id order.
    let mut late = client_for("late");
    let (mut late_stream, joined) = join(&mut late, "big", None).await;
    assert_eq!(joined.members.len(), 500);
    assert_eq!(joined.members[0].user_id, "late");
    assert_eq!(user_ids(&joined.members[1..]), ids[..499].to_vec());
    assert_eq!(joined.member_count as usize, MEMBERS + 1);
    assert!(joined.members_truncated);

    // ListMembers: 100 per page by default, everyone once, in id order.
    let (mut all, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let answer = page(&mut late, 0, &token).await;
        assert_eq!(answer.member_count as usize, MEMBERS + 1);
        assert!(answer.members.len() <= 100);
        all.extend(answer.members.into_iter().map(|m| m.user_id));
        pages += 1;
        if answer.next_page_token.is_empty() {
            break;
        }
        token = answer.next_page_token;
    }
    let mut want = vec!["late".to_string()];
    want.extend(ids.iter().cloned());
    assert_eq!((all.len(), pages), (MEMBERS + 1, 7));
    assert_eq!(all, want);
    // 5000 is capped at 1000: one page with everyone.
    let answer = page(&mut late, 5000, "").await;
    assert_eq!(answer.members.len(), MEMBERS + 1);
    assert!(answer.next_page_token.is_empty());
    // A page of 10 after the first page's token starts where it ended.
    let first = page(&mut late, 10, "").await;
    let second = page(&mut late, 10, &first.next_page_token).await;
    assert_eq!(user_ids(&second.members), ids[9..19].to_vec());

    for bad in ["nope", "6d313a", "616263", &"6d".repeat(300)] {
        let request = proto::ListMembersRequest {
            room: "big".into(),
            page_size: 0,
            page_token: bad.into(),
        };
        let status = within(late.list_members(request))
            .await
            .expect_err("a bad token");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().contains("page_token"), "{status:?}");
    }

    // Members leaving move the count; the late joiner hears each leave.
    streams.truncate(MEMBERS - 20);
    let mut left = 0;
    while left < 20 {
        match next_any_event(&mut late_stream).await {
            Event::MemberLeft(_) => left += 1,
            Event::MemberJoined(_) => {}
            other => panic!("expected presence, got {other:?}"),
        }
    }
    let answer = page(&mut late, 1, "").await;
    assert_eq!(answer.member_count as usize, MEMBERS + 1 - 20);
    drop(streams);
    server.shutdown().await.unwrap();
}

/// A reader the ring leaves behind while only presence passed (members
/// joining a busy room) owes no message: it gets a fresh member list and
/// goes on from the ring, with no storage read.
pub async fn presence_past_the_ring_is_resent_without_a_storage_read(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &["--room-buffer", "16", "--metrics-addr", "127.0.0.1:0"],
    ))
    .await;
    let metrics = metrics_of(&server);
    // A 63,500-byte window that the 16th message of 4 KB (the ring's 16
    // slots) overfills: the server has taken them all for this reader and
    // can send it nothing more until it reads.
    let mut slow = server.client_with_window("slow", 63_500).await;
    let (mut slow_stream, _) = join(&mut slow, "busy", None).await;
    let channel = server.channel().await;
    let client_for = |user: &str| {
        ChatServiceClient::with_interceptor(channel.clone(), Bearer::new(&server.token(user)))
    };
    let mut first = client_for("first");
    let big = "x".repeat(4000);
    let mut owed = Vec::new();
    for i in 0..16 {
        owed.push(send(&mut first, "busy", &format!("{i:02} {big}")).await.seq);
    }
    // Then a crowd joins: presence alone pushes the messages out of the
    // ring.
    let mut streams = Vec::new();
    for i in 0..40 {
        let mut client = client_for(&format!("j{i:02}"));
        streams.push(join(&mut client, "busy", None).await.0);
    }
    let sent = send(&mut first, "busy", "after the crowd").await;

    let (mut resynced, mut got) = (None, Vec::new());
    loop {
        match next_event(&mut slow_stream).await {
            Event::Joined(joined) => resynced = Some(joined),
            Event::MemberJoined(_) => {}
            Event::Message(message) if message.seq == sent.seq => break,
            Event::Message(message) => got.push(message.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, owed);
    let resynced = resynced.expect("a fresh member list after falling behind");
    assert_eq!(resynced.members[0].user_id, "slow");
    assert_eq!(resynced.members.len(), 41);
    assert_eq!(
        (resynced.member_count, resynced.members_truncated),
        (41, false)
    );
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "chatd_catchup_reads_total", &[("reason", "lag")]).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    drop(streams);
    server.shutdown().await.unwrap();
}

/// In a room larger than one `joined` lists, a burst of presence waiting
/// for a stream is coalesced into one fresh `joined`: the stream itself and
/// the count, not 500 members nor one event per arrival.
pub async fn a_presence_burst_in_a_large_room_comes_as_one_count(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let channel = server.channel().await;
    let client_for = |user: &str| {
        ChatServiceClient::with_interceptor(channel.clone(), Bearer::new(&server.token(user)))
    };
    let ids: Vec<String> = (0..510).map(|i| format!("m{i:04}")).collect();
    let mut streams = Vec::new();
    for chunk in ids.chunks(51) {
        let joins = chunk.iter().map(|id| {
            let mut client = client_for(id);
            async move { join(&mut client, "crowd", None).await.0 }
        });
        streams.extend(all_or_first_failure(joins).await);
    }
    // A reader whose window 16 messages of 4 KB fill: it reads nothing
    // while 40 more members arrive.
    let mut slow = server.client_with_window("slow", 63_500).await;
    let (mut slow_stream, joined) = join(&mut slow, "crowd", None).await;
    assert_eq!((joined.members.len(), joined.member_count), (500, 511));
    // The members above do not read: the sender and the arrivals use
    // connections of their own, not the one the members' backlog fills.
    let mut sender = server.client("sender").await;
    let arrivals_channel = server.channel().await;
    let big = "x".repeat(4000);
    let mut owed = Vec::new();
    for i in 0..16 {
        owed.push(
            send(&mut sender, "crowd", &format!("{i:02} {big}"))
                .await
                .seq,
        );
    }
    for i in 0..40 {
        let token = server.token(&format!("n{i:02}"));
        let mut client =
            ChatServiceClient::with_interceptor(arrivals_channel.clone(), Bearer::new(&token));
        streams.push(join(&mut client, "crowd", None).await.0);
    }
    let sent = send(&mut sender, "crowd", "after the crowd").await;

    let (mut counts, mut got, mut arrivals) = (Vec::new(), Vec::new(), 0);
    loop {
        match next_event(&mut slow_stream).await {
            Event::Joined(joined) => {
                assert_eq!(user_ids(&joined.members), ["slow"]);
                assert!(joined.members_truncated);
                counts.push(joined.member_count);
            }
            Event::MemberJoined(_) => arrivals += 1,
            Event::Message(message) if message.seq == sent.seq => break,
            Event::Message(message) => got.push(message.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, owed);
    assert_eq!(counts.last().copied(), Some(551), "{counts:?}");
    assert!(arrivals <= 32, "{arrivals} member_joined came one by one");
    drop(streams);
    server.shutdown().await.unwrap();
}
