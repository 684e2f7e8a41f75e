//! The embedded default backend: one SQLite file in WAL mode.
//!
//! One writer connection (SQLite allows one writer at a time anyway) and one
//! reader connection, each behind a mutex and used from blocking threads so
//! the async runtime never waits on disk. `synchronous=FULL` because an ack
//! promises the batch survives a power cut, not only a process crash.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, TimeZone, Utc};
use edgeqi_shared::{DetectionBatch, Heartbeat, NodeStatus};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    DeadLetter, DeadLetterQuery, DetectionPage, DetectionQuery, IngestOutcome, LedgerEntry,
    NodeRecord, RetentionPolicy, RetentionReport, Store, StoreError, StoreResult, StoredDetection,
    Summary, TimeseriesBy, TimeseriesPoint, TimeseriesQuery,
};

/// Schema versions, applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    // 1: ledger, detections, registry, dead letters.
    r#"
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        last_heartbeat_ms INTEGER,
        heartbeat_interval_s INTEGER NOT NULL DEFAULT 10,
        last_heartbeat TEXT,
        status_online INTEGER,
        status_ms INTEGER
    );
    CREATE TABLE batches (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        detections INTEGER NOT NULL,
        counts INTEGER NOT NULL,
        PRIMARY KEY (node_id, epoch, seq)
    ) WITHOUT ROWID;
    CREATE TABLE ledger (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        acked_seq INTEGER NOT NULL,
        max_seq INTEGER NOT NULL,
        batches INTEGER NOT NULL,
        PRIMARY KEY (node_id, epoch)
    ) WITHOUT ROWID;
    CREATE TABLE detections (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL,
        camera_id TEXT NOT NULL,
        class_id INTEGER,
        label TEXT NOT NULL,
        score REAL NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        track_id INTEGER,
        zone TEXT
    );
    CREATE INDEX detections_by_time ON detections (ts_ms DESC, id DESC);
    CREATE INDEX detections_by_node ON detections (node_id, ts_ms DESC, id DESC);
    CREATE INDEX detections_by_label ON detections (label, ts_ms DESC, id DESC);
    CREATE TABLE detection_counts (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq INTEGER NOT NULL,
        minute_ms INTEGER NOT NULL,
        camera_id TEXT NOT NULL,
        zone TEXT,
        class_id INTEGER,
        label TEXT NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX detection_counts_by_time ON detection_counts (minute_ms);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        received_ms INTEGER NOT NULL,
        topic TEXT NOT NULL,
        node_id TEXT,
        reason_code TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload BLOB NOT NULL,
        payload_bytes INTEGER NOT NULL
    );
    "#,
    // 2: camera filter index (keyset by camera) and time index for retention.
    r#"
    CREATE INDEX detections_by_camera ON detections (camera_id, ts_ms DESC, id DESC);
    CREATE INDEX dead_letters_by_time ON dead_letters (received_ms);
    "#,
];

/// Dead letters keep at most this much of a payload.
const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug)]
struct Inner {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves no half transaction behind
    // (rusqlite rolls back on drop), so the connection is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Rows stored before ingest checked timestamps may hold any instant; what
/// is served is always a valid RFC 3339 date-time.
fn from_ms(v: i64) -> DateTime<Utc> {
    let t = Utc.timestamp_millis_opt(v).single().unwrap_or_default();
    edgeqi_shared::protocol::TimeWindow::rfc3339().clamp(t)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub fn open(path: &str) -> StoreResult<Self> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(open_err("empty path; use sqlite://./data/edgeqi.db".into()));
        }
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let writer = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
            )
            .map_err(|e| open_err(format!("{e} (is this an SQLite database?)")))?;
        migrate(&writer).map_err(|e| match e {
            e @ StoreError::TooNew { .. } => e,
            e => open_err(format!("migration failed: {e}")),
        })?;
        let reader = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        reader
            .execute_batch("PRAGMA busy_timeout=5000;")
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&lock(&inner.reader)))
            .await
            .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))?
    }
}

impl SqliteStore {
    /// Totals over every node, or only `nodes` (a tenant's).
    async fn summary_of(
        &self,
        now: DateTime<Utc>,
        nodes: Option<Vec<String>>,
    ) -> StoreResult<Summary> {
        let records: Vec<NodeRecord> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| nodes.as_ref().is_none_or(|only| only.contains(&n.node_id)))
            .collect();
        let nodes_online = records.iter().filter(|n| n.is_online(now)).count() as u64;
        let nodes_total = records.len() as u64;
        // NULL means every node; otherwise a JSON array bound as one parameter.
        let list = nodes.map(|n| serde_json::to_string(&n).unwrap_or_else(|_| "[]".into()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT label, COUNT(*) FROM detections
                 WHERE ?1 IS NULL OR node_id IN (SELECT value FROM json_each(?1)) GROUP BY label",
            )?;
            let by_class = stmt
                .query_map([list], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<std::collections::BTreeMap<_, _>>>()?;
            Ok(Summary {
                detections_total: by_class.values().fold(0u64, |a, n| a.saturating_add(*n)),
                by_class,
                nodes_total,
                nodes_online,
            })
        })
        .await
    }
}

fn migrate(conn: &Connection) -> StoreResult<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied SQLite migration");
    }
    Ok(())
}

fn touch_node(tx: &rusqlite::Transaction<'_>, node_id: &str, now_ms: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO nodes (node_id, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
         ON CONFLICT(node_id) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, ?2)",
        params![node_id, now_ms],
    )?;
    Ok(())
}

/// Stores a group of batches in one transaction: one fsync for all of them.
fn ingest_group(
    conn: &mut Connection,
    batches: &[DetectionBatch],
) -> StoreResult<Vec<IngestOutcome>> {
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        out.push(ingest(&tx, b)?);
    }
    tx.commit()?;
    // Every outcome reports its epoch's prefix after the whole group, as the
    // PostgreSQL backend does.
    let mut last = std::collections::HashMap::new();
    for (b, o) in batches.iter().zip(&out) {
        last.insert((b.node_id.as_str(), b.epoch.as_str()), o.acked_seq);
    }
    for (b, o) in batches.iter().zip(out.iter_mut()) {
        o.acked_seq = last[&(b.node_id.as_str(), b.epoch.as_str())];
    }
    Ok(out)
}

fn ingest(tx: &rusqlite::Transaction<'_>, batch: &DetectionBatch) -> StoreResult<IngestOutcome> {
    let now_ms = ms(Utc::now());
    let seq =
        i64::try_from(batch.seq).map_err(|_| StoreError::Refused("seq out of range".into()))?;
    let inserted = tx.execute(
        "INSERT INTO batches (node_id, epoch, seq, received_ms, detections, counts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        params![
            batch.node_id,
            batch.epoch,
            seq,
            now_ms,
            batch.detections.len() as i64,
            batch.counts.len() as i64
        ],
    )?;
    let mut ids = Vec::new();
    if inserted == 1 {
        let mut det = tx.prepare_cached(
            "INSERT INTO detections (node_id, epoch, seq, ts_ms, camera_id, class_id, label, score,
                                     x1, y1, x2, y2, track_id, zone)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        ids.reserve(batch.detections.len());
        for d in &batch.detections {
            det.execute(params![
                batch.node_id,
                batch.epoch,
                seq,
                ms(d.ts),
                d.camera_id,
                d.class_id,
                d.label,
                d.score,
                d.bbox[0],
                d.bbox[1],
                d.bbox[2],
                d.bbox[3],
                d.track_id.and_then(|t| i64::try_from(t).ok()),
                d.zone
            ])?;
            ids.push(tx.last_insert_rowid());
        }
        drop(det);
        let mut cnt = tx.prepare_cached(
            "INSERT INTO detection_counts (node_id, epoch, seq, minute_ms, camera_id, zone, class_id, label, count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for c in &batch.counts {
            cnt.execute(params![
                batch.node_id,
                batch.epoch,
                seq,
                ms(c.minute),
                c.camera_id,
                c.zone,
                c.class_id,
                c.label,
                i64::try_from(c.count).unwrap_or(i64::MAX)
            ])?;
        }
        drop(cnt);
        tx.execute(
            "INSERT INTO ledger (node_id, epoch, acked_seq, max_seq, batches) VALUES (?1, ?2, 0, ?3, 1)
             ON CONFLICT(node_id, epoch) DO UPDATE SET max_seq = MAX(max_seq, ?3), batches = batches + 1",
            params![batch.node_id, batch.epoch, seq],
        )?;
        // Advance the contiguous prefix over every stored seq that now joins it.
        let mut acked: i64 = tx.query_row(
            "SELECT acked_seq FROM ledger WHERE node_id = ?1 AND epoch = ?2",
            params![batch.node_id, batch.epoch],
            |r| r.get(0),
        )?;
        if seq == acked + 1 {
            let mut next = tx.prepare_cached(
                "SELECT 1 FROM batches WHERE node_id = ?1 AND epoch = ?2 AND seq = ?3",
            )?;
            while next.exists(params![batch.node_id, batch.epoch, acked + 1])? {
                acked += 1;
            }
            drop(next);
            tx.execute(
                "UPDATE ledger SET acked_seq = ?3 WHERE node_id = ?1 AND epoch = ?2",
                params![batch.node_id, batch.epoch, acked],
            )?;
        }
        touch_node(tx, &batch.node_id, now_ms)?;
    }
    let acked: i64 = tx
        .query_row(
            "SELECT acked_seq FROM ledger WHERE node_id = ?1 AND epoch = ?2",
            params![batch.node_id, batch.epoch],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok(IngestOutcome {
        duplicate: inserted == 0,
        acked_seq: u64::try_from(acked).unwrap_or(0),
        detection_ids: ids,
    })
}

/// The SQL of a detections query and its arguments.
fn detections_sql(q: &DetectionQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from("SELECT * FROM detections WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(v) = &q.node_id {
        arg(&mut sql, " AND node_id = ?", v.clone().into());
    }
    if let Some(nodes) = &q.node_ids {
        // Bound as one JSON array so any number of nodes is one parameter.
        let list = serde_json::to_string(nodes).unwrap_or_else(|_| "[]".into());
        arg(
            &mut sql,
            " AND node_id IN (SELECT value FROM json_each(?))",
            list.into(),
        );
    }
    if let Some(v) = &q.camera_id {
        arg(&mut sql, " AND camera_id = ?", v.clone().into());
    }
    if let Some(v) = &q.label {
        arg(&mut sql, " AND label = ?", v.clone().into());
    }
    if let Some(v) = q.since {
        arg(&mut sql, " AND ts_ms >= ?", ms(v).into());
    }
    if let Some(v) = q.until {
        arg(&mut sql, " AND ts_ms < ?", ms(v).into());
    }
    if let Some(v) = q.min_score {
        arg(&mut sql, " AND score >= ?", f64::from(v).into());
    }
    if let Some((ts, id)) = q.after {
        arg(&mut sql, " AND (ts_ms < ?", ts.into());
        arg(&mut sql, " OR (ts_ms = ?", ts.into());
        arg(&mut sql, " AND id < ?))", id.into());
    }
    // One extra row tells whether another page follows.
    sql.push_str(&format!(
        " ORDER BY ts_ms DESC, id DESC LIMIT {}",
        q.limit + 1
    ));
    (sql, args)
}

impl SqliteStore {
    /// SQLite's plan for a detections query (tests check the hot queries use an index).
    pub async fn explain_detections(&self, q: &DetectionQuery) -> StoreResult<String> {
        let (sql, args) = detections_sql(q);
        self.read(move |c| {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows =
                stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
        })
        .await
    }
}

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRecord> {
    let hb_json: Option<String> = r.get("last_heartbeat")?;
    Ok(NodeRecord {
        node_id: r.get("node_id")?,
        first_seen: from_ms(r.get("first_seen_ms")?),
        last_seen: from_ms(r.get("last_seen_ms")?),
        last_heartbeat_at: r.get::<_, Option<i64>>("last_heartbeat_ms")?.map(from_ms),
        heartbeat_interval_s: r.get("heartbeat_interval_s")?,
        status_online: r.get("status_online")?,
        status_ts: r.get::<_, Option<i64>>("status_ms")?.map(from_ms),
        last_heartbeat: hb_json.and_then(|j| serde_json::from_str(&j).ok()),
    })
}

fn detection_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredDetection, i64)> {
    let ts_ms: i64 = r.get("ts_ms")?;
    Ok((
        StoredDetection {
            id: r.get("id")?,
            node_id: r.get("node_id")?,
            ts: from_ms(ts_ms),
            camera_id: r.get("camera_id")?,
            class_id: r.get("class_id")?,
            label: r.get("label")?,
            score: r.get("score")?,
            bbox: [r.get("x1")?, r.get("y1")?, r.get("x2")?, r.get("y2")?],
            track_id: r
                .get::<_, Option<i64>>("track_id")?
                .and_then(|t| u64::try_from(t).ok()),
            zone: r.get("zone")?,
        },
        ts_ms,
    ))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ingest_batches(&self, batches: &[DetectionBatch]) -> StoreResult<Vec<IngestOutcome>> {
        let batches = batches.to_vec();
        self.write(move |c| ingest_group(c, &batches)).await
    }

    async fn record_heartbeats(&self, hbs: &[Heartbeat]) -> StoreResult<()> {
        let rows = hbs
            .iter()
            .map(|hb| {
                serde_json::to_string(hb)
                    .map(|json| (hb.node_id.clone(), hb.interval_s, json))
                    .map_err(|e| StoreError::Database(e.to_string()))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(move |c| {
            let tx = c.transaction()?;
            let now_ms = ms(Utc::now());
            for (node_id, interval, json) in rows {
                touch_node(&tx, &node_id, now_ms)?;
                tx.prepare_cached(
                    "UPDATE nodes SET last_heartbeat_ms = ?2, heartbeat_interval_s = ?3, last_heartbeat = ?4
                     WHERE node_id = ?1",
                )?
                .execute(params![node_id, now_ms, interval, json])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_status(&self, status: &NodeStatus) -> StoreResult<()> {
        let status = status.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            // Receipt time, not the agent's clock: online/offline is judged
            // against heartbeat receipt times, and edge clocks drift.
            let now_ms = ms(Utc::now());
            touch_node(&tx, &status.node_id, now_ms)?;
            tx.execute(
                "UPDATE nodes SET status_online = ?2, status_ms = ?3 WHERE node_id = ?1",
                params![status.node_id, status.online, now_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn dead_letter(
        &self,
        topic: &str,
        node_id: Option<&str>,
        reason_code: &str,
        reason: &str,
        payload: &[u8],
    ) -> StoreResult<()> {
        let (topic, node_id, code, reason) = (
            topic.to_owned(),
            node_id.map(str::to_owned),
            reason_code.to_owned(),
            reason.to_owned(),
        );
        let kept = payload[..payload.len().min(DEAD_LETTER_MAX_PAYLOAD)].to_vec();
        let size = payload.len() as i64;
        self.write(move |c| {
            c.execute(
                "INSERT INTO dead_letters (received_ms, topic, node_id, reason_code, reason, payload, payload_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![ms(Utc::now()), topic, node_id, code, reason, kept, size],
            )?;
            Ok(())
        })
        .await
    }

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT * FROM nodes ORDER BY node_id")?;
            let rows = stmt.query_map([], node_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn node(&self, node_id: &str) -> StoreResult<Option<NodeRecord>> {
        let node_id = node_id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT * FROM nodes WHERE node_id = ?1",
                [node_id],
                node_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn ledger(&self, node_id: &str) -> StoreResult<Vec<LedgerEntry>> {
        let node_id = node_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT epoch, acked_seq, max_seq, batches FROM ledger WHERE node_id = ?1 ORDER BY epoch",
            )?;
            let epochs = stmt
                .query_map([&node_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut seqs = c.prepare_cached(
                "SELECT seq FROM batches WHERE node_id = ?1 AND epoch = ?2 AND seq > ?3 ORDER BY seq",
            )?;
            let mut out = Vec::new();
            for (epoch, acked, max_seq, batches) in epochs {
                let present = seqs
                    .query_map(params![node_id, epoch, acked], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut holes = Vec::new();
                let mut expect = acked + 1;
                for s in present {
                    if s > expect {
                        holes.push((expect as u64, (s - 1) as u64));
                    }
                    expect = s + 1;
                }
                out.push(LedgerEntry {
                    epoch,
                    acked_seq: acked as u64,
                    max_seq: max_seq as u64,
                    batches: batches as u64,
                    holes,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn detection(&self, id: i64) -> StoreResult<Option<StoredDetection>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT * FROM detections WHERE id = ?1",
                [id],
                detection_from_row,
            )
            .optional()?
            .map(|(d, _)| d))
        })
        .await
    }

    async fn detections(&self, q: &DetectionQuery) -> StoreResult<DetectionPage> {
        let q = q.clone();
        self.read(move |c| {
            let (sql, args) = detections_sql(&q);
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt
                .query_map(rusqlite::params_from_iter(args), detection_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let more = rows.len() > q.limit;
            rows.truncate(q.limit);
            let next = if more {
                rows.last().map(|(d, ts)| (*ts, d.id))
            } else {
                None
            };
            Ok(DetectionPage {
                items: rows.into_iter().map(|(d, _)| d).collect(),
                next,
            })
        })
        .await
    }

    async fn summary(&self, now: DateTime<Utc>) -> StoreResult<Summary> {
        self.summary_of(now, None).await
    }

    async fn summary_for(&self, now: DateTime<Utc>, node_ids: &[String]) -> StoreResult<Summary> {
        self.summary_of(now, Some(node_ids.to_vec())).await
    }

    async fn dead_letters(&self, q: &DeadLetterQuery) -> StoreResult<Vec<DeadLetter>> {
        let limit = q.limit as i64;
        let before = q.before_id;
        let nodes = q
            .node_ids
            .as_ref()
            .map(|n| serde_json::to_string(n).unwrap_or_else(|_| "[]".into()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, received_ms, topic, node_id, reason_code, reason, payload, payload_bytes
                 FROM dead_letters
                 WHERE (?2 IS NULL OR id < ?2)
                   AND (?3 IS NULL OR node_id IN (SELECT value FROM json_each(?3)))
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(rusqlite::params![limit, before, nodes], |r| {
                let payload: Vec<u8> = r.get(6)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    received_at: from_ms(r.get(1)?),
                    topic: r.get(2)?,
                    node_id: r.get(3)?,
                    reason_code: r.get(4)?,
                    reason: r.get(5)?,
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                    payload_bytes: r.get::<_, i64>(7)? as usize,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn timeseries(&self, q: &TimeseriesQuery) -> StoreResult<Vec<TimeseriesPoint>> {
        let key = match q.by {
            TimeseriesBy::Label => "label",
            TimeseriesBy::Camera => "camera_id",
            TimeseriesBy::Zone => "COALESCE(zone, '')",
        };
        let bucket_ms = i64::try_from(q.bucket.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let (since, until) = (ms(q.since), ms(q.until));
        // Live rows through detections_by_time, compacted counts through
        // detection_counts_by_time. TOTAL, not SUM: SUM fails the whole query
        // on an integer overflow; the saturating cast keeps every stored row
        // servable (and TOTAL is exact up to 2^53).
        let sql = format!(
            "SELECT (t / ?3) * ?3 AS bucket, k, CAST(MIN(TOTAL(n), 9223372036854775807.0) AS INTEGER) FROM (
                SELECT ts_ms AS t, {key} AS k, 1 AS n FROM detections WHERE ts_ms >= ?1 AND ts_ms < ?2{nodes}
                UNION ALL
                SELECT minute_ms, {key}, count FROM detection_counts WHERE minute_ms >= ?1 AND minute_ms < ?2{nodes}
             ) GROUP BY 1, 2 ORDER BY 1, 2",
            nodes = if q.node_ids.is_some() {
                " AND node_id IN (SELECT value FROM json_each(?4))"
            } else {
                ""
            }
        );
        let nodes = q
            .node_ids
            .as_ref()
            .map(|n| serde_json::to_string(n).unwrap_or_else(|_| "[]".into()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let mut args: Vec<rusqlite::types::Value> =
                vec![since.into(), until.into(), bucket_ms.into()];
            if let Some(n) = nodes {
                args.push(n.into());
            }
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok(TimeseriesPoint {
                    bucket: from_ms(r.get(0)?),
                    key: r.get(1)?,
                    count: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> StoreResult<RetentionReport> {
        let policy = policy.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut report = RetentionReport::default();
            if let Some(keep) = policy.detections {
                let cutoff = ms(now - keep);
                report.detections_deleted = (tx
                    .execute("DELETE FROM detections WHERE ts_ms < ?1", [cutoff])?
                    + tx.execute(
                        "DELETE FROM detection_counts WHERE minute_ms < ?1",
                        [cutoff],
                    )?) as u64;
            }
            if let Some(keep) = policy.dead_letters {
                report.dead_letters_deleted = tx.execute(
                    "DELETE FROM dead_letters WHERE received_ms < ?1",
                    [ms(now - keep)],
                )? as u64;
            }
            if let Some(keep) = policy.heartbeats {
                report.nodes_forgotten = tx.execute(
                    "DELETE FROM nodes WHERE last_seen_ms < ?1",
                    [ms(now - keep)],
                )? as u64;
            }
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}
