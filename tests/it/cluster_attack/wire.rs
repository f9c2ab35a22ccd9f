//! What an attacker (or a compromised node, which holds the key) puts on NATS: the wire messages and an independent implementation of the documented envelope.
//!
//! The envelope, as README "Securing a cluster" documents it: `version (1) |
//! key id (4) | nonce (24) | XChaCha20-Poly1305(node id (8) | send time ms
//! (8, big-endian) | payload) | tag (16)`, the associated data being the
//! version, the key id and the subject; keys derived with HKDF-SHA256
//! (salt "chatd cluster key v1", infos "aead", "key id", "subjects"); a
//! room's subject token is the first 16 bytes of HMAC-SHA256(subjects key,
//! room name) in hex.

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse};
use prost::Message as _;
use ring::{hkdf, hmac};

/// One message of a notice.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub event: Vec<u8>,
}

/// A notice of committed messages (`<cluster>.room.<token>.m`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Notice {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireMember {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(string, tag = "2")]
    pub display_name: String,
}

/// A node's members of a room (`.p`, and answers to sync requests).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<WireMember>,
}

/// A revocation (`<cluster>.access.revoked`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Revocation {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(string, repeated, tag = "2")]
    pub user_ids: Vec<String>,
}

/// A presence sync request (`<cluster>.sync`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncRequest {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(string, tag = "2")]
    pub reply: String,
}

/// A `JoinRoomResponse` carrying a message of `room` from `sender`.
pub fn message_event(room: &str, seq: u64, sender: &str, text: &str) -> Vec<u8> {
    JoinRoomResponse {
        event: Some(Event::Message(proto::Message {
            room: room.into(),
            seq,
            sender: Some(proto::Member {
                user_id: sender.into(),
                display_name: sender.into(),
            }),
            content_type: proto::ContentType::Text as i32,
            content: text.into(),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

/// A notice of one message.
pub fn notice(room: &str, seq: u64, sender: &str, text: &str) -> Vec<u8> {
    Notice {
        entries: vec![Entry {
            seq,
            event: message_event(room, seq, sender, text),
        }],
    }
    .encode_to_vec()
}

/// HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// What a cluster key derives, as the documentation says.
pub struct TestKey {
    aead: XChaCha20Poly1305,
    pub id: [u8; 4],
    subjects: hmac::Key,
}

impl TestKey {
    pub fn new(base64: &str) -> TestKey {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .expect("base64 key");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"chatd cluster key v1").extract(&secret);
        let mut aead = [0u8; 32];
        prk.expand(&[b"aead"], Len(32))
            .unwrap()
            .fill(&mut aead)
            .unwrap();
        let mut id = [0u8; 4];
        prk.expand(&[b"key id"], Len(4))
            .unwrap()
            .fill(&mut id)
            .unwrap();
        let subjects: hmac::Key = prk
            .expand(&[b"subjects"], hmac::HMAC_SHA256)
            .unwrap()
            .into();
        TestKey {
            aead: XChaCha20Poly1305::new(&aead.into()),
            id,
            subjects,
        }
    }

    /// A room's subject token.
    pub fn token(&self, room: &str) -> String {
        let tag = hmac::sign(&self.subjects, room.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `payload` sealed for `subject` as node `node`, sent now.
    pub fn seal(&self, subject: &str, node: [u8; 8], payload: &[u8]) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).unwrap();
        let mut out = vec![1u8];
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let header = out.len();
        out.extend_from_slice(&node);
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(payload);
        let mut aad = vec![1u8];
        aad.extend_from_slice(&self.id);
        aad.extend_from_slice(subject.as_bytes());
        let tag = self
            .aead
            .encrypt_in_place_detached(&XNonce::from(nonce), &aad, &mut out[header..])
            .unwrap();
        out.extend_from_slice(&tag);
        out
    }
}
