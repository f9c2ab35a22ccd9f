//! The server as a whole: graceful shutdown, and server reflection.

use std::collections::HashSet;

use tonic::Code;

use crate::helpers::*;

pub async fn graceful_shutdown_ends_open_streams(backend: Backend) {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::create(backend).await;
    // A grace period longer than any test step: if an open stream held
    // shutdown, `within` below would fail instead of waiting it out.
    let server = TestServer::start_with(config(&db.url, &["--shutdown-grace", "60s"])).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut a, _) = join(&mut alice, "g", None).await;
    let (mut b, _) = join(&mut bob, "g2", None).await;
    let sent = send(&mut alice, "g", "before shutdown").await;
    assert_eq!(next_message(&mut a).await, sent);
    // A health watcher: its stream never ends on its own.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = within(health.watch(tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    let first = within(watch.next()).await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let done = tokio::spawn(server.shutdown());
    for stream in [&mut a, &mut b] {
        // Presence or nothing, then UNAVAILABLE telling the client to rejoin.
        loop {
            match within(stream.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    break;
                }
            }
        }
    }
    // Health says NOT_SERVING, then the watch ends too.
    let mut saw_not_serving = false;
    loop {
        match within(watch.next()).await {
            Some(Ok(r)) => saw_not_serving |= r.status == ServingStatus::NotServing as i32,
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
            None => break,
        }
    }
    assert!(saw_not_serving);
    within(done).await.unwrap().unwrap();
}

/// Lists services and resolves `symbols` through one version of the
/// reflection protocol (`v1` or `v1alpha`: same messages, other types).
macro_rules! check_reflection {
    ($version:ident, $channel:expr, $symbols:expr) => {{
        use tokio_stream::StreamExt;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($channel);
        let mut ask = async |message_request| {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut responses =
                within(client.server_reflection_info(tokio_stream::iter([request])))
                    .await
                    .unwrap()
                    .into_inner();
            within(responses.next()).await.unwrap().unwrap()
        };
        let response = ask(MessageRequest::ListServices(String::new())).await;
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected {response:?}");
        };
        let names: HashSet<_> = list.service.into_iter().map(|s| s.name).collect();
        for symbol in $symbols {
            assert!(names.contains(symbol), "{symbol} not in {names:?}");
            // The descriptors resolve too.
            let response = ask(MessageRequest::FileContainingSymbol(symbol.into())).await;
            assert!(
                matches!(
                    response.message_response,
                    Some(MessageResponse::FileDescriptorResponse(_))
                ),
                "{symbol}: {response:?}"
            );
        }
    }};
}

pub async fn reflection_lists_services_on_v1_and_v1alpha(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let symbols = ["chat.v1.ChatService", "grpc.health.v1.Health"];
    check_reflection!(v1, server.channel().await, symbols);
    check_reflection!(v1alpha, server.channel().await, symbols);
    server.shutdown().await.unwrap();
}
