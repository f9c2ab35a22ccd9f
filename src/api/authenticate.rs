//! The token check in front of ChatService and AdminService.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::Keys;
use crate::net::Connection;

/// A tonic interceptor that verifies the bearer token and leaves the
/// caller's [`Identity`] in the request extensions. A verified token also
/// marks the request's connection as authenticated, which lets it keep its
/// slot past `CHAT_FIRST_CALL_TIMEOUT` (see the serve loop, `serve/mod.rs`).
#[derive(Clone, Debug)]
pub struct Authenticator(pub Arc<Keys>);

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let identity = self.0.authenticate(request.metadata())?;
        if let Some(connection) = request.extensions().get::<Arc<Connection>>() {
            connection.mark_authenticated();
        }
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}
