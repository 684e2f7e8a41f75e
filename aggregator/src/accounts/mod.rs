//! Who may do what: users, roles, tenants, API keys and the audit log.
//!
//! Passwords are argon2id hashes; API keys are stored as SHA-256 digests and
//! shown once. Everything here lives behind [`AccountStore`] so the storage
//! backends stay interchangeable; the SQLite implementation keeps its own
//! schema version so it evolves independently of the detection store.
//! Per-node MQTT credentials are a store of their own, [`node_credentials`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::StoreResult;

pub mod node_credentials;
pub mod sqlite;

/// What a caller may do. Ordered: an admin may do everything an operator may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?} must be admin, operator or viewer")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// `None`: a global user (sees every tenant); only admins may be global.
    pub tenant_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub tenant_id: Option<i64>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// One recorded mutation.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: DateTime<Utc>,
    pub actor: String,
    pub tenant_id: Option<i64>,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub remote_addr: Option<String>,
}

/// A mutation about to be recorded.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub actor: String,
    pub tenant_id: Option<i64>,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub remote_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> Self {
        AccountError::Store(e.into())
    }
}

pub type AccountResult<T> = Result<T, AccountError>;

#[async_trait::async_trait]
pub trait AccountStore: Send + Sync + fmt::Debug {
    async fn user_count(&self) -> StoreResult<u64>;
    /// `password_hash` is already an argon2 PHC string.
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        tenant_id: Option<i64>,
    ) -> AccountResult<User>;
    /// The user and their password hash, for login.
    async fn user_with_hash(&self, username: &str) -> StoreResult<Option<(User, String)>>;
    async fn user(&self, id: i64) -> StoreResult<Option<User>>;
    async fn users(&self, tenant_id: Option<i64>) -> StoreResult<Vec<User>>;

    async fn create_tenant(&self, name: &str) -> AccountResult<Tenant>;
    async fn tenant(&self, id: i64) -> StoreResult<Option<Tenant>>;
    async fn tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// Assigns a node to a tenant (provisioning); a node has one tenant.
    async fn set_node_tenant(&self, node_id: &str, tenant_id: i64) -> StoreResult<()>;
    /// Nodes of a tenant.
    async fn tenant_nodes(&self, tenant_id: i64) -> StoreResult<Vec<String>>;
    /// The tenant a node is provisioned into, if any.
    async fn node_tenant(&self, node_id: &str) -> StoreResult<Option<i64>>;

    async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        role: Role,
        tenant_id: Option<i64>,
        created_by: &str,
    ) -> AccountResult<ApiKey>;
    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>>;
    /// API keys of a tenant, or all (`None`), newest first.
    async fn api_keys(&self, tenant_id: Option<i64>) -> StoreResult<Vec<ApiKey>>;
    /// Deletes an API key (it stops working at once); returns what it was.
    async fn delete_api_key(&self, id: i64) -> StoreResult<Option<ApiKey>>;

    async fn audit(&self, record: AuditRecord) -> StoreResult<()>;
    async fn audit_log(
        &self,
        tenant_id: Option<i64>,
        limit: usize,
        before_id: Option<i64>,
    ) -> StoreResult<Vec<AuditEntry>>;

    /// A persistent secret (the JWT signing key), created on first use.
    async fn secret(&self, name: &str) -> StoreResult<Vec<u8>>;
}

/// Opens the account store for a `sqlite://PATH` URL.
pub fn open(url: &str) -> StoreResult<std::sync::Arc<dyn AccountStore>> {
    Ok(std::sync::Arc::new(sqlite::SqliteAccounts::open(url)?))
}
