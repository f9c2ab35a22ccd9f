//! One JoinRoom stream's reader: the ring as a fast path, storage for everything else.

use std::collections::{HashMap, VecDeque};

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::RoomState;
use super::membership::{Ending, Membership};
use super::ring::Event;
use crate::domain::{MessageState, READ_PAGE_BYTES, ReactionCount, StoredEvent};
use crate::error::Error;
use crate::limits::quota::Charge;
use crate::metrics::CatchUp;
use crate::proto::{self, EncodedEvent, join_room_response::Event as WireEvent};
use crate::storage::Store;

/// The most messages a catch-up reads from storage at a time (and at most
/// [`crate::domain::READ_PAGE_BYTES`] of them, by what is stored).
const REPLAY_PAGE_MAX: u32 = 256;
/// Bytes a stream moves from the ring to its own queue at a time (at least
/// one event): what a stalled stream can pin after the ring dropped it.
const TAKE_BYTES: usize = 64 * 1024;
/// More presence events than this waiting for one stream of a large room
/// are sent as one fresh `joined` instead ([`Subscription::presence_burst`]).
const PRESENCE_BURST: usize = 32;
/// The most queue slots (32 bytes each) an emptied queue keeps.
const PENDING_KEPT: usize = 16;

/// One JoinRoom stream's reader.
#[derive(Debug)]
pub struct Subscription {
    pub(super) guard: Membership,
    /// Ended when the user's access to the room is revoked (or they are
    /// banned): the stream then ends with PERMISSION_DENIED saying why,
    /// delivering nothing more.
    pub(super) revoked: Ending,
    pub(super) store: Store,
    /// Cancelled when the server shuts down: interrupts a catch-up read or
    /// a wait for budget. Waiting streams learn of shutdown from the room.
    pub(super) shutdown: CancellationToken,
    /// The ring position this stream reads next.
    pub(super) cursor: u64,
    /// Presence events before this ring position are already in the member
    /// list the stream sent: they are skipped.
    pub(super) presence_from: u64,
    /// The seq this stream owes its client next.
    pub(super) next_seq: u64,
    /// Whether to read from storage before reading the ring again.
    pub(super) catching_up: bool,
    /// Why the current (or last) catch-up began, for metrics.
    pub(super) catchup_reason: CatchUp,
    /// Whether presence events were dropped, so a fresh `joined` is owed
    /// once caught up.
    pub(super) resync_members: bool,
    /// Events ready to send: a catch-up page or what one look at the ring
    /// took (about [`TAKE_BYTES`]).
    pub(super) pending: VecDeque<EncodedEvent>,
    /// The user's budget held by the catch-up page in `pending`, given back
    /// once the page has gone to the encoder.
    pub(super) page_charge: Option<Charge>,
    /// Whether the stream has ended (after an error status).
    pub(super) done: bool,
}

impl Subscription {
    /// The next event for the client; `None` ends the stream.
    pub async fn next(&mut self) -> Option<std::result::Result<EncodedEvent, Status>> {
        if self.done {
            return None;
        }
        match self.next_inner().await {
            Ok(event) => Some(Ok(event)),
            Err(status) => {
                self.done = true;
                Some(Err(status))
            }
        }
    }

    async fn next_inner(&mut self) -> std::result::Result<EncodedEvent, Status> {
        loop {
            if self.revoked.is_ended() {
                return Err(self.revoked.refusal().into());
            }
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.pending.capacity() > PENDING_KEPT {
                // A burst (a page, a crowd's presence) grew the queue: an
                // idle stream gives that memory back.
                self.pending = VecDeque::new();
            }
            self.page_charge = None;
            if self.catching_up {
                // Boxed: the storage read's state would otherwise make every
                // idle stream as large as a busy one.
                Box::pin(self.catch_up()).await?;
                continue;
            }
            if self.take()? {
                continue;
            }
            // Register for the next wake-up before looking again, so a
            // publish between the look and the wait is not missed.
            let room = self.guard.room.clone();
            let notified = room.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.take()? {
                continue;
            }
            notified.await;
        }
    }

    /// Moves what is new in the ring into `pending` (or notes that the ring
    /// left this stream behind); returns whether there is anything to do.
    fn take(&mut self) -> std::result::Result<bool, Status> {
        let state = self.guard.room.lock();
        if state.closed {
            return Err(Error::ShuttingDown.into());
        }
        let ring = &state.ring;
        let passed_by = self.cursor < ring.start && ring.dropped_seq < self.next_seq;
        if passed_by || (self.cursor >= ring.start && self.presence_burst(&state)) {
            // Only live-only events were dropped (a crowd joining), or a
            // burst of presence waits in a large room: the ring still holds
            // every message owed, so no storage read; presence is re-sent
            // first as a fresh member list.
            self.cursor = self.cursor.max(ring.start);
            self.presence_from = ring.end();
            let joined = members_now(&state, &self.guard, self.next_seq);
            self.pending.push_back(joined);
        }
        if self.cursor < ring.start {
            tracing::debug!(room = %self.guard.room.name, missed = ring.start - self.cursor, "stream fell behind; catching up from storage");
            // Everything before the ring's end is stored by now: storage
            // has it, and presence is re-sent as a fresh member list.
            self.cursor = ring.end();
            self.catching_up = true;
            self.catchup_reason = CatchUp::Lag;
            self.resync_members = true;
            return Ok(true);
        }
        let mut taken = 0;
        let mut delivered = 0;
        let mut progressed = false;
        while self.cursor < ring.end() && taken < TAKE_BYTES && !self.catching_up {
            let index = (self.cursor - ring.start) as usize;
            let position = self.cursor;
            self.cursor += 1;
            progressed = true;
            if let Some((skip, bytes)) = ring.events[index].live_only() {
                if position >= self.presence_from && skip != Some(&self.guard.identity.user_id) {
                    taken += bytes.len();
                    self.pending.push_back(EncodedEvent(bytes.clone()));
                }
                continue;
            }
            match &ring.events[index] {
                Event::Presence { .. } | Event::Ephemeral { .. } => {}
                Event::Messages(batch) => {
                    for (seq, bytes) in batch.iter() {
                        if *seq < self.next_seq {
                            continue;
                        }
                        if *seq > self.next_seq {
                            // A seq is missing before this one: storage has
                            // it and the rest.
                            self.catching_up = true;
                            self.catchup_reason = CatchUp::Gap;
                            break;
                        }
                        self.next_seq += 1;
                        delivered += 1;
                        taken += bytes.len();
                        self.pending.push_back(EncodedEvent(bytes.clone()));
                    }
                }
            }
        }
        drop(state);
        self.guard.rooms.metrics.deliveries(delivered);
        Ok(progressed)
    }

    /// Whether more than [`PRESENCE_BURST`] presence events in the ring are
    /// news to this stream in a room larger than one `joined` lists: they
    /// are coalesced into one fresh `joined` (its count) instead.
    fn presence_burst(&self, state: &RoomState) -> bool {
        let ring = &state.ring;
        let from = self.cursor.max(ring.start).max(self.presence_from);
        if ring.end().saturating_sub(from) <= PRESENCE_BURST as u64
            || !super::joined::is_large(state)
        {
            return false;
        }
        let skip = (from - ring.start) as usize;
        ring.events
            .iter()
            .skip(skip)
            .filter(|e| matches!(e, Event::Presence { .. }))
            .nth(PRESENCE_BURST)
            .is_some()
    }

    /// Reads the next page of messages this stream owes from storage,
    /// charging the page to the user's budget until it has been sent. The
    /// read waits its turn among the user's others ([`Quotas::read_slot`]).
    async fn catch_up(&mut self) -> std::result::Result<(), Status> {
        let rooms = &self.guard.rooms;
        let user = &self.guard.identity.user_id;
        // Charged at the page's largest size under the current message
        // limit; a page of older, larger messages grows the charge below.
        let upfront = READ_PAGE_BYTES.min(REPLAY_PAGE_MAX as usize * rooms.message_bound);
        let mut charge = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(Error::ShuttingDown.into()),
            // Checked again at the top of the loop.
            () = self.revoked.ended() => return Ok(()),
            charge = rooms.quotas.charge(user, upfront) => charge?,
        };
        let room = &self.guard.room.name;
        let page = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(Error::ShuttingDown.into()),
            () = self.revoked.ended() => return Ok(()),
            page = async {
                let _turn = rooms.quotas.read_slot(user).await?;
                let (events, more) = self.store.read_events(room, self.next_seq - 1, REPLAY_PAGE_MAX).await?;
                // A replayed message carries its reactions as this user sees them.
                let seqs: Vec<u64> = events
                    .iter()
                    .filter(|e| matches!(e, StoredEvent::Message(_)))
                    .map(StoredEvent::seq)
                    .collect();
                let reactions = self.store.reactions(room, &seqs, user).await?;
                Ok::<_, Error>((events, more, reactions))
            } => page?,
        };
        let (page, more, mut reactions) = page;
        rooms.metrics.catchup_read(self.catchup_reason);
        rooms.metrics.deliveries(page.len());
        if !more {
            // Everything committed before the read is in the page; anything
            // later comes through the ring, whose position we took first.
            self.catching_up = false;
        }
        let bytes = self.queue_page(page, &mut reactions)?;
        if bytes > charge.bytes() {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Error::ShuttingDown.into()),
                grown = charge.grow_to(bytes) => grown?,
            }
        }
        charge.shrink_to(bytes);
        self.page_charge = Some(charge);
        if !self.catching_up && self.resync_members {
            self.resync_members = false;
            self.resync();
        }
        Ok(())
    }

    /// Queues a page read from storage; its encoded size. A seq that is
    /// not the next one owed is a gap in storage: an internal error.
    fn queue_page(
        &mut self,
        page: Vec<StoredEvent>,
        reactions: &mut HashMap<u64, Vec<ReactionCount>>,
    ) -> std::result::Result<usize, Status> {
        let mut bytes = 0;
        for stored in page {
            if stored.seq() != self.next_seq {
                let room = &self.guard.room.name;
                tracing::error!(room = %room, expected = self.next_seq, found = stored.seq(), "gap in stored seqs");
                return Err(Status::internal("internal error"));
            }
            self.next_seq += 1;
            let wire = match stored {
                StoredEvent::Message(message) => {
                    WireEvent::Message(proto::Message::from(&MessageState {
                        reactions: reactions.remove(&message.seq).unwrap_or_default(),
                        message,
                    }))
                }
                StoredEvent::Change(change) => proto::change_event(&change),
            };
            let event = EncodedEvent::encode(wire);
            bytes += event.0.len();
            self.pending.push_back(event);
        }
        Ok(bytes)
    }

    /// Queues the room's member list as of now (after a catch-up that
    /// missed presence events).
    fn resync(&mut self) {
        let state = self.guard.room.lock();
        // Presence events already in the ring are in this list.
        self.presence_from = state.ring.end();
        let joined = members_now(&state, &self.guard, self.next_seq);
        drop(state);
        self.pending.push_back(joined);
    }
}

/// The `joined` re-sent to the stream `member` as of `state` (see
/// `joined::resent`), for a stream whose next message is `next_seq`.
fn members_now(state: &RoomState, member: &Membership, next_seq: u64) -> EncodedEvent {
    super::joined::resent(
        state,
        member.room.name.as_str(),
        next_seq - 1,
        &member.identity.user_id,
    )
}
