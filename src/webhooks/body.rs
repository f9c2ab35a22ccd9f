//! A claimed outbox row as the body of its webhook: `{"type", "timestamp", "data"}`, where `data` is the proto3 JSON of a `chat.v1.Event`.

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

/// The event of `row`: carried in the row, or read from its room's
/// history. `None` when the room has no event at that seq any more.
async fn event_of(store: &Store, row: &OutboxRow) -> Result<Option<proto::Event>> {
    if let Some(bytes) = &row.payload {
        let event = proto::Event::decode(bytes.as_slice())
            .map_err(|e| Error::Internal(format!("outbox event {}: {e}", row.id)))?;
        return Ok(Some(event));
    }
    let room = RoomName::from_stored(row.room.clone());
    Ok(store
        .event_at(&room, row.seq)
        .await?
        .map(|stored| proto::webhook_room_event(&stored)))
}

/// The JSON body of `row`'s webhook; `None` when there is nothing to send
/// (its event is gone).
pub async fn body_of(store: &Store, row: &OutboxRow) -> Result<Option<Vec<u8>>> {
    let Some(event) = event_of(store, row).await? else {
        return Ok(None);
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
}

/// `{"type": kind, "timestamp": RFC 3339 of at_micros, "data": the proto3
/// JSON of the encoded event}`.
fn render(kind: &str, at_micros: i64, encoded: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: String| Error::Internal(format!("a webhook body: {e}"));
    let data = DynamicMessage::decode(event_descriptor()?.clone(), encoded)
        .map_err(|e| bad(e.to_string()))?;
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(at_micros).unwrap_or(0));
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
