//! Durable storage of everything the aggregator accepts, behind one [`Store`]
//! trait so that backends (SQLite, PostgreSQL) are interchangeable and tested
//! by one conformance suite. The `--database-url` scheme picks the backend.
//!
//! The ledger lives here too: a batch and its `(node_id, epoch, seq)` record
//! are committed in one transaction, so `acked_seq` can never run ahead of
//! what is on disk.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use edgeqi_shared::{DetectionBatch, Heartbeat, NodeStatus};
use serde::Serialize;

pub mod component;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    /// The database refused this data (a constraint, a value out of range,
    /// text it cannot hold): it would refuse it again on every retry, so the
    /// payload is dead-lettered instead of retried (see [`StoreError::is_retryable`]).
    #[error("the database refused the data: {0}")]
    Refused(String),
    /// The database cannot be reached right now (stopped, network, pool
    /// exhausted): callers retry and stop acknowledging meanwhile.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database schema is version {found} but this edgeqi-aggregator only knows versions up to {known}: run a newer aggregator (or restore a backup made for this version)")]
    TooNew { found: usize, known: usize },
}

impl StoreError {
    /// Whether trying the same call again may succeed: true for errors of the
    /// database itself (connection, disk full, timeout, lock), false when the
    /// data is what the database refuses.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Refused(_))
    }
}

/// What an operator should do when the disk under the database is full.
pub const DISK_FULL_ADVICE: &str = "the disk holding the database is full: free space on that volume (or raise the retention) — nothing is acknowledged meanwhile and ingest resumes by itself";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::{Error as E, ErrorCode as C};
        match &e {
            // What the data itself causes: the same row fails the same way again.
            E::ToSqlConversionFailure(_)
            | E::IntegralValueOutOfRange(..)
            | E::InvalidColumnType(..)
            | E::Utf8Error(_)
            | E::NulError(_) => StoreError::Refused(e.to_string()),
            E::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    C::ConstraintViolation | C::TooBig | C::TypeMismatch | C::ParameterOutOfRange
                ) =>
            {
                StoreError::Refused(e.to_string())
            }
            _ if e.sqlite_error_code() == Some(C::DiskFull) => {
                StoreError::Database(format!("{DISK_FULL_ADVICE} ({e})"))
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The result of storing one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The seq was already stored: nothing was written.
    pub duplicate: bool,
    /// Highest contiguous stored seq of the batch's epoch (what to ack).
    pub acked_seq: u64,
    /// Ids given to the stored detections, in batch order (empty for a duplicate).
    pub detection_ids: Vec<i64>,
}

/// A stored detection as the API and the live feed show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoredDetection {
    pub id: i64,
    pub node_id: String,
    pub ts: DateTime<Utc>,
    pub camera_id: String,
    pub class_id: Option<u32>,
    pub label: String,
    pub score: f32,
    pub bbox: [f32; 4],
    pub track_id: Option<u64>,
    pub zone: Option<String>,
}

/// Filters and page position for `GET /api/v1/detections`.
#[derive(Debug, Clone, Default)]
pub struct DetectionQuery {
    pub node_id: Option<String>,
    /// Limits the query to these nodes (a tenant's); `Some(empty)` matches nothing.
    pub node_ids: Option<Vec<String>>,
    pub camera_id: Option<String>,
    pub label: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub min_score: Option<f32>,
    pub limit: usize,
    /// Continue after this (ts, id), newest first.
    pub after: Option<(i64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionPage {
    pub items: Vec<StoredDetection>,
    /// `(ts_ms, id)` of the last item when more may follow.
    #[serde(skip)]
    pub next: Option<(i64, i64)>,
}

/// What the registry knows of a node.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NodeRecord {
    pub node_id: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_interval_s: u32,
    /// Last status message (retained / last will), if any.
    pub status_online: Option<bool>,
    pub status_ts: Option<DateTime<Utc>>,
    /// The latest heartbeat as the agent sent it (docs/PROTOCOL.md).
    #[schema(value_type = Option<Object>)]
    pub last_heartbeat: Option<Heartbeat>,
}

impl NodeRecord {
    /// A node is online while its heartbeats keep coming (no more than three
    /// intervals missed) and it has not said goodbye (status or last will)
    /// since its last heartbeat.
    pub fn is_online(&self, now: DateTime<Utc>) -> bool {
        let said_offline_after = |t: DateTime<Utc>| {
            self.status_online == Some(false) && self.status_ts.is_some_and(|s| s >= t)
        };
        let grace = chrono::Duration::seconds(3 * i64::from(self.heartbeat_interval_s.max(1)));
        match self.last_heartbeat_at {
            Some(hb) => now - hb <= grace && !said_offline_after(hb),
            None => {
                self.status_online == Some(true) && self.status_ts.is_some_and(|s| now - s <= grace)
            }
        }
    }
}

/// One epoch of one node's detection ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub epoch: String,
    /// Every seq in 1..=acked_seq is stored.
    pub acked_seq: u64,
    pub max_seq: u64,
    pub batches: u64,
    /// Missing seqs between acked_seq and max_seq, as inclusive ranges.
    #[schema(value_type = Vec<Vec<u64>>)]
    pub holes: Vec<(u64, u64)>,
}

/// Which refused payloads to list: those with an id below `before_id`
/// (the previous page's last), of `node_ids` when given (a tenant's nodes;
/// payloads of no known node are then left out), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub before_id: Option<i64>,
    pub node_ids: Option<Vec<String>>,
    pub limit: usize,
}

/// A payload that was refused, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub node_id: Option<String>,
    pub reason_code: String,
    pub reason: String,
    /// The payload as text (lossy UTF-8), cut to 64 KiB.
    pub payload: String,
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub detections_total: u64,
    pub by_class: BTreeMap<String, u64>,
    pub nodes_total: u64,
    pub nodes_online: u64,
}

/// What `GET /api/v1/stats/timeseries` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeseriesBy {
    Label,
    Camera,
    Zone,
}

/// Counts of detections (live rows plus compacted per-minute counts) per
/// time bucket and key, over `[since, until)`.
#[derive(Debug, Clone)]
pub struct TimeseriesQuery {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub bucket: std::time::Duration,
    pub by: TimeseriesBy,
    /// Limits the counts to these nodes (a tenant's); `Some(empty)` counts nothing.
    pub node_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TimeseriesPoint {
    pub bucket: DateTime<Utc>,
    /// The label, camera id, or zone ("" for detections outside any zone).
    pub key: String,
    pub count: u64,
}

/// How long each kind of data is kept; `None` keeps it forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub detections: Option<chrono::Duration>,
    /// Nodes whose last heartbeat or message is older are forgotten (their
    /// ledger is kept, so a returning node is still deduplicated).
    pub heartbeats: Option<chrono::Duration>,
    pub dead_letters: Option<chrono::Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub partitions_dropped: u64,
    pub detections_deleted: u64,
    pub nodes_forgotten: u64,
    pub dead_letters_deleted: u64,
}

/// The storage backend contract. Every method is one transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores each batch unless its `(node_id, epoch, seq)` is already
    /// stored, and advances each epoch's contiguous seq, all in one
    /// transaction (group commit): when this returns `Ok`, every batch is
    /// durable and may be acknowledged. Outcomes are in input order; a batch
    /// given twice is stored once and reported as a duplicate the second time.
    async fn ingest_batches(&self, batches: &[DetectionBatch]) -> StoreResult<Vec<IngestOutcome>>;

    /// [`Store::ingest_batches`] for one batch.
    async fn ingest_batch(&self, batch: &DetectionBatch) -> StoreResult<IngestOutcome> {
        self.ingest_batches(std::slice::from_ref(batch))
            .await?
            .pop()
            .ok_or_else(|| StoreError::Database("no outcome for the batch".into()))
    }

    /// Records several heartbeats in one transaction.
    async fn record_heartbeats(&self, hbs: &[Heartbeat]) -> StoreResult<()>;

    async fn record_heartbeat(&self, hb: &Heartbeat) -> StoreResult<()> {
        self.record_heartbeats(std::slice::from_ref(hb)).await
    }
    async fn record_status(&self, status: &NodeStatus) -> StoreResult<()>;
    async fn dead_letter(
        &self,
        topic: &str,
        node_id: Option<&str>,
        reason_code: &str,
        reason: &str,
        payload: &[u8],
    ) -> StoreResult<()>;

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    async fn node(&self, node_id: &str) -> StoreResult<Option<NodeRecord>>;
    async fn ledger(&self, node_id: &str) -> StoreResult<Vec<LedgerEntry>>;
    async fn detections(&self, q: &DetectionQuery) -> StoreResult<DetectionPage>;
    /// One stored detection by id (reviews look them up).
    async fn detection(&self, id: i64) -> StoreResult<Option<StoredDetection>>;
    async fn summary(&self, now: DateTime<Utc>) -> StoreResult<Summary>;
    /// [`Store::summary`] limited to some nodes (a tenant's).
    async fn summary_for(&self, now: DateTime<Utc>, node_ids: &[String]) -> StoreResult<Summary> {
        let _ = (now, node_ids);
        Err(StoreError::Database(
            "tenant-scoped summaries are not supported by this backend".into(),
        ))
    }
    /// Refused payloads, newest first (ids descend), keyset-paged.
    async fn dead_letters(&self, q: &DeadLetterQuery) -> StoreResult<Vec<DeadLetter>>;
    async fn timeseries(&self, q: &TimeseriesQuery) -> StoreResult<Vec<TimeseriesPoint>>;
    /// Deletes what the policy no longer keeps (and, on PostgreSQL, creates
    /// the partitions ahead of time).
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> StoreResult<RetentionReport>;
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> StoreResult<()>;
}

/// Whether this build has a backend for the URL's scheme.
pub fn is_supported_url(url: &str) -> bool {
    url.starts_with("sqlite://")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
}

/// Opens an SQLite `--database-url` synchronously (tests and tools); use
/// [`connect`] for any backend.
pub fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(StoreError::Open {
            path: redact_url(url),
            reason: "PostgreSQL is opened with store::connect (async)".into(),
        });
    }
    Err(StoreError::UnsupportedUrl(redact_url(url)))
}

/// Opens (and migrates) the backend a `--database-url` names.
pub async fn connect(
    url: &str,
    pg: &postgres::PgSettings,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))??;
        return Ok(std::sync::Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(postgres::PgStore::open(url, pg).await?));
    }
    Err(StoreError::UnsupportedUrl(redact_url(url)))
}

/// Hides the password of a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://edge:s3cret@db:5432/edgeqi"),
            "postgres://edge:***@db:5432/edgeqi"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }

    #[test]
    fn unknown_scheme_says_what_to_use() {
        let err = open("mysql://x").expect_err("unsupported");
        assert!(err.to_string().contains("sqlite://PATH"), "{err}");
    }

    fn record(hb_age_s: Option<i64>, status: Option<(bool, i64)>) -> (NodeRecord, DateTime<Utc>) {
        let now: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().expect("ts");
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        (
            NodeRecord {
                node_id: "n".into(),
                first_seen: ago(1000),
                last_seen: ago(0),
                last_heartbeat_at: hb_age_s.map(ago),
                heartbeat_interval_s: 10,
                status_online: status.map(|s| s.0),
                status_ts: status.map(|s| ago(s.1)),
                last_heartbeat: None,
            },
            now,
        )
    }

    #[test]
    fn online_rules() {
        let cases = [
            (Some(5), None, true),
            (Some(29), None, true),
            (Some(31), None, false),
            (Some(5), Some((false, 1)), false),
            (Some(5), Some((false, 10)), true),
            (None, Some((true, 5)), true),
            (None, Some((true, 60)), false),
            (None, None, false),
        ];
        for (hb, status, want) in cases {
            let (r, now) = record(hb, status);
            assert_eq!(r.is_online(now), want, "hb {hb:?} status {status:?}");
        }
    }
}
