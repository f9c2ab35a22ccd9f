//! Bearer tokens: required, checked, and the only source of identity.

use std::time::Duration;

use chatd::proto;
use tonic::Code;

use crate::chat::support::assert_invalid;
use crate::helpers::*;

pub async fn tokens_are_required_and_checked(backend: Backend) {
    use chatd::auth::Keys;
    use chatd::proto::chat_service_client::ChatServiceClient;

    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let list = proto::ListMembersRequest {
        room: "lobby".into(),
        ..Default::default()
    };

    // No token at all.
    let mut anonymous = ChatServiceClient::new(server.channel().await);
    assert_invalid(
        within(anonymous.list_members(list.clone())).await,
        Code::Unauthenticated,
        "authorization",
    );

    let forged = Keys::new(b"some-other-secret-0123456789")
        .mint("alice", None, Some(Duration::from_secs(3600)))
        .unwrap();
    let expired = {
        // exp an hour ago, signed with the right secret.
        use jsonwebtoken::{EncodingKey, Header, encode};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json_like(&[("sub", "\"alice\""), ("exp", &(now - 3600).to_string())]);
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let no_sub = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = serde_json_like(&[("name", "\"Alice\"")]);
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (header, why) in [
        ("Bearer not.a.jwt".to_string(), "malformed"),
        ("Basic dXNlcjpwYXNz".to_string(), "wrong scheme"),
        (format!("Bearer {forged}"), "forged"),
        (format!("Bearer {expired}"), "expired"),
        (format!("Bearer {no_sub}"), "no sub"),
        ("Bearer ".to_string(), "empty"),
    ] {
        let mut request = tonic::Request::new(list.clone());
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let status = within(anonymous.list_members(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{why}: {status:?}");
    }

    // A good token works, and identity comes from it, not from the body.
    let token = server
        .keys
        .mint("carol", Some("Carol C."), Some(Duration::from_secs(60)))
        .unwrap();
    let mut carol =
        ChatServiceClient::with_interceptor(server.channel().await, Bearer::new(&token));
    let sent = send(&mut carol, "lobby", "hello").await;
    let sender = sent.sender.unwrap();
    assert_eq!(
        (sender.user_id.as_str(), sender.display_name.as_str()),
        ("carol", "Carol C.")
    );

    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "chat.v1.ChatService"] {
        let status = within(health.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    server.shutdown().await.unwrap();
}

/// A JSON object from already-encoded values (the tests avoid a serde_json
/// dependency for two tokens).
fn serde_json_like(fields: &[(&str, &str)]) -> std::collections::BTreeMap<String, RawJson> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), RawJson(v.to_string())))
        .collect()
}

struct RawJson(String);

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(text) = self.0.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            s.serialize_str(text)
        } else {
            s.serialize_u64(self.0.parse().map_err(serde::ser::Error::custom)?)
        }
    }
}
