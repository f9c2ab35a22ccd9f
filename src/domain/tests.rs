use super::*;

#[test]
fn room_names_normalize_and_validate() {
    assert_eq!(RoomName::parse("  Lobby ").unwrap().as_str(), "lobby");
    assert_eq!(RoomName::parse("a.b_c:d-9").unwrap().as_str(), "a.b_c:d-9");
    assert!(RoomName::parse(&"a".repeat(64)).is_ok());
    for bad in ["", "   ", "-x", ".x", "a b", "é", "a/b", &"a".repeat(65)] {
        assert!(RoomName::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn content_rules() {
    assert!(Content::parse(0, "hi".into(), 10).is_ok());
    assert!(Content::parse(1, " \n\t".into(), 10).is_err());
    assert!(Content::parse(1, "x".repeat(11), 10).is_err());
    assert!(Content::parse(1, "a\0b".into(), 10).is_err());
    assert!(Content::parse(2, "https://e.x/a.png".into(), 10).is_ok());
    assert!(Content::parse(3, "HTTP://e.x".into(), 10).is_ok());
    assert!(Content::parse(2, "ftp://e.x/a.png".into(), 10).is_err());
    assert!(Content::parse(2, "https:///a.png".into(), 10).is_err());
    assert!(Content::parse(2, "https://e.x/a b".into(), 10).is_err());
    assert!(Content::parse(2, format!("https://e.x/{}", "a".repeat(2048)), 10).is_err());
    assert!(Content::parse(9, "hi".into(), 10).is_err());
}

#[test]
fn client_message_ids() {
    assert_eq!(ClientMessageId::parse(String::new()).unwrap(), None);
    assert!(ClientMessageId::parse("é".repeat(64)).unwrap().is_some());
    assert!(ClientMessageId::parse("a".repeat(65)).is_err());
    assert!(ClientMessageId::parse("a\nb".into()).is_err());
}

#[test]
fn rooms_cursors_round_trip_and_refuse_junk() {
    let cursor = RoomsCursor {
        activity_micros: 1_700_000_000_000_000,
        room: RoomName::parse("a.b:c").unwrap(),
    };
    assert_eq!(RoomsCursor::parse(&cursor.token()).unwrap(), cursor);
    for bad in ["x", "zz", "00", "7231", &"ab".repeat(300)] {
        assert!(RoomsCursor::parse(bad).is_err(), "{bad:?}");
    }
    let q = RoomsQuery::parse(0, "").unwrap();
    assert_eq!((q.limit, q.after), (50, None));
    assert_eq!(RoomsQuery::parse(1000, "").unwrap().limit, 200);
}

#[test]
fn user_ids() {
    assert_eq!(
        parse_user_ids(vec!["b".into(), "a".into(), "b".into()])
            .unwrap()
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(parse_user_ids(vec![]).is_err());
    assert!(parse_user_ids(vec![" ".into()]).is_err());
    assert!(parse_user_ids(vec!["a\u{202e}b".into()]).is_err());
    assert!(parse_user_ids(vec!["x".repeat(129)]).is_err());
    assert!(parse_user_ids(vec!["a".into(); 1001]).is_err());
}

#[test]
fn history_queries() {
    let q = HistoryQuery::parse("r", 0, None, None).unwrap();
    assert_eq!((q.limit, q.cursor), (50, HistoryCursor::Newest));
    assert_eq!(
        HistoryQuery::parse("r", 9999, None, None).unwrap().limit,
        500
    );
    assert!(HistoryQuery::parse("r", 1, Some(1), Some(1)).is_err());
    assert!(HistoryQuery::parse("r", 1, Some(0), None).is_err());
    assert!(HistoryQuery::parse("r", 1, None, Some(u64::MAX)).is_err());
    assert_eq!(
        HistoryQuery::parse("r", 1, None, Some(0)).unwrap().cursor,
        HistoryCursor::After(0)
    );
}
