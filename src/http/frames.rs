//! The one reader of gRPC framing: each message is a 5-byte prefix (a flag
//! byte and a big-endian u32 length) and then that many bytes. [`Frames`]
//! follows the prefixes through a body's bytes as they pass, in chunks cut
//! anywhere, and tells where each message starts and ends.

/// A point in the framing that a chunk of bytes passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A message's prefix is complete: its flag byte (0 uncompressed, 1
    /// compressed) and the length it announces.
    Start { flag: u8, len: u32 },
    /// The message's last byte passed (right after its start for an empty
    /// one).
    End,
}

/// Where a body's bytes stand in the gRPC framing.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to pass before the next prefix.
    skip: u64,
}

impl Frames {
    /// Follows the framing through `data`, handing each [`Event`] to `on`
    /// in order; stops at the first error `on` returns.
    pub(crate) fn feed<E>(
        &mut self,
        mut data: &[u8],
        mut on: impl FnMut(Event) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 {
                    on(Event::End)?;
                }
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [flag, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]);
                on(Event::Start { flag, len })?;
                self.skip = u64::from(len);
                if len == 0 {
                    on(Event::End)?;
                }
            }
        }
        Ok(())
    }

    /// How many messages start in `data`.
    pub(crate) fn count_starts(&mut self, data: &[u8]) -> u64 {
        let mut started = 0;
        let _ = self.feed(data, |event| {
            if matches!(event, Event::Start { .. }) {
                started += 1;
            }
            Ok::<(), ()>(())
        });
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_chunks() {
        let mut m = Frames::default();
        // Two messages of 3 and 0 bytes, then a third split everywhere.
        assert_eq!(m.count_starts(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0]), 2);
        assert_eq!(m.count_starts(&[0, 0]), 0);
        assert_eq!(m.count_starts(&[0, 0, 2]), 1);
        assert_eq!(m.count_starts(&[9]), 0);
        assert_eq!(m.count_starts(&[9, 0, 0, 0, 0, 1]), 1);
    }

    #[test]
    fn starts_and_ends_in_order() {
        let mut m = Frames::default();
        let mut events = Vec::new();
        let mut record = |e| {
            events.push(e);
            Ok::<(), ()>(())
        };
        m.feed(&[1, 0, 0, 0, 2, 7], &mut record).unwrap();
        m.feed(&[7, 0, 0, 0, 0, 0], &mut record).unwrap();
        assert_eq!(
            events,
            [
                Event::Start { flag: 1, len: 2 },
                Event::End,
                Event::Start { flag: 0, len: 0 },
                Event::End
            ]
        );
    }
}
