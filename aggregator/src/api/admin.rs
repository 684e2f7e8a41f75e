//! Administration routes: users, tenants, API keys, node provisioning and
//! the audit log. Every mutation is recorded in the audit log.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{
    api_key_digest, hash_password, new_api_key, AsAdmin, AsViewer, Authed, Principal,
};
use super::export::{respond, sorted_pages, Column, ListFormat, PageFuture, PageParams};
use super::openapi::Page;
use super::{ApiError, AppState, JsonBody};
use crate::accounts::{AccountError, ApiKey, AuditEntry, AuditRecord, Role, Tenant, User};

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            AccountError::NotFound(what) => ApiError::Unprocessable(what),
            AccountError::Store(e) => e.into(),
        }
    }
}

/// Rewrites `X-Forwarded-For` to the client's address as the aggregator
/// resolved it (see [`super::incidents::ClientAddr`]: the socket's peer, or
/// what a reverse proxy on this host says) and drops `X-Real-IP`, so the
/// audit log's "from where" cannot be made up by the client.
pub async fn resolve_client_addr(mut req: axum::extract::Request) -> axum::extract::Request {
    let socket = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let via_local_proxy = socket.is_none_or(|ip| ip.is_loopback());
    let addr = via_local_proxy
        .then(|| remote_addr(req.headers()))
        .flatten()
        .or(socket.map(|ip| ip.to_string()));
    let headers = req.headers_mut();
    headers.remove("x-real-ip");
    match addr.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        Some(v) => {
            headers.insert("x-forwarded-for", v);
        }
        None => {
            headers.remove("x-forwarded-for");
        }
    }
    req
}

/// The client's address as the reverse proxy (or the socket) reports it.
pub fn remote_addr(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .or_else(|| {
            headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// Records a mutation; a failure to audit is logged, not hidden.
pub async fn audit(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    action: &str,
    target: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) {
    let record = AuditRecord {
        actor: who.name.clone(),
        tenant_id: who.tenant_id,
        action: action.to_owned(),
        target,
        before,
        after,
        remote_addr: remote_addr(headers),
    };
    if let Err(e) = state.accounts.audit(record).await {
        tracing::error!(error = %e, action, "cannot write the audit log");
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    /// 8-1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    #[schema(value_type = RoleName)]
    role: String,
    /// Required for operators and viewers; a tenant admin's own tenant by default.
    tenant_id: Option<i64>,
}

fn check_username(u: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(
            "username must be 1-64 characters of A-Z a-z 0-9 . _ - @".into(),
        ))
    }
}

/// Creates a user (admin; a tenant admin only in their tenant). Audited.
#[utoipa::path(post, path = "/users", tag = "accounts", operation_id = "create_user",
    security(("jwt" = ["admin"])), request_body = NewUser,
    responses(
        (status = 201, body = User),
        (status = 409, description = "the username is taken", body = super::openapi::ErrorBody),
        (status = 422, description = "a field is invalid; the message says which", body = super::openapi::ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    check_username(&req.username)?;
    if !(8..=1024).contains(&req.password.chars().count()) {
        return Err(ApiError::Unprocessable(
            "password must be 8-1024 characters".into(),
        ));
    }
    let role: Role = req.role.parse().map_err(ApiError::Unprocessable)?;
    // A tenant admin creates users in their own tenant only.
    let tenant_id = match (who.tenant_id, req.tenant_id) {
        (Some(mine), Some(t)) if t != mine => {
            return Err(ApiError::Forbidden(
                "you can only create users in your own tenant".into(),
            ))
        }
        (Some(mine), _) => Some(mine),
        (None, t) => t,
    };
    if tenant_id.is_none() && role != Role::Admin {
        return Err(ApiError::Unprocessable(
            "operators and viewers belong to a tenant: give tenant_id".into(),
        ));
    }
    let hash = {
        let pw = req.password.clone();
        tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let user = state
        .accounts
        .create_user(&req.username, &hash, role, tenant_id)
        .await?;
    let after = serde_json::to_value(&user).ok();
    audit(
        &state,
        &who,
        &headers,
        "user.create",
        format!("user:{}", user.id),
        None,
        after,
    )
    .await;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Users of the caller's tenant, or all for a global admin, by id.
#[utoipa::path(get, path = "/users", tag = "accounts", operation_id = "list_users",
    security(("jwt" = ["admin"])), params(super::export::FormatParam, PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every user as CSV or NDJSON (`format=`)",
            content((Page<User> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = super::openapi::ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    ListFormat(format): ListFormat,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let rows = state.accounts.users(who.scope()).await?;
    let pages = sorted_pages(rows, |u: &User| u.id, p.limit(format));
    respond(
        format,
        &[
            ("id", "id"),
            ("username", "username"),
            ("role", "role"),
            ("tenant_id", "tenant_id"),
            ("created_at", "created_at"),
        ],
        p.cursor,
        pages,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1-128 characters, not all blank (stored without leading and trailing blanks).
    #[schema(min_length = 1, max_length = 128, pattern = r"[^ \t\n\r]")]
    name: String,
}

/// The roles an account or API key can have.
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // names the values of `role` in the OpenAPI document only
pub enum RoleName {
    Admin,
    Operator,
    Viewer,
}

/// What blank means for names: the ASCII blanks, so the rule in the
/// document (`[^ \t\n\r]`) is the one applied.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Creates a tenant (global admin only). Audited.
#[utoipa::path(post, path = "/tenants", tag = "accounts", operation_id = "create_tenant",
    security(("jwt" = ["admin"])), request_body = NewTenant,
    responses(
        (status = 201, body = Tenant),
        (status = 403, description = "the caller is a tenant's admin, not a global one", body = super::openapi::ErrorBody),
        (status = 409, description = "the name is taken", body = super::openapi::ErrorBody),
    ))]
pub async fn create_tenant(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    if who.tenant_id.is_some() {
        return Err(ApiError::Forbidden(
            "only a global admin creates tenants".into(),
        ));
    }
    let name = req.name.trim_matches(is_blank);
    if name.is_empty() || req.name.chars().count() > 128 {
        return Err(ApiError::Unprocessable(
            "name must be 1-128 characters".into(),
        ));
    }
    let tenant = state.accounts.create_tenant(name).await?;
    let after = serde_json::to_value(&tenant).ok();
    audit(
        &state,
        &who,
        &headers,
        "tenant.create",
        format!("tenant:{}", tenant.id),
        None,
        after,
    )
    .await;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// All tenants for a global caller, otherwise the caller's own, by id.
#[utoipa::path(get, path = "/tenants", tag = "accounts", operation_id = "list_tenants",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every tenant as CSV or NDJSON (`format=`)",
            content((Page<Tenant> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = super::openapi::ErrorBody)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let rows = match who.tenant_id {
        None => state.accounts.tenants().await?,
        Some(t) => state.accounts.tenant(t).await?.into_iter().collect(),
    };
    let pages = sorted_pages(rows, |t: &Tenant| t.id, p.limit(format));
    respond(
        format,
        &[("id", "id"), ("name", "name"), ("created_at", "created_at")],
        p.cursor,
        pages,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
    /// A tenant admin's keys are always in their tenant.
    tenant_id: Option<i64>,
}

/// A new API key; `key` is shown this once and only its digest is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// Send as `Authorization: Bearer eqk_…`.
    pub key: String,
}

/// Creates an API key for a machine (admin). Audited.
#[utoipa::path(post, path = "/api-keys", tag = "accounts", operation_id = "create_api_key",
    security(("jwt" = ["admin"])), request_body = NewApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 422, description = "a field is invalid", body = super::openapi::ErrorBody),
    ))]
pub async fn create_api_key(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let role: Role = req.role.parse().map_err(ApiError::Unprocessable)?;
    let tenant_id = who.tenant_id.or(req.tenant_id);
    if who.tenant_id.is_some() && req.tenant_id.is_some_and(|t| Some(t) != who.tenant_id) {
        return Err(ApiError::Forbidden(
            "you can only create keys in your own tenant".into(),
        ));
    }
    let key = new_api_key();
    let stored = state
        .accounts
        .create_api_key(
            req.name.trim(),
            &api_key_digest(&key),
            role,
            tenant_id,
            &who.name,
        )
        .await?;
    let after = serde_json::to_value(&stored).ok();
    audit(
        &state,
        &who,
        &headers,
        "api_key.create",
        format!("api_key:{}", stored.id),
        None,
        after,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key: stored,
            key,
        }),
    ))
}

/// API keys of the caller's tenant, or all for a global admin (never the
/// key itself), newest first.
#[utoipa::path(get, path = "/api-keys", tag = "accounts", operation_id = "list_api_keys",
    security(("jwt" = ["admin"])), params(super::export::FormatParam, PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every key as CSV or NDJSON (`format=`)",
            content((Page<ApiKey> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = super::openapi::ErrorBody)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    ListFormat(format): ListFormat,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let rows = state.accounts.api_keys(who.scope()).await?;
    // Newest first, as the store lists them.
    let pages = sorted_pages(rows, |k: &ApiKey| -k.id, p.limit(format));
    respond(
        format,
        &[
            ("id", "id"),
            ("name", "name"),
            ("role", "role"),
            ("tenant_id", "tenant_id"),
            ("created_by", "created_by"),
            ("created_at", "created_at"),
        ],
        p.cursor,
        pages,
    )
    .await
}

/// Revokes an API key at once (admin; another tenant's is a 404). Audited.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "accounts", operation_id = "revoke_api_key",
    security(("jwt" = ["admin"])), params(("id" = i64, Path, description = "API key id")),
    responses((status = 204, description = "revoked"),
        (status = 404, description = "no such key, or another tenant's", body = super::openapi::ErrorBody)))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("no API key {id}"));
    let visible = state
        .accounts
        .api_keys(who.scope())
        .await?
        .into_iter()
        .any(|k| k.id == id);
    if !visible {
        return Err(not_found());
    }
    let before = state
        .accounts
        .delete_api_key(id)
        .await?
        .ok_or_else(not_found)?;
    audit(
        &state,
        &who,
        &headers,
        "api_key.revoke",
        format!("api_key:{id}"),
        serde_json::to_value(&before).ok(),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    node_id: String,
    tenant_id: Option<i64>,
}

/// What a node needs to log in to the embedded broker; the password is in
/// this answer only, never stored in clear or logged.
fn mqtt_login(node_id: &str, password: String) -> serde_json::Value {
    json!({ "client_id": node_id, "username": node_id, "password": password })
}

/// Registers a node under a tenant and issues its MQTT credentials (admin):
/// new ones each time, so re-provisioning invalidates the old password.
/// Audited, without the password.
#[utoipa::path(post, path = "/nodes", tag = "nodes", operation_id = "provision_node",
    security(("jwt" = ["admin"])), request_body = Provision,
    responses(
        (status = 201, description = "the node, its tenant and its MQTT login `{\"mqtt\":{\"client_id\",\"username\",\"password\"}}` (shown once)", body = Object),
        (status = 422, description = "bad node id, the aggregator's own client id, or unknown tenant", body = super::openapi::ErrorBody),
    ))]
pub async fn provision_node(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<Provision>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !edgeqi_shared::topic::is_valid_node_id(&req.node_id) {
        return Err(ApiError::Unprocessable(
            "node_id must match [A-Za-z0-9_-]{1,64}".into(),
        ));
    }
    if who.tenant_id.is_some() && req.tenant_id.is_some_and(|t| Some(t) != who.tenant_id) {
        return Err(ApiError::Forbidden(
            "you can only provision nodes into your own tenant".into(),
        ));
    }
    if state.node_credentials.is_reserved(&req.node_id) {
        return Err(ApiError::Unprocessable(format!(
            "{:?} is the aggregator's own MQTT client id; choose another node_id",
            req.node_id
        )));
    }
    let tenant = who
        .tenant_id
        .or(req.tenant_id)
        .ok_or_else(|| ApiError::Unprocessable("give tenant_id".into()))?;
    // A tenant admin must not take over another tenant's node (and with it
    // its detections); moving a node between tenants is a global admin's call.
    let owner = state.accounts.node_tenant(&req.node_id).await?;
    if owner.is_some_and(|o| o != tenant) && who.tenant_id.is_some() {
        return Err(ApiError::Conflict(format!(
            "node {:?} belongs to another tenant",
            req.node_id
        )));
    }
    if state.accounts.tenant(tenant).await?.is_none() {
        return Err(ApiError::Unprocessable(format!("no tenant {tenant}")));
    }
    state.accounts.set_node_tenant(&req.node_id, tenant).await?;
    let password = state.node_credentials.issue(&req.node_id).await?;
    let after = json!({"node_id": req.node_id, "tenant_id": tenant, "mqtt_credentials": "issued"});
    audit(
        &state,
        &who,
        &headers,
        "node.provision",
        format!("node:{}", req.node_id),
        None,
        Some(after),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "node_id": req.node_id,
            "tenant_id": tenant,
            "mqtt": mqtt_login(&req.node_id, password),
        })),
    ))
}

/// A new MQTT password for a provisioned node (admin; another tenant's node
/// is a 404). The old one stops working at once and the node's open
/// connection is closed. Audited, without the password.
#[utoipa::path(post, path = "/nodes/{id}/credentials", tag = "nodes", operation_id = "rotate_node_credentials",
    security(("jwt" = ["admin"])), params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "the node's new MQTT login `{\"mqtt\":{\"client_id\",\"username\",\"password\"}}` (shown once)", body = Object),
        (status = 404, description = "no such provisioned node, or another tenant's", body = super::openapi::ErrorBody),
    ))]
pub async fn rotate_node_credentials(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    Path(node_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "node {node_id:?} has no MQTT credentials: provision it with POST /api/v1/nodes"
        ))
    };
    if !may_manage_node(&state, &who, &node_id).await? {
        return Err(not_found());
    }
    if !state.node_credentials.exists(&node_id).await? {
        return Err(not_found());
    }
    let password = state.node_credentials.issue(&node_id).await?;
    audit(
        &state,
        &who,
        &headers,
        "node.credentials.rotate",
        format!("node:{node_id}"),
        None,
        Some(json!({"node_id": node_id, "mqtt_credentials": "rotated"})),
    )
    .await;
    Ok(Json(json!({
        "node_id": node_id,
        "mqtt": mqtt_login(&node_id, password),
    })))
}

/// Whether `node_id` is a valid id of a node `who` may manage: any for a
/// global admin, its own tenant's for a tenant admin (others look absent).
async fn may_manage_node(
    state: &AppState,
    who: &Principal,
    node_id: &str,
) -> Result<bool, ApiError> {
    if !edgeqi_shared::topic::is_valid_node_id(node_id) {
        return Ok(false);
    }
    Ok(super::visible_nodes(state, who)
        .await?
        .is_none_or(|visible| visible.iter().any(|n| n == node_id)))
}

/// Revokes a node's MQTT credentials (admin; another tenant's node is a
/// 404): its password stops working at once and its open connection is
/// closed, as on rotation; provisioning or rotation issues new ones. The
/// node stays registered with its tenant and data. Audited.
#[utoipa::path(delete, path = "/nodes/{id}/credentials", tag = "nodes", operation_id = "revoke_node_credentials",
    security(("jwt" = ["admin"])), params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, description = "no such node with MQTT credentials, or another tenant's", body = super::openapi::ErrorBody),
    ))]
pub async fn revoke_node_credentials(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    headers: HeaderMap,
    Path(node_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("node {node_id:?} has no MQTT credentials"));
    if !may_manage_node(&state, &who, &node_id).await? {
        return Err(not_found());
    }
    if !state.node_credentials.revoke(&node_id).await? {
        return Err(not_found());
    }
    audit(
        &state,
        &who,
        &headers,
        "node.credentials.revoke",
        format!("node:{node_id}"),
        Some(json!({"node_id": node_id, "mqtt_credentials": "issued"})),
        Some(json!({"node_id": node_id, "mqtt_credentials": "revoked"})),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Every mutation (who, what, before/after, when, from where), newest first;
/// a tenant admin sees their tenant's.
#[utoipa::path(get, path = "/audit", tag = "accounts", operation_id = "audit_log",
    security(("jwt" = ["admin"])), params(super::export::FormatParam, PageParams),
    responses((status = 200, description = "one page as JSON, or every entry as CSV or NDJSON (`format=`)",
        content((Page<AuditEntry> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson")))))]
pub async fn audit_log(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    ListFormat(format): ListFormat,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit(format);
    let scope = who.scope();
    let fetch = move |cursor: Option<String>| -> PageFuture<AuditEntry> {
        let state = state.clone();
        Box::pin(async move {
            let before = super::export::id_cursor(cursor)?;
            let items = state.accounts.audit_log(scope, limit, before).await?;
            let next_cursor = (items.len() == limit)
                .then(|| items.last().map(|e| e.id.to_string()))
                .flatten();
            Ok((items, next_cursor))
        })
    };
    respond(format, AUDIT_COLUMNS, p.cursor, fetch).await
}

/// CSV columns of the audit log.
const AUDIT_COLUMNS: &[Column] = &[
    ("id", "id"),
    ("ts", "ts"),
    ("actor", "actor"),
    ("tenant_id", "tenant_id"),
    ("action", "action"),
    ("target", "target"),
    ("remote_addr", "remote_addr"),
    ("before", "before"),
    ("after", "after"),
];

/// One user; another tenant's is a 404.
#[utoipa::path(get, path = "/users/{id}", tag = "accounts", operation_id = "get_user",
    security(("jwt" = ["admin"])), params(("id" = i64, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404, description = "no such user, or another tenant's", body = super::openapi::ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    Authed(who): AsAdmin,
    Path(id): Path<i64>,
) -> Result<Json<User>, ApiError> {
    let user = state
        .accounts
        .user(id)
        .await?
        .filter(|u| who.can_access(u.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no user {id}")))?;
    Ok(Json(user))
}
