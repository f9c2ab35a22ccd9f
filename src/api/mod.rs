//! The gRPC services' edge: the token check every call passes.

mod authenticate;

pub use self::authenticate::Authenticator;
