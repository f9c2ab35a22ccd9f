//! Who may do what where: private rooms, grants and revocations, bans and
//! mutes, admin tokens.
//!
//! Every ChatService call that names a room asks [`Access::check`] first;
//! AdminService changes what it answers. The check is cheap on the send
//! path: a room's visibility never changes once the room exists, so it is
//! cached for good; a grant is cached once seen and dropped from the cache
//! by every revocation, on this node at once and on the other nodes of a
//! cluster through `cluster::revocations` (NATS, with the access revision
//! in storage as the floor: [`Access::revalidate`]). Refusals are never
//! cached: a new grant works at once everywhere.
//!
//! Bans and mutes (`sanctions.rs`) are checked in the same calls, before
//! the grant: a ban refuses every call in the room (and ends the user's
//! streams there), a mute the calls that speak ([`Access::check_speak`]).
//! Admin tokens pass both. The sanctions in force for a (room, user) are
//! cached, refusals and their absence alike, and dropped for a user by
//! every sanction of theirs (here at once, on the other nodes through the
//! same notices as revocations) and for everyone when the access revision
//! moved.
//!
//! The caches are bounded ([`CACHE_ENTRIES`] each, two generations: a
//! full generation becomes the old one and the older is dropped;
//! `cache.rs`).

mod cache;
mod owners;
mod sanctions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::cache::Bounded;
use self::owners::Owners;
use self::sanctions::SanctionCache;
use crate::config::RoomCreation;
use crate::domain::{Denial, Identity, RoomName, Visibility, now_micros};
use crate::error::{Error, Result};
use crate::proto;
use crate::storage::{Created, Store};

/// Entries per generation of each cache (visibility, grants, public rooms
/// known to be a user's, sanctions in force): at most twice this many are kept, about 9 MB per
/// cache at the longest names and user ids, far less in practice.
pub const CACHE_ENTRIES: usize = 16_384;
/// Revocations waiting to be announced to the other nodes; beyond that the
/// other nodes find them by polling the access revision.
pub const ANNOUNCE_QUEUE: usize = 1024;

/// A revocation to tell the other nodes about: the room (`None`: every
/// room, for a sanction there) and the users (none: a room made private,
/// re-check its streams).
pub type Revocation = (Option<RoomName>, Vec<Arc<str>>);

/// A (room, user) pair.
pub(crate) type Pair = (RoomName, Arc<str>);

/// The grants cache and the revocation epoch, changed together.
#[derive(Debug)]
struct Grants {
    cache: Bounded<Pair, ()>,
    /// Bumped by every revocation applied on this node: a grant read from
    /// storage before a revocation is not cached after it.
    epoch: u64,
}

/// The streams open on this node, as access sees them: whose streams are
/// in which room, and ending a user's streams in a room. The room registry
/// is one; access names no module above it.
pub(crate) trait Streams: Send + Sync + std::fmt::Debug {
    /// (room, user) of every user with a stream here, in `only` or in
    /// every room.
    fn local_users(&self, only: Option<&RoomName>) -> Vec<(RoomName, Arc<str>)>;
    /// Ends `user`'s streams in `room` with PERMISSION_DENIED saying `why`
    /// (and `member_left`); whether there were any.
    fn revoke(&self, room: &RoomName, user: &str, why: &Arc<str>) -> bool;
}

/// Access decisions for one node.
#[derive(Debug)]
pub struct Access {
    store: Store,
    rooms: Arc<dyn Streams>,
    /// Visibility of rooms that exist (it never changes then).
    visibility: Mutex<Bounded<RoomName, Visibility>>,
    /// Grants seen in storage and not revoked since.
    grants: Mutex<Grants>,
    /// Public rooms known to be a user's (ListRooms): a join then writes
    /// nothing.
    theirs: Mutex<Bounded<Pair, ()>>,
    /// Where a join's "this room is now the user's" goes to be written
    /// with the other joins' ([`owners`]).
    owners: Owners,
    /// A copy of `grants.epoch`, readable without the lock.
    epoch: AtomicU64,
    /// The bans and mutes in force per (room, user), as last read.
    sanctions: Mutex<SanctionCache>,
    /// Cluster only: where revocations go to be announced.
    announce: OnceLock<mpsc::Sender<Revocation>>,
    /// Whether a user's send may bring a room into existence
    /// (`CHAT_ROOM_CREATION`).
    creation: RoomCreation,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps are caches: a panic elsewhere cannot leave them
    // wrong in a way that matters.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a stream that may no longer use `room` ends with (or a recheck
/// answers), PERMISSION_DENIED.
fn refusal(room: &RoomName, denial: &Denial) -> Arc<str> {
    match denial {
        Denial::NoGrant => format!("room {room}: access revoked").into(),
        Denial::Banned(ban) => ban.refusal().into(),
    }
}

/// The refusal for a private room.
fn denied(room: &RoomName) -> Error {
    Error::PermissionDenied(format!(
        "room {room}: the room is private and you have no grant"
    ))
}

impl Access {
    /// The checks, with their batch writer ([`owners`]) on `tracker` until
    /// `stop`.
    pub fn new(
        store: Store,
        rooms: Arc<dyn Streams>,
        creation: RoomCreation,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (owners, queue) = Owners::new(&store);
        tracker.spawn(owners::run(store.clone(), queue, stop));
        Access {
            owners,
            store,
            rooms,
            visibility: Mutex::new(Bounded::new()),
            grants: Mutex::new(Grants {
                cache: Bounded::new(),
                epoch: 0,
            }),
            theirs: Mutex::new(Bounded::new()),
            epoch: AtomicU64::new(0),
            sanctions: Mutex::new(SanctionCache::new()),
            announce: OnceLock::new(),
            creation,
        }
    }

    /// Cluster only: sends every revocation made here to `announce`.
    pub fn announce_to(&self, announce: mpsc::Sender<Revocation>) {
        let _ = self.announce.set(announce);
    }

    /// How many revocations this node has applied; see [`Self::recheck`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The room's visibility, `None` while it does not exist: cached once
    /// it exists (it never changes then), read from storage until then.
    async fn lookup(&self, room: &RoomName) -> Result<Option<Visibility>> {
        if let Some(v) = lock(&self.visibility).get(room) {
            return Ok(Some(v));
        }
        let found = self.store.visibility(room).await?;
        if let Some(v) = found {
            lock(&self.visibility).insert(room.clone(), v);
        }
        Ok(found)
    }

    /// The room's visibility: cached once the room exists, public (and not
    /// cached: it may still be created private) when it does not.
    pub async fn visibility(&self, room: &RoomName) -> Result<Visibility> {
        Ok(self.lookup(room).await?.unwrap_or(Visibility::Public))
    }

    /// Whether `who` may read `room` (ListHistory, ListMembers): admin
    /// tokens always; others not while banned there (or everywhere), then
    /// public rooms always, private rooms with a grant; else
    /// PERMISSION_DENIED naming the room. A room that does not exist is
    /// public with nothing in it. Returns the room's visibility.
    pub async fn check(&self, who: &Identity, room: &RoomName) -> Result<Visibility> {
        let visibility = self.visibility(room).await?;
        self.check_sanctions(who, room, false).await?;
        self.admit(who, room, visibility).await
    }

    /// [`Self::check`] for a call that uses the room (JoinRoom,
    /// SendMessage, MarkRead): with `CHAT_ROOM_CREATION=backend` a room
    /// that does not exist is NOT_FOUND, whoever asks.
    pub async fn check_use(&self, who: &Identity, room: &RoomName) -> Result<Visibility> {
        let visibility = self.visibility_to_use(room).await?;
        self.check_sanctions(who, room, false).await?;
        self.admit(who, room, visibility).await
    }

    /// [`Self::check_use`] for a call that speaks in the room (SendMessage,
    /// EditMessage, React, SetTyping): refused while muted there too.
    pub async fn check_speak(&self, who: &Identity, room: &RoomName) -> Result<Visibility> {
        let visibility = self.visibility_to_use(room).await?;
        self.check_sanctions(who, room, true).await?;
        self.admit(who, room, visibility).await
    }

    /// The visibility of a room about to be used: NOT_FOUND when it does
    /// not exist and only the backend creates rooms.
    async fn visibility_to_use(&self, room: &RoomName) -> Result<Visibility> {
        Ok(match self.lookup(room).await? {
            Some(v) => v,
            None if self.creation == RoomCreation::Backend => {
                return Err(Error::NotFound {
                    field: "room",
                    reason: format!(
                        "room {room} does not exist; rooms are created by the app's backend \
                         (CHAT_ROOM_CREATION=backend)"
                    ),
                });
            }
            None => Visibility::Public,
        })
    }

    /// Admits `who` to `room` of `visibility`: admin tokens and public
    /// rooms always, private rooms with a grant (cached once seen).
    async fn admit(
        &self,
        who: &Identity,
        room: &RoomName,
        visibility: Visibility,
    ) -> Result<Visibility> {
        if who.admin || visibility == Visibility::Public {
            return Ok(visibility);
        }
        let pair = (room.clone(), who.user_id.clone());
        let epoch = {
            let mut grants = lock(&self.grants);
            if grants.cache.get(&pair).is_some() {
                return Ok(visibility);
            }
            grants.epoch
        };
        if !self.store.is_granted(room, &who.user_id).await? {
            return Err(denied(room));
        }
        let mut grants = lock(&self.grants);
        if grants.epoch == epoch {
            grants.cache.insert(pair, ());
        }
        Ok(visibility)
    }

    /// For a send that passed [`Self::check`], just before it goes to the
    /// writer: settles the room's visibility for good when the check found
    /// no room row (the room was public only because it did not exist yet).
    ///
    /// Without this, a send checked while the room did not exist could be
    /// stored after a CreateRoom(PRIVATE) that landed in between, and
    /// CreateRoom would answer `created = true` for a private room holding
    /// a message from a user without a grant. Instead, the room's row is
    /// created public here (`INSERT .. ON CONFLICT DO NOTHING`, then read
    /// back: the same statements as CreateRoom's, atomic on both backends
    /// through the primary key). A row's visibility never changes, so
    /// whichever of the two inserted it decides: this send's row first,
    /// and CreateRoom(PRIVATE) answers FAILED_PRECONDITION; CreateRoom's
    /// first, and the send is checked again against the private room (a
    /// grant or an admin token, else PERMISSION_DENIED). The invariant: a
    /// room CreateRoom reports created private only ever holds messages
    /// sent with a grant or an admin token.
    ///
    /// Cost: a lookup in the visibility cache for a public room that
    /// existed at the check (every public room after its first send on
    /// this node), two for a private room; one write
    /// (and a read when the row appeared meanwhile) for an unknown room. A
    /// send refused later (the writer failed) leaves the room existing and
    /// public without messages, as a send that was stored would.
    pub async fn settle_send(&self, who: &Identity, room: &RoomName) -> Result<()> {
        let cached = lock(&self.visibility).get(room);
        let visibility = match cached {
            Some(v) => v,
            None => {
                let event = proto::room_created_event(room, Visibility::Public);
                let v = match self
                    .store
                    .create_room(room, Visibility::Public, &event)
                    .await?
                {
                    Created::New => Visibility::Public,
                    Created::Existing(existing) => existing,
                };
                lock(&self.visibility).insert(room.clone(), v);
                v
            }
        };
        if visibility == Visibility::Private {
            // Private now: the check may have seen no room (a CreateRoom
            // through this node caches the room at once), so check again;
            // for a room that was private at the check, its grant is
            // cached by then and this costs a lookup.
            self.check(who, room).await?;
        }
        Ok(())
    }

    /// For a stream opened after a [`Self::check`] made at `epoch`: when a
    /// revocation or a ban was applied since, asks storage again (it may
    /// have come between the check and the stream joining the room).
    pub async fn recheck(&self, epoch: u64, who: &Identity, room: &RoomName) -> Result<()> {
        if self.epoch() == epoch || who.admin {
            return Ok(());
        }
        let pair = [(room.clone(), who.user_id.clone())];
        match self.store.denied(&pair, now_micros()).await?.pop() {
            None => Ok(()),
            Some((_, _, Denial::NoGrant)) => Err(denied(room)),
            Some((_, _, Denial::Banned(ban))) => Err(Error::PermissionDenied(ban.refusal())),
        }
    }

    /// Makes a public room one of `who`'s rooms (JoinRoom): one write the
    /// first time this node sees the pair, nothing after.
    pub async fn note_joined(&self, who: &Identity, room: &RoomName) -> Result<()> {
        let pair = (room.clone(), who.user_id.clone());
        if lock(&self.theirs).get(&pair).is_some() {
            return Ok(());
        }
        self.owners.write(pair.clone()).await?;
        lock(&self.theirs).insert(pair, ());
        Ok(())
    }

    /// CreateRoom: `created` is false when the room exists with this
    /// visibility; another visibility is FAILED_PRECONDITION.
    pub async fn create_room(&self, room: &RoomName, visibility: Visibility) -> Result<bool> {
        let event = proto::room_created_event(room, visibility);
        let created = match self.store.create_room(room, visibility, &event).await? {
            Created::New => true,
            Created::Existing(existing) if existing == visibility => false,
            Created::Existing(existing) => {
                return Err(Error::FailedPrecondition {
                    field: "visibility",
                    reason: format!(
                        "room {room} exists and is {}",
                        match existing {
                            Visibility::Public =>
                                "public (a room with public history never turns private)",
                            Visibility::Private => "private",
                        }
                    ),
                });
            }
        };
        lock(&self.visibility).insert(room.clone(), visibility);
        if created && visibility == Visibility::Private {
            self.made_private(room).await?;
        }
        Ok(created)
    }

    /// A room that did not exist (so was public) is now private: streams
    /// opened in it before, here and on other nodes, end unless their user
    /// holds a grant by now. Other nodes hear it as a revocation naming no
    /// user (re-check the room's streams), or find it by the access
    /// revision the creation bumped.
    async fn made_private(&self, room: &RoomName) -> Result<()> {
        self.announce(Some(room.clone()), Vec::new());
        self.revalidate_room(room).await
    }

    /// Re-checks in storage the streams on this node in `room` and ends
    /// those whose user may no longer use it.
    pub async fn revalidate_room(&self, room: &RoomName) -> Result<()> {
        self.revalidate_pairs(self.rooms.local_users(Some(room)))
            .await
    }

    /// The room must exist and be private to take grants.
    async fn private_room(&self, room: &RoomName) -> Result<()> {
        match self.store.visibility(room).await? {
            None => Err(Error::NotFound {
                field: "room",
                reason: format!("room {room} does not exist; create it private first"),
            }),
            Some(Visibility::Public) => Err(Error::FailedPrecondition {
                field: "room",
                reason: format!("room {room} is public: grants apply to private rooms"),
            }),
            Some(Visibility::Private) => Ok(()),
        }
    }

    /// GrantAccess: lets `users` into the private `room`.
    pub async fn grant(&self, room: &RoomName, users: &[Arc<str>]) -> Result<()> {
        self.private_room(room).await?;
        self.store
            .grant(room, users, now_micros(), |users| {
                proto::access_event(room, true, users)
            })
            .await
    }

    /// RevokeAccess: takes the grants away in storage, then ends the users'
    /// streams here and tells the other nodes.
    pub async fn revoke(&self, room: &RoomName, users: Vec<Arc<str>>) -> Result<()> {
        self.private_room(room).await?;
        self.store
            .revoke(room, &users, |users| {
                proto::access_event(room, false, users)
            })
            .await?;
        self.apply_revocation(room, &users, &refusal(room, &Denial::NoGrant));
        self.announce(Some(room.clone()), users);
        Ok(())
    }

    /// Tells the other nodes (cluster only) about a revocation or a
    /// sanction; when the queue is full they find it by polling.
    fn announce(&self, room: Option<RoomName>, users: Vec<Arc<str>>) {
        if let Some(announce) = self.announce.get()
            && announce.try_send((room, users)).is_err()
        {
            tracing::debug!("revocation queue full; other nodes find it by polling");
        }
    }

    /// Bumps the revocation epoch: a grant read before is not cached, a
    /// stream whose check came before is checked again ([`Self::recheck`]).
    fn bump_epoch(&self) -> MutexGuard<'_, Grants> {
        let mut grants = lock(&self.grants);
        grants.epoch += 1;
        self.epoch.store(grants.epoch, Ordering::Release);
        grants
    }

    /// Applies a revocation (or a ban) made here or on another node:
    /// forgets the cached grants, then ends the users' streams in the room
    /// with PERMISSION_DENIED saying `why` (and member_left). Applying one
    /// twice changes nothing more.
    pub fn apply_revocation(&self, room: &RoomName, users: &[Arc<str>], why: &Arc<str>) {
        {
            let mut grants = self.bump_epoch();
            for user in users {
                grants.cache.remove(&(room.clone(), user.clone()));
            }
        }
        for user in users {
            self.rooms.revoke(room, user, why);
        }
    }

    /// Re-checks in storage every cached grant and every stream on this
    /// node, and applies what was revoked or banned, after forgetting every
    /// cached sanction: for a node that may have missed a notice (the
    /// access revision moved).
    pub async fn revalidate(&self) -> Result<()> {
        self.forget_sanctions(None);
        let mut pairs: Vec<Pair> = lock(&self.grants).cache.keys().cloned().collect();
        pairs.extend(self.rooms.local_users(None));
        self.revalidate_pairs(pairs).await
    }

    /// A revocation or a sanction another node announced for `users` in
    /// `room` (`None`: every room): their cached sanctions are forgotten,
    /// and the revocation or ban applied only as far as storage confirms
    /// it, for the users with streams or a cached grant in the room here (a
    /// public room is never revoked, but may be banned from).
    pub async fn revalidate_users(
        &self,
        room: Option<&RoomName>,
        users: &[Arc<str>],
    ) -> Result<()> {
        self.forget_sanctions(Some(users));
        // A join in flight here, checked before the notice, asks storage
        // again (Access::recheck): the ban may concern it.
        drop(self.bump_epoch());
        let mut pairs: Vec<Pair> = self
            .rooms
            .local_users(room)
            .into_iter()
            .filter(|(_, user)| users.contains(user))
            .collect();
        if let Some(room) = room {
            let grants = lock(&self.grants);
            pairs.extend(
                users
                    .iter()
                    .map(|user| (room.clone(), user.clone()))
                    .filter(|pair| grants.cache.contains(pair)),
            );
        }
        self.revalidate_pairs(pairs).await
    }

    /// Applies the revocations storage shows for `pairs` (room, user).
    async fn revalidate_pairs(&self, mut pairs: Vec<Pair>) -> Result<()> {
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.is_empty() {
            return Ok(());
        }
        let denied = self.store.denied(&pairs, now_micros()).await?;
        let mut by_refusal: HashMap<(RoomName, Arc<str>), Vec<Arc<str>>> = HashMap::new();
        for (room, user, denial) in denied {
            let why = refusal(&room, &denial);
            by_refusal.entry((room, why)).or_default().push(user);
        }
        for ((room, why), users) in by_refusal {
            tracing::debug!(room = %room, users = users.len(), "applying a revocation found in storage");
            self.apply_revocation(&room, &users, &why);
        }
        Ok(())
    }
}
