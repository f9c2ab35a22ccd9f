//! Sealed cluster traffic: every payload between nodes is encrypted and authenticated with the cluster key.
//!
//! `CHAT_CLUSTER_KEY` (32 random bytes) is never used directly: HKDF-SHA256
//! derives from it an XChaCha20-Poly1305 key, an HMAC-SHA256 key for the
//! room tokens of NATS subjects ([`Keyring::room_token`]) and a 4-byte key
//! id that tells a receiver which key sealed a message.
//!
//! The envelope is `version (1) | key id (4) | nonce (24) | ciphertext |
//! tag (16)`. The nonce is random per message (192 bits: no coordination
//! between nodes sharing a key, for any number of messages). The
//! associated data is the version, the key id and the exact NATS subject
//! the message is published on (for an answer to a request, the reply
//! subject): a sealed message replayed on another subject does not open.
//! The plaintext starts with the sender's node id (8 bytes) and its send
//! time (milliseconds since the Unix epoch, 8 bytes, big-endian); a message
//! whose send time is more than [`MAX_SKEW`] from the receiver's clock is
//! refused as stale.
//!
//! A second key (`CHAT_CLUSTER_KEY_PREVIOUS`) is accepted for opening while
//! keys are rotated; sealing always uses the current key.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key as AeadKey, Tag, XChaCha20Poly1305, XNonce};
use ring::{hkdf, hmac};

use crate::error::{Error, Result};

/// The envelope's version byte.
const VERSION: u8 = 1;
/// Bytes of the key id.
const KEY_ID_LEN: usize = 4;
/// Bytes of the nonce (XChaCha20).
const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// Version, key id and nonce.
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Bytes of a node id.
pub(crate) const NODE_LEN: usize = 8;
/// Node id and send time, before the payload.
const PREFIX_LEN: usize = NODE_LEN + 8;
/// Bytes a sealed message adds to its payload.
pub(crate) const OVERHEAD: usize = HEADER_LEN + PREFIX_LEN + TAG_LEN;
/// How far a message's send time may be from the receiver's clock: node
/// clocks must agree within it, and a captured message can be replayed
/// only within it.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// The bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// HKDF salt: a fixed label, so keys derived here differ from any other
/// use of the same bytes.
const SALT: &[u8] = b"chatd cluster key v1";

/// A node's id: random per start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) [u8; NODE_LEN]);

impl NodeId {
    /// A fresh random id.
    pub(crate) fn random() -> Result<NodeId> {
        let mut bytes = [0u8; NODE_LEN];
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("random node id: {e}")))?;
        Ok(NodeId(bytes))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key id as shown in logs (hex).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyId([u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What one cluster key derives.
struct Key {
    id: KeyId,
    aead: XChaCha20Poly1305,
    /// HMAC-SHA256 key for room tokens.
    subjects: hmac::Key,
}

/// HKDF output length for [`hkdf::Prk::expand`].
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Key {
    fn derive(secret: &[u8; KEY_LEN]) -> Result<Key> {
        let failed = |_| Error::Internal("deriving the cluster keys failed".into());
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let mut aead = [0u8; 32];
        prk.expand(&[b"aead"], Len(aead.len()))
            .and_then(|okm| okm.fill(&mut aead))
            .map_err(failed)?;
        let mut id = [0u8; KEY_ID_LEN];
        prk.expand(&[b"key id"], Len(id.len()))
            .and_then(|okm| okm.fill(&mut id))
            .map_err(failed)?;
        let subjects: hmac::Key = prk
            .expand(&[b"subjects"], hmac::HMAC_SHA256)
            .map_err(failed)?
            .into();
        Ok(Key {
            id: KeyId(id),
            aead: XChaCha20Poly1305::new(&AeadKey::from(aead)),
            subjects,
        })
    }

    /// The associated data: version, key id, subject.
    fn aad(&self, subject: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(1 + KEY_ID_LEN + subject.len());
        aad.push(VERSION);
        aad.extend_from_slice(&self.id.0);
        aad.extend_from_slice(subject.as_bytes());
        aad
    }

    fn room_token(&self, room: &str) -> String {
        let tag = hmac::sign(&self.subjects, room.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not sealed with a key this node holds, altered, truncated, or sealed
    /// for another subject; `seen` is the key id it names, if it has one.
    Seal { seen: Option<KeyId> },
    /// Opened, but its send time is more than [`MAX_SKEW`] away.
    Stale,
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An opened message.
#[derive(Clone, Debug)]
pub(crate) struct Opened {
    /// The sending node.
    pub(crate) node: NodeId,
    /// The sender's clock when it sealed the message, ms since the epoch.
    pub(crate) sent_ms: u64,
    pub(crate) payload: Bytes,
}

/// The cluster's keys: the current one seals and opens, the previous one
/// (during a rotation) only opens.
pub(crate) struct Keyring {
    current: Key,
    previous: Option<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring(current {})", self.current.id)
    }
}

/// Which key a room token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Current,
    Previous,
}

impl Keyring {
    pub(crate) fn new(current: &[u8; KEY_LEN], previous: Option<&[u8; KEY_LEN]>) -> Result<Self> {
        Ok(Keyring {
            current: Key::derive(current)?,
            previous: previous.map(Key::derive).transpose()?,
        })
    }

    /// The current key's id, for logs.
    pub(crate) fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// Whether a previous key is set.
    pub(crate) fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// A room's subject token under the current or previous key: 128 bits
    /// of HMAC-SHA256 of its name, in hex (the name never appears on NATS).
    pub(crate) fn room_token(&self, which: Which, room: &str) -> Option<String> {
        match which {
            Which::Current => Some(self.current.room_token(room)),
            Which::Previous => self.previous.as_ref().map(|k| k.room_token(room)),
        }
    }

    /// Seals `payload` from `node` at `now_ms` for `subject`.
    pub(crate) fn seal(
        &self,
        subject: &str,
        node: NodeId,
        now_ms: u64,
        payload: &[u8],
    ) -> Result<Bytes> {
        let key = &self.current;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("random nonce: {e}")))?;
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&node.0);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let tag = key
            .aead
            .encrypt_in_place_detached(
                &XNonce::from(nonce),
                &key.aad(subject),
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| Error::Internal("sealing a cluster message failed".into()))?;
        out.extend_from_slice(&tag);
        Ok(Bytes::from(out))
    }

    /// Opens a message received on `subject`, refusing it unless it was
    /// sealed for that subject with a key this node holds and sent within
    /// [`MAX_SKEW`] of `now_ms`.
    pub(crate) fn open(
        &self,
        subject: &str,
        sealed: &[u8],
        now_ms: u64,
    ) -> std::result::Result<Opened, Refusal> {
        if sealed.len() < HEADER_LEN || sealed[0] != VERSION {
            return Err(Refusal::Seal { seen: None });
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&sealed[1..1 + KEY_ID_LEN]);
        let id = KeyId(id);
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or(Refusal::Seal { seen: Some(id) })?;
        if sealed.len() < OVERHEAD {
            return Err(Refusal::Seal { seen: Some(id) });
        }
        let refused = Refusal::Seal { seen: Some(id) };
        let nonce: [u8; NONCE_LEN] = sealed[1 + KEY_ID_LEN..HEADER_LEN]
            .try_into()
            .map_err(|_| refused)?;
        let (body, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| refused)?;
        let mut plain = BytesMut::from(body);
        key.aead
            .decrypt_in_place_detached(
                &XNonce::from(nonce),
                &key.aad(subject),
                &mut plain,
                &Tag::from(tag),
            )
            .map_err(|_| refused)?;
        let mut node = [0u8; NODE_LEN];
        node.copy_from_slice(&plain[..NODE_LEN]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&plain[NODE_LEN..PREFIX_LEN]);
        let sent_ms = u64::from_be_bytes(sent);
        if now_ms.abs_diff(sent_ms) > MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Stale);
        }
        Ok(Opened {
            node: NodeId(node),
            sent_ms,
            payload: plain.freeze().slice(PREFIX_LEN..),
        })
    }
}

/// A fresh cluster key in standard base64 (`chatd cluster-key`).
pub fn new_key() -> Result<String> {
    use base64::Engine as _;
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| Error::Internal(format!("random key: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; KEY_LEN] = [1; KEY_LEN];
    const K2: [u8; KEY_LEN] = [2; KEY_LEN];
    const NOW: u64 = 1_700_000_000_000;
    const SUBJECT: &str = "demo.room.00112233445566778899aabbccddeeff.m";

    fn node() -> NodeId {
        NodeId(*b"node-one")
    }

    #[test]
    fn a_sealed_message_opens_with_its_subject_and_key() {
        let keys = Keyring::new(&K1, None).unwrap();
        let sealed = keys.seal(SUBJECT, node(), NOW, b"hello").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 5);
        let opened = keys.open(SUBJECT, &sealed, NOW + 1000).unwrap();
        assert_eq!(opened.node, node());
        assert_eq!(opened.sent_ms, NOW);
        assert_eq!(&opened.payload[..], b"hello");
        // An empty payload too; and nonces differ per message.
        let empty = keys.seal(SUBJECT, node(), NOW, b"").unwrap();
        assert!(keys.open(SUBJECT, &empty, NOW).unwrap().payload.is_empty());
        assert_ne!(empty[..HEADER_LEN], sealed[..HEADER_LEN]);
    }

    #[test]
    fn every_bit_flipped_anywhere_is_refused() {
        let keys = Keyring::new(&K1, None).unwrap();
        let sealed = keys.seal(SUBJECT, node(), NOW, b"some payload").unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.to_vec();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(keys.open(SUBJECT, &bad, NOW), Err(Refusal::Seal { .. })),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncated_unsealed_and_other_subjects_are_refused() {
        let keys = Keyring::new(&K1, None).unwrap();
        let sealed = keys.seal(SUBJECT, node(), NOW, b"payload").unwrap();
        for len in 0..sealed.len() {
            assert!(keys.open(SUBJECT, &sealed[..len], NOW).is_err(), "{len}");
        }
        let mut longer = sealed.to_vec();
        longer.push(0);
        assert!(keys.open(SUBJECT, &longer, NOW).is_err());
        assert!(keys.open(SUBJECT, b"plain text notice", NOW).is_err());
        let other = "demo.room.ffeeddccbbaa99887766554433221100.m";
        assert!(matches!(
            keys.open(other, &sealed, NOW),
            Err(Refusal::Seal { .. })
        ));
    }

    #[test]
    fn another_key_is_refused_naming_the_key_id_it_saw() {
        let ours = Keyring::new(&K1, None).unwrap();
        let theirs = Keyring::new(&K2, None).unwrap();
        let sealed = theirs.seal(SUBJECT, node(), NOW, b"x").unwrap();
        assert_eq!(
            ours.open(SUBJECT, &sealed, NOW).unwrap_err(),
            Refusal::Seal {
                seen: Some(theirs.current_id())
            }
        );
        assert_ne!(ours.current_id(), theirs.current_id());
        assert_ne!(
            ours.room_token(Which::Current, "lobby"),
            theirs.room_token(Which::Current, "lobby")
        );
    }

    #[test]
    fn the_previous_key_opens_but_never_seals() {
        let rotating = Keyring::new(&K2, Some(&K1)).unwrap();
        let old = Keyring::new(&K1, None).unwrap();
        let from_old = old.seal(SUBJECT, node(), NOW, b"old").unwrap();
        assert_eq!(
            &rotating.open(SUBJECT, &from_old, NOW).unwrap().payload[..],
            b"old"
        );
        let from_rotating = rotating.seal(SUBJECT, node(), NOW, b"new").unwrap();
        assert!(old.open(SUBJECT, &from_rotating, NOW).is_err());
        let new = Keyring::new(&K2, None).unwrap();
        assert!(new.open(SUBJECT, &from_rotating, NOW).is_ok());
        assert_eq!(
            rotating.room_token(Which::Previous, "lobby"),
            old.room_token(Which::Current, "lobby")
        );
        assert_eq!(new.room_token(Which::Previous, "lobby"), None);
    }

    #[test]
    fn messages_outside_the_skew_are_stale() {
        let keys = Keyring::new(&K1, None).unwrap();
        let skew = MAX_SKEW.as_millis() as u64;
        let sealed = keys.seal(SUBJECT, node(), NOW, b"x").unwrap();
        assert!(keys.open(SUBJECT, &sealed, NOW + skew).is_ok());
        assert!(keys.open(SUBJECT, &sealed, NOW - skew).is_ok());
        assert_eq!(
            keys.open(SUBJECT, &sealed, NOW + skew + 1).unwrap_err(),
            Refusal::Stale
        );
        assert_eq!(
            keys.open(SUBJECT, &sealed, NOW - skew - 1).unwrap_err(),
            Refusal::Stale
        );
    }

    #[test]
    fn room_tokens_are_128_bit_hex_and_differ_per_room() {
        let keys = Keyring::new(&K1, None).unwrap();
        let a = keys.room_token(Which::Current, "dm:alice:bob").unwrap();
        let b = keys.room_token(Which::Current, "dm:alice:bob2").unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!a.contains("alice"));
    }

    #[test]
    fn new_keys_are_32_bytes_of_base64() {
        use base64::Engine as _;
        let key = new_key().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .unwrap();
        assert_eq!(bytes.len(), KEY_LEN);
        assert_ne!(key, new_key().unwrap());
    }
}
