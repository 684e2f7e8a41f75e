//! Alert storage in the aggregator's SQLite file (own schema version,
//! `schema_versions` row `alerts`): rules, fired alerts, and the webhook
//! delivery log with one row per attempt.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::json;

use super::RuleSpec;
use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "alerts";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE alert_rules (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER,
        spec TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX alert_rules_by_tenant ON alert_rules (tenant_id, id DESC);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        rule_id INTEGER NOT NULL,
        tenant_id INTEGER,
        fired_ms INTEGER NOT NULL,
        trigger_ms INTEGER NOT NULL,
        incident_id INTEGER,
        body TEXT NOT NULL
    );
    CREATE INDEX alerts_by_tenant ON alerts (tenant_id, id DESC);
    CREATE INDEX alerts_by_rule ON alerts (rule_id, id DESC);
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL REFERENCES alerts(id),
        rule_id INTEGER NOT NULL,
        tenant_id INTEGER,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant_id, id DESC);
    CREATE INDEX webhook_deliveries_by_rule ON webhook_deliveries (rule_id, id DESC);
    CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (status) WHERE status = 'pending';
    CREATE TABLE webhook_attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id),
        attempt INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        status_code INTEGER,
        error TEXT,
        outcome TEXT NOT NULL
    );
    CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, attempt);
"#];

fn ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    pub id: i64,
    pub tenant_id: Option<i64>,
    pub spec: RuleSpec,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl StoredRule {
    /// The API's view: the webhook secret is replaced by `secret_set`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or_default();
        if let Some(w) = v
            .get_mut("actions")
            .and_then(|a| a.get_mut("webhook"))
            .and_then(|w| w.as_object_mut())
        {
            w.remove("secret");
            w.insert("secret_set".into(), json!(true));
        }
        v["id"] = json!(self.id);
        v["tenant_id"] = json!(self.tenant_id);
        v["created_by"] = json!(self.created_by);
        v["created_at"] = json!(self.created_at);
        v["updated_at"] = json!(self.updated_at);
        v
    }
}

fn rule_row(r: &Row<'_>) -> rusqlite::Result<StoredRule> {
    let spec: String = r.get("spec")?;
    Ok(StoredRule {
        id: r.get("id")?,
        tenant_id: r.get("tenant_id")?,
        spec: serde_json::from_str(&spec).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })?,
        created_by: r.get("created_by")?,
        created_at: ts(r.get("created_ms")?),
        updated_at: ts(r.get("updated_ms")?),
    })
}

fn get_rule(c: &Connection, id: i64) -> rusqlite::Result<Option<StoredRule>> {
    c.query_row("SELECT * FROM alert_rules WHERE id = ?1", [id], rule_row)
        .optional()
}

/// One webhook attempt as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
}

/// One alert's webhook delivery and all its attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub alert_id: i64,
    pub rule_id: i64,
    pub tenant_id: Option<i64>,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub attempt_log: Vec<Attempt>,
}

/// A delivery still to be made (at start-up: ones a restart interrupted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub id: i64,
    pub rule_id: i64,
    pub url: String,
    pub body: String,
    pub attempts_made: u32,
}

/// Filters for list endpoints; `before_id` continues a page (newest first).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub tenant_id: Option<i64>,
    pub rule_id: Option<i64>,
    pub status: Option<String>,
    pub limit: usize,
    pub before_id: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AlertStore {
    db: ComponentDb,
}

impl AlertStore {
    pub fn open(url: &str) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.db.with(f).await
    }

    pub async fn create_rule(
        &self,
        tenant_id: Option<i64>,
        spec: RuleSpec,
        created_by: &str,
    ) -> StoreResult<StoredRule> {
        let by = created_by.to_owned();
        self.with(move |c| {
            let now = Utc::now().timestamp_millis();
            c.execute(
                "INSERT INTO alert_rules (tenant_id, spec, enabled, created_by, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![tenant_id, spec_json(&spec)?, spec.enabled, by, now],
            )?;
            get_rule(c, c.last_insert_rowid())?
                .ok_or_else(|| StoreError::Database("rule vanished".into()))
        })
        .await
    }

    pub async fn rule(&self, id: i64) -> StoreResult<Option<StoredRule>> {
        self.with(move |c| Ok(get_rule(c, id)?)).await
    }

    /// A page of rules (newest first), or every rule when `limit` is 0.
    pub async fn rules(&self, q: &ListQuery) -> StoreResult<Vec<StoredRule>> {
        let q = q.clone();
        self.with(move |c| {
            let limit = if q.limit == 0 { -1 } else { q.limit as i64 };
            let mut stmt = c.prepare_cached(
                "SELECT * FROM alert_rules WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![q.tenant_id, q.before_id, limit], rule_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Replaces a rule's spec; returns it before and after.
    pub async fn update_rule(
        &self,
        id: i64,
        spec: RuleSpec,
    ) -> StoreResult<Option<(StoredRule, StoredRule)>> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(before) = get_rule(&tx, id)? else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE alert_rules SET spec = ?2, enabled = ?3, updated_ms = ?4 WHERE id = ?1",
                params![
                    id,
                    spec_json(&spec)?,
                    spec.enabled,
                    Utc::now().timestamp_millis()
                ],
            )?;
            let after =
                get_rule(&tx, id)?.ok_or_else(|| StoreError::Database("rule vanished".into()))?;
            tx.commit()?;
            Ok(Some((before, after)))
        })
        .await
    }

    /// Deletes a rule; its alerts and deliveries stay as history.
    pub async fn delete_rule(&self, id: i64) -> StoreResult<Option<StoredRule>> {
        self.with(move |c| {
            let before = get_rule(c, id)?;
            c.execute("DELETE FROM alert_rules WHERE id = ?1", [id])?;
            Ok(before)
        })
        .await
    }

    pub async fn count_enabled(&self) -> StoreResult<usize> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM alert_rules WHERE enabled", [], |r| {
                    r.get::<_, i64>(0)
                })? as usize,
            )
        })
        .await
    }

    /// Event time of each rule's last firing (cooldowns survive restarts).
    pub async fn last_fired(&self) -> StoreResult<HashMap<i64, DateTime<Utc>>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT rule_id, MAX(trigger_ms) FROM alerts GROUP BY rule_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, ts(r.get(1)?))))?;
            Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
        })
        .await
    }

    /// Records a fired alert (`body` without its id); returns the id.
    pub async fn record_alert(
        &self,
        rule_id: i64,
        tenant_id: Option<i64>,
        trigger: DateTime<Utc>,
        incident_id: Option<i64>,
        body: serde_json::Value,
    ) -> StoreResult<i64> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO alerts (rule_id, tenant_id, fired_ms, trigger_ms, incident_id, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rule_id,
                    tenant_id,
                    Utc::now().timestamp_millis(),
                    trigger.timestamp_millis(),
                    incident_id,
                    body.to_string()
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// Fired alerts, newest first, as JSON objects with their id.
    pub async fn alerts(&self, q: &ListQuery) -> StoreResult<Vec<serde_json::Value>> {
        let q = q.clone();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, body FROM alerts WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR rule_id = ?2)
                 AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![q.tenant_id, q.rule_id, q.before_id, q.limit as i64],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (id, body) = row?;
                let mut v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                v["id"] = json!(id);
                out.push(v);
            }
            Ok(out)
        })
        .await
    }

    /// Opens a webhook delivery for an alert; returns its id.
    pub async fn create_delivery(
        &self,
        alert_id: i64,
        rule_id: i64,
        tenant_id: Option<i64>,
        url: &str,
        body: &str,
    ) -> StoreResult<i64> {
        let (url, body) = (url.to_owned(), body.to_owned());
        self.with(move |c| {
            let now = Utc::now().timestamp_millis();
            c.execute(
                "INSERT INTO webhook_deliveries (alert_id, rule_id, tenant_id, url, body, status, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
                params![alert_id, rule_id, tenant_id, url, body, now],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// Logs one attempt and moves the delivery to `status`.
    pub async fn record_attempt(
        &self,
        delivery_id: i64,
        attempt: Attempt,
        status: &str,
    ) -> StoreResult<()> {
        let status = status.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_ms, duration_ms, status_code, error, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    delivery_id,
                    attempt.attempt,
                    attempt.started_at.timestamp_millis(),
                    attempt.duration_ms as i64,
                    attempt.status_code,
                    attempt.error,
                    attempt.outcome
                ],
            )?;
            tx.execute(
                "UPDATE webhook_deliveries SET status = ?2, attempts = ?3, last_error = ?4, updated_ms = ?5 WHERE id = ?1",
                params![
                    delivery_id,
                    status,
                    attempt.attempt,
                    attempt.error,
                    Utc::now().timestamp_millis()
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Gives up on a delivery that can no longer be made (its rule is gone).
    pub async fn abandon_delivery(&self, delivery_id: i64, why: &str) -> StoreResult<()> {
        let why = why.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE webhook_deliveries SET status = 'failed', last_error = ?2, updated_ms = ?3 WHERE id = ?1",
                params![delivery_id, why, Utc::now().timestamp_millis()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn pending_deliveries(&self) -> StoreResult<Vec<PendingDelivery>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, rule_id, url, body, attempts FROM webhook_deliveries WHERE status = 'pending' ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PendingDelivery {
                    id: r.get(0)?,
                    rule_id: r.get(1)?,
                    url: r.get(2)?,
                    body: r.get(3)?,
                    attempts_made: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The delivery log, newest first, each with its attempts.
    pub async fn deliveries(&self, q: &ListQuery) -> StoreResult<Vec<Delivery>> {
        let q = q.clone();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM webhook_deliveries WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR rule_id = ?2)
                 AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![q.tenant_id, q.rule_id, q.status, q.before_id, q.limit as i64],
                |r| {
                    Ok(Delivery {
                        id: r.get("id")?,
                        alert_id: r.get("alert_id")?,
                        rule_id: r.get("rule_id")?,
                        tenant_id: r.get("tenant_id")?,
                        url: r.get("url")?,
                        status: r.get("status")?,
                        attempts: r.get("attempts")?,
                        last_error: r.get("last_error")?,
                        created_at: ts(r.get("created_ms")?),
                        updated_at: ts(r.get("updated_ms")?),
                        attempt_log: Vec::new(),
                    })
                },
            )?;
            let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut attempts = c.prepare_cached(
                "SELECT * FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY attempt",
            )?;
            for d in &mut out {
                d.attempt_log = attempts
                    .query_map([d.id], |r| {
                        Ok(Attempt {
                            attempt: r.get("attempt")?,
                            started_at: ts(r.get("started_ms")?),
                            duration_ms: r.get::<_, i64>("duration_ms")?.max(0) as u64,
                            status_code: r.get("status_code")?,
                            error: r.get("error")?,
                            outcome: r.get("outcome")?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
            }
            Ok(out)
        })
        .await
    }
}

fn spec_json(spec: &RuleSpec) -> StoreResult<String> {
    serde_json::to_string(spec).map_err(|e| StoreError::Database(format!("rule to JSON: {e}")))
}
