//! Durable storage of everything the aggregator accepts, behind one [`Store`]
//! trait so that backends (SQLite now, PostgreSQL later) are interchangeable
//! and tested by one conformance suite.
//!
//! The ledger lives here too: a batch and its `(node_id, epoch, seq)` record
//! are committed in one transaction, so `acked_seq` can never run ahead of
//! what is on disk.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use edgeqi_shared::{DetectionBatch, Heartbeat, NodeStatus};
use serde::Serialize;

pub mod sqlite;

#[cfg(test)]
mod conformance;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH (postgres:// arrives with the PostgreSQL backend)")]
    UnsupportedUrl(String),
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_interval_s: u32,
    /// Last status message (retained / last will), if any.
    pub status_online: Option<bool>,
    pub status_ts: Option<DateTime<Utc>>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub epoch: String,
    /// Every seq in 1..=acked_seq is stored.
    pub acked_seq: u64,
    pub max_seq: u64,
    pub batches: u64,
    /// Missing seqs between acked_seq and max_seq, as inclusive ranges.
    pub holes: Vec<(u64, u64)>,
}

/// A payload that was refused, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub detections_total: u64,
    pub by_class: BTreeMap<String, u64>,
    pub nodes_total: u64,
    pub nodes_online: u64,
}

/// The storage backend contract. Every method is one transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a batch unless `(node_id, epoch, seq)` is already stored, and
    /// advances the epoch's contiguous seq — all in one transaction.
    async fn ingest_batch(&self, batch: &DetectionBatch) -> StoreResult<IngestOutcome>;
    async fn record_heartbeat(&self, hb: &Heartbeat) -> StoreResult<()>;
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
    async fn summary(&self, now: DateTime<Utc>) -> StoreResult<Summary>;
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> StoreResult<()>;
}

/// Opens the backend a `--database-url` names.
pub fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path)?));
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
