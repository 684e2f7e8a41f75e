//! The PostgreSQL backend, for a city's worth of cameras.
//!
//! Ingest is set based: a group of batches (several nodes, several queued
//! publishes) is stored in one transaction. The batch headers go with binary
//! `COPY` into a per-connection temporary staging table and are moved with
//! `INSERT … ON CONFLICT DO NOTHING` on the batch key `(node_id, epoch, seq)`;
//! the rows of exactly the batches that insert claimed are then binary-COPYed
//! into `detections`. A resent batch never duplicates rows and the ledger
//! commits with the rows it describes. The caller acks only after this commit
//! returns.
//!
//! Detections live in a table partitioned by day on `ts`; partitions are
//! created ahead of time by [`PgStore::maintain`] and dropped by retention.
//! A default partition catches rows from clocks far off, so ingest never fails
//! for a missing partition. TimescaleDB is detected and reported, but this
//! build uses the native partitions either way (see docs/PERFORMANCE.md).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use edgeqi_shared::{DetectionBatch, Heartbeat, NodeStatus};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use super::{
    DeadLetter, DeadLetterQuery, DetectionPage, DetectionQuery, IngestOutcome, LedgerEntry,
    NodeRecord, RetentionPolicy, RetentionReport, Store, StoreError, StoreResult, StoredDetection,
    Summary, TimeseriesBy, TimeseriesPoint, TimeseriesQuery,
};

/// Schema versions, applied in order inside one transaction each and recorded
/// in `edgeqi_schema`. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: registry, ledger, partitioned detections, compacted counts, dead letters.
    r#"
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        last_heartbeat_at TIMESTAMPTZ,
        heartbeat_interval_s INTEGER NOT NULL DEFAULT 10,
        last_heartbeat JSONB,
        status_online BOOLEAN,
        status_ts TIMESTAMPTZ
    );
    CREATE TABLE batches (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq BIGINT NOT NULL,
        received_at TIMESTAMPTZ NOT NULL,
        detections INTEGER NOT NULL,
        counts INTEGER NOT NULL,
        PRIMARY KEY (node_id, epoch, seq)
    );
    CREATE TABLE ledger (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        acked_seq BIGINT NOT NULL,
        max_seq BIGINT NOT NULL,
        batches BIGINT NOT NULL,
        PRIMARY KEY (node_id, epoch)
    );
    -- Ids are reserved in blocks by the writer (see reserve_ids), not by a
    -- column default, so COPY can carry them.
    CREATE SEQUENCE detections_id_seq AS BIGINT;
    CREATE TABLE detections (
        id BIGINT NOT NULL,
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        camera_id TEXT NOT NULL,
        class_id INTEGER,
        label TEXT NOT NULL,
        score REAL NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        track_id BIGINT,
        zone TEXT
    ) PARTITION BY RANGE (ts);
    CREATE TABLE detections_default PARTITION OF detections DEFAULT;
    CREATE INDEX detections_by_time ON detections (ts DESC, id DESC);
    CREATE INDEX detections_by_node ON detections (node_id, ts DESC, id DESC);
    CREATE INDEX detections_by_label ON detections (label, ts DESC, id DESC);
    CREATE INDEX detections_by_camera ON detections (camera_id, ts DESC, id DESC);
    CREATE TABLE detection_counts (
        node_id TEXT NOT NULL,
        epoch TEXT NOT NULL,
        seq BIGINT NOT NULL,
        minute TIMESTAMPTZ NOT NULL,
        camera_id TEXT NOT NULL,
        zone TEXT,
        class_id INTEGER,
        label TEXT NOT NULL,
        count BIGINT NOT NULL
    );
    CREATE INDEX detection_counts_by_time ON detection_counts USING BRIN (minute);
    CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        received_at TIMESTAMPTZ NOT NULL,
        topic TEXT NOT NULL,
        node_id TEXT,
        reason_code TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload BYTEA NOT NULL,
        payload_bytes BIGINT NOT NULL
    );
    CREATE INDEX dead_letters_by_time ON dead_letters USING BRIN (received_at);
    "#,
    // 2: one detection by id (reviews). Ids are reserved in blocks and
    // COPYed in order, so a BRIN index is exact enough and nearly free to
    // maintain, unlike a fifth B-tree on the ingest path.
    r#"
    CREATE INDEX detections_by_id ON detections USING BRIN (id);
    "#,
];

/// Serialises schema changes and id reservation across aggregator processes.
const MIGRATION_LOCK: i64 = 0x6564_6765_7169_0001;
const WRITER_LOCK: i64 = 0x6564_6765_7169_0002;

/// Dead letters keep at most this much of a payload.
const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

/// Daily partitions are created this many days ahead.
const PARTITIONS_AHEAD_DAYS: i64 = 3;

/// Per-connection staging table for batch headers: unlogged by nature
/// (temporary), no indexes, emptied at commit.
const STAGING_DDL: &str = r#"
    CREATE TEMP TABLE IF NOT EXISTS stage_batches (
        node_id TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,
        detections INTEGER NOT NULL, counts INTEGER NOT NULL
    ) ON COMMIT DELETE ROWS;
"#;

/// Columns of `detections` in COPY order (also the bench's raw-COPY baseline).
pub const DETECTION_COLUMNS: &str =
    "id, node_id, epoch, seq, ts, camera_id, class_id, label, score, x1, y1, x2, y2, track_id, zone";

/// Binary COPY types of [`DETECTION_COLUMNS`].
pub const DETECTION_TYPES: &[Type] = &[
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::INT8,
    Type::TEXT,
];

/// How the pool reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    pub max_connections: usize,
    /// How long a caller waits for a free or new connection before it is
    /// told the database is unavailable.
    pub connect_timeout: Duration,
    /// A statement running longer fails (and ingest retries) instead of
    /// holding acks forever on a stuck database.
    pub statement_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
        }
    }
}

/// PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timescaledb_available: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .field("timescaledb_available", &self.timescaledb_available)
            .finish()
    }
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    // The Display of a server error is only "db error"; the detail (disk
    // full, timeout, constraint) is in the DbError.
    match e.as_db_error() {
        Some(db) if *db.code() == tokio_postgres::error::SqlState::DISK_FULL => {
            StoreError::Database(format!("{}: {}", super::DISK_FULL_ADVICE, db.message()))
        }
        Some(db) => {
            let message = format!(
                "{}: {}{}",
                db.severity(),
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            );
            // SQLSTATE classes of the data, not of the database: 22 data
            // exception (out of range, bad text), 23 integrity constraint,
            // 54 program limit (a value or row too big).
            match db.code().code().get(..2) {
                Some("22" | "23" | "54") => StoreError::Refused(message),
                _ => StoreError::Database(message),
            }
        }
        None if e.is_closed() => StoreError::Unavailable(format!("connection closed: {e}")),
        None => StoreError::Database(match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        }),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        db_err(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => match db_err(e) {
                StoreError::Database(m) => StoreError::Unavailable(m),
                other => other,
            },
            other => StoreError::Unavailable(format!("no database connection: {other}")),
        }
    }
}

/// Timestamps are kept to the millisecond, like the SQLite backend and the
/// API's cursors, so keyset pagination compares equal values exactly.
fn trunc_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

fn seq_i64(seq: u64) -> StoreResult<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Refused(format!("seq {seq} out of range")))
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The name of the partition that holds `t`.
pub fn partition_name_for(t: DateTime<Utc>) -> String {
    partition_name(t.date_naive())
}

fn partition_name(d: NaiveDate) -> String {
    format!("detections_p{:04}{:02}{:02}", d.year(), d.month(), d.day())
}

impl PgStore {
    /// Connects, migrates, and creates the partitions around now.
    pub async fn open(url: &str, settings: &PgSettings) -> StoreResult<Self> {
        let redacted = super::redact_url(url);
        let open_err = |reason: String| StoreError::Open {
            path: redacted.clone(),
            reason,
        };
        let pg_config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| open_err(format!("not a PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let statement_timeout_ms = settings.statement_timeout.as_millis();
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .post_create(Hook::async_fn(move |client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(&format!(
                            "SET statement_timeout = {statement_timeout_ms}; SET TIME ZONE 'UTC'; \
                             SET client_min_messages = warning; {STAGING_DDL}"
                        ))
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let store = Self {
            pool,
            timescaledb_available: false,
        };
        // An unreachable server stays `Unavailable` (the caller may wait for
        // it); a too-new schema keeps its own advice.
        store.migrate().await.map_err(|e| match e {
            StoreError::Database(m) => open_err(m),
            other => other,
        })?;
        let timescaledb_available = store
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
                &[],
            )
            .await?
            .is_some();
        if timescaledb_available {
            tracing::warn!(
                "the timescaledb extension is available but this build uses native partitions"
            );
        }
        let store = Self {
            timescaledb_available,
            ..store
        };
        store.maintain(Utc::now()).await?;
        Ok(store)
    }

    /// The schema version this binary writes.
    pub const fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS edgeqi_schema (
                 version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 applied_by TEXT NOT NULL)",
        )
        .await?;
        let current: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM edgeqi_schema", &[])
            .await?
            .get(0);
        let known = MIGRATIONS.len();
        let current = usize::try_from(current).unwrap_or(0);
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            tx.batch_execute(sql).await?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO edgeqi_schema (version, applied_by) VALUES ($1, $2)",
                &[
                    &version,
                    &concat!("edgeqi-aggregator ", env!("CARGO_PKG_VERSION")),
                ],
            )
            .await?;
            tracing::info!(version, "applied PostgreSQL migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates the daily partitions from yesterday to a few days ahead. A day
    /// whose rows already sit in the default partition is left there (the
    /// rows stay queryable; PostgreSQL refuses such a partition).
    pub async fn maintain(&self, now: DateTime<Utc>) -> StoreResult<()> {
        let client = self.pool.get().await?;
        let today = now.date_naive();
        for offset in -1..=PARTITIONS_AHEAD_DAYS {
            let day = today + chrono::Duration::days(offset);
            let name = partition_name(day);
            let exists = client
                .query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name])
                .await?
                .is_some();
            if exists {
                continue;
            }
            let (from, to) = (day_start(day), day_start(day + chrono::Duration::days(1)));
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF detections FOR VALUES FROM ('{}') TO ('{}')",
                from.to_rfc3339(),
                to.to_rfc3339()
            );
            match client.batch_execute(&sql).await {
                Ok(()) => tracing::info!(partition = %name, "created detections partition"),
                Err(e) => {
                    tracing::warn!(partition = %name, error = %db_err(e), "cannot create partition; rows of that day stay in the default partition")
                }
            }
        }
        Ok(())
    }

    /// Names of the daily partitions, oldest first (for tests and operators).
    pub async fn partitions(&self) -> StoreResult<Vec<String>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'detections' AND c.relname <> 'detections_default'
                 ORDER BY c.relname",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The plan PostgreSQL picks for a detections query (tests check that
    /// the hot queries use an index).
    pub async fn explain_detections(&self, q: &DetectionQuery) -> StoreResult<String> {
        let (sql, args) = detections_sql(q);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Tiny test tables make a scan-and-sort the cheapest plan; forbid it
        // so the plan shows whether an index serves the query in order.
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
            .await?;
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = tx.query(&format!("EXPLAIN {sql}"), &refs).await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

impl PgStore {
    /// The plan for one detection by id (see [`Store::detection`]).
    pub async fn explain_detection_by_id(&self, id: i64) -> StoreResult<String> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL enable_seqscan = off").await?;
        let rows = tx
            .query(
                "EXPLAIN SELECT id FROM detections WHERE id = $1 LIMIT 1",
                &[&id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

type BoxedArg = Box<dyn ToSql + Sync + Send>;

fn detections_sql(q: &DetectionQuery) -> (String, Vec<BoxedArg>) {
    let mut sql = format!("SELECT {DETECTION_COLUMNS} FROM detections WHERE true");
    let mut args: Vec<BoxedArg> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, v: BoxedArg| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(v) = &q.node_id {
        push(&mut sql, " AND node_id = ?", Box::new(v.clone()));
    }
    if let Some(nodes) = &q.node_ids {
        push(&mut sql, " AND node_id = ANY(?)", Box::new(nodes.clone()));
    }
    if let Some(v) = &q.camera_id {
        push(&mut sql, " AND camera_id = ?", Box::new(v.clone()));
    }
    if let Some(v) = &q.label {
        push(&mut sql, " AND label = ?", Box::new(v.clone()));
    }
    if let Some(v) = q.since {
        push(&mut sql, " AND ts >= ?", Box::new(trunc_ms(v)));
    }
    if let Some(v) = q.until {
        push(&mut sql, " AND ts < ?", Box::new(trunc_ms(v)));
    }
    if let Some(v) = q.min_score {
        push(&mut sql, " AND score >= ?", Box::new(v));
    }
    if let Some((ts, id)) = q.after {
        let ts = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
        push(&mut sql, " AND (ts, id) < (?", Box::new(ts));
        push(&mut sql, ", ?)", Box::new(id));
    }
    // One extra row tells whether another page follows.
    sql.push_str(&format!(" ORDER BY ts DESC, id DESC LIMIT {}", q.limit + 1));
    (sql, args)
}

fn detection_from_row(r: &tokio_postgres::Row) -> StoredDetection {
    StoredDetection {
        id: r.get("id"),
        node_id: r.get("node_id"),
        ts: r.get("ts"),
        camera_id: r.get("camera_id"),
        class_id: r
            .get::<_, Option<i32>>("class_id")
            .and_then(|c| u32::try_from(c).ok()),
        label: r.get("label"),
        score: r.get("score"),
        bbox: [r.get("x1"), r.get("y1"), r.get("x2"), r.get("y2")],
        track_id: r
            .get::<_, Option<i64>>("track_id")
            .and_then(|t| u64::try_from(t).ok()),
        zone: r.get("zone"),
    }
}

fn node_from_row(r: &tokio_postgres::Row) -> NodeRecord {
    let hb: Option<serde_json::Value> = r.get("last_heartbeat");
    NodeRecord {
        node_id: r.get("node_id"),
        first_seen: r.get("first_seen"),
        last_seen: r.get("last_seen"),
        last_heartbeat_at: r.get("last_heartbeat_at"),
        heartbeat_interval_s: u32::try_from(r.get::<_, i32>("heartbeat_interval_s")).unwrap_or(10),
        status_online: r.get("status_online"),
        status_ts: r.get("status_ts"),
        last_heartbeat: hb.and_then(|v| serde_json::from_value(v).ok()),
    }
}

/// Batches of one group that are new to this group (a publish queued twice
/// is stored once and answered as a duplicate).
struct Planned<'a> {
    batch: &'a DetectionBatch,
    /// First reserved detection id; set only for batches new to the database.
    first_id: i64,
    dup_in_group: bool,
    /// Not stored before this transaction: its rows are written now.
    is_new: bool,
}

impl PgStore {
    /// Stores one group in one transaction.
    ///
    /// Idempotency is decided per batch, not per row: the batch headers are
    /// COPYed into staging and moved with `INSERT … ON CONFLICT DO NOTHING
    /// RETURNING`, which names the batches this transaction owns. Only their
    /// rows are then COPYed — straight into `detections`, because a row whose
    /// batch key is new cannot already exist. Staging the rows as well (the
    /// first design) wrote every detection twice and capped ingest at about
    /// half the raw COPY rate (docs/PERFORMANCE.md).
    async fn ingest_group(&self, batches: &[DetectionBatch]) -> StoreResult<Vec<IngestOutcome>> {
        // The staging table was made when the connection was (post_create).
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK])
            .await?;

        let mut seen = HashSet::new();
        let mut planned: Vec<Planned> = batches
            .iter()
            .map(|b| Planned {
                batch: b,
                first_id: 0,
                dup_in_group: !seen.insert((b.node_id.as_str(), b.epoch.as_str(), b.seq)),
                is_new: false,
            })
            .collect();

        // Stage the batch headers and claim the ones not stored before.
        {
            let sink = tx
                .copy_in("COPY stage_batches (node_id, epoch, seq, detections, counts) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT4, Type::INT4],
            );
            let mut w = std::pin::pin!(w);
            for p in planned.iter().filter(|p| !p.dup_in_group) {
                let b = p.batch;
                let seq = seq_i64(b.seq)?;
                let (nd, nc) = (b.detections.len() as i32, b.counts.len() as i32);
                w.as_mut()
                    .write(&[&b.node_id, &b.epoch, &seq, &nd, &nc])
                    .await?;
            }
            w.finish().await?;
        }
        let new_keys = tx
            .query(
                "INSERT INTO batches (node_id, epoch, seq, received_at, detections, counts)
                 SELECT node_id, epoch, seq, now(), detections, counts FROM stage_batches
                 ON CONFLICT DO NOTHING
                 RETURNING node_id, epoch, seq",
                &[],
            )
            .await?;
        let new_set: HashSet<(String, String, i64)> = new_keys
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut rows_needed = 0i64;
        for p in planned.iter_mut().filter(|p| !p.dup_in_group) {
            let b = p.batch;
            let key = (b.node_id.clone(), b.epoch.clone(), seq_i64(b.seq)?);
            p.is_new = new_set.contains(&key);
            if p.is_new {
                rows_needed += b.detections.len() as i64;
            }
        }

        // One round trip reserves ids for every new row of the group; the
        // writer lock above makes the block contiguous and exclusive.
        if rows_needed > 0 {
            let last: i64 = tx
                .query_one(
                    "SELECT setval('detections_id_seq', nextval('detections_id_seq') + $1 - 1)",
                    &[&rows_needed],
                )
                .await?
                .get(0);
            let mut next = last - rows_needed + 1;
            for p in planned.iter_mut().filter(|p| p.is_new) {
                p.first_id = next;
                next += p.batch.detections.len() as i64;
            }
            let sink = tx
                .copy_in(&format!(
                    "COPY detections ({DETECTION_COLUMNS}) FROM STDIN BINARY"
                ))
                .await?;
            let w = BinaryCopyInWriter::new(sink, DETECTION_TYPES);
            let mut w = std::pin::pin!(w);
            for p in planned.iter().filter(|p| p.is_new) {
                let b = p.batch;
                let seq = seq_i64(b.seq)?;
                for (i, d) in b.detections.iter().enumerate() {
                    let id = p.first_id + i as i64;
                    let ts = trunc_ms(d.ts);
                    let class_id = d.class_id.and_then(|c| i32::try_from(c).ok());
                    let track_id = d.track_id.and_then(|t| i64::try_from(t).ok());
                    w.as_mut()
                        .write(&[
                            &id,
                            &b.node_id,
                            &b.epoch,
                            &seq,
                            &ts,
                            &d.camera_id,
                            &class_id,
                            &d.label,
                            &d.score,
                            &d.bbox[0],
                            &d.bbox[1],
                            &d.bbox[2],
                            &d.bbox[3],
                            &track_id,
                            &d.zone,
                        ])
                        .await?;
                }
            }
            w.finish().await?;
        }
        if planned
            .iter()
            .any(|p| p.is_new && !p.batch.counts.is_empty())
        {
            let sink = tx
                .copy_in("COPY detection_counts (node_id, epoch, seq, minute, camera_id, zone, class_id, label, count) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT8,
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT4,
                    Type::TEXT,
                    Type::INT8,
                ],
            );
            let mut w = std::pin::pin!(w);
            for p in planned.iter().filter(|p| p.is_new) {
                let b = p.batch;
                let seq = seq_i64(b.seq)?;
                for c in &b.counts {
                    let class_id = c.class_id.and_then(|c| i32::try_from(c).ok());
                    let count = i64::try_from(c.count).unwrap_or(i64::MAX);
                    let minute = trunc_ms(c.minute);
                    w.as_mut()
                        .write(&[
                            &b.node_id,
                            &b.epoch,
                            &seq,
                            &minute,
                            &c.camera_id,
                            &c.zone,
                            &class_id,
                            &c.label,
                            &count,
                        ])
                        .await?;
                }
            }
            w.finish().await?;
        }

        // Ledger and node registry for the new batches, set based.
        if !new_set.is_empty() {
            let (mut nodes, mut epochs, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
            for (n, e, s) in &new_set {
                nodes.push(n.as_str());
                epochs.push(e.as_str());
                seqs.push(*s);
            }
            tx.execute(
                r#"
                WITH new AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) AS n(node_id, epoch, seq)
                ), ledgered AS (
                    INSERT INTO ledger (node_id, epoch, acked_seq, max_seq, batches)
                    SELECT node_id, epoch, 0, MAX(seq), COUNT(*) FROM new GROUP BY node_id, epoch
                    ON CONFLICT (node_id, epoch) DO UPDATE
                    SET max_seq = GREATEST(ledger.max_seq, EXCLUDED.max_seq),
                        batches = ledger.batches + EXCLUDED.batches
                )
                INSERT INTO nodes (node_id, first_seen, last_seen)
                SELECT DISTINCT node_id, now(), now() FROM new
                ON CONFLICT (node_id) DO UPDATE SET last_seen = GREATEST(nodes.last_seen, EXCLUDED.last_seen)
                "#,
                &[&nodes, &epochs, &seqs],
            )
            .await?;
        }
        // Advance every touched epoch's contiguous prefix over the ledger
        // and batches written above (a separate statement: a data-modifying
        // CTE's rows are invisible to the rest of its own statement).
        let acked_rows = tx
            .query(
                r#"
                WITH touched AS (SELECT DISTINCT node_id, epoch FROM stage_batches),
                runs AS (
                    SELECT b.node_id, b.epoch, b.seq, l.acked_seq,
                           b.seq - ROW_NUMBER() OVER (PARTITION BY b.node_id, b.epoch ORDER BY b.seq) AS grp
                    FROM touched t
                    JOIN ledger l USING (node_id, epoch)
                    JOIN batches b ON b.node_id = l.node_id AND b.epoch = l.epoch AND b.seq > l.acked_seq
                ), advanced AS (
                    UPDATE ledger l SET acked_seq = a.top
                    FROM (SELECT node_id, epoch, MAX(seq) AS top FROM runs WHERE grp = acked_seq GROUP BY node_id, epoch) a
                    WHERE l.node_id = a.node_id AND l.epoch = a.epoch
                    RETURNING l.node_id, l.epoch, l.acked_seq
                )
                SELECT t.node_id, t.epoch, COALESCE(a.acked_seq, l.acked_seq, 0)
                FROM touched t
                LEFT JOIN advanced a USING (node_id, epoch)
                LEFT JOIN ledger l USING (node_id, epoch)
                "#,
                &[],
            )
            .await?;
        tx.commit().await?;

        let acked: HashMap<(String, String), i64> = acked_rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        Ok(planned
            .iter()
            .map(|p| {
                let b = p.batch;
                let key = (b.node_id.clone(), b.epoch.clone());
                let acked_seq = acked
                    .get(&key)
                    .map_or(0, |v| u64::try_from(*v).unwrap_or(0));
                let is_new = p.is_new;
                IngestOutcome {
                    duplicate: !is_new,
                    acked_seq,
                    detection_ids: if is_new {
                        (0..b.detections.len() as i64)
                            .map(|i| p.first_id + i)
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect())
    }
}

impl PgStore {
    /// Totals over every node, or only `nodes` (a tenant's).
    async fn summary_of(
        &self,
        now: DateTime<Utc>,
        nodes: Option<&[String]>,
    ) -> StoreResult<Summary> {
        let records: Vec<NodeRecord> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| nodes.is_none_or(|only| only.contains(&n.node_id)))
            .collect();
        let nodes_online = records.iter().filter(|n| n.is_online(now)).count() as u64;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT label, COUNT(*) FROM detections
                 WHERE $1::text[] IS NULL OR node_id = ANY($1::text[]) GROUP BY label",
                &[&nodes],
            )
            .await?;
        let by_class: std::collections::BTreeMap<String, u64> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect();
        Ok(Summary {
            detections_total: by_class.values().fold(0u64, |a, n| a.saturating_add(*n)),
            by_class,
            nodes_total: records.len() as u64,
            nodes_online,
        })
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ingest_batches(&self, batches: &[DetectionBatch]) -> StoreResult<Vec<IngestOutcome>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        self.ingest_group(batches).await
    }

    async fn record_heartbeats(&self, hbs: &[Heartbeat]) -> StoreResult<()> {
        if hbs.is_empty() {
            return Ok(());
        }
        // The last heartbeat of a node in the group wins.
        let mut latest: HashMap<&str, &Heartbeat> = HashMap::new();
        for hb in hbs {
            latest.insert(hb.node_id.as_str(), hb);
        }
        let mut ids = Vec::with_capacity(latest.len());
        let mut intervals = Vec::with_capacity(latest.len());
        let mut docs = Vec::with_capacity(latest.len());
        for (id, hb) in latest {
            ids.push(id.to_owned());
            intervals.push(i32::try_from(hb.interval_s).unwrap_or(i32::MAX));
            docs.push(serde_json::to_value(hb).map_err(|e| StoreError::Database(e.to_string()))?);
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO nodes (node_id, first_seen, last_seen, last_heartbeat_at, heartbeat_interval_s, last_heartbeat)
                 SELECT u.id, now(), now(), now(), u.iv, u.doc
                 FROM UNNEST($1::text[], $2::int4[], $3::jsonb[]) AS u(id, iv, doc)
                 ON CONFLICT (node_id) DO UPDATE SET
                    last_seen = GREATEST(nodes.last_seen, EXCLUDED.last_seen),
                    last_heartbeat_at = EXCLUDED.last_heartbeat_at,
                    heartbeat_interval_s = EXCLUDED.heartbeat_interval_s,
                    last_heartbeat = EXCLUDED.last_heartbeat",
            )
            .await?;
        client.execute(&stmt, &[&ids, &intervals, &docs]).await?;
        Ok(())
    }

    async fn record_status(&self, status: &NodeStatus) -> StoreResult<()> {
        let client = self.pool.get().await?;
        // Receipt time, not the agent's clock (see the SQLite backend).
        let stmt = client
            .prepare_cached(
                "INSERT INTO nodes (node_id, first_seen, last_seen, status_online, status_ts)
                 VALUES ($1, now(), now(), $2, now())
                 ON CONFLICT (node_id) DO UPDATE SET
                    last_seen = GREATEST(nodes.last_seen, EXCLUDED.last_seen),
                    status_online = EXCLUDED.status_online, status_ts = EXCLUDED.status_ts",
            )
            .await?;
        client
            .execute(&stmt, &[&status.node_id, &status.online])
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        topic: &str,
        node_id: Option<&str>,
        reason_code: &str,
        reason: &str,
        payload: &[u8],
    ) -> StoreResult<()> {
        let kept = &payload[..payload.len().min(DEAD_LETTER_MAX_PAYLOAD)];
        let size = payload.len() as i64;
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO dead_letters (received_at, topic, node_id, reason_code, reason, payload, payload_bytes)
                 VALUES (now(), $1, $2, $3, $4, $5, $6)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&topic, &node_id, &reason_code, &reason, &kept, &size],
            )
            .await?;
        Ok(())
    }

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT * FROM nodes ORDER BY node_id")
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(node_from_row)
            .collect())
    }

    async fn node(&self, node_id: &str) -> StoreResult<Option<NodeRecord>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT * FROM nodes WHERE node_id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&node_id])
            .await?
            .as_ref()
            .map(node_from_row))
    }

    async fn ledger(&self, node_id: &str) -> StoreResult<Vec<LedgerEntry>> {
        let client = self.pool.get().await?;
        let epochs = client
            .query(
                "SELECT epoch, acked_seq, max_seq, batches FROM ledger WHERE node_id = $1 ORDER BY epoch",
                &[&node_id],
            )
            .await?;
        // Holes as ranges, computed by the database from the batch key index:
        // each stored seq after the prefix whose predecessor is missing
        // starts a hole that ends just before it.
        let holes_stmt = client
            .prepare_cached(
                "SELECT prev + 1, seq - 1 FROM (
                     SELECT seq, COALESCE(LAG(seq) OVER (ORDER BY seq), $3) AS prev
                     FROM batches WHERE node_id = $1 AND epoch = $2 AND seq > $3) s
                 WHERE seq > prev + 1 ORDER BY seq",
            )
            .await?;
        let mut out = Vec::with_capacity(epochs.len());
        for r in epochs {
            let (epoch, acked, max_seq, batches): (String, i64, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let holes = client
                .query(&holes_stmt, &[&node_id, &epoch, &acked])
                .await?
                .iter()
                .map(|h| (h.get::<_, i64>(0) as u64, h.get::<_, i64>(1) as u64))
                .collect();
            out.push(LedgerEntry {
                epoch,
                acked_seq: acked as u64,
                max_seq: max_seq as u64,
                batches: batches as u64,
                holes,
            });
        }
        Ok(out)
    }

    async fn detections(&self, q: &DetectionQuery) -> StoreResult<DetectionPage> {
        let (sql, args) = detections_sql(q);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&stmt, &refs).await?;
        let mut items: Vec<StoredDetection> = rows.iter().map(detection_from_row).collect();
        let more = items.len() > q.limit;
        items.truncate(q.limit);
        let next = if more {
            items.last().map(|d| (d.ts.timestamp_millis(), d.id))
        } else {
            None
        };
        Ok(DetectionPage { items, next })
    }

    async fn detection(&self, id: i64) -> StoreResult<Option<StoredDetection>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DETECTION_COLUMNS} FROM detections WHERE id = $1 LIMIT 1"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&id])
            .await?
            .as_ref()
            .map(detection_from_row))
    }

    async fn summary(&self, now: DateTime<Utc>) -> StoreResult<Summary> {
        self.summary_of(now, None).await
    }

    async fn summary_for(&self, now: DateTime<Utc>, node_ids: &[String]) -> StoreResult<Summary> {
        self.summary_of(now, Some(node_ids)).await
    }

    async fn dead_letters(&self, q: &DeadLetterQuery) -> StoreResult<Vec<DeadLetter>> {
        let client = self.pool.get().await?;
        let limit = q.limit as i64;
        // The primary key orders and bounds the scan; the node filter is
        // applied on the way.
        let rows = client
            .query(
                "SELECT id, received_at, topic, node_id, reason_code, reason, payload, payload_bytes
                 FROM dead_letters
                 WHERE ($2::bigint IS NULL OR id < $2) AND ($3::text[] IS NULL OR node_id = ANY($3))
                 ORDER BY id DESC LIMIT $1",
                &[&limit, &q.before_id, &q.node_ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let payload: Vec<u8> = r.get(6);
                DeadLetter {
                    id: r.get(0),
                    received_at: r.get(1),
                    topic: r.get(2),
                    node_id: r.get(3),
                    reason_code: r.get(4),
                    reason: r.get(5),
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                    payload_bytes: r.get::<_, i64>(7) as usize,
                }
            })
            .collect())
    }

    async fn timeseries(&self, q: &TimeseriesQuery) -> StoreResult<Vec<TimeseriesPoint>> {
        let key = match q.by {
            TimeseriesBy::Label => "label",
            TimeseriesBy::Camera => "camera_id",
            TimeseriesBy::Zone => "COALESCE(zone, '')",
        };
        let bucket_s = q.bucket.as_secs() as f64;
        // Live rows and compacted per-minute counts, both read through their
        // time index (B-tree on detections.ts, BRIN on counts.minute).
        let sql = format!(
            "SELECT to_timestamp(floor(extract(epoch FROM t)::float8 / $3::float8) * $3::float8) AS bucket, k, LEAST(SUM(n), 9223372036854775807)::BIGINT
             FROM (
                SELECT ts AS t, {key} AS k, 1 AS n FROM detections WHERE ts >= $1 AND ts < $2
                    AND ($4::text[] IS NULL OR node_id = ANY($4))
                UNION ALL
                SELECT minute, {key}, count FROM detection_counts WHERE minute >= $1 AND minute < $2
                    AND ($4::text[] IS NULL OR node_id = ANY($4))
             ) s GROUP BY 1, 2 ORDER BY 1, 2"
        );
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client
            .query(&stmt, &[&q.since, &q.until, &bucket_s, &q.node_ids])
            .await?;
        Ok(rows
            .iter()
            .map(|r| TimeseriesPoint {
                bucket: r.get(0),
                key: r.get(1),
                count: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> StoreResult<RetentionReport> {
        let mut report = RetentionReport::default();
        self.maintain(now).await?;
        let client = self.pool.get().await?;
        if let Some(keep) = policy.detections {
            let cutoff = now - keep;
            // Whole days older than the cutoff go as partitions (instant, no
            // vacuum); the default partition and compacted counts by DELETE.
            for name in self.partitions().await? {
                let Some(day) = name
                    .strip_prefix("detections_p")
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
                else {
                    continue;
                };
                if day_start(day + chrono::Duration::days(1)) <= cutoff {
                    client
                        .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                        .await?;
                    report.partitions_dropped += 1;
                    tracing::info!(partition = %name, "retention dropped partition");
                }
            }
            report.detections_deleted += client
                .execute("DELETE FROM detections_default WHERE ts < $1", &[&cutoff])
                .await?;
            report.detections_deleted += client
                .execute("DELETE FROM detection_counts WHERE minute < $1", &[&cutoff])
                .await?;
        }
        if let Some(keep) = policy.dead_letters {
            report.dead_letters_deleted = client
                .execute(
                    "DELETE FROM dead_letters WHERE received_at < $1",
                    &[&(now - keep)],
                )
                .await?;
        }
        if let Some(keep) = policy.heartbeats {
            // Only the latest heartbeat is kept per node; forget nodes silent
            // for longer than the retention (their ledger stays).
            report.nodes_forgotten = client
                .execute("DELETE FROM nodes WHERE last_seen < $1", &[&(now - keep)])
                .await?;
        }
        Ok(report)
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_db {
    //! A fresh database per test on the server `EDGEQI_TEST_DATABASE_URL`
    //! names, dropped again at the end.

    use tokio_postgres::NoTls;

    #[derive(Debug)]
    pub struct TestDb {
        pub url: String,
        admin_url: String,
        name: String,
    }

    pub async fn fresh() -> Option<TestDb> {
        let admin_url = std::env::var("EDGEQI_TEST_DATABASE_URL").ok()?;
        let name = format!("edgeqi_t_{}_{}", std::process::id(), rand::random::<u32>());
        let (client, conn) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .expect("EDGEQI_TEST_DATABASE_URL is set but the server is unreachable");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database (the role needs CREATEDB)");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        Some(TestDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }

    impl TestDb {
        pub async fn drop_db(self) {
            if let Ok((client, conn)) = tokio_postgres::connect(&self.admin_url, NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ))
                    .await;
            }
        }
    }
}
