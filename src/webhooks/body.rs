//! A claimed outbox row as the body of its webhook: `{"type", "timestamp", "data"}`, where `data` is the proto3 JSON of a `chat.v1.Event`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::domain::RoomName;
use crate::error::{Error, Result};
use crate::proto;
use crate::storage::{OutboxRow, Store};

/// The descriptor of `chat.v1.Event`, read once from the embedded
/// descriptor set (the one server reflection serves).
fn event_descriptor() -> Result<&'static MessageDescriptor> {
    static EVENT: OnceLock<Option<MessageDescriptor>> = OnceLock::new();
    EVENT
        .get_or_init(|| {
            DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
                .ok()?
                .get_message_by_name("chat.v1.Event")
        })
        .as_ref()
        .ok_or_else(|| Error::Internal("chat.v1.Event is not in the descriptor set".into()))
}

/// The bodies of `rows`' webhooks, in their order: `None` for an event
/// that is gone (its room has no event at that seq any more). The room
/// events are read in one go.
pub async fn bodies_of(store: &Store, rows: &[OutboxRow]) -> Result<Vec<Option<Vec<u8>>>> {
    let wanted: Vec<(RoomName, i64)> = rows
        .iter()
        .filter(|row| row.payload.is_none())
        .map(|row| (RoomName::from_stored(row.room.clone()), row.seq))
        .collect();
    let mut read: HashMap<(String, u64), proto::Event> = store
        .events_at(&wanted)
        .await?
        .iter()
        .map(|stored| {
            let event = proto::webhook_room_event(stored);
            ((event.room.clone(), event.seq), event)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let event = match &row.payload {
                Some(bytes) => proto::Event::decode(bytes.as_slice())
                    .map_err(|e| Error::Internal(format!("outbox event {}: {e}", row.id)))?,
                None => match read.remove(&(row.room.clone(), row.seq as u64)) {
                    Some(event) => event,
                    None => return Ok(None),
                },
            };
            let Some(inner) = &event.event else {
                return Ok(None);
            };
            render(
                proto::webhook_type(inner),
                row.created_micros,
                &event.encode_to_vec(),
            )
            .map(Some)
        })
        .collect()
}

/// `{"type": kind, "timestamp": RFC 3339 of at_micros, "data": the proto3
/// JSON of the encoded event}`.
fn render(kind: &str, at_micros: i64, encoded: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: String| Error::Internal(format!("a webhook body: {e}"));
    let data = DynamicMessage::decode(event_descriptor()?.clone(), encoded)
        .map_err(|e| bad(e.to_string()))?;
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(at_micros).unwrap_or(0));
    let data = serde_json::to_value(&data).map_err(|e| bad(e.to_string()))?;
    let body = serde_json::json!({
        "type": kind,
        "timestamp": humantime::format_rfc3339_micros(at).to_string(),
        "data": data,
    });
    serde_json::to_vec(&body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_the_proto3_json_of_the_event() {
        let event = proto::Event {
            room: "lobby".into(),
            seq: 0,
            event: Some(proto::event::Event::AccessGranted(proto::AccessChanged {
                user_ids: vec!["alice".into(), "bob".into()],
            })),
        };
        let body = render(
            "access.granted",
            1_700_000_000_123_456,
            &event.encode_to_vec(),
        )
        .expect("renders");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["type"], "access.granted");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["data"]["room"], "lobby");
        // proto3 JSON: lowerCamelCase names, defaults left out.
        assert_eq!(
            json["data"]["accessGranted"]["userIds"],
            serde_json::json!(["alice", "bob"])
        );
        assert!(json["data"].get("seq").is_none());
    }
}
