//! Bans and mutes: the checks, their cache, and AdminService's calls.
//!
//! A check looks up the (room, user) pair in a bounded cache of the
//! sanctions in force there (a ban and a mute, each in the room or in every
//! room, or none: absence is cached too), reading storage on a miss. Each
//! call compares the cached sanctions' `until` with the clock, so a
//! sanction stops applying at its end without any call or timer. The cache
//! forgets a user's entries at every sanction of theirs, imposed or lifted
//! (here at once, on the other nodes when the notice arrives) and forgets
//! everything when the access revision moved ([`Access::revalidate`]); an
//! epoch keeps a read that started before either from being cached after.
//!
//! Sanctions are rare, so a room where none is in force (in the room or in
//! every room) is remembered as such: joins and sends there read nothing
//! per user, which keeps 100,000 users filling a room from making 100,000
//! reads. Every sanction imposed or lifted, anywhere, forgets these too.

use std::sync::Arc;

use super::cache::Bounded;
use super::{Access, Pair, lock};
use crate::domain::{
    Identity, NewSanction, RoomName, Sanction, SanctionKind, SanctionsCursor, SanctionsQuery,
    Scope, now_micros,
};
use crate::error::{Error, Result};
use crate::proto;

/// The sanctions in force for one (room, user), as read from storage: of
/// each kind, the one lasting longest of the room's and every room's.
#[derive(Clone, Debug, Default)]
pub(super) struct InForce {
    ban: Option<Arc<Sanction>>,
    mute: Option<Arc<Sanction>>,
}

impl InForce {
    fn from_stored(sanctions: Vec<Sanction>) -> Self {
        let mut ban: Option<Sanction> = None;
        let mut mute: Option<Sanction> = None;
        for s in sanctions {
            let slot = match s.kind {
                SanctionKind::Ban => &mut ban,
                SanctionKind::Mute => &mut mute,
            };
            if slot.as_ref().is_none_or(|kept| s.outlasts(kept)) {
                *slot = Some(s);
            }
        }
        InForce {
            ban: ban.map(Arc::new),
            mute: mute.map(Arc::new),
        }
    }

    /// The refusal, if a ban (or, when `speak`, a mute) applies now.
    fn refusal(&self, speak: bool, now: i64) -> Option<Error> {
        let applies = |s: &Option<Arc<Sanction>>| s.as_ref().filter(|s| s.in_force(now)).cloned();
        let found = applies(&self.ban).or_else(|| speak.then(|| applies(&self.mute)).flatten());
        found.map(|s| Error::PermissionDenied(s.refusal()))
    }
}

/// The cache of [`InForce`] per pair and the epoch that guards it.
#[derive(Debug)]
pub(super) struct SanctionCache {
    cache: Bounded<Pair, InForce>,
    /// Rooms known to have no sanction in force, in the room or in every
    /// room (`true`), or known to have some (`false`).
    clear: Bounded<RoomName, bool>,
    /// Bumped whenever entries are forgotten: a read from storage that
    /// began before is not cached after.
    epoch: u64,
}

impl SanctionCache {
    pub(super) fn new() -> Self {
        SanctionCache {
            cache: Bounded::new(),
            clear: Bounded::new(),
            epoch: 0,
        }
    }
}

impl Access {
    /// Refuses `who` in `room` while banned there or everywhere (and, when
    /// `speak`, while muted), PERMISSION_DENIED saying so and until when.
    /// Admin tokens are never refused. One cache lookup when cached.
    pub(super) async fn check_sanctions(
        &self,
        who: &Identity,
        room: &RoomName,
        speak: bool,
    ) -> Result<()> {
        if who.admin {
            return Ok(());
        }
        let in_force = self.sanctions_in_force(room, &who.user_id).await?;
        match in_force.refusal(speak, now_micros()) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// The sanctions in force for (room, user): none in a room known to
    /// have none, else cached, or read and cached unless entries were
    /// forgotten meanwhile.
    async fn sanctions_in_force(&self, room: &RoomName, user: &Arc<str>) -> Result<InForce> {
        let pair = (room.clone(), user.clone());
        let (epoch, clear) = {
            let mut sanctions = lock(&self.sanctions);
            if let Some(found) = sanctions.cache.get(&pair) {
                return Ok(found);
            }
            (sanctions.epoch, sanctions.clear.get(room))
        };
        let now = now_micros();
        let clear = match clear {
            Some(clear) => clear,
            None => {
                let clear = !self.store.any_sanction_in_force(room, now).await?;
                let mut sanctions = lock(&self.sanctions);
                if sanctions.epoch == epoch {
                    sanctions.clear.insert(room.clone(), clear);
                }
                clear
            }
        };
        if clear {
            return Ok(InForce::default());
        }
        let stored = self.store.sanctions_in_force(room, user, now).await?;
        let found = InForce::from_stored(stored);
        let mut sanctions = lock(&self.sanctions);
        if sanctions.epoch == epoch {
            sanctions.cache.insert(pair, found.clone());
        }
        Ok(found)
    }

    /// Forgets the cached sanctions of `users` (`None`: of everyone).
    pub(super) fn forget_sanctions(&self, users: Option<&[Arc<str>]>) {
        let mut sanctions = lock(&self.sanctions);
        sanctions.epoch += 1;
        sanctions.clear.clear();
        match users {
            None => sanctions.cache.clear(),
            Some(users) => sanctions
                .cache
                .remove_where(|(_, user)| users.contains(user)),
        }
    }

    /// BanUser and MuteUser: stores the sanction (replacing the user's of
    /// the same kind there), forgets the user's cached sanctions, ends the
    /// user's streams here for a ban, and tells the other nodes. Returns
    /// the sanction as stored.
    pub async fn impose(&self, new: &NewSanction) -> Result<Sanction> {
        let sanction = self
            .store
            .impose_sanction(new, now_micros(), |s| proto::sanction_event(s, true))
            .await?;
        self.forget_sanctions(Some(std::slice::from_ref(&sanction.user_id)));
        if sanction.kind == SanctionKind::Ban {
            self.end_banned_streams(&sanction);
        }
        self.announce(sanction.scope.clone(), vec![sanction.user_id.clone()]);
        Ok(sanction)
    }

    /// Ends the banned user's streams on this node in the ban's room (or in
    /// every room), with the ban's refusal.
    fn end_banned_streams(&self, ban: &Sanction) {
        let why: Arc<str> = ban.refusal().into();
        let users = std::slice::from_ref(&ban.user_id);
        match &ban.scope {
            Some(room) => self.apply_revocation(room, users, &why),
            None => {
                // The epoch moves even without a stream here: a join in
                // flight checks again (Access::recheck).
                drop(self.bump_epoch());
                for (room, user) in self.rooms.local_users(None) {
                    if user == ban.user_id {
                        self.apply_revocation(&room, users, &why);
                    }
                }
            }
        }
    }

    /// UnbanUser and UnmuteUser: removes the sanction (if any), forgets the
    /// user's cached sanctions here and on the other nodes.
    pub async fn lift(&self, scope: &Scope, user: &Arc<str>, kind: SanctionKind) -> Result<()> {
        self.store
            .lift_sanction(scope, user, kind, |s| proto::sanction_event(s, false))
            .await?;
        self.forget_sanctions(Some(std::slice::from_ref(user)));
        self.announce(scope.clone(), vec![user.clone()]);
        Ok(())
    }

    /// ListSanctions: one page of the sanctions in force now.
    pub async fn list_sanctions(
        &self,
        query: &SanctionsQuery,
    ) -> Result<(Vec<Sanction>, Option<SanctionsCursor>)> {
        self.store.list_sanctions(query, now_micros()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanction(kind: SanctionKind, room: Option<&str>, until: Option<i64>) -> Sanction {
        Sanction {
            scope: room.map(|r| RoomName::parse(r).unwrap()),
            user_id: "u".into(),
            kind,
            until_micros: until,
            reason: String::new(),
            created_micros: 0,
        }
    }

    #[test]
    fn the_longest_of_each_kind_applies_until_it_ends() {
        let in_force = InForce::from_stored(vec![
            sanction(SanctionKind::Ban, Some("a"), Some(10)),
            sanction(SanctionKind::Ban, None, Some(20)),
            sanction(SanctionKind::Mute, Some("a"), None),
        ]);
        let ban = in_force.refusal(false, 15).unwrap().to_string();
        assert!(ban.contains("banned from every room"), "{ban}");
        assert!(in_force.refusal(false, 20).is_none());
        let mute = in_force.refusal(true, 20).unwrap().to_string();
        assert!(mute.contains("muted in room a until lifted"), "{mute}");
        assert!(InForce::default().refusal(true, 0).is_none());
    }
}
