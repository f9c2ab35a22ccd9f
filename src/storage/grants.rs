//! Private rooms, grants and their revocation, on both backends: a room's
//! visibility, who holds a grant, the access revision that revocations
//! (and sanctions) move, and which open streams may no longer stay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::outbox::{NewOutboxRow, enqueue};
use super::sanctions::longer;
use super::schema::{access_revision, room_users, rooms};
use super::{Backend, Store};
use crate::domain::{Denial, RoomName, Sanction, Visibility, now_micros, scope_key};
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
                    bump_access_revision!(conn).await?;
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
                bump_access_revision!(conn).await?;
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
}

/// `ids` without repeats, in their first order.
fn unique<'a>(ids: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(move |u| seen.insert(*u))
}
