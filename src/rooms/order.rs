//! Cluster only: a room's messages put back in seq order before the ring, so streams rarely catch up.
//!
//! On a cluster, a room's messages reach a node from two sides: its own
//! commits and the other nodes' notifications. They can arrive out of
//! order (seq 11 committed here before seq 10, committed elsewhere, comes
//! over NATS). Pushed as they come, every stream of the room would see the
//! gap and read storage on its own: one read per stream, hundreds for one
//! late message. Instead the room holds messages that arrive ahead of a
//! gap for a moment; the late one usually comes within a millisecond and
//! the held ones follow it into the ring in order. A gap that stays open
//! longer than [`HOLD`] is filled by one storage read for the whole room
//! ([`Rooms::fill_gaps`]). Held messages are bounded in bytes by the
//! room's ring limit: past it they go into the ring as they are, and the
//! streams catch up on their own, as without this buffer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a gap may stay open before one storage read fills it.
pub const HOLD: Duration = Duration::from_millis(20);

/// The messages of one room held back behind a gap.
#[derive(Debug, Default)]
pub(super) struct Reorder {
    /// Every seq up to this one is in the ring or was stored before the
    /// room's streams started; `None` until the room's first storage read
    /// says where the room stands (messages then go in as they come).
    through: Option<u64>,
    /// The newest seq that went into the ring.
    pushed: u64,
    /// Messages after a missing seq, by seq.
    held: BTreeMap<u64, Bytes>,
    /// The sum of the held messages' lengths.
    held_bytes: usize,
    /// When the oldest open gap was first seen.
    since: Option<Instant>,
}

impl Reorder {
    /// Starts ordering after `stored`, the room's last seq as storage said
    /// when the first stream joined (or later if messages already went in).
    pub(super) fn start(&mut self, stored: u64) {
        if self.through.is_none() {
            self.through = Some(stored.max(self.pushed));
        }
    }

    /// Takes newly committed messages (any order, maybe seen before) and
    /// returns those that can go into the ring now, in seq order.
    pub(super) fn accept(
        &mut self,
        messages: &[(u64, Bytes)],
        max_bytes: usize,
    ) -> Vec<(u64, Bytes)> {
        let Some(mut through) = self.through else {
            if let Some(newest) = messages.iter().map(|(seq, _)| *seq).max() {
                self.pushed = self.pushed.max(newest);
            }
            return messages.to_vec();
        };
        for (seq, bytes) in messages {
            if *seq > through && !self.held.contains_key(seq) {
                self.held_bytes += bytes.len();
                self.held.insert(*seq, bytes.clone());
            }
        }
        if self.held_bytes > max_bytes {
            // Over the bound: everything goes in as it is, and streams read
            // the gaps from storage.
            return self.release();
        }
        let mut ready = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != through + 1 {
                break;
            }
            through += 1;
            let bytes = entry.remove();
            self.held_bytes -= bytes.len();
            ready.push((through, bytes));
        }
        self.through = Some(through);
        self.pushed = self.pushed.max(through);
        self.since = match (self.held.is_empty(), self.since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(Instant::now()),
        };
        ready
    }

    /// The seqs missing before the held messages, as (after, count), when
    /// the gap has been open for at least `hold`.
    pub(super) fn overdue(&self, hold: Duration) -> Option<(u64, u32)> {
        let since = self.since?;
        let through = self.through?;
        let (&first, _) = self.held.first_key_value()?;
        if since.elapsed() < hold {
            return None;
        }
        let missing = u32::try_from(first - through - 1).unwrap_or(u32::MAX);
        Some((through, missing))
    }

    /// Whether messages wait behind a gap.
    pub(super) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drops the held messages after `stored` (storage says they do not
    /// exist); returns how many.
    pub(super) fn drop_beyond(&mut self, stored: u64) -> usize {
        let beyond = self.held.split_off(&(stored + 1));
        self.held_bytes -= beyond.values().map(Bytes::len).sum::<usize>();
        if self.held.is_empty() {
            self.since = None;
        }
        beyond.len()
    }

    /// Gives up on the open gaps: returns every held message, in seq order,
    /// for the ring (streams read what is missing from storage).
    pub(super) fn release(&mut self) -> Vec<(u64, Bytes)> {
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        self.since = None;
        if let Some((&newest, _)) = held.last_key_value() {
            self.through = Some(self.through.map_or(newest, |t| t.max(newest)));
            self.pushed = self.pushed.max(newest);
        }
        held.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(seqs: &[u64]) -> Vec<(u64, Bytes)> {
        seqs.iter()
            .map(|s| (*s, Bytes::from(format!("m{s}"))))
            .collect()
    }

    fn seqs(ready: &[(u64, Bytes)]) -> Vec<u64> {
        ready.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn before_start_everything_goes_in_as_it_comes() {
        let mut order = Reorder::default();
        assert_eq!(seqs(&order.accept(&msgs(&[5, 3]), 1 << 20)), vec![5, 3]);
        // Started below what already went in: ordering starts after it.
        order.start(2);
        assert_eq!(seqs(&order.accept(&msgs(&[4, 6]), 1 << 20)), vec![6]);
    }

    #[test]
    fn a_late_message_releases_the_held_ones_in_order() {
        let mut order = Reorder::default();
        order.start(10);
        assert!(order.accept(&msgs(&[12, 13]), 1 << 20).is_empty());
        assert!(order.holding());
        assert_eq!(order.overdue(Duration::ZERO), Some((10, 1)));
        assert_eq!(seqs(&order.accept(&msgs(&[11]), 1 << 20)), vec![11, 12, 13]);
        assert!(!order.holding());
        // Duplicates and old seqs are dropped.
        assert!(order.accept(&msgs(&[12, 13]), 1 << 20).is_empty());
        assert_eq!(seqs(&order.accept(&msgs(&[14]), 1 << 20)), vec![14]);
    }

    #[test]
    fn past_the_byte_bound_held_messages_go_in_as_they_are() {
        let mut order = Reorder::default();
        order.start(0);
        assert!(order.accept(&msgs(&[2]), 4).is_empty());
        assert_eq!(seqs(&order.accept(&msgs(&[3, 5]), 4)), vec![2, 3, 5]);
        assert!(!order.holding());
        assert_eq!(seqs(&order.accept(&msgs(&[4, 6]), 4)), vec![6]);
    }

    #[test]
    fn held_messages_storage_does_not_have_are_dropped() {
        let mut order = Reorder::default();
        order.start(1);
        assert!(order.accept(&msgs(&[3, 9_000]), 1 << 20).is_empty());
        assert_eq!(order.drop_beyond(3), 1);
        assert!(order.holding());
        assert_eq!(seqs(&order.accept(&msgs(&[2]), 1 << 20)), vec![2, 3]);
        assert!(!order.holding());
        assert_eq!(order.overdue(Duration::ZERO), None);
        assert!(order.accept(&msgs(&[5]), 1 << 20).is_empty());
        assert_eq!(order.drop_beyond(4), 1);
        assert!(!order.holding());
        assert_eq!(order.overdue(Duration::ZERO), None);
    }

    #[test]
    fn release_gives_up_on_the_gap() {
        let mut order = Reorder::default();
        order.start(1);
        assert!(order.accept(&msgs(&[4, 3]), 1 << 20).is_empty());
        assert_eq!(order.overdue(Duration::from_secs(60)), None);
        assert_eq!(seqs(&order.release()), vec![3, 4]);
        assert_eq!(seqs(&order.accept(&msgs(&[2, 5]), 1 << 20)), vec![5]);
    }
}
