//! Private rooms, grants, the users' rooms and read markers, on both backends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, SmallInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::outbox::{NewOutboxRow, enqueue};
use super::sanctions::longer;
use super::schema::{access_revision, room_users, rooms};
use super::{Backend, Store, fitting, to_i64};
use crate::domain::{
    ContentKind, Denial, MarkersCursor, MarkersQuery, ROOMS_PAGE_BYTES, ReadMarkerRow, RoomName,
    RoomSummary, RoomsCursor, RoomsPage, RoomsQuery, Sanction, StoredMessage, UNREAD_CAP,
    Visibility, now_micros, scope_key,
};
use crate::error::{Error, Result};

/// The most (room, user) pairs [`Store::denied`] asks about in one query.
const PAIRS_CHUNK: usize = 1000;

/// Puts the access event of `$users` (none: nothing) in the outbox on
/// `$conn`, inside the caller's transaction; whether it did (an async
/// block).
macro_rules! announce {
    ($store:expr, $conn:ident, $room:expr, $users:expr, $event:expr) => {
        async {
            let users: &[String] = $users;
            if users.is_empty() || !$store.outbox_on() {
                return Ok::<_, diesel::result::Error>(false);
            }
            let bytes = $event(users);
            let at = now_micros();
            enqueue!(
                $store,
                $conn,
                [NewOutboxRow::carried($room.as_str(), &bytes, at)]
            )
            .await?;
            Ok(true)
        }
    };
}

/// What CreateRoom found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The room did not exist; it does now, with the asked visibility.
    New,
    /// The room existed already, with this visibility.
    Existing(Visibility),
}

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
    /// The room's visibility; `None` when it has no row (never created and
    /// no message: public, and may still be created private).
    pub async fn visibility(&self, room: &RoomName) -> Result<Option<Visibility>> {
        let code: Option<i16> = with_conn!(self, |conn| {
            rooms::table
                .find(room.as_str())
                .select(rooms::visibility)
                .first(conn)
                .await
                .optional()?
        });
        code.map(|c| {
            Visibility::from_code(c)
                .ok_or_else(|| Error::Internal(format!("room {room} has visibility {c}")))
        })
        .transpose()
    }

    /// Whether `user` holds a grant for `room`.
    pub async fn is_granted(&self, room: &RoomName, user: &str) -> Result<bool> {
        let granted: Option<bool> = with_conn!(self, |conn| {
            room_users::table
                .find((user, room.as_str()))
                .select(room_users::granted)
                .first(conn)
                .await
                .optional()?
        });
        Ok(granted == Some(true))
    }

    /// Creates `room` with `visibility` unless it exists; with webhooks on,
    /// `event` (an encoded `chat.v1.Event`, room.created) goes to the
    /// outbox in the same transaction when it did not.
    /// A write outside the batch (a send's first to a room takes this
    /// path too, see `Access::settle_send`), so its failure counts for
    /// health as a failed batch does.
    pub async fn create_room(
        &self,
        room: &RoomName,
        visibility: Visibility,
        event: &[u8],
    ) -> Result<Created> {
        let inserted = self.insert_room(room, visibility, event).await;
        self.note_write_failure(&inserted);
        if inserted? == 1 {
            self.outbox_written();
            return Ok(Created::New);
        }
        match self.visibility(room).await? {
            Some(existing) => Ok(Created::Existing(existing)),
            None => Err(Error::Internal(format!("room {room} vanished"))),
        }
    }

    /// Inserts the row of `room` unless it has one; the rows inserted. A
    /// private room inserted bumps the access revision in the same
    /// transaction: streams other nodes opened while the room was still
    /// public (it did not exist) must end, and a node that missed the
    /// notice finds them by the revision.
    async fn insert_room(
        &self,
        room: &RoomName,
        visibility: Visibility,
        event: &[u8],
    ) -> Result<usize> {
        let private = visibility == Visibility::Private;
        let now = now_micros();
        Ok(with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let inserted = diesel::insert_into(rooms::table)
                    .values((
                        rooms::name.eq(room.as_str()),
                        rooms::last_seq.eq(0i64),
                        rooms::visibility.eq(visibility.code()),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1 && private {
                    diesel::update(access_revision::table)
                        .set(access_revision::revision.eq(access_revision::revision + 1))
                        .execute(conn)
                        .await?;
                }
                if inserted == 1 {
                    enqueue!(
                        self,
                        conn,
                        [NewOutboxRow::carried(room.as_str(), event, now)]
                    )
                    .await?;
                }
                Ok::<_, diesel::result::Error>(inserted)
            })
            .await?
        }))
    }

    /// Grants `users` access to `room` (a room of theirs from `now_micros`
    /// when it was not yet); existing grants stay as they are. With
    /// webhooks on, `event` encodes the access.granted event of the users
    /// who had no grant, which goes to the outbox in the same transaction.
    pub async fn grant(
        &self,
        room: &RoomName,
        users: &[Arc<str>],
        now_micros: i64,
        event: impl Fn(&[String]) -> Vec<u8> + Sync,
    ) -> Result<()> {
        let ids: Vec<&str> = users.iter().map(|u| &**u).collect();
        let ids = &ids;
        let event = &event;
        // One statement per user (SQLite has no batch upsert in diesel), in
        // one transaction, in user order as every writer of these rows.
        let announced = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                // A write first, so the transaction holds the write lock
                // before it reads: on SQLite a transaction that reads, then
                // writes after another connection wrote, fails at once (the
                // webhook delivery writes often). `revoke` takes the same
                // row first too, so the two never deadlock on PostgreSQL.
                diesel::update(access_revision::table)
                    .set(access_revision::revision.eq(access_revision::revision))
                    .execute(conn)
                    .await?;
                let held: HashSet<String> = room_users::table
                    .filter(room_users::room.eq(room.as_str()))
                    .filter(room_users::user_id.eq_any(ids))
                    .filter(room_users::granted.eq(true))
                    .select(room_users::user_id)
                    .load::<String>(conn)
                    .await?
                    .into_iter()
                    .collect();
                for user in users {
                    diesel::insert_into(room_users::table)
                        .values((
                            room_users::user_id.eq(&**user),
                            room_users::room.eq(room.as_str()),
                            room_users::granted.eq(true),
                            room_users::since_micros.eq(now_micros),
                        ))
                        .on_conflict((room_users::user_id, room_users::room))
                        .do_update()
                        .set(room_users::granted.eq(true))
                        .execute(conn)
                        .await?;
                }
                let new: Vec<String> = unique(ids)
                    .filter(|u| !held.contains(*u))
                    .map(str::to_owned)
                    .collect();
                announce!(self, conn, room, &new, event).await
            })
            .await?
        });
        if announced {
            self.outbox_written();
        }
        Ok(())
    }

    /// Takes `users`' grants to `room` away and bumps the access revision,
    /// in one transaction; with webhooks on, `event` encodes the
    /// access.revoked event of the users who held a grant, which goes to
    /// the outbox in it too.
    pub async fn revoke(
        &self,
        room: &RoomName,
        users: &[Arc<str>],
        event: impl Fn(&[String]) -> Vec<u8> + Sync,
    ) -> Result<()> {
        let ids: Vec<&str> = users.iter().map(|u| &**u).collect();
        let ids = &ids;
        let event = &event;
        let announced = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                // Writes before any read, in `grant`'s order: the access
                // revision, then the rows (the users who held a grant
                // come back).
                diesel::update(access_revision::table)
                    .set(access_revision::revision.eq(access_revision::revision + 1))
                    .execute(conn)
                    .await?;
                let held: HashSet<String> = diesel::delete(
                    room_users::table
                        .filter(room_users::room.eq(room.as_str()))
                        .filter(room_users::user_id.eq_any(ids)),
                )
                .returning((room_users::user_id, room_users::granted))
                .load::<(String, bool)>(conn)
                .await?
                .into_iter()
                .filter_map(|(user, granted)| granted.then_some(user))
                .collect();
                let lost: Vec<String> = unique(ids)
                    .filter(|u| held.contains(*u))
                    .map(str::to_owned)
                    .collect();
                announce!(self, conn, room, &lost, event).await
            })
            .await?
        });
        if announced {
            self.outbox_written();
        }
        Ok(())
    }

    /// The access revision: it moves with every revocation.
    pub async fn access_revision(&self) -> Result<i64> {
        Ok(with_conn!(self, |conn| {
            access_revision::table
                .select(access_revision::revision)
                .first::<i64>(conn)
                .await?
        }))
    }

    /// Makes `room` (public) one of `user`'s rooms from `now_micros`, unless
    /// it already is.
    ///
    /// A join waits for this write, so on PostgreSQL it commits without
    /// waiting for its WAL flush (`synchronous_commit = off` for this one
    /// transaction): the row is visible at once, and only a crash of the
    /// database within a fraction of a second can lose it, in which case
    /// the user's next join or send records it again. Waiting for the
    /// flush made each first join as slow as a disk flush (2–20 ms here).
    pub async fn make_theirs(&self, user: &str, room: &RoomName, now_micros: i64) -> Result<()> {
        let relaxed = matches!(self.backend, Backend::Postgres(_));
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                if relaxed {
                    diesel::sql_query("SET LOCAL synchronous_commit = off")
                        .execute(conn)
                        .await?;
                }
                diesel::insert_into(room_users::table)
                    .values((
                        room_users::user_id.eq(user),
                        room_users::room.eq(room.as_str()),
                        room_users::since_micros.eq(now_micros),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
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

    /// Of `pairs` (room, user), those that may no longer use their room at
    /// `now_micros`, and why: a ban in force (in the room or in every room;
    /// it counts first), or a private room without a grant.
    pub async fn denied(
        &self,
        pairs: &[(RoomName, Arc<str>)],
        now_micros: i64,
    ) -> Result<Vec<(RoomName, Arc<str>, Denial)>> {
        let mut out = Vec::new();
        for chunk in pairs.chunks(PAIRS_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|(r, _)| r.as_str()).collect();
            let users: Vec<&str> = chunk.iter().map(|(_, u)| &**u).collect();
            let mut bans: HashMap<(String, Arc<str>), Sanction> = HashMap::new();
            for ban in self.bans_in_force(&names, &users, now_micros).await? {
                let key = (scope_key(&ban.scope).to_owned(), ban.user_id.clone());
                let kept = bans.remove(&key);
                bans.insert(key, longer(kept, ban));
            }
            let no_grant = self.without_grant(&names, &users).await?;
            for (room, user) in chunk {
                let here = bans.get(&(room.as_str().to_owned(), user.clone()));
                let everywhere = bans.get(&(String::new(), user.clone()));
                let ban = match (here, everywhere) {
                    (Some(a), Some(b)) => Some(longer(Some(a.clone()), b.clone())),
                    (a, b) => a.or(b).cloned(),
                };
                let denial = match ban {
                    Some(ban) => Denial::Banned(ban),
                    None if no_grant.contains(&(room.as_str().to_owned(), user.to_string())) => {
                        Denial::NoGrant
                    }
                    None => continue,
                };
                out.push((room.clone(), user.clone(), denial));
            }
        }
        Ok(out)
    }

    /// Of the pairs of `rooms` and `users` (one chunk of [`Self::denied`]),
    /// those in a private room without a grant, as (room, user).
    async fn without_grant(
        &self,
        rooms: &[&str],
        users: &[&str],
    ) -> Result<HashSet<(String, String)>> {
        let private: HashSet<String> = with_conn!(self, |conn| {
            rooms::table
                .filter(rooms::name.eq_any(rooms))
                .filter(rooms::visibility.eq(Visibility::Private.code()))
                .select(rooms::name)
                .load::<String>(conn)
                .await?
        })
        .into_iter()
        .collect();
        if private.is_empty() {
            return Ok(HashSet::new());
        }
        let private_names: Vec<&str> = private.iter().map(String::as_str).collect();
        let granted: HashSet<(String, String)> = with_conn!(self, |conn| {
            room_users::table
                .filter(room_users::room.eq_any(&private_names))
                .filter(room_users::user_id.eq_any(users))
                .filter(room_users::granted.eq(true))
                .select((room_users::room, room_users::user_id))
                .load::<(String, String)>(conn)
                .await?
        })
        .into_iter()
        .collect();
        Ok(rooms
            .iter()
            .zip(users)
            .filter(|(r, u)| {
                private.contains(**r) && !granted.contains(&(r.to_string(), u.to_string()))
            })
            .map(|(r, u)| (r.to_string(), u.to_string()))
            .collect())
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

/// `ids` without repeats, in their first order.
fn unique<'a>(ids: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(move |u| seen.insert(*u))
}
