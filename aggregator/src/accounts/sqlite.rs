//! [`AccountStore`] on SQLite: the same database file as the detection store,
//! its own connection and its own schema version (`schema_versions` row
//! `accounts`), so both evolve independently.

use chrono::{TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    AccountError, AccountResult, AccountStore, ApiKey, AuditEntry, AuditRecord, Role, Tenant, User,
};
use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "accounts";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE tenants (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        tenant_id INTEGER REFERENCES tenants(id),
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        tenant_id INTEGER REFERENCES tenants(id),
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE node_tenants (
        node_id TEXT PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id)
    );
    CREATE INDEX node_tenants_by_tenant ON node_tenants (tenant_id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        tenant_id INTEGER,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT,
        remote_addr TEXT
    );
    CREATE INDEX audit_by_tenant ON audit_log (tenant_id, id DESC);
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
"#];

#[derive(Debug, Clone)]
pub struct SqliteAccounts {
    db: ComponentDb,
}

fn ts(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn role(s: String) -> rusqlite::Result<Role> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get("id")?,
        username: r.get("username")?,
        role: role(r.get("role")?)?,
        tenant_id: r.get("tenant_id")?,
        created_at: ts(r.get("created_ms")?),
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get("id")?,
        name: r.get("name")?,
        role: role(r.get("role")?)?,
        tenant_id: r.get("tenant_id")?,
        created_by: r.get("created_by")?,
        created_at: ts(r.get("created_ms")?),
    })
}

fn conflict_or(e: rusqlite::Error, what: &str) -> AccountError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            AccountError::Conflict(what.to_owned())
        }
        other => other.into(),
    }
}

impl SqliteAccounts {
    pub fn open(url: &str) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
        })
    }

    async fn with<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.db.with(move |c| f(c)).await
    }
}

#[async_trait::async_trait]
impl AccountStore for SqliteAccounts {
    async fn user_count(&self) -> StoreResult<u64> {
        self.with(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        tenant_id: Option<i64>,
    ) -> AccountResult<User> {
        let (u, h) = (username.to_owned(), password_hash.to_owned());
        self.with(move |c| {
            if let Some(t) = tenant_id {
                let exists = c.query_row("SELECT 1 FROM tenants WHERE id = ?1", [t], |_| Ok(())).optional()?;
                if exists.is_none() {
                    return Err(AccountError::NotFound(format!("no tenant {t}")));
                }
            }
            c.execute(
                "INSERT INTO users (username, password_hash, role, tenant_id, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![u, h, role.as_str(), tenant_id, Utc::now().timestamp_millis()],
            )
            .map_err(|e| conflict_or(e, &format!("user {u:?}")))?;
            Ok(c.query_row("SELECT * FROM users WHERE id = ?1", [c.last_insert_rowid()], user_row)?)
        })
        .await
    }

    async fn user_with_hash(&self, username: &str) -> StoreResult<Option<(User, String)>> {
        let u = username.to_owned();
        self.with(move |c| {
            Ok(
                c.query_row("SELECT * FROM users WHERE username = ?1", [u], |r| {
                    Ok((user_row(r)?, r.get("password_hash")?))
                })
                .optional()?,
            )
        })
        .await
    }

    async fn user(&self, id: i64) -> StoreResult<Option<User>> {
        self.with(move |c| {
            Ok(
                c.query_row("SELECT * FROM users WHERE id = ?1", [id], user_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn users(&self, tenant_id: Option<i64>) -> StoreResult<Vec<User>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM users WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([tenant_id], user_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_tenant(&self, name: &str) -> AccountResult<Tenant> {
        let name = name.to_owned();
        self.with(move |c| {
            let now = Utc::now().timestamp_millis();
            c.execute(
                "INSERT INTO tenants (name, created_ms) VALUES (?1, ?2)",
                params![name, now],
            )
            .map_err(|e| conflict_or(e, &format!("tenant {name:?}")))?;
            Ok(Tenant {
                id: c.last_insert_rowid(),
                name,
                created_at: ts(now),
            })
        })
        .await
    }

    async fn tenant(&self, id: i64) -> StoreResult<Option<Tenant>> {
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, name, created_ms FROM tenants WHERE id = ?1",
                [id],
                |r| {
                    Ok(Tenant {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: ts(r.get(2)?),
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT id, name, created_ms FROM tenants ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok(Tenant {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: ts(r.get(2)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_node_tenant(&self, node_id: &str, tenant_id: i64) -> StoreResult<()> {
        let n = node_id.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO node_tenants (node_id, tenant_id) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET tenant_id = ?2",
                params![n, tenant_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn node_tenant(&self, node_id: &str) -> StoreResult<Option<i64>> {
        let n = node_id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT tenant_id FROM node_tenants WHERE node_id = ?1",
                [n],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn tenant_nodes(&self, tenant_id: i64) -> StoreResult<Vec<String>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT node_id FROM node_tenants WHERE tenant_id = ?1 ORDER BY node_id",
            )?;
            let rows = stmt.query_map([tenant_id], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        role: Role,
        tenant_id: Option<i64>,
        created_by: &str,
    ) -> AccountResult<ApiKey> {
        let (n, h, by) = (name.to_owned(), key_hash.to_owned(), created_by.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_keys (name, key_hash, role, tenant_id, created_by, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![n, h, role.as_str(), tenant_id, by, Utc::now().timestamp_millis()],
            )
            .map_err(|e| conflict_or(e, "api key"))?;
            Ok(c.query_row("SELECT * FROM api_keys WHERE id = ?1", [c.last_insert_rowid()], key_row)?)
        })
        .await
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        let h = key_hash.to_owned();
        self.with(move |c| {
            Ok(
                c.query_row("SELECT * FROM api_keys WHERE key_hash = ?1", [h], key_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn api_keys(&self, tenant_id: Option<i64>) -> StoreResult<Vec<ApiKey>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM api_keys WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY id DESC",
            )?;
            let rows = stmt.query_map([tenant_id], key_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_api_key(&self, id: i64) -> StoreResult<Option<ApiKey>> {
        self.with(move |c| {
            // One statement: what it deletes is what it returns.
            Ok(c.query_row(
                "DELETE FROM api_keys WHERE id = ?1 RETURNING *",
                [id],
                key_row,
            )
            .optional()?)
        })
        .await
    }

    async fn audit(&self, r: AuditRecord) -> StoreResult<()> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO audit_log (ts_ms, actor, tenant_id, action, target, before, after, remote_addr)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    Utc::now().timestamp_millis(),
                    r.actor,
                    r.tenant_id,
                    r.action,
                    r.target,
                    r.before.map(|v| v.to_string()),
                    r.after.map(|v| v.to_string()),
                    r.remote_addr
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit_log(
        &self,
        tenant_id: Option<i64>,
        limit: usize,
        before_id: Option<i64>,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM audit_log WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
            let rows = stmt.query_map(params![tenant_id, before_id, limit as i64], |r| {
                Ok(AuditEntry {
                    id: r.get("id")?,
                    ts: ts(r.get("ts_ms")?),
                    actor: r.get("actor")?,
                    tenant_id: r.get("tenant_id")?,
                    action: r.get("action")?,
                    target: r.get("target")?,
                    before: json(r.get("before")?),
                    after: json(r.get("after")?),
                    remote_addr: r.get("remote_addr")?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn secret(&self, name: &str) -> StoreResult<Vec<u8>> {
        let n = name.to_owned();
        self.with(move |c| {
            if let Some(v) = c
                .query_row("SELECT value FROM secrets WHERE name = ?1", [&n], |r| {
                    r.get(0)
                })
                .optional()?
            {
                return Ok(v);
            }
            let mut fresh = vec![0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut fresh[..]);
            c.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![n, fresh],
            )?;
            Ok(
                c.query_row("SELECT value FROM secrets WHERE name = ?1", [&n], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }
}
