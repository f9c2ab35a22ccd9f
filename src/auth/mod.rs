//! Bearer-token identity: HS256 JWTs verified against one secret, and
//! RS256 / ES256 / EdDSA JWTs from an identity provider ([`jwks`]).
//!
//! The token's header decides: `alg: HS256` is checked against the secret,
//! RS256, ES256 and EdDSA against the provider key its `kid` names, which
//! must be a key of that algorithm. A token must carry `exp` (unless
//! [`TokenPolicy::allow_no_exp`]), may carry `nbf`, and is checked against
//! both with [`CLOCK_LEEWAY_SECS`] of leeway. `iss` and `aud` must match
//! `CHAT_JWT_ISSUER` and `CHAT_JWT_AUDIENCE` when those are set (on every
//! token; `chatd token` mints them in), else they are not checked. `sub` becomes the user id
//! and is refused if it holds control or format characters; `name` becomes
//! the display name with format characters (bidi overrides, zero-width
//! characters) stripped.
//!
//! The secret comes from `CHAT_JWT_SECRET`, or from a 0600 file in the data
//! directory that the server creates on first start. `chatd token` signs
//! with the same secret and never creates one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::config::Config;
use crate::domain::Identity;
use crate::error::{Error, Result};

pub(crate) mod jwks;
mod secret;
mod verified;

use self::jwks::Jwks;
use self::verified::{Verified, VerifiedTokens};

pub use secret::{SECRET_FILE, load_secret};
pub(crate) use secret::{SecretSource, load_or_generate_secret};

/// How far the issuer's clock may be off from chatd's, in seconds: a token
/// is accepted until `exp + CLOCK_LEEWAY_SECS` and from
/// `nbf - CLOCK_LEEWAY_SECS`.
pub(crate) const CLOCK_LEEWAY_SECS: u64 = 5;

/// The claims chatd mints.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    iat: u64,
    /// `"admin": true` on admin tokens, absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The claims chatd reads; `exp`, `nbf` (and any others) are checked by
/// jsonwebtoken and not needed here.
#[derive(Debug, Deserialize)]
struct Received {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Only the JSON value `true` makes an admin token; anything else
    /// (absent, false, "true", 1) does not.
    #[serde(default)]
    admin: Option<serde_json::Value>,
    /// Checked by jsonwebtoken; read here to know how long a verified
    /// token may be kept (a value that is not a whole number of seconds is
    /// not kept).
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

/// A numeric claim as whole seconds: `Ok(None)` when absent, `Err` when
/// present in another form.
fn seconds(claim: Option<&serde_json::Value>) -> std::result::Result<Option<u64>, ()> {
    claim.map(|v| v.as_u64().ok_or(())).transpose()
}

/// What a token must carry besides a good signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Accept tokens without an `exp` claim, which are valid forever
    /// (`CHAT_JWT_ALLOW_NO_EXP`). Off: a leaked token must expire.
    pub allow_no_exp: bool,
    /// The `iss` every token must carry (`CHAT_JWT_ISSUER`).
    pub issuer: Option<String>,
    /// The audience every token's `aud` must name (`CHAT_JWT_AUDIENCE`).
    pub audience: Option<String>,
}

/// Signs and verifies tokens with one HS256 secret, and verifies tokens
/// with an identity provider's keys when there is one.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    policy: TokenPolicy,
    /// The identity provider's keys (`CHAT_JWT_JWKS`).
    jwks: Option<Arc<Jwks>>,
    /// HS256 tokens verified recently (`verified.rs`), shared by clones.
    verified: Arc<VerifiedTokens>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Keys with the default policy: `exp` required.
    pub fn new(secret: &[u8]) -> Self {
        Self::with_policy(secret, TokenPolicy::default())
    }

    pub fn with_policy(secret: &[u8], policy: TokenPolicy) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = if policy.allow_no_exp {
            HashSet::new()
        } else {
            HashSet::from(["exp".to_owned()])
        };
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // jsonwebtoken refuses any `aud` when no audience is configured;
        // without CHAT_JWT_AUDIENCE chatd accepts the claim as it is.
        validation.validate_aud = false;
        if let Some(issuer) = &policy.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(audience) = &policy.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".to_owned());
        }
        validation.leeway = CLOCK_LEEWAY_SECS;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            policy,
            jwks: None,
            verified: Arc::default(),
        }
    }

    /// These keys, also accepting tokens signed with `jwks`' keys.
    pub(crate) fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Verifies a token and returns who it names. An HS256 token that
    /// verified recently and has not expired is not verified again.
    pub fn verify(&self, token: &str) -> Result<Identity> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(identity) = self.verified.get(token, now) {
            return Ok(identity);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            Error::Unauthenticated(match e.kind() {
                jsonwebtoken::errors::ErrorKind::Json(_) => {
                    "authorization: token header is malformed or its `alg` is not accepted \
                     (HS256, RS256, ES256 or EdDSA)"
                        .into()
                }
                kind => refusal(kind),
            })
        })?;
        let hs256 = header.alg == Algorithm::HS256;
        let decoded = if hs256 {
            jsonwebtoken::decode::<Received>(token, &self.decoding, &self.validation)
        } else {
            let key = self.provider_key(&header)?;
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            jsonwebtoken::decode::<Received>(token, &key.key, &validation)
        };
        let claims = decoded
            .map_err(|e| Error::Unauthenticated(refusal(e.kind())))?
            .claims;
        let mut identity = identity_from_claims(claims.sub.as_deref(), claims.name.as_deref())?;
        identity.admin = claims.admin == Some(serde_json::Value::Bool(true));
        if hs256
            && let (Ok(exp), Ok(nbf)) = (seconds(claims.exp.as_ref()), seconds(claims.nbf.as_ref()))
        {
            let verified = Verified {
                identity: identity.clone(),
                exp,
                nbf,
            };
            self.verified.insert(token, verified);
        }
        Ok(identity)
    }

    /// The identity provider's key for a token with `header`, which must
    /// name it by `kid` and use its algorithm.
    fn provider_key(&self, header: &Header) -> Result<jwks::VerifyingKey> {
        let refuse = |why: String| Err(Error::Unauthenticated(format!("authorization: {why}")));
        let alg = header.alg;
        let Some(jwks) = &self.jwks else {
            return refuse(format!(
                "token is signed with {alg:?}; this server accepts HS256 tokens only (no CHAT_JWT_JWKS)"
            ));
        };
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return refuse(format!(
                "token algorithm {alg:?} is not accepted (HS256, RS256, ES256 or EdDSA)"
            ));
        }
        let Some(kid) = &header.kid else {
            return refuse(format!(
                "a {alg:?} token must name its key in a `kid` header"
            ));
        };
        let Some(key) = jwks.key(kid) else {
            return refuse(format!(
                "token `kid` {kid:?} names no key of the identity provider (CHAT_JWT_JWKS)"
            ));
        };
        if key.algorithm != alg {
            return refuse(format!(
                "token algorithm {alg:?} does not fit key {kid:?}, a {:?} key",
                key.algorithm
            ));
        }
        Ok(key)
    }

    /// Reads `authorization: Bearer <token>` from request metadata.
    pub(crate) fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity> {
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

    /// Signs a token for `user_id`, valid for `ttl`; without a `ttl` it has
    /// no `exp`, which servers refuse unless they allow it.
    pub fn mint(&self, user_id: &str, name: Option<&str>, ttl: Option<Duration>) -> Result<String> {
        self.mint_with(user_id, name, ttl, false)
    }

    /// [`Self::mint`], with `"admin": true` in the claims when `admin`.
    pub fn mint_with(
        &self,
        user_id: &str,
        name: Option<&str>,
        ttl: Option<Duration>,
        admin: bool,
    ) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Internal(format!("clock before 1970: {e}")))?
            .as_secs();
        // Refuse to mint what verify would refuse.
        identity_from_claims(Some(user_id), name).map_err(|e| Error::Config(e.to_string()))?;
        let claims = Claims {
            sub: user_id,
            name,
            exp: ttl.map(|t| now.saturating_add(t.as_secs())),
            iat: now,
            admin,
            iss: self.policy.issuer.as_deref(),
            aud: self.policy.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }
}

/// What the client is told when jsonwebtoken refuses its token.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "authorization: token has expired (`exp` is past)".into(),
        ErrorKind::ImmatureSignature => {
            "authorization: token is not valid yet (`nbf` is in the future)".into()
        }
        ErrorKind::InvalidSignature => {
            "authorization: token signature is invalid (signed with another secret or key?)".into()
        }
        ErrorKind::InvalidAlgorithm => "authorization: token algorithm does not fit its key".into(),
        ErrorKind::InvalidIssuer => {
            "authorization: token `iss` is not the issuer in CHAT_JWT_ISSUER".into()
        }
        ErrorKind::InvalidAudience => {
            "authorization: token `aud` does not name the audience in CHAT_JWT_AUDIENCE".into()
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
            "authorization: token has no `exp` claim; tokens must expire".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("authorization: token has no `{claim}` claim, which this server requires")
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("authorization: token claim `{claim}` must be a number of seconds since 1970")
        }
        ErrorKind::Json(e) => format!("authorization: token is malformed: {e}"),
        _ => "authorization: token is malformed (expected header.claims.signature in base64url)"
            .into(),
    }
}

fn identity_from_claims(sub: Option<&str>, name: Option<&str>) -> Result<Identity> {
    let sub = sub.ok_or_else(|| Error::Unauthenticated("token: `sub` claim is missing".into()))?;
    if let Some(problem) = crate::domain::user_id_problem(sub) {
        return Err(Error::Unauthenticated(format!(
            "token: `sub` claim {problem}"
        )));
    }
    // A display name is shown, not matched: strip what would make it render
    // differently from what it holds, rather than lock its user out.
    let name = crate::domain::display_name(sub, name)
        .map_err(|problem| Error::Unauthenticated(format!("token: `name` claim {problem}")))?;
    Ok(Identity {
        user_id: sub.into(),
        display_name: name.into(),
        admin: false,
    })
}

/// Loads the identity provider's keys (`CHAT_JWT_JWKS`) when set, and says
/// which token claims are checked; start-up fails naming the setting that
/// does not load. [`jwks::refresh`] keeps them fresh.
pub(crate) async fn load_jwks(config: &Config) -> Result<Option<Arc<Jwks>>> {
    let jwks = match &config.jwt_jwks {
        Some(spec) => {
            let jwks = Jwks::load(spec).await?;
            tracing::info!(
                source = %jwks.describe(),
                kids = ?jwks.kids(),
                "tokens: also RS256, ES256 and EdDSA from the identity provider (CHAT_JWT_JWKS)"
            );
            Some(jwks)
        }
        None => None,
    };
    if let Some(issuer) = &config.secret.jwt_issuer {
        tracing::info!(issuer, "tokens: `iss` must be CHAT_JWT_ISSUER");
    }
    if let Some(audience) = &config.secret.jwt_audience {
        tracing::info!(audience, "tokens: `aud` must name CHAT_JWT_AUDIENCE");
    }
    Ok(jwks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-0123456789";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn refused(keys: &Keys, claims: serde_json::Value) -> String {
        match keys.verify(&sign(claims)) {
            Err(Error::Unauthenticated(why)) => why,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn only_admin_true_makes_an_admin_token() {
        let keys = Keys::new(SECRET);
        let ttl = Some(Duration::from_secs(60));
        let admin = keys.mint_with("backend", None, ttl, true).unwrap();
        assert!(keys.verify(&admin).unwrap().admin);
        assert!(
            !keys
                .verify(&keys.mint("alice", None, ttl).unwrap())
                .unwrap()
                .admin
        );
        let exp = now() + 60;
        for claim in [json!(false), json!("true"), json!(1), json!(null)] {
            let token = sign(json!({"sub": "a", "exp": exp, "admin": claim}));
            assert!(!keys.verify(&token).unwrap().admin, "{claim}");
        }
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let keys = Keys::new(SECRET);
        let t = now();
        let within = CLOCK_LEEWAY_SECS - 2;
        let beyond = CLOCK_LEEWAY_SECS + 5;
        keys.verify(&sign(json!({"sub": "a", "exp": t - within})))
            .unwrap();
        keys.verify(&sign(json!({"sub": "a", "exp": t + 60, "nbf": t + within})))
            .unwrap();
        assert!(refused(&keys, json!({"sub": "a", "exp": t - beyond})).contains("expired"));
        assert!(
            refused(&keys, json!({"sub": "a", "exp": t + 60, "nbf": t + beyond}))
                .contains("not valid yet")
        );
    }

    #[test]
    fn exp_is_required_unless_allowed() {
        let strict = Keys::new(SECRET);
        let lax = Keys::with_policy(
            SECRET,
            TokenPolicy {
                allow_no_exp: true,
                ..TokenPolicy::default()
            },
        );
        assert!(refused(&strict, json!({"sub": "a"})).contains("`exp`"));
        lax.verify(&sign(json!({"sub": "a"}))).unwrap();
        // Both still check an `exp` that is there.
        assert!(refused(&lax, json!({"sub": "a", "exp": now() - 3600})).contains("expired"));
        assert!(refused(&strict, json!({"sub": "a", "exp": "soon"})).contains("`exp`"));
    }

    #[test]
    fn aud_is_accepted_unchecked() {
        let keys = Keys::new(SECRET);
        let exp = now() + 60;
        keys.verify(&sign(json!({"sub": "a", "exp": exp, "aud": "x"})))
            .unwrap();
        keys.verify(&sign(json!({"sub": "a", "exp": exp, "aud": ["x", "y"]})))
            .unwrap();
    }

    #[test]
    fn format_characters_refused_in_sub_and_stripped_from_name() {
        let keys = Keys::new(SECRET);
        let exp = now() + 60;
        for sub in ["ev\u{202E}il", "zero\u{200B}width", "\u{FEFF}bom"] {
            let why = refused(&keys, json!({"sub": sub, "exp": exp}));
            assert!(why.contains("`sub`"), "{why}");
        }
        let id = keys
            .verify(&sign(
                json!({"sub": "a", "exp": exp, "name": "\u{202E}Da\u{200B}ve\u{2066}"}),
            ))
            .unwrap();
        assert_eq!(&*id.display_name, "Dave");
        let id = keys
            .verify(&sign(
                json!({"sub": "a", "exp": exp, "name": "\u{200B}\u{200D}"}),
            ))
            .unwrap();
        assert_eq!(
            &*id.display_name, "a",
            "an empty name falls back to the user id"
        );
        assert!(
            keys.mint("ev\u{202E}il", None, Some(Duration::from_secs(60)))
                .is_err()
        );
    }

    #[test]
    fn missing_secret_is_never_created_by_load_secret() {
        let dir = std::env::temp_dir().join(format!("chatd-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = load_secret(None, &dir).unwrap_err().to_string();
        assert!(
            err.contains("CHAT_JWT_SECRET") && err.contains("CHAT_DATA_DIR"),
            "{err}"
        );
        assert!(!dir.exists());
        let (made, source) = load_or_generate_secret(None, &dir).unwrap();
        assert!(matches!(source, SecretSource::Generated(ref p) if p.is_absolute()));
        let (read, source) = load_secret(None, &dir).unwrap();
        assert_eq!((made, source.path().is_some()), (read, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
