//! Authentication and role checks for every `/api/v1` route.
//!
//! A caller presents one bearer token (header, or `?access_token=` on a GET,
//! for WebSockets and `<img>` tags, which cannot set headers): the bootstrap `EDGEQI_ADMIN_TOKEN`, an API key (`eqk_…`), or
//! a session JWT from `POST /api/v1/auth/login`. The [`Authed`] extractor
//! turns it into a [`Principal`] and refuses callers below the route's role,
//! so a handler's signature states who may call it.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::Json;
use chrono::{Duration, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::incidents::ClientAddr;
use super::{ApiError, AppState};
use crate::accounts::{AccountStore, Role, User};
use crate::incidents::service::RateLimiter;

/// Prefix that tells API keys from JWTs at a glance (and in leaked-secret scanners).
const API_KEY_PREFIX: &str = "eqk_";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// Username, `api-key:NAME`, or `bootstrap-admin`.
    pub name: String,
    pub user_id: Option<i64>,
    pub role: Role,
    /// `None`: sees every tenant.
    pub tenant_id: Option<i64>,
}

impl Principal {
    /// The tenant a query must be limited to, if any.
    pub fn scope(&self) -> Option<i64> {
        self.tenant_id
    }

    /// May this caller see or touch data of `tenant`? Global callers see all.
    pub fn can_access(&self, tenant: Option<i64>) -> bool {
        self.tenant_id.is_none() || self.tenant_id == tenant
    }
}

/// Signing keys, token lifetime and the bootstrap token.
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub token_ttl: Duration,
    bootstrap_token: Option<String>,
    /// Sign-in attempts per client address ([`LOGIN_ATTEMPTS_PER_MINUTE`]).
    pub login_limiter: RateLimiter,
}

/// Sign-in attempts a client address may make per minute; argon2 makes each
/// guess slow, this bounds how many a single address gets.
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 30;

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKeys")
            .field("token_ttl", &self.token_ttl)
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "***"),
            )
            .finish_non_exhaustive()
    }
}

impl AuthKeys {
    pub fn new(secret: &[u8], token_ttl: Duration, bootstrap_token: Option<String>) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            token_ttl,
            bootstrap_token: bootstrap_token.filter(|t| !t.is_empty()),
            login_limiter: RateLimiter::new(
                LOGIN_ATTEMPTS_PER_MINUTE,
                std::time::Duration::from_secs(60),
            ),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: i64,
    name: String,
    role: Role,
    tenant: Option<i64>,
    iat: i64,
    exp: i64,
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// SHA-256 of an API key, hex: what is stored instead of the key.
pub fn api_key_digest(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random API key (shown to its creator once).
pub fn new_api_key() -> String {
    let mut bytes = [0u8; 24];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    format!(
        "{API_KEY_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn header_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

/// The caller's token: the `Authorization: Bearer` header, or on a GET/HEAD
/// the `access_token` query parameter. Never for a change: a URL ends up in
/// proxy logs, browser history and `Referer` headers, so a token taken from
/// one must not be able to do more than read.
fn bearer(parts: &Parts) -> Option<String> {
    let from_header = header_token(&parts.headers);
    let read_only =
        parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
    from_header.or_else(|| {
        if !read_only {
            return None;
        }
        parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(str::to_owned)
        })
    })
}

/// Resolves a token to a principal.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let keys = &state.auth;
    if let Some(boot) = &keys.bootstrap_token {
        if same_secret(token.as_bytes(), boot.as_bytes()) {
            return Ok(Principal {
                name: "bootstrap-admin".into(),
                user_id: None,
                role: Role::Admin,
                tenant_id: None,
            });
        }
    }
    if token.starts_with(API_KEY_PREFIX) {
        let key = state
            .accounts
            .api_key_by_hash(&api_key_digest(token))
            .await?;
        return key
            .map(|k| Principal {
                name: format!("api-key:{}", k.name),
                user_id: None,
                role: k.role,
                tenant_id: k.tenant_id,
            })
            .ok_or(ApiError::Unauthorized);
    }
    let data = decode::<Claims>(token, &keys.decoding, &Validation::new(Algorithm::HS256))
        .map_err(|_| ApiError::Unauthorized)?;
    let c = data.claims;
    Ok(Principal {
        name: c.name,
        user_id: Some(c.sub),
        role: c.role,
        tenant_id: c.tenant,
    })
}

/// Extracts the caller and requires at least role `MIN` (0 viewer, 1 operator, 2 admin).
#[derive(Debug, Clone)]
pub struct Authed<const MIN: u8>(pub Principal);

/// Any signed-in caller.
pub type AsViewer = Authed<0>;
/// Operators and admins.
pub type AsOperator = Authed<1>;
/// Admins only.
pub type AsAdmin = Authed<2>;

const fn min_role(min: u8) -> Role {
    match min {
        0 => Role::Viewer,
        1 => Role::Operator,
        _ => Role::Admin,
    }
}

impl<const MIN: u8> FromRequestParts<AppState> for Authed<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let principal = authenticate(state, &token).await?;
        let needed = min_role(MIN);
        if principal.role < needed {
            return Err(ApiError::Forbidden(format!(
                "this needs the {needed} role; you are {}",
                principal.role
            )));
        }
        Ok(Authed(principal))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A signed-in session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    /// The JWT to send as `Authorization: Bearer …`.
    pub token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    pub expires_at: chrono::DateTime<Utc>,
    pub user: User,
}

fn issue_token(keys: &AuthKeys, user: &User) -> Result<Session, ApiError> {
    let now = Utc::now();
    let exp = now + keys.token_ttl;
    let claims = Claims {
        sub: user.id,
        name: user.username.clone(),
        role: user.role,
        tenant: user.tenant_id,
        iat: now.timestamp(),
        exp: exp.timestamp(),
    };
    let token = encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
        .map_err(|e| ApiError::Internal(format!("token signing failed: {e}")))?;
    Ok(Session {
        token,
        token_type: "Bearer".into(),
        expires_at: exp,
        user: user.clone(),
    })
}

/// Signs in with a username and password (public).
#[utoipa::path(post, path = "/auth/login", tag = "auth", operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, body = Session),
        (status = 400, description = "the body is not {username, password}", body = super::openapi::ErrorBody),
        (status = 401, description = "unknown user or wrong password", body = super::openapi::ErrorBody),
        (status = 413, description = "the body is over 256 KiB", body = super::openapi::ErrorBody),
        (status = 415, description = "the body is not application/json", body = super::openapi::ErrorBody),
        (status = 429, description = "too many attempts from this address", body = super::openapi::ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    body: Result<super::JsonBody<LoginRequest>, ApiError>,
) -> Result<Json<Session>, ApiError> {
    if let Err(wait) = state.auth.login_limiter.check(&client) {
        metrics::counter!("edgeqi_auth_logins_total", "result" => "rate_limited").increment(1);
        return Err(ApiError::TooManyRequests(format!(
            "too many sign-in attempts from {client}; try again in {wait} s"
        )));
    }
    // 413 and 415 as for every JSON body; only malformed JSON gets the hint.
    let super::JsonBody(req) = body.map_err(|e| match e {
        ApiError::BadRequest(e) => {
            ApiError::BadRequest(format!("expected {{\"username\",\"password\"}}: {e}"))
        }
        e => e,
    })?;
    let found = state.accounts.user_with_hash(&req.username).await?;
    // Verify against a dummy hash when the user is unknown, so timing does not reveal which usernames exist.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, dummy_hash().to_owned()),
    };
    let ok = tokio::task::spawn_blocking(move || verify_password(&req.password, &hash))
        .await
        .unwrap_or(false);
    match user {
        Some(u) if ok => {
            metrics::counter!("edgeqi_auth_logins_total", "result" => "ok").increment(1);
            Ok(Json(issue_token(&state.auth, &u)?))
        }
        _ => {
            metrics::counter!("edgeqi_auth_logins_total", "result" => "denied").increment(1);
            Err(ApiError::WrongCredentials)
        }
    }
}

/// A real argon2 hash of nothing anyone knows, so unknown usernames cost as
/// much to refuse as wrong passwords.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&new_api_key()).unwrap_or_default())
}

/// A fresh token for a signed-in user (not for API keys or the bootstrap token).
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", operation_id = "refresh",
    security(("jwt" = ["viewer"])),
    responses((status = 200, body = Session), (status = 403, description = "the token is an API key or the bootstrap token, not a user session", body = super::openapi::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    Authed(p): AsViewer,
) -> Result<Json<Session>, ApiError> {
    let id = p.user_id.ok_or_else(|| {
        ApiError::Forbidden(
            "only user sessions can be refreshed; API keys and the bootstrap token do not expire"
                .into(),
        )
    })?;
    let user = state
        .accounts
        .user(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(issue_token(&state.auth, &user)?))
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/auth/me", tag = "auth", operation_id = "me",
    security(("jwt" = ["viewer"])), responses((status = 200, body = Principal)))]
pub async fn me(Authed(p): AsViewer) -> Json<Principal> {
    Json(p)
}

/// Ensures someone can sign in: with no users and no bootstrap token, the
/// first start creates `admin` with a random password and prints it once.
pub async fn bootstrap_admin(
    accounts: &Arc<dyn AccountStore>,
    has_bootstrap_token: bool,
) -> anyhow::Result<()> {
    if has_bootstrap_token || accounts.user_count().await? > 0 {
        return Ok(());
    }
    let mut bytes = [0u8; 12];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    accounts
        .create_user("admin", &hash, Role::Admin, None)
        .await
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
    // Printed once, to the terminal/journal of the very first start.
    eprintln!("\n  EdgeQI: created the first admin user.\n    username: admin\n    password: {password}\n  Store it now; it is not shown again.\n");
    tracing::warn!("created user 'admin' with a one-time password printed on stderr");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(method: &str, uri: &str, header: Option<&str>) -> Parts {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = header {
            req = req.header(header::AUTHORIZATION, h);
        }
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_url_token_only_reads() {
        let url = "/api/v1/incidents/1?access_token=t0k";
        assert_eq!(bearer(&parts("GET", url, None)).as_deref(), Some("t0k"));
        assert_eq!(bearer(&parts("HEAD", url, None)).as_deref(), Some("t0k"));
        for method in ["POST", "PATCH", "PUT", "DELETE"] {
            assert_eq!(bearer(&parts(method, url, None)), None, "{method}");
            assert_eq!(
                bearer(&parts(method, url, Some("Bearer h34d"))).as_deref(),
                Some("h34d"),
                "{method} with the header"
            );
        }
    }
}
