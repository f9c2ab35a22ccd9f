//! The users' rooms (ListRooms) and their read markers, on both backends.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, SmallInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::schema::room_users;
use super::{Backend, Store, fitting, to_i64};
use crate::domain::{
    ContentKind, MarkersCursor, MarkersQuery, ROOMS_PAGE_BYTES, ReadMarkerRow, RoomName,
    RoomSummary, RoomsCursor, RoomsPage, RoomsQuery, StoredMessage, UNREAD_CAP, Visibility,
};
use crate::error::{Error, Result};

/// One page of a user's rooms, in [`LIST_ROOMS_SQL`] (PostgreSQL's
/// placeholders; SQLite's are the same with `?` for `$`). The inner query
/// picks the page by keyset (activity descending, then room descending);
/// the outer one counts each room's unread messages, at most
/// [`UNREAD_CAP`] each. `$1` user, `$2` cursor activity, `$3` cursor room,
/// `$4` limit.
const LIST_ROOMS_SQL: &str = "\
SELECT p.*, (
    SELECT count(*) FROM (
        SELECT 1 FROM messages u
        WHERE u.room = p.room AND u.seq > p.read_seq AND u.sender_id <> $1 AND NOT u.deleted
        LIMIT 1000
    ) AS t
) AS unread
FROM (
    SELECT ru.room AS room,
        CAST(COALESCE(r.visibility, 1) AS SMALLINT) AS visibility,
        COALESCE(r.last_seq, 0) AS last_seq,
        ru.read_seq AS read_seq,
        COALESCE(m.sent_at_micros, ru.since_micros) AS activity,
        m.seq AS m_seq, m.sender_id AS m_sender_id, m.sender_name AS m_sender_name,
        m.content_type AS m_content_type, m.content AS m_content,
        m.client_message_id AS m_client_message_id,
        m.reply_to_seq AS m_reply_to_seq, m.edited_at_micros AS m_edited_at_micros,
        m.deleted AS m_deleted, m.updated_seq AS m_updated_seq,
        CAST(octet_length(m.content) AS BIGINT) AS m_bytes
    FROM room_users ru
    LEFT JOIN rooms r ON r.name = ru.room
    LEFT JOIN messages m ON m.room = ru.room
        AND m.seq = (SELECT max(x.seq) FROM messages x WHERE x.room = ru.room)
    WHERE ru.user_id = $1
      AND (ru.granted OR COALESCE(r.visibility, 1) = 1)
      AND (COALESCE(m.sent_at_micros, ru.since_micros), ru.room) < ($2, $3)
    ORDER BY activity DESC, room DESC
    LIMIT $4
) AS p
ORDER BY p.activity DESC, p.room DESC";

#[derive(QueryableByName)]
struct RoomRow {
    #[diesel(sql_type = Text)]
    room: String,
    #[diesel(sql_type = SmallInt)]
    visibility: i16,
    #[diesel(sql_type = BigInt)]
    last_seq: i64,
    #[diesel(sql_type = BigInt)]
    read_seq: i64,
    #[diesel(sql_type = BigInt)]
    activity: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    m_seq: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    m_sender_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    m_sender_name: Option<String>,
    #[diesel(sql_type = Nullable<SmallInt>)]
    m_content_type: Option<i16>,
    #[diesel(sql_type = Nullable<Text>)]
    m_content: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    m_client_message_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    m_reply_to_seq: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    m_edited_at_micros: Option<i64>,
    #[diesel(sql_type = Nullable<Bool>)]
    m_deleted: Option<bool>,
    #[diesel(sql_type = Nullable<BigInt>)]
    m_updated_seq: Option<i64>,
    /// The last message's content length in bytes: pages are cut to
    /// [`ROOMS_PAGE_BYTES`] by what is stored.
    #[diesel(sql_type = Nullable<BigInt>)]
    m_bytes: Option<i64>,
    #[diesel(sql_type = BigInt)]
    unread: i64,
}

impl RoomRow {
    fn into_summary(self) -> Result<RoomSummary> {
        let bad = |what: &str| Error::Internal(format!("room {} has {what}", self.room));
        let visibility = Visibility::from_code(self.visibility).ok_or_else(|| bad("visibility"))?;
        let room = RoomName::from_stored(self.room.clone());
        let last_message = match (
            self.m_seq,
            self.m_sender_id,
            self.m_sender_name,
            self.m_content_type,
            self.m_content,
        ) {
            (Some(seq), Some(sender_id), Some(sender_name), Some(kind), Some(content)) => {
                let seq = u64::try_from(seq).map_err(|_| bad("a negative seq"))?;
                let updated = self.m_updated_seq.unwrap_or(0);
                Some(StoredMessage {
                    room: room.clone(),
                    seq,
                    sender_id,
                    sender_name,
                    kind: ContentKind::from_code(kind).ok_or_else(|| bad("a content type"))?,
                    content,
                    client_message_id: self.m_client_message_id,
                    sent_at_micros: self.activity,
                    reply_to_seq: u64::try_from(self.m_reply_to_seq.unwrap_or(0))
                        .map_err(|_| bad("a negative reply_to_seq"))?,
                    edited_at_micros: self.m_edited_at_micros,
                    deleted: self.m_deleted.unwrap_or(false),
                    updated_seq: if updated > 0 {
                        u64::try_from(updated).map_err(|_| bad("a negative updated_seq"))?
                    } else {
                        seq
                    },
                })
            }
            _ => None,
        };
        Ok(RoomSummary {
            room,
            visibility,
            last_seq: u64::try_from(self.last_seq).map_err(|_| bad("a negative last_seq"))?,
            last_message,
            read_seq: u64::try_from(self.read_seq).map_err(|_| bad("a negative read_seq"))?,
            unread_count: u64::try_from(self.unread).unwrap_or(0).min(UNREAD_CAP),
            activity_micros: self.activity,
        })
    }
}

impl Store {
    /// Makes public rooms the users' (ListRooms) from `now_micros`: one row
    /// per (user, room) pair not yet written, all in one statement (the
    /// joins of many users share it).
    ///
    /// A join waits for this write, so on PostgreSQL it commits without
    /// waiting for its WAL flush (`synchronous_commit = off` for this one
    /// transaction): the row is visible at once, and only a crash of the
    /// database within a fraction of a second can lose it, in which case
    /// the user's next join or send records it again. Waiting for the
    /// flush made each first join as slow as a disk flush (2–20 ms here).
    pub async fn make_theirs(&self, pairs: &[(&str, &str)], now_micros: i64) -> Result<()> {
        use diesel::sql_types::{BigInt, Text};
        if pairs.is_empty() {
            return Ok(());
        }
        let relaxed = matches!(self.backend, Backend::Postgres(_));
        // One row per pair, the time bound once: ($1, $2, $3), ($4, $5, $3),
        // ... (numbered in order of first use, as SQLite numbers them too).
        let mut sql = String::from("INSERT INTO room_users (user_id, room, since_micros) VALUES ");
        for i in 0..pairs.len() {
            let (user, room) = if i == 0 {
                (1, 2)
            } else {
                (2 * i + 2, 2 * i + 3)
            };
            let sep = if i == 0 { "" } else { ", " };
            sql.push_str(&format!("{sep}(${user}, ${room}, $3)"));
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        let sql = &sql;
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                if relaxed {
                    diesel::sql_query("SET LOCAL synchronous_commit = off")
                        .execute(conn)
                        .await?;
                }
                let mut query = diesel::sql_query(sql.as_str()).into_boxed();
                for (i, (user, room)) in pairs.iter().enumerate() {
                    query = query.bind::<Text, _>(*user).bind::<Text, _>(*room);
                    if i == 0 {
                        query = query.bind::<BigInt, _>(now_micros);
                    }
                }
                query.execute(conn).await?;
                Ok::<_, diesel::result::Error>(())
            })
            .await?
        });
        Ok(())
    }

    /// Moves `user`'s read marker in `room` forward to `seq` (never back)
    /// and returns it. A room that does not exist is NOT_FOUND (nothing is
    /// written: inventing room names creates no rows); `seq` beyond the
    /// room's last is OUT_OF_RANGE.
    pub async fn mark_read(
        &self,
        user: &str,
        display_name: &str,
        room: &RoomName,
        seq: u64,
        now_micros: i64,
    ) -> Result<u64> {
        let Some(last) = self.existing_last_seq(room).await? else {
            return Err(Error::NotFound {
                field: "room",
                reason: format!("room {room} does not exist"),
            });
        };
        if seq > last {
            return Err(Error::OutOfRange {
                field: "seq",
                reason: format!("{seq} is beyond the room's last seq {last}"),
            });
        }
        let seq = to_i64(seq)?;
        let marker: i64 = with_conn!(self, |conn| {
            // The larger of the two markers, in SQL both backends speak.
            let forward = diesel::dsl::sql::<BigInt>(
                "CASE WHEN excluded.read_seq > room_users.read_seq \
                 THEN excluded.read_seq ELSE room_users.read_seq END",
            );
            diesel::insert_into(room_users::table)
                .values((
                    room_users::user_id.eq(user),
                    room_users::room.eq(room.as_str()),
                    room_users::read_seq.eq(seq),
                    room_users::since_micros.eq(now_micros),
                    room_users::display_name.eq(display_name),
                ))
                .on_conflict((room_users::user_id, room_users::room))
                .do_update()
                .set((
                    room_users::read_seq.eq(forward),
                    room_users::display_name.eq(display_name),
                ))
                .returning(room_users::read_seq)
                .get_result(conn)
                .await?
        });
        u64::try_from(marker).map_err(|_| Error::Internal(format!("read marker {marker}")))
    }

    /// A page of `query.room`'s read markers, highest seq first (then by
    /// user id), users who read nothing left out; and the cursor after the
    /// page when more follow.
    pub async fn read_markers(
        &self,
        query: &MarkersQuery,
    ) -> Result<(Vec<ReadMarkerRow>, Option<MarkersCursor>)> {
        let room = query.room.as_str();
        let take = i64::from(query.limit) + 1;
        let after = match &query.after {
            Some(c) => Some((to_i64(c.seq)?, c.user_id.as_str())),
            None => None,
        };
        let rows: Vec<(String, String, i64)> = with_conn!(self, |conn| {
            let mut q = room_users::table
                .filter(room_users::room.eq(room))
                .filter(room_users::read_seq.gt(0))
                .select((
                    room_users::user_id,
                    room_users::display_name,
                    room_users::read_seq,
                ))
                .order((room_users::read_seq.desc(), room_users::user_id.asc()))
                .limit(take)
                .into_boxed();
            if let Some((seq, user)) = after {
                q = q.filter(
                    room_users::read_seq.lt(seq).or(room_users::read_seq
                        .eq(seq)
                        .and(room_users::user_id.gt(user))),
                );
            }
            q.load(conn).await?
        });
        let mut markers = rows
            .into_iter()
            .map(|(user_id, display_name, seq)| {
                let seq = u64::try_from(seq)
                    .map_err(|_| Error::Internal(format!("read marker {seq} of {user_id}")))?;
                // A marker moved before display names were kept shows the id.
                let display_name = if display_name.is_empty() {
                    user_id.clone()
                } else {
                    display_name
                };
                Ok(ReadMarkerRow {
                    user_id,
                    display_name,
                    seq,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let next = (markers.len() > query.limit as usize).then(|| {
            markers.truncate(query.limit as usize);
            markers.last().map(|m| MarkersCursor {
                seq: m.seq,
                user_id: m.user_id.clone(),
            })
        });
        Ok((markers, next.flatten()))
    }

    /// One page of `user`'s rooms, newest activity first.
    pub async fn list_rooms(&self, user: &str, query: &RoomsQuery) -> Result<RoomsPage> {
        let (activity, after_room) = match &query.after {
            Some(c) => (c.activity_micros, c.room.as_str()),
            // Every real activity is below it.
            None => (i64::MAX, ""),
        };
        let limit = i64::from(query.limit) + 1;
        let sql = match self.backend {
            Backend::Postgres(_) => std::borrow::Cow::Borrowed(LIST_ROOMS_SQL),
            Backend::Sqlite(_) => std::borrow::Cow::Owned(LIST_ROOMS_SQL.replace('$', "?")),
        };
        let sql = &*sql;
        let rows: Vec<RoomRow> = with_conn!(self, |conn| {
            diesel::sql_query(sql)
                .bind::<Text, _>(user)
                .bind::<BigInt, _>(activity)
                .bind::<Text, _>(after_room)
                .bind::<BigInt, _>(limit)
                .load(conn)
                .await?
        });
        // At most ROOMS_PAGE_BYTES of last messages (at least one room):
        // messages stored before the message limit was lowered can be
        // larger than the page size assumed.
        let costs = rows.iter().map(|r| r.m_bytes.unwrap_or(0));
        let fit = fitting(costs, query.limit as usize, ROOMS_PAGE_BYTES);
        let more = rows.len() > fit;
        let rooms = rows
            .into_iter()
            .take(fit)
            .map(RoomRow::into_summary)
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            rooms.last().map(|last| RoomsCursor {
                activity_micros: last.activity_micros,
                room: last.room.clone(),
            })
        } else {
            None
        };
        Ok(RoomsPage { rooms, next })
    }
}
