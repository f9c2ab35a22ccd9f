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
