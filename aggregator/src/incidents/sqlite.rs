//! [`IncidentStore`] on SQLite, in the aggregator's database file, with its
//! own schema version (`schema_versions` row `incidents`).

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    distance_m, Comment, DedupWindow, Incident, IncidentChange, IncidentError, IncidentFilter,
    IncidentStore, NewIncident, Report, Sla, Status,
};
use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "incidents";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER,
        category TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        title TEXT NOT NULL,
        lat REAL,
        lng REAL,
        source TEXT NOT NULL,
        assignee TEXT,
        reports INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        acknowledged_ms INTEGER,
        resolved_ms INTEGER,
        closed_ms INTEGER,
        acknowledge_due_ms INTEGER NOT NULL,
        resolve_due_ms INTEGER NOT NULL
    );
    CREATE INDEX incidents_open ON incidents (tenant_id, category, status, created_ms);
    CREATE INDEX incidents_by_id ON incidents (tenant_id, id DESC);
    CREATE TABLE incident_comments (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents(id),
        author TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX incident_comments_by_incident ON incident_comments (incident_id, id);
    CREATE TABLE reports (
        id TEXT PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents(id),
        tenant_id INTEGER,
        lat REAL NOT NULL,
        lng REAL NOT NULL,
        notes TEXT,
        category TEXT NOT NULL,
        severity TEXT NOT NULL,
        detections TEXT NOT NULL,
        photo BLOB NOT NULL,
        photo_type TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX reports_by_incident ON reports (incident_id);
"#];

#[derive(Debug, Clone)]
pub struct SqliteIncidents {
    db: ComponentDb,
}

fn ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn parse<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn incident_row(r: &Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: r.get("id")?,
        tenant_id: r.get("tenant_id")?,
        category: r.get("category")?,
        severity: parse(r.get("severity")?)?,
        status: parse(r.get("status")?)?,
        title: r.get("title")?,
        lat: r.get("lat")?,
        lng: r.get("lng")?,
        source: r.get("source")?,
        assignee: r.get("assignee")?,
        report_count: r.get("reports")?,
        created_at: ts(r.get("created_ms")?),
        updated_at: ts(r.get("updated_ms")?),
        acknowledged_at: r.get::<_, Option<i64>>("acknowledged_ms")?.map(ts),
        resolved_at: r.get::<_, Option<i64>>("resolved_ms")?.map(ts),
        closed_at: r.get::<_, Option<i64>>("closed_ms")?.map(ts),
        acknowledge_due: ts(r.get("acknowledge_due_ms")?),
        resolve_due: ts(r.get("resolve_due_ms")?),
    })
}

fn report_row(r: &Row<'_>) -> rusqlite::Result<Report> {
    let det: String = r.get("detections")?;
    Ok(Report {
        id: r.get("id")?,
        incident_id: r.get("incident_id")?,
        tenant_id: r.get("tenant_id")?,
        lat: r.get("lat")?,
        lng: r.get("lng")?,
        notes: r.get("notes")?,
        category: r.get("category")?,
        severity: parse(r.get("severity")?)?,
        detections: serde_json::from_str(&det).unwrap_or_default(),
        created_at: ts(r.get("created_ms")?),
    })
}

fn get_incident(c: &Connection, id: i64) -> rusqlite::Result<Option<Incident>> {
    c.query_row("SELECT * FROM incidents WHERE id = ?1", [id], incident_row)
        .optional()
}

impl SqliteIncidents {
    pub fn open(url: &str) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
        })
    }

    async fn with<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.db.with(f).await
    }
}

#[async_trait::async_trait]
impl IncidentStore for SqliteIncidents {
    async fn open_or_join(
        &self,
        new: NewIncident,
        window: DedupWindow,
        sla: Sla,
    ) -> StoreResult<(Incident, bool)> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(StoreError::from)?;
            let now = Utc::now();
            let since = (now - window.within).timestamp_millis();
            // Candidates by index (tenant, category, open, recent); distance checked here.
            let joined = {
                let mut stmt = tx.prepare_cached(
                    "SELECT * FROM incidents WHERE tenant_id IS ?1 AND category = ?2
                     AND status IN ('new','acknowledged','in_progress') AND created_ms >= ?3",
                )?;
                let candidates = stmt
                    .query_map(params![new.tenant_id, new.category, since], incident_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                candidates
                    .into_iter()
                    .filter_map(|i| match (i.lat, i.lng, new.lat, new.lng) {
                        (Some(a), Some(b), Some(x), Some(y)) => Some((distance_m(a, b, x, y), i)),
                        // Neither has a place (alerts from cameras without a
                        // registered location): same category and time suffice.
                        (None, None, None, None) => Some((0.0, i)),
                        _ => None,
                    })
                    .filter(|(d, _)| *d <= window.radius_m)
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, i)| i)
            };
            let now_ms = now.timestamp_millis();
            let (id, created) = match joined {
                Some(i) => {
                    // A worse report raises the incident's severity.
                    let severity = i.severity.max(new.severity);
                    tx.execute(
                        "UPDATE incidents SET reports = reports + 1, updated_ms = ?2, severity = ?3 WHERE id = ?1",
                        params![i.id, now_ms, severity.as_str()],
                    )?;
                    (i.id, false)
                }
                None => {
                    tx.execute(
                        "INSERT INTO incidents (tenant_id, category, severity, status, title, lat, lng, source, reports,
                                                created_ms, updated_ms, acknowledge_due_ms, resolve_due_ms)
                         VALUES (?1, ?2, ?3, 'new', ?4, ?5, ?6, ?7, 1, ?8, ?8, ?9, ?10)",
                        params![
                            new.tenant_id,
                            new.category,
                            new.severity.as_str(),
                            new.title,
                            new.lat,
                            new.lng,
                            new.source,
                            now_ms,
                            (now + sla.acknowledge_within).timestamp_millis(),
                            (now + sla.resolve_within).timestamp_millis()
                        ],
                    )?;
                    (tx.last_insert_rowid(), true)
                }
            };
            let incident = get_incident(&tx, id)?.ok_or_else(|| StoreError::Database("incident vanished".into()))?;
            tx.commit()?;
            Ok((incident, created))
        })
        .await
    }

    async fn incident(&self, id: i64) -> StoreResult<Option<Incident>> {
        self.with(move |c| Ok(get_incident(c, id)?)).await
    }

    async fn incidents(&self, f: &IncidentFilter) -> StoreResult<Vec<Incident>> {
        let f = f.clone();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM incidents WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR status = ?2)
                 AND (?3 IS NULL OR category = ?3) AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![f.tenant_id, f.status.map(|s| s.as_str()), f.category, f.before_id, f.limit as i64],
                incident_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn change(
        &self,
        id: i64,
        change: IncidentChange,
        author: &str,
    ) -> Result<(Incident, Incident), IncidentError> {
        let author = author.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_incident(&tx, id)?.ok_or(IncidentError::NotFound(id))?;
            let now_ms = Utc::now().timestamp_millis();
            if let Some(next) = change.status {
                if next != before.status && !before.status.can_become(next) {
                    return Err(IncidentError::InvalidTransition { from: before.status, to: next });
                }
                if next != before.status {
                    let stamp = match next {
                        Status::Acknowledged => Some("acknowledged_ms"),
                        Status::Resolved => Some("resolved_ms"),
                        Status::Closed => Some("closed_ms"),
                        _ => None,
                    };
                    tx.execute("UPDATE incidents SET status = ?2, updated_ms = ?3 WHERE id = ?1", params![id, next.as_str(), now_ms])?;
                    if let Some(col) = stamp {
                        tx.execute(&format!("UPDATE incidents SET {col} = ?2 WHERE id = ?1"), params![id, now_ms])?;
                    }
                    // Work started without an explicit acknowledgement counts as one.
                    if next == Status::InProgress && before.acknowledged_at.is_none() {
                        tx.execute("UPDATE incidents SET acknowledged_ms = ?2 WHERE id = ?1", params![id, now_ms])?;
                    }
                    if next == Status::InProgress && before.status == Status::Resolved {
                        tx.execute("UPDATE incidents SET resolved_ms = NULL WHERE id = ?1", [id])?;
                    }
                }
            }
            if let Some(a) = &change.assignee {
                let a = a.trim();
                tx.execute(
                    "UPDATE incidents SET assignee = ?2, updated_ms = ?3 WHERE id = ?1",
                    params![id, (!a.is_empty()).then_some(a), now_ms],
                )?;
            }
            if let Some(body) = &change.comment {
                tx.execute(
                    "INSERT INTO incident_comments (incident_id, author, body, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![id, author, body, now_ms],
                )?;
                tx.execute("UPDATE incidents SET updated_ms = ?2 WHERE id = ?1", params![id, now_ms])?;
            }
            let after = get_incident(&tx, id)?.ok_or(IncidentError::NotFound(id))?;
            tx.commit()?;
            Ok((before, after))
        })
        .await
    }

    async fn comments(&self, incident_id: i64) -> StoreResult<Vec<Comment>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM incident_comments WHERE incident_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([incident_id], |r| {
                Ok(Comment {
                    id: r.get("id")?,
                    incident_id: r.get("incident_id")?,
                    author: r.get("author")?,
                    body: r.get("body")?,
                    created_at: ts(r.get("created_ms")?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_report(&self, report: &Report, photo: &[u8], photo_type: &str) -> StoreResult<()> {
        let (r, photo, pt) = (report.clone(), photo.to_vec(), photo_type.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO reports (id, incident_id, tenant_id, lat, lng, notes, category, severity, detections,
                                      photo, photo_type, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    r.id,
                    r.incident_id,
                    r.tenant_id,
                    r.lat,
                    r.lng,
                    r.notes,
                    r.category,
                    r.severity.as_str(),
                    r.detections.to_string(),
                    photo,
                    pt,
                    r.created_at.timestamp_millis()
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn report(&self, id: &str) -> StoreResult<Option<Report>> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(
                c.query_row("SELECT * FROM reports WHERE id = ?1", [id], report_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn reports_of(&self, incident_id: i64) -> StoreResult<Vec<Report>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM reports WHERE incident_id = ?1 ORDER BY created_ms",
            )?;
            let rows = stmt.query_map([incident_id], report_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn report_photo(&self, id: &str) -> StoreResult<Option<(Vec<u8>, String)>> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT photo, photo_type FROM reports WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }
}
