//! ListHistory paging, and history and seqs kept across a restart.

use chatd::proto;

use crate::helpers::*;

pub async fn history_pages_both_ways(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    for i in 1..=120 {
        send(&mut c, "h", &format!("m{i}")).await;
    }
    let page = |page_size, before_seq, after_seq| {
        let mut c = c.clone();
        async move {
            within(c.list_history(proto::ListHistoryRequest {
                room: "h".into(),
                page_size,
                before_seq,
                after_seq,
            }))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let newest = page(0, None, None).await;
    assert_eq!(seqs(&newest.messages), (71..=120).collect::<Vec<_>>());
    assert!(newest.has_more);
    let older = page(0, Some(71), None).await;
    assert_eq!(seqs(&older.messages), (21..=70).collect::<Vec<_>>());
    assert!(older.has_more);
    let oldest = page(0, Some(21), None).await;
    assert_eq!(seqs(&oldest.messages), (1..=20).collect::<Vec<_>>());
    assert!(!oldest.has_more);
    let first = page(10, None, Some(0)).await;
    assert_eq!(seqs(&first.messages), (1..=10).collect::<Vec<_>>());
    assert!(first.has_more);
    let tail = page(50, None, Some(100)).await;
    assert_eq!(seqs(&tail.messages), (101..=120).collect::<Vec<_>>());
    assert!(!tail.has_more);
    let exact = page(20, None, Some(100)).await;
    assert_eq!(seqs(&exact.messages), (101..=120).collect::<Vec<_>>());
    assert!(!exact.has_more);
    let capped = page(10_000, None, Some(0)).await;
    assert_eq!(capped.messages.len(), 120);
    assert_eq!(page(5, None, Some(120)).await.messages.len(), 0);
    assert_eq!(page(5, Some(1), None).await.messages.len(), 0);
    let first_message = &first.messages[0];
    assert_eq!(first_message.content, "m1");
    assert_eq!(first_message.sender.as_ref().unwrap().user_id, "alice");

    let mut c2 = c.clone();
    let empty = newest_page(&mut c2, "never-used").await;
    assert!(empty.messages.is_empty() && !empty.has_more);
    server.shutdown().await.unwrap();
}

pub async fn restart_keeps_history_and_continues_seq(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    for i in 1..=3 {
        send(&mut c, "keep", &format!("m{i}")).await;
    }
    server.shutdown().await.unwrap();

    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    let (mut stream, joined) = join(&mut c, "keep", None).await;
    assert_eq!(joined.last_seq, 3);
    assert_eq!(send(&mut c, "keep", "m4").await.seq, 4);
    assert_eq!(next_message(&mut stream).await.seq, 4);
    let page = newest_page(&mut c, "keep").await;
    assert_eq!(seqs(&page.messages), [1, 2, 3, 4]);
    assert_eq!(page.messages[0].content, "m1");
    server.shutdown().await.unwrap();
}

/// Pages are sized by what is stored: messages stored under a 1 MiB limit
/// still come in ListHistory pages (and ListRooms pages) of at most 4 MiB
/// after the limit is lowered back to 4 KiB, and a stream resuming over
/// them gets every one.
pub async fn pages_are_sized_by_what_is_stored(backend: Backend) {
    const BIG: usize = 1_000_000;
    const COUNT: u64 = 12;
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &[
            "--max-message-bytes",
            "1048576",
            "--max-request-bytes",
            "1100000",
        ],
    ))
    .await;
    let mut c = server.client("alice").await;
    for i in 0..COUNT {
        let text = format!("{i}{}", "x".repeat(BIG));
        send(&mut c, "big", &text).await;
        send(&mut c, &format!("big{i}"), &text).await;
    }
    server.shutdown().await.unwrap();

    // The default 4 KiB limit now: 500 messages per page would be 12 MB.
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = within(c.list_history(proto::ListHistoryRequest {
            room: "big".into(),
            page_size: 500,
            before_seq: before,
            after_seq: None,
        }))
        .await
        .expect("a page within the client's 4 MiB limit")
        .into_inner();
        let size = prost::Message::encoded_len(&page);
        assert!(size <= 4 * 1024 * 1024, "a page of {size} bytes");
        assert!(!page.messages.is_empty());
        let mut got = seqs(&page.messages);
        before = got.first().copied();
        got.extend(seen);
        seen = got;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=COUNT).collect::<Vec<_>>());

    // ListRooms: 12 rooms whose last message is 1 MB, 4 MiB per page.
    let mut rooms = Vec::new();
    let mut token = String::new();
    loop {
        let page = crate::helpers::access::list_rooms(&mut c, 200, &token)
            .await
            .expect("a rooms page within the client's 4 MiB limit");
        let size = prost::Message::encoded_len(&page);
        assert!(size <= 4 * 1024 * 1024, "a rooms page of {size} bytes");
        rooms.extend(page.rooms.into_iter().map(|r| r.room));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(rooms.len() as u64, COUNT + 1, "{rooms:?}");

    // A stream resuming from 0 is caught up over them, every one.
    let (mut stream, _) = join(&mut c, "big", Some(0)).await;
    for seq in 1..=COUNT {
        let m = next_message(&mut stream).await;
        let i = (seq - 1).to_string();
        assert_eq!((m.seq, m.content.len()), (seq, BIG + i.len()));
        assert!(m.content.starts_with(&i));
    }
    server.shutdown().await.unwrap();
}
