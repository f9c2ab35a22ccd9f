//! Bearer-token identity: HS256 JWTs verified against one secret.
//!
//! The secret comes from `CHAT_JWT_SECRET`, or from a 0600 file in the data
//! directory that chatd creates on first start. `chatd token` signs with the
//! same secret, so a newcomer can mint a token and call the service at once.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::domain::Identity;
use crate::error::{Error, Result};

/// The shortest secret chatd accepts, in bytes.
pub const SECRET_MIN_BYTES: usize = 16;
/// The longest `sub` claim, in bytes.
pub const USER_ID_MAX_BYTES: usize = 128;
/// The longest `name` claim, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
/// The file in the data directory that holds a generated secret.
pub const SECRET_FILE: &str = "jwt-secret";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked when present, not required.
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.leeway = 5;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                Error::Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "authorization: token has expired".into(),
                    ErrorKind::InvalidSignature => {
                        "authorization: token signature is invalid".into()
                    }
                    ErrorKind::InvalidAlgorithm => {
                        "authorization: token must be signed with HS256".into()
                    }
                    _ => "authorization: token is malformed".into(),
                })
            })?;
        identity_from_claims(data.claims)
    }

    /// Reads `authorization: Bearer <token>` from request metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity> {
        let value = metadata
            .get("authorization")
            .ok_or_else(|| Error::Unauthenticated("authorization: missing bearer token".into()))?;
        let value = value.to_str().map_err(|_| {
            Error::Unauthenticated("authorization: header is not valid ASCII".into())
        })?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Error::Unauthenticated(
                    "authorization: expected `Bearer <token>`".into(),
                ));
            }
        };
        self.verify(token)
    }

    /// Signs a token for `user_id`, valid for `ttl` when given.
    pub fn mint(&self, user_id: &str, name: Option<&str>, ttl: Option<Duration>) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Internal(format!("clock before 1970: {e}")))?
            .as_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            name: name.map(str::to_owned),
            exp: ttl.map(|t| now.saturating_add(t.as_secs())),
            iat: Some(now),
        };
        // Refuse to mint what verify would refuse.
        identity_from_claims(Claims {
            sub: claims.sub.clone(),
            name: claims.name.clone(),
            exp: None,
            iat: None,
        })
        .map_err(|e| Error::Config(e.to_string()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }
}

fn identity_from_claims(claims: Claims) -> Result<Identity> {
    let sub = claims.sub;
    if sub.trim().is_empty() {
        return Err(Error::Unauthenticated("token: `sub` claim is empty".into()));
    }
    if sub.len() > USER_ID_MAX_BYTES || sub.chars().any(char::is_control) {
        return Err(Error::Unauthenticated(format!(
            "token: `sub` claim must be at most {USER_ID_MAX_BYTES} bytes without control characters"
        )));
    }
    let name = match claims.name.as_deref().map(str::trim) {
        None | Some("") => sub.clone(),
        Some(name) => {
            if name.chars().count() > DISPLAY_NAME_MAX_CHARS || name.chars().any(char::is_control) {
                return Err(Error::Unauthenticated(format!(
                    "token: `name` claim must be at most {DISPLAY_NAME_MAX_CHARS} characters without control characters"
                )));
            }
            name.to_owned()
        }
    };
    Ok(Identity {
        user_id: sub.into(),
        display_name: name.into(),
    })
}

/// A tonic interceptor that verifies the bearer token and leaves the
/// caller's [`Identity`] in the request extensions.
#[derive(Clone, Debug)]
pub struct Authenticator(pub Arc<Keys>);

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let identity = self.0.authenticate(request.metadata())?;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// Where a secret came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

/// The configured secret, or the one kept in `data_dir`, created on first
/// use with mode 0600.
pub fn load_secret(configured: Option<&str>, data_dir: &Path) -> Result<(Vec<u8>, SecretSource)> {
    if let Some(secret) = configured {
        if secret.len() < SECRET_MIN_BYTES {
            return Err(Error::Config(format!(
                "CHAT_JWT_SECRET: must be at least {SECRET_MIN_BYTES} bytes"
            )));
        }
        return Ok((secret.as_bytes().to_vec(), SecretSource::Env));
    }
    let path = data_dir.join(SECRET_FILE);
    let config_err = |what: &str, e: std::io::Error| {
        Error::Config(format!(
            "CHAT_DATA_DIR: cannot {what} {}: {e}",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() < SECRET_MIN_BYTES {
                return Err(Error::Config(format!(
                    "{}: secret must be at least {SECRET_MIN_BYTES} bytes; delete the file to generate a new one",
                    path.display()
                )));
            }
            Ok((secret.as_bytes().to_vec(), SecretSource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| config_err("create the directory of", e))?;
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw)
                .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
            let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&path) {
                Ok(mut file) => {
                    file.write_all(secret.as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| config_err("write", e))?;
                    Ok((secret.into_bytes(), SecretSource::Generated(path)))
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_secret(None, data_dir)
                }
                Err(e) => Err(config_err("create", e)),
            }
        }
        Err(e) => Err(config_err("read", e)),
    }
}
