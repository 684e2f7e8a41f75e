//! Track events, line counts and snapshots from the agents' trackers
//! (`…/events` and `…/snapshots`): stored for operators and served at
//! `GET /api/v1/events` and `GET /api/v1/events/{id}/snapshot`.
//!
//! These topics are best effort (no outbox ledger): a lost event costs a
//! line on the dashboard, not a detection. Storage keeps its own schema
//! version in the aggregator's SQLite file.

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use edgeqi_shared::protocol::{EventBatch, Snapshot};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "events";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE track_events (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        track_id INTEGER NOT NULL,
        track_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        class_id INTEGER,
        label TEXT NOT NULL,
        score REAL NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        zone TEXT,
        line TEXT,
        direction TEXT,
        dwell_s REAL
    );
    CREATE INDEX track_events_by_time ON track_events (ts_ms DESC, id);
    CREATE INDEX track_events_by_node ON track_events (node_id, ts_ms DESC);
    CREATE INDEX track_events_by_track ON track_events (track_key);
    CREATE TABLE line_counts (
        node_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        line TEXT NOT NULL,
        label TEXT NOT NULL,
        direction TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        count INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (node_id, camera_id, line, label, direction, since_ms)
    ) WITHOUT ROWID;
    CREATE TABLE snapshots (
        track_key TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        label TEXT NOT NULL,
        score REAL NOT NULL,
        jpeg BLOB NOT NULL,
        frame_jpeg BLOB
    );
"#];

/// A stored track event as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub id: String,
    pub node_id: String,
    pub camera_id: String,
    pub track_id: u64,
    pub track_key: String,
    pub kind: String,
    pub ts: DateTime<Utc>,
    pub class_id: Option<u32>,
    pub label: String,
    pub score: f32,
    pub bbox: [f32; 4],
    pub zone: Option<String>,
    pub line: Option<String>,
    pub direction: Option<String>,
    pub dwell_s: Option<f64>,
    pub has_snapshot: bool,
}

/// Crossings of one line by one class in one direction, summed over agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LineTotal {
    pub node_id: String,
    pub camera_id: String,
    pub line: String,
    pub label: String,
    pub direction: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub node_ids: Option<Vec<String>>,
    pub node_id: Option<String>,
    pub camera_id: Option<String>,
    pub kind: Option<String>,
    pub limit: usize,
    /// Continue after this (ts_ms, id), newest first.
    pub after: Option<(i64, String)>,
}

#[derive(Debug, Clone)]
pub struct EventStore {
    db: ComponentDb,
}

/// Always a valid RFC 3339 date-time, whatever an older build stored.
fn ts(ms: i64) -> DateTime<Utc> {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    edgeqi_shared::protocol::TimeWindow::rfc3339().clamp(t)
}

impl EventStore {
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

    /// Stores a batch; a resent event (same id) is kept once.
    pub async fn record_events(&self, batch: EventBatch) -> StoreResult<()> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let now = Utc::now().timestamp_millis();
            {
                let mut ev = tx.prepare_cached(
                    "INSERT INTO track_events (id, node_id, camera_id, track_id, track_key, kind, ts_ms, class_id,
                         label, score, x1, y1, x2, y2, zone, line, direction, dwell_s)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                     ON CONFLICT(id) DO NOTHING",
                )?;
                for e in &batch.events {
                    ev.execute(params![
                        e.id,
                        batch.node_id,
                        e.camera_id,
                        i64::try_from(e.track_id).unwrap_or(i64::MAX),
                        e.track_key,
                        e.kind,
                        e.ts.timestamp_millis(),
                        e.class_id,
                        e.label,
                        e.score,
                        e.bbox[0],
                        e.bbox[1],
                        e.bbox[2],
                        e.bbox[3],
                        e.zone,
                        e.line,
                        e.direction,
                        e.dwell_s
                    ])?;
                }
                let mut lc = tx.prepare_cached(
                    "INSERT INTO line_counts (node_id, camera_id, line, label, direction, since_ms, count, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT DO UPDATE SET count = MAX(count, excluded.count), updated_ms = excluded.updated_ms",
                )?;
                for l in &batch.line_counts {
                    lc.execute(params![
                        batch.node_id,
                        l.camera_id,
                        l.line,
                        l.label,
                        l.direction,
                        l.since.timestamp_millis(),
                        i64::try_from(l.count).unwrap_or(i64::MAX),
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Stores a track's snapshot; the JPEG must decode from base64 (if not,
    /// [`StoreError::Refused`]: it would never store).
    pub async fn record_snapshot(&self, s: &Snapshot) -> StoreResult<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let jpeg = b64
            .decode(&s.jpeg_b64)
            .map_err(|e| StoreError::Refused(format!("jpeg_b64 is not base64: {e}")))?;
        if !jpeg.starts_with(&[0xFF, 0xD8]) {
            return Err(StoreError::Refused("jpeg_b64 does not hold a JPEG".into()));
        }
        let frame =
            match &s.frame_jpeg_b64 {
                Some(f) => Some(b64.decode(f).map_err(|e| {
                    StoreError::Refused(format!("frame_jpeg_b64 is not base64: {e}"))
                })?),
                None => None,
            };
        let s = s.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO snapshots (track_key, node_id, camera_id, event_id, ts_ms, label, score, jpeg, frame_jpeg)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(track_key) DO UPDATE SET event_id = excluded.event_id, ts_ms = excluded.ts_ms,
                     label = excluded.label, score = excluded.score, jpeg = excluded.jpeg, frame_jpeg = excluded.frame_jpeg",
                params![s.track_key, s.node_id, s.camera_id, s.event_id, s.ts.timestamp_millis(), s.label, s.score, jpeg, frame],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn events(
        &self,
        q: EventQuery,
    ) -> StoreResult<(Vec<StoredEvent>, Option<(i64, String)>)> {
        self.with(move |c| {
            let nodes = q
                .node_ids
                .as_ref()
                .map(|n| serde_json::to_string(n).unwrap_or_else(|_| "[]".into()));
            let (after_ts, after_id) = match &q.after {
                Some((t, i)) => (Some(*t), Some(i.clone())),
                None => (None, None),
            };
            let mut stmt = c.prepare_cached(
                "SELECT e.*, (s.track_key IS NOT NULL) AS has_snapshot
                 FROM track_events e LEFT JOIN snapshots s ON s.track_key = e.track_key
                 WHERE (?1 IS NULL OR e.node_id IN (SELECT value FROM json_each(?1)))
                   AND (?2 IS NULL OR e.node_id = ?2) AND (?3 IS NULL OR e.camera_id = ?3)
                   AND (?4 IS NULL OR e.kind = ?4)
                   AND (?5 IS NULL OR e.ts_ms < ?5 OR (e.ts_ms = ?5 AND e.id > ?6))
                 ORDER BY e.ts_ms DESC, e.id LIMIT ?7",
            )?;
            let rows = stmt.query_map(
                params![
                    nodes,
                    q.node_id,
                    q.camera_id,
                    q.kind,
                    after_ts,
                    after_id,
                    (q.limit + 1) as i64
                ],
                |r| {
                    Ok((
                        StoredEvent {
                            id: r.get("id")?,
                            node_id: r.get("node_id")?,
                            camera_id: r.get("camera_id")?,
                            track_id: r.get::<_, i64>("track_id")? as u64,
                            track_key: r.get("track_key")?,
                            kind: r.get("kind")?,
                            ts: ts(r.get("ts_ms")?),
                            class_id: r.get("class_id")?,
                            label: r.get("label")?,
                            score: r.get("score")?,
                            bbox: [r.get("x1")?, r.get("y1")?, r.get("x2")?, r.get("y2")?],
                            zone: r.get("zone")?,
                            line: r.get("line")?,
                            direction: r.get("direction")?,
                            dwell_s: r.get("dwell_s")?,
                            has_snapshot: r.get("has_snapshot")?,
                        },
                        r.get::<_, i64>("ts_ms")?,
                    ))
                },
            )?;
            let mut items = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let more = items.len() > q.limit;
            items.truncate(q.limit);
            let next = if more {
                items.last().map(|(e, t)| (*t, e.id.clone()))
            } else {
                None
            };
            Ok((items.into_iter().map(|(e, _)| e).collect(), next))
        })
        .await
    }

    /// The snapshot shown for an event (its track's), with the event's node.
    pub async fn snapshot_for_event(
        &self,
        event_id: &str,
        full_frame: bool,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        let id = event_id.to_owned();
        self.with(move |c| {
            let col = if full_frame { "COALESCE(s.frame_jpeg, s.jpeg)" } else { "s.jpeg" };
            Ok(c.query_row(
                &format!("SELECT e.node_id, {col} FROM track_events e JOIN snapshots s ON s.track_key = e.track_key WHERE e.id = ?1"),
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    /// Line totals: the latest count of each agent run, summed over runs.
    pub async fn line_totals(&self, node_ids: Option<Vec<String>>) -> StoreResult<Vec<LineTotal>> {
        self.with(move |c| {
            let nodes = node_ids.map(|n| serde_json::to_string(&n).unwrap_or_else(|_| "[]".into()));
            let mut stmt = c.prepare_cached(
                // TOTAL, not SUM: SUM fails the whole query on an integer
                // overflow; the saturating cast keeps every stored row servable.
                "SELECT node_id, camera_id, line, label, direction,
                        CAST(MIN(TOTAL(count), 9223372036854775807.0) AS INTEGER) FROM line_counts
                 WHERE ?1 IS NULL OR node_id IN (SELECT value FROM json_each(?1))
                 GROUP BY node_id, camera_id, line, label, direction ORDER BY node_id, camera_id, line, label, direction",
            )?;
            let rows = stmt.query_map([nodes], |r| {
                Ok(LineTotal {
                    node_id: r.get(0)?,
                    camera_id: r.get(1)?,
                    line: r.get(2)?,
                    label: r.get(3)?,
                    direction: r.get(4)?,
                    count: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
