//! Following a connection's handshake in the bytes it sends: the HTTP/2
//! preface and one whole frame, or an HTTP/1.1 request head.

use std::io;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest first HTTP/2 frame a handshake may carry: the protocol's
/// default SETTINGS_MAX_FRAME_SIZE, which the client may not exceed before
/// it has seen the server's settings.
const MAX_FIRST_FRAME: usize = 16_384;
/// The largest HTTP/1.1 request head (request line and headers) a
/// handshake may carry.
pub const MAX_HTTP1_HEAD: usize = 64 * 1024;

/// How far a connection's handshake has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Handshake {
    /// Every byte so far matched the HTTP/2 preface; this many did.
    Preface(usize),
    /// HTTP/2 preface read; the first frame's 9-byte header so far.
    FrameHeader([u8; 9], usize),
    /// The first frame's payload bytes still to come.
    FramePayload(usize),
    /// HTTP/1: the head's length so far, and how much of "\r\n\r\n" its
    /// last bytes match.
    Http1 {
        len: usize,
        matched: usize,
    },
    Done,
}

impl Handshake {
    /// At most how many more bytes the handshake needs, when that is known
    /// (HTTP/2; an HTTP/1.1 head ends where its blank line is).
    pub(super) fn wanted(&self) -> Option<usize> {
        match self {
            Handshake::Preface(n) => Some(PREFACE.len() - n),
            Handshake::FrameHeader(_, got) => Some(9 - got),
            Handshake::FramePayload(left) => Some(*left),
            Handshake::Http1 { .. } | Handshake::Done => None,
        }
    }

    /// Follows `data`, the next bytes read; true once the handshake is
    /// complete, an error when it cannot be.
    pub(super) fn feed(&mut self, data: &[u8]) -> io::Result<bool> {
        let mut data = data;
        while !data.is_empty() && *self != Handshake::Done {
            let n = self.step(data)?;
            data = &data[n..];
        }
        Ok(*self == Handshake::Done)
    }

    /// Consumes a prefix of `data` (at least one byte) and returns its
    /// length.
    fn step(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Handshake::Preface(n) => {
                if data[0] == PREFACE[*n] {
                    *n += 1;
                    if *n == PREFACE.len() {
                        *self = Handshake::FrameHeader([0; 9], 0);
                    }
                    Ok(1)
                } else {
                    // Not HTTP/2: the bytes so far start an HTTP/1 head.
                    let seen = *n;
                    *self = Handshake::Http1 { len: 0, matched: 0 };
                    for &b in &PREFACE[..seen] {
                        self.http1_byte(b)?;
                    }
                    Ok(0)
                }
            }
            Handshake::FrameHeader(header, got) => {
                let n = (9 - *got).min(data.len());
                header[*got..*got + n].copy_from_slice(&data[..n]);
                *got += n;
                if *got == 9 {
                    let len = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    if len > MAX_FIRST_FRAME {
                        return Err(invalid("first HTTP/2 frame too large"));
                    }
                    *self = if len == 0 {
                        Handshake::Done
                    } else {
                        Handshake::FramePayload(len)
                    };
                }
                Ok(n)
            }
            Handshake::FramePayload(left) => {
                let n = (*left).min(data.len());
                *left -= n;
                if *left == 0 {
                    *self = Handshake::Done;
                }
                Ok(n)
            }
            Handshake::Http1 { .. } => {
                for (i, &b) in data.iter().enumerate() {
                    self.http1_byte(b)?;
                    if *self == Handshake::Done {
                        return Ok(i + 1);
                    }
                }
                Ok(data.len())
            }
            Handshake::Done => Ok(data.len()),
        }
    }

    fn http1_byte(&mut self, b: u8) -> io::Result<()> {
        let Handshake::Http1 { len, matched } = self else {
            return Ok(());
        };
        *len += 1;
        if *len > MAX_HTTP1_HEAD {
            return Err(invalid("HTTP/1.1 request head too large"));
        }
        const END: &[u8; 4] = b"\r\n\r\n";
        *matched = if b == END[*matched] {
            *matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if *matched == END.len() {
            *self = Handshake::Done;
        }
        Ok(())
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> io::Result<bool> {
        let mut h = Handshake::Preface(0);
        let mut done = false;
        for chunk in chunks {
            done = h.feed(chunk)?;
        }
        Ok(done)
    }

    #[test]
    fn http2_needs_the_preface_and_one_whole_frame() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert!(!feed_all(&[&PREFACE[..10]]).unwrap());
        assert!(!feed_all(&[PREFACE]).unwrap());
        assert!(!feed_all(&[PREFACE, &settings[..12]]).unwrap());
        assert!(feed_all(&[PREFACE, &settings]).unwrap());
        // Byte by byte, and with more bytes after the frame.
        let mut all = PREFACE.to_vec();
        all.extend_from_slice(&settings);
        let chunks: Vec<&[u8]> = all.chunks(1).collect();
        assert!(feed_all(&chunks).unwrap());
        all.extend_from_slice(b"more frames");
        assert!(feed_all(&[&all]).unwrap());
        // An empty SETTINGS frame is enough.
        assert!(feed_all(&[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]]).unwrap());
        assert!(feed_all(&[PREFACE, &[1, 0, 0, 4, 0, 0, 0, 0, 0]]).is_err());
    }

    #[test]
    fn http1_needs_the_whole_head() {
        let head = b"POST /chat.v1.ChatService/SendMessage HTTP/1.1\r\nhost: x\r\n\r\nbody";
        assert!(!feed_all(&[&head[..20]]).unwrap());
        assert!(!feed_all(&[&head[..58]]).unwrap());
        assert!(feed_all(&[&head[..]]).unwrap());
        let chunks: Vec<&[u8]> = head.chunks(3).collect();
        assert!(feed_all(&chunks).unwrap());
        // "PRI" that turns out not to be the preface is an HTTP/1 head.
        assert!(!feed_all(&[b"PRI * HTTP/1.1\r\n"]).unwrap());
        assert!(feed_all(&[b"PRI * HTTP/1.1\r\n", b"\r\n"]).unwrap());
        // Line feeds alone do not end a head.
        assert!(!feed_all(&[b"GET / HTTP/1.1\n\n\n\n"]).unwrap());
        let endless = vec![b'a'; MAX_HTTP1_HEAD + 1];
        assert!(feed_all(&[&endless]).is_err());
    }
}
