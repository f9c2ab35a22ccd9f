//! The gRPC services: proto in, domain through, proto out, and nothing
//! else.
//!
//! - `chat.rs`: chat.v1.ChatService.
//! - `admin.rs`: chat.v1.AdminService (the app backend's API).
//! - `authenticate.rs`: the token check in front of both.

mod admin;
mod authenticate;
mod chat;

pub(crate) use self::admin::AdminApi;
pub(crate) use self::authenticate::Authenticator;
pub(crate) use self::chat::ChatApi;
