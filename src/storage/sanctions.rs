//! Bans and mutes, on both backends: imposing, lifting, the ones in force
//! for a (room, user), and ListSanctions' pages.
//!
//! Imposing and lifting each run in one transaction that also bumps the
//! access revision: a cluster node that missed the notice re-checks its
//! streams and drops its cached sanctions when the revision moved.

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::outbox::{NewOutboxRow, enqueue};
use super::schema::sanctions;
use super::{Backend, Store};
use crate::domain::{
    NewSanction, RoomName, Sanction, SanctionKind, SanctionsCursor, SanctionsQuery, Scope,
    now_micros, scope_key,
};
use crate::error::{Error, Result};

/// A row of `sanctions`: room ("" for every room), user, kind, until,
/// reason, created.
pub(super) type SanctionRow = (String, String, i16, Option<i64>, String, i64);

/// The columns of a [`SanctionRow`], in order.
macro_rules! sanction_columns {
    () => {
        (
            sanctions::room,
            sanctions::user_id,
            sanctions::kind,
            sanctions::until_micros,
            sanctions::reason,
            sanctions::created_micros,
        )
    };
}

/// A stored row as a [`Sanction`].
pub(super) fn from_row(row: SanctionRow) -> Result<Sanction> {
    let (room, user_id, kind, until_micros, reason, created_micros) = row;
    let kind = SanctionKind::from_code(kind)
        .ok_or_else(|| Error::Internal(format!("sanction of {user_id} has kind {kind}")))?;
    let scope = if room.is_empty() {
        None
    } else {
        Some(RoomName::from_stored(room))
    };
    Ok(Sanction {
        scope,
        user_id: Arc::from(user_id),
        kind,
        until_micros,
        reason,
        created_micros,
    })
}

/// Of two sanctions of the same kind, the one that lasts longer; `a` on a
/// tie.
pub(super) fn longer(a: Option<Sanction>, b: Sanction) -> Sanction {
    match a {
        Some(a) if !b.outlasts(&a) => a,
        _ => b,
    }
}

/// Cuts `page` (read with one row more than `limit`) to `limit` and
/// returns the cursor after it when there was more.
fn cut(page: &mut Vec<Sanction>, limit: usize) -> Option<SanctionsCursor> {
    if page.len() <= limit {
        return None;
    }
    page.truncate(limit);
    page.last().map(|s| SanctionsCursor {
        created_micros: s.created_micros,
        room: scope_key(&s.scope).to_owned(),
        user_id: s.user_id.to_string(),
        kind: s.kind,
    })
}

/// Sanctions in force at `now_micros`: until lifted, or ending later.
fn in_force(now_micros: i64) -> InForce {
    sanctions::until_micros
        .is_null()
        .or(sanctions::until_micros.gt(now_micros))
}

/// The type of [`in_force`]'s filter.
type InForce = diesel::dsl::Or<
    diesel::dsl::IsNull<sanctions::until_micros>,
    diesel::dsl::Gt<sanctions::until_micros, i64>,
>;

impl Store {
    /// Imposes `new` from `now_micros` (replacing the user's sanction of
    /// the same kind there, if any) and bumps the access revision, in one
    /// transaction; returns the sanction as stored.
    ///
    /// With webhooks on, `event` encodes its webhook event, which goes to
    /// the outbox in the same transaction.
    pub async fn impose_sanction(
        &self,
        new: &NewSanction,
        now_micros: i64,
        event: impl Fn(&Sanction) -> Vec<u8>,
    ) -> Result<Sanction> {
        let sanction = Sanction {
            scope: new.scope.clone(),
            user_id: new.user_id.clone(),
            kind: new.kind,
            until_micros: new.duration_micros.map(|d| now_micros.saturating_add(d)),
            reason: new.reason.clone(),
            created_micros: now_micros,
        };
        let s = &sanction;
        let bytes = if self.outbox_on() {
            event(s)
        } else {
            Vec::new()
        };
        let waiting = [NewOutboxRow::carried(
            scope_key(&s.scope),
            &bytes,
            now_micros,
        )];
        let waiting = &waiting;
        with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                diesel::insert_into(sanctions::table)
                    .values((
                        sanctions::room.eq(scope_key(&s.scope)),
                        sanctions::user_id.eq(&*s.user_id),
                        sanctions::kind.eq(s.kind.code()),
                        sanctions::until_micros.eq(s.until_micros),
                        sanctions::reason.eq(&s.reason),
                        sanctions::created_micros.eq(s.created_micros),
                    ))
                    .on_conflict((sanctions::room, sanctions::user_id, sanctions::kind))
                    .do_update()
                    .set((
                        sanctions::until_micros.eq(s.until_micros),
                        sanctions::reason.eq(&s.reason),
                        sanctions::created_micros.eq(s.created_micros),
                    ))
                    .execute(conn)
                    .await?;
                bump_access_revision!(conn).await?;
                enqueue!(self, conn, waiting.iter().copied()).await?;
                Ok::<_, diesel::result::Error>(())
            })
            .await?
        });
        self.outbox_written();
        Ok(sanction)
    }

    /// Lifts `user`'s sanction of `kind` in `scope`, if any, and bumps the
    /// access revision when there was one, in one transaction; returns the
    /// sanction lifted (in force or not). With webhooks on, `event`
    /// encodes the webhook event of the sanction lifted, which goes to the
    /// outbox in the same transaction.
    pub async fn lift_sanction(
        &self,
        scope: &Scope,
        user: &str,
        kind: SanctionKind,
        event: impl Fn(&Sanction) -> Vec<u8> + Sync,
    ) -> Result<Option<Sanction>> {
        let room = scope_key(scope);
        let event = &event;
        let lifted: Option<Sanction> = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let lifted: Option<SanctionRow> = diesel::delete(
                    sanctions::table
                        .filter(sanctions::room.eq(room))
                        .filter(sanctions::user_id.eq(user))
                        .filter(sanctions::kind.eq(kind.code())),
                )
                .returning(sanction_columns!())
                .get_result(conn)
                .await
                .optional()?;
                let Some(lifted) = lifted else {
                    return Ok::<_, Error>(None);
                };
                bump_access_revision!(conn).await?;
                let lifted = from_row(lifted)?;
                if self.outbox_on() {
                    let bytes = event(&lifted);
                    let at = now_micros();
                    enqueue!(self, conn, [NewOutboxRow::carried(room, &bytes, at)]).await?;
                }
                Ok(Some(lifted))
            })
            .await?
        });
        if lifted.is_some() {
            self.outbox_written();
        }
        Ok(lifted)
    }

    /// The sanctions of `user` in force at `now_micros` in `room` or in
    /// every room (at most one of each kind per scope), in one query.
    pub async fn sanctions_in_force(
        &self,
        room: &RoomName,
        user: &str,
        now_micros: i64,
    ) -> Result<Vec<Sanction>> {
        let scopes = vec![room.as_str(), ""];
        let scopes = &scopes;
        let rows: Vec<SanctionRow> = with_conn!(self, |conn| {
            sanctions::table
                .filter(sanctions::user_id.eq(user))
                .filter(sanctions::room.eq_any(scopes))
                .filter(in_force(now_micros))
                .select(sanction_columns!())
                .load(conn)
                .await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Whether any sanction is in force at `now_micros` in `room` or in
    /// every room, whoever it names: while none is, a check needs no read
    /// per user.
    pub async fn any_sanction_in_force(&self, room: &RoomName, now_micros: i64) -> Result<bool> {
        let scopes = vec![room.as_str(), ""];
        let scopes = &scopes;
        let found: bool = with_conn!(self, |conn| {
            diesel::select(diesel::dsl::exists(
                sanctions::table
                    .filter(sanctions::room.eq_any(scopes))
                    .filter(in_force(now_micros)),
            ))
            .get_result(conn)
            .await?
        });
        Ok(found)
    }

    /// The bans in force at `now_micros` of any of `users` in any of
    /// `rooms` or in every room (for [`Store::denied`]).
    pub(super) async fn bans_in_force(
        &self,
        rooms: &[&str],
        users: &[&str],
        now_micros: i64,
    ) -> Result<Vec<Sanction>> {
        let mut scopes: Vec<&str> = rooms.to_vec();
        scopes.push("");
        let scopes = &scopes;
        let rows: Vec<SanctionRow> = with_conn!(self, |conn| {
            sanctions::table
                .filter(sanctions::kind.eq(SanctionKind::Ban.code()))
                .filter(sanctions::user_id.eq_any(users))
                .filter(sanctions::room.eq_any(scopes))
                .filter(in_force(now_micros))
                .select(sanction_columns!())
                .load(conn)
                .await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// One page of the sanctions in force at `now_micros`, newest first
    /// (then room, user and kind ascending), and the cursor after it when
    /// more follow.
    pub async fn list_sanctions(
        &self,
        query: &SanctionsQuery,
        now_micros: i64,
    ) -> Result<(Vec<Sanction>, Option<SanctionsCursor>)> {
        let take = i64::from(query.limit) + 1;
        let rows: Vec<SanctionRow> = with_conn!(self, |conn| {
            let mut q = sanctions::table
                .filter(in_force(now_micros))
                .select(sanction_columns!())
                .order((
                    sanctions::created_micros.desc(),
                    sanctions::room.asc(),
                    sanctions::user_id.asc(),
                    sanctions::kind.asc(),
                ))
                .limit(take)
                .into_boxed();
            if let Some(room) = &query.room {
                q = q.filter(sanctions::room.eq(room.as_str()));
            }
            if let Some(user) = &query.user_id {
                q = q.filter(sanctions::user_id.eq(&**user));
            }
            if let Some(c) = &query.after {
                let (room, user, kind) = (c.room.as_str(), c.user_id.as_str(), c.kind.code());
                q = q.filter(
                    sanctions::created_micros
                        .lt(c.created_micros)
                        .or(sanctions::created_micros.eq(c.created_micros).and(
                            sanctions::room.gt(room).or(sanctions::room.eq(room).and(
                                sanctions::user_id
                                    .gt(user)
                                    .or(sanctions::user_id.eq(user).and(sanctions::kind.gt(kind))),
                            )),
                        )),
                );
            }
            q.load(conn).await?
        });
        let mut page = rows.into_iter().map(from_row).collect::<Result<Vec<_>>>()?;
        let next = cut(&mut page, query.limit as usize);
        Ok((page, next))
    }
}
