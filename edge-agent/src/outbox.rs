//! The outbox: the agent's durable ledger of detection batches (SQLite).
//!
//! Invariants (the delivery guarantee in DESIGN.md rests on them):
//! - Every batch gets `seq = last_seq + 1`, starting at 1; `last_seq` is kept
//!   in `counters`, so a seq is never reused, even after every row was acked
//!   and deleted, and survives restarts. Seqs in `batches` are contiguous.
//! - The `epoch` (16 random hex chars) is made once, when the database is
//!   created, and never changes; a new database is a new epoch.
//! - A row leaves `batches` only through [`Outbox::ack`], i.e. only after the
//!   aggregator said it stored it. Nothing else deletes rows.
//! - The bound: the sum of `bytes` (JSON bodies; SQLite's own overhead is not
//!   counted) stays at or under `max_bytes`. To make room, the oldest batches
//!   not yet compacted have their detections folded into per-minute counts;
//!   when that is not enough the new detections are shed. Both are counted
//!   (`compacted_detections`, `shed_detections`) and logged, never silent.
//! - Per row, `detections` is how many detections the batch stands for:
//!   `len(body.detections) + sum(body.counts[].count)`, before and after
//!   compaction.
//! - Each change is one transaction with `synchronous=FULL`: after `append`
//!   returns, the batch survives kill -9 and power loss.
//!
//! Tables (the e2e tests read them; keep the names):
//! - `meta(key TEXT PRIMARY KEY, value TEXT)`: `epoch`.
//! - `batches(seq INTEGER PRIMARY KEY, body TEXT, bytes INTEGER, detections INTEGER,
//!   compacted INTEGER, created_at TEXT)`; `body` is `{"detections":[…],"counts":[…]}`.
//! - `counters(name TEXT PRIMARY KEY, value INTEGER)`: `last_seq`, `acked_seq`,
//!   `enqueued_batches`, `enqueued_detections`, `compacted_detections`, `shed_detections`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use edgeqi_shared::{Detection, DetectionBatch, DetectionCount, OutboxHealth, PROTOCOL_VERSION};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// Schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const COUNTERS: [&str; 6] = [
    "last_seq",
    "acked_seq",
    "enqueued_batches",
    "enqueued_detections",
    "compacted_detections",
    "shed_detections",
];

/// What can go wrong with the outbox database.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: cannot create its directory: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {path}: {source} (check the disk and the permissions of data_dir)")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "outbox {path} has schema version {found}, newer than this agent's {SCHEMA_VERSION}; \
         run the newer agent, or move the file away to start a new epoch"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "outbox {path} is damaged ({detail}). The agent leaves it exactly as it is, because it \
         may hold detections the aggregator has not acknowledged, and does not start with it. \
         To recover, stop the agent, then either salvage it: \
         `sqlite3 {path} .recover | sqlite3 {path}.recovered` and, when that worked, \
         `mv {path} {path}.damaged && mv {path}.recovered {path}` (keeps its epoch and the \
         batches it still holds); or move it aside: `mv {path} {path}.damaged` (with any \
         {path}-wal and {path}-shm beside it) and the agent starts a new outbox epoch \
         (batches not yet acknowledged then exist only in the moved file). Then start the agent again"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "outbox {path} is not a regular file but a {kind}; the agent does not touch it. \
         Move it away (`mv {path} {path}.moved`) so the agent can create a new outbox there \
         (a new epoch), or point data_dir elsewhere"
    )]
    NotAFile { path: PathBuf, kind: String },
    #[error(
        "outbox {path} cannot be opened for reading and writing ({source}); give the user the \
         agent runs as read and write access to it and to its directory (data_dir), e.g. \
         `chown` them to that user"
    )]
    Access {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "outbox row seq {seq} has a body that does not parse ({reason}); the database is damaged"
    )]
    CorruptRow { seq: u64, reason: String },
}

/// The JSON stored in `batches.body`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct BatchBody {
    detections: Vec<Detection>,
    #[serde(default)]
    counts: Vec<DetectionCount>,
}

/// A batch waiting for its ack.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingBatch {
    pub seq: u64,
    pub detections: Vec<Detection>,
    pub counts: Vec<DetectionCount>,
}

impl PendingBatch {
    /// The wire message for this batch.
    pub fn to_message(&self, node_id: &str, epoch: &str, sent_at: DateTime<Utc>) -> DetectionBatch {
        DetectionBatch {
            v: PROTOCOL_VERSION,
            node_id: node_id.to_owned(),
            epoch: epoch.to_owned(),
            seq: self.seq,
            sent_at,
            detections: self.detections.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// What [`Outbox::append`] did with the detections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as batch `seq`.
    Stored { seq: u64 },
    /// There was nothing to store.
    Empty,
    /// No room even after compaction; the detections were dropped and counted.
    Shed { detections: u64 },
}

/// What [`Outbox::ack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOutcome {
    /// `acked_seq` after the ack.
    pub acked_seq: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// The ack named a seq this outbox never assigned (it was clamped).
    pub beyond_last_seq: bool,
}

/// See the module doc.
#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    epoch: String,
    max_bytes: u64,
}

fn counter(tx: &Connection, name: &str) -> rusqlite::Result<u64> {
    let v: i64 = tx.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
        r.get(0)
    })?;
    Ok(v as u64)
}

fn set_counter(tx: &Connection, name: &str, value: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE counters SET value = ?2 WHERE name = ?1",
        params![name, value as i64],
    )?;
    Ok(())
}

fn add_counter(tx: &Connection, name: &str, delta: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE counters SET value = value + ?2 WHERE name = ?1",
        params![name, delta as i64],
    )?;
    Ok(())
}

fn total_bytes(tx: &Connection) -> rusqlite::Result<u64> {
    let v: i64 = tx.query_row("SELECT COALESCE(SUM(bytes), 0) FROM batches", [], |r| {
        r.get(0)
    })?;
    Ok(v as u64)
}

fn start_of_minute(ts: DateTime<Utc>) -> DateTime<Utc> {
    let secs = ts.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(60), 0).unwrap_or(ts)
}

/// Folds a body's detections into its per-minute counts.
fn compact_body(body: &BatchBody) -> BatchBody {
    type Key = (DateTime<Utc>, String, Option<String>, Option<u32>, String);
    let mut counts: BTreeMap<Key, u64> = BTreeMap::new();
    let key_of = |c: &DetectionCount| -> Key {
        (
            c.minute,
            c.camera_id.clone(),
            c.zone.clone(),
            c.class_id,
            c.label.clone(),
        )
    };
    for c in &body.counts {
        *counts.entry(key_of(c)).or_default() += c.count;
    }
    for d in &body.detections {
        let key = (
            start_of_minute(d.ts),
            d.camera_id.clone(),
            d.zone.clone(),
            d.class_id,
            d.label.clone(),
        );
        *counts.entry(key).or_default() += 1;
    }
    BatchBody {
        detections: Vec::new(),
        counts: counts
            .into_iter()
            .map(
                |((minute, camera_id, zone, class_id, label), count)| DetectionCount {
                    minute,
                    camera_id,
                    zone,
                    class_id,
                    label,
                    count,
                },
            )
            .collect(),
    }
}

/// Refuses what SQLite would otherwise report vaguely ("unable to open
/// database file") or not at all: a path that is not a regular file, or a
/// file the agent may not both read and write. A missing file is fine (a
/// new outbox is created).
fn check_file(path: &Path) -> Result<(), OutboxError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OutboxError::Access {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.is_file() {
        // `metadata` follows links: a link to a regular file is fine.
        let kind = if meta.is_dir() {
            "directory"
        } else {
            "special file (socket, pipe or device)"
        };
        return Err(OutboxError::NotAFile {
            path: path.to_owned(),
            kind: kind.into(),
        });
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| OutboxError::Access {
            path: path.to_owned(),
            source,
        })
}

/// SQLite's page-level check (b-trees, free list, record formats; not the
/// cross-index checks of `integrity_check`), linear in the file's size and
/// run once per start. `Ok(Some(what))` when the file is damaged.
fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok((rows != ["ok"]).then(|| format!("PRAGMA quick_check: {}", rows.join("; "))))
}

/// A SQLite error at open: damage (a garbage header, a truncated or
/// zeroed file) is [`OutboxError::Damaged`], with the way to recover;
/// anything else (disk, permissions) stays [`OutboxError::Db`].
fn classify(path: &Path, source: rusqlite::Error) -> OutboxError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match source.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => OutboxError::Damaged {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        _ => OutboxError::Db {
            path: path.to_owned(),
            source,
        },
    }
}

fn to_json(body: &BatchBody) -> String {
    String::from_utf8(edgeqi_shared::protocol::encode(body)).unwrap_or_default()
}

impl Outbox {
    /// Opens (or creates, with a new epoch) the outbox at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        check_file(path)?;
        let db = |source| classify(path, source);
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        // Before anything writes (the journal mode below rewrites the
        // header): a damaged file must stay byte for byte as it was.
        if let Some(detail) = quick_check(&conn).map_err(db)? {
            return Err(OutboxError::Damaged {
                path: path.to_owned(),
                detail,
            });
        }
        let migrate_error = |e| match e {
            MigrateError::Db(source) => db(source),
            MigrateError::TooNew(found) => OutboxError::TooNew {
                path: path.to_owned(),
                found,
            },
            MigrateError::Foreign => OutboxError::Damaged {
                path: path.to_owned(),
                detail: "it is a SQLite database with tables but no outbox schema version".into(),
            },
        };
        // Whose file this is, still before any write.
        let version = Self::schema_version(&conn).map_err(migrate_error)?;
        // WAL lets the e2e tests (and operators) read while we write; FULL
        // makes every commit durable, which the ledger promises.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(db)?;
        Self::migrate(&mut conn, version).map_err(migrate_error)?;
        // A SQLite file of something else (or one whose meta row is gone)
        // is no outbox: refused like a damaged one, never re-initialised.
        let epoch: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => OutboxError::Damaged {
                    path: path.to_owned(),
                    detail: "it has no outbox epoch".into(),
                },
                rusqlite::Error::SqliteFailure(ref f, _)
                    if f.code == rusqlite::ErrorCode::Unknown =>
                {
                    OutboxError::Damaged {
                        path: path.to_owned(),
                        detail: format!("it has no outbox epoch: {e}"),
                    }
                }
                e => db(e),
            })?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            epoch,
            max_bytes,
        })
    }

    /// The file's schema version, refusing one this build cannot use.
    fn schema_version(conn: &Connection) -> Result<i64, MigrateError> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(MigrateError::TooNew(version));
        }
        if version < 1 {
            // Schema version 0 is a new, empty file; tables in it mean
            // someone else's database, which must not get ours added.
            let tables: i64 =
                conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 {
                return Err(MigrateError::Foreign);
            }
        }
        Ok(version)
    }

    fn migrate(conn: &mut Connection, version: i64) -> Result<(), MigrateError> {
        if version < 1 {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE batches (
                     seq INTEGER PRIMARY KEY,
                     body TEXT NOT NULL,
                     bytes INTEGER NOT NULL,
                     detections INTEGER NOT NULL,
                     compacted INTEGER NOT NULL DEFAULT 0,
                     created_at TEXT NOT NULL
                 );
                 CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
            )?;
            let epoch = format!("{:016x}", rand::random::<u64>());
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
                [&epoch],
            )?;
            for name in COUNTERS {
                tx.execute("INSERT INTO counters (name, value) VALUES (?1, 0)", [name])?;
            }
            tx.pragma_update(None, "user_version", 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn db(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Stores `detections` as the next batch, making room first if needed.
    pub fn append(&mut self, detections: Vec<Detection>) -> Result<Appended, OutboxError> {
        if detections.is_empty() {
            return Ok(Appended::Empty);
        }
        let n = detections.len() as u64;
        let body = BatchBody {
            detections,
            counts: Vec::new(),
        };
        let max_bytes = self.max_bytes;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| OutboxError::Db {
                path: path.clone(),
                source,
            })?;
        let result = Self::append_in(&tx, body, n, max_bytes);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(AppendError::Db(source)) => return Err(OutboxError::Db { path, source }),
            Err(AppendError::Corrupt(seq, reason)) => {
                return Err(OutboxError::CorruptRow { seq, reason })
            }
        };
        tx.commit()
            .map_err(|source| OutboxError::Db { path, source })?;
        if let Appended::Shed { detections } = outcome {
            tracing::warn!(
                detections,
                max_bytes,
                "outbox full even after compacting every pending batch: shed new detections \
                 (the aggregator has been unreachable for long; raise outbox.max_bytes to keep more)"
            );
        }
        Ok(outcome)
    }

    fn append_in(
        tx: &Transaction<'_>,
        body: BatchBody,
        n: u64,
        max_bytes: u64,
    ) -> Result<Appended, AppendError> {
        let mut json = to_json(&body);
        let mut compacted = false;
        let mut total = total_bytes(tx)?;
        let mut folded = 0u64;
        while total + json.len() as u64 > max_bytes {
            let oldest: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, body FROM batches WHERE compacted = 0 ORDER BY seq LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((seq, old_json)) = oldest else { break };
            let old: BatchBody = serde_json::from_str(&old_json)
                .map_err(|e| AppendError::Corrupt(seq as u64, e.to_string()))?;
            let new_json = to_json(&compact_body(&old));
            tx.execute(
                "UPDATE batches SET body = ?2, bytes = ?3, compacted = 1 WHERE seq = ?1",
                params![seq, new_json, new_json.len() as i64],
            )?;
            folded += old.detections.len() as u64;
            total = total - old_json.len() as u64 + new_json.len() as u64;
        }
        if total + json.len() as u64 > max_bytes {
            // Last resort before shedding: store the new batch as counts too.
            let small = to_json(&compact_body(&body));
            if total + small.len() as u64 <= max_bytes {
                json = small;
                compacted = true;
                folded += n;
            }
        }
        if folded > 0 {
            add_counter(tx, "compacted_detections", folded)?;
            tracing::warn!(
                detections = folded,
                "outbox reached outbox.max_bytes: compacted the oldest detections into per-minute counts"
            );
        }
        if total + json.len() as u64 > max_bytes {
            add_counter(tx, "shed_detections", n)?;
            return Ok(Appended::Shed { detections: n });
        }
        let seq = counter(tx, "last_seq")? + 1;
        tx.execute(
            "INSERT INTO batches (seq, body, bytes, detections, compacted, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                seq as i64,
                json,
                json.len() as i64,
                n as i64,
                compacted,
                Utc::now().to_rfc3339()
            ],
        )?;
        set_counter(tx, "last_seq", seq)?;
        add_counter(tx, "enqueued_batches", 1)?;
        add_counter(tx, "enqueued_detections", n)?;
        Ok(Appended::Stored { seq })
    }

    /// Up to `limit` batches with `seq >= from_seq`, lowest first.
    pub fn pending(&self, from_seq: u64, limit: usize) -> Result<Vec<PendingBatch>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, body FROM batches WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![from_seq as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, json) = row.map_err(|e| self.db(e))?;
            let body: BatchBody =
                serde_json::from_str(&json).map_err(|e| OutboxError::CorruptRow {
                    seq,
                    reason: e.to_string(),
                })?;
            out.push(PendingBatch {
                seq,
                detections: body.detections,
                counts: body.counts,
            });
        }
        Ok(out)
    }

    /// Records that the aggregator stored every batch up to `acked_seq`, and
    /// deletes those rows. An ack at or below the current one changes nothing.
    pub fn ack(&mut self, acked_seq: u64) -> Result<AckOutcome, OutboxError> {
        let path = self.path.clone();
        let db = |source| OutboxError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let current = counter(&tx, "acked_seq").map_err(db)?;
        let last = counter(&tx, "last_seq").map_err(db)?;
        let target = acked_seq.min(last);
        if target <= current {
            return Ok(AckOutcome {
                acked_seq: current,
                deleted: 0,
                beyond_last_seq: acked_seq > last,
            });
        }
        let deleted = tx
            .execute("DELETE FROM batches WHERE seq <= ?1", [target as i64])
            .map_err(db)?;
        set_counter(&tx, "acked_seq", target).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(AckOutcome {
            acked_seq: target,
            deleted: deleted as u64,
            beyond_last_seq: acked_seq > last,
        })
    }

    /// Batches waiting for an ack.
    pub fn backlog(&self) -> Result<u64, OutboxError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        Ok(n as u64)
    }

    /// The lowest seq not yet acknowledged, if any batch waits.
    pub fn lowest_pending(&self) -> Result<Option<u64>, OutboxError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MIN(seq) FROM batches", [], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        Ok(v.map(|v| v as u64))
    }

    pub fn acked_seq(&self) -> Result<u64, OutboxError> {
        counter(&self.conn, "acked_seq").map_err(|e| self.db(e))
    }

    /// What heartbeats report about the outbox.
    pub fn health(&self) -> Result<OutboxHealth, OutboxError> {
        let c = |name| counter(&self.conn, name).map_err(|e| self.db(e));
        let (pending_batches, pending_bytes): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM batches",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.db(e))?;
        Ok(OutboxHealth {
            epoch: self.epoch.clone(),
            pending_batches: pending_batches as u64,
            pending_bytes: pending_bytes as u64,
            max_bytes: self.max_bytes,
            acked_seq: c("acked_seq")?,
            compacted_detections: c("compacted_detections")?,
            shed_detections: c("shed_detections")?,
        })
    }
}

#[derive(Debug)]
enum MigrateError {
    Db(rusqlite::Error),
    TooNew(i64),
    Foreign,
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Db(e)
    }
}

#[derive(Debug)]
enum AppendError {
    Db(rusqlite::Error),
    Corrupt(u64, String),
}

impl From<rusqlite::Error> for AppendError {
    fn from(e: rusqlite::Error) -> Self {
        AppendError::Db(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(i: u64) -> Detection {
        Detection {
            ts: DateTime::from_timestamp(1_700_000_000 + (i as i64) * 7, 0).expect("ts"),
            camera_id: format!("cam{}", i % 2),
            class_id: None,
            label: "motion".into(),
            score: 0.5,
            bbox: [1.0, 2.0, 30.0, 40.0],
            track_id: None,
            zone: None,
        }
    }

    fn dets(n: u64) -> Vec<Detection> {
        (0..n).map(det).collect()
    }

    fn stored(a: Appended) -> u64 {
        match a {
            Appended::Stored { seq } => seq,
            other => panic!("expected stored, got {other:?}"),
        }
    }

    fn counter_of(o: &Outbox, name: &str) -> u64 {
        counter(&o.conn, name).expect("counter")
    }

    #[test]
    fn seqs_are_contiguous_from_one_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/outbox.db");
        let epoch;
        {
            let mut o = Outbox::open(&path, 1 << 20).expect("open");
            epoch = o.epoch().to_owned();
            assert_eq!(epoch.len(), 16);
            assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{epoch}");
            assert_eq!(o.append(vec![]).expect("empty"), Appended::Empty);
            for want in 1..=3 {
                assert_eq!(stored(o.append(dets(2)).expect("append")), want);
            }
        }
        let mut o = Outbox::open(&path, 1 << 20).expect("reopen");
        assert_eq!(o.epoch(), epoch);
        assert_eq!(stored(o.append(dets(1)).expect("append")), 4);
        let seqs: Vec<u64> = o
            .pending(0, 100)
            .expect("pending")
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(counter_of(&o, "enqueued_batches"), 4);
        assert_eq!(counter_of(&o, "enqueued_detections"), 7);
        assert_eq!(o.pending(3, 1).expect("pending")[0].detections, dets(2));
    }

    #[test]
    fn ack_deletes_only_acked_rows_and_seqs_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::open(&path, 1 << 20).expect("open");
        for _ in 0..5 {
            o.append(dets(1)).expect("append");
        }
        let a = o.ack(3).expect("ack");
        assert_eq!((a.acked_seq, a.deleted, a.beyond_last_seq), (3, 3, false));
        assert_eq!(o.lowest_pending().expect("lowest"), Some(4));
        // A stale or repeated ack changes nothing.
        assert_eq!(o.ack(2).expect("ack").deleted, 0);
        assert_eq!(o.ack(3).expect("ack").deleted, 0);
        assert_eq!(o.backlog().expect("backlog"), 2);
        // An ack past the last seq is clamped, not trusted.
        let a = o.ack(99).expect("ack");
        assert_eq!((a.acked_seq, a.deleted, a.beyond_last_seq), (5, 2, true));
        assert_eq!(o.backlog().expect("backlog"), 0);
        drop(o);
        let mut o = Outbox::open(&path, 1 << 20).expect("reopen");
        assert_eq!(stored(o.append(dets(1)).expect("append")), 6);
        assert_eq!(o.health().expect("health").acked_seq, 5);
    }

    #[test]
    fn compaction_keeps_every_detection_counted_and_respects_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 20_000;
        let mut o = Outbox::open(&dir.path().join("outbox.db"), max).expect("open");
        let mut appended = 0;
        for i in 0..60u64 {
            let batch: Vec<Detection> = (0..20).map(|j| det(i * 20 + j)).collect();
            o.append(batch).expect("append");
            appended += 20;
            let h = o.health().expect("health");
            assert!(h.pending_bytes <= max, "{} > {max}", h.pending_bytes);
        }
        let h = o.health().expect("health");
        assert!(h.compacted_detections > 0, "{h:?}");
        let in_rows: u64 = o
            .pending(0, 1000)
            .expect("pending")
            .iter()
            .map(|b| b.detections.len() as u64 + b.counts.iter().map(|c| c.count).sum::<u64>())
            .sum();
        assert_eq!(in_rows + h.shed_detections, appended);
        assert_eq!(
            counter_of(&o, "enqueued_detections") + h.shed_detections,
            appended
        );
        // Per-row accounting holds after compaction.
        let per_row: i64 = o
            .conn
            .query_row("SELECT SUM(detections) FROM batches", [], |r| r.get(0))
            .expect("sum");
        assert_eq!(per_row as u64, in_rows);
        let compacted = o.pending(0, 1).expect("pending");
        assert!(compacted[0].detections.is_empty() && !compacted[0].counts.is_empty());
        assert!(compacted[0]
            .counts
            .iter()
            .all(|c| c.minute.timestamp() % 60 == 0));
    }

    /// An outbox holding `batches` closed batches (no WAL left beside it).
    fn written(dir: &Path, batches: u64) -> PathBuf {
        let path = dir.join("outbox.db");
        let mut o = Outbox::open(&path, 1 << 24).expect("open");
        for i in 0..batches {
            o.append(dets(5 + i % 3)).expect("append");
        }
        drop(o);
        assert!(!dir.join("outbox.db-wal").exists(), "checkpointed at close");
        path
    }

    /// Opens a damaged `path`: refused as `Damaged`, with the path and
    /// both ways out in the message, and not a byte of it changed.
    fn refused_untouched(path: &Path) -> String {
        let before = std::fs::read(path).expect("read");
        let err = Outbox::open(path, 1 << 24).expect_err("must refuse a damaged outbox");
        assert!(matches!(err, OutboxError::Damaged { .. }), "{err:?}");
        let text = err.to_string();
        let shown = path.display().to_string();
        assert!(text.contains(&shown), "{text}");
        assert!(
            text.contains(&format!("sqlite3 {shown} .recover")),
            "{text}"
        );
        assert!(
            text.contains(&format!("mv {shown} {shown}.damaged")),
            "{text}"
        );
        assert!(text.contains("new outbox epoch"), "{text}");
        assert!(std::fs::read(path).expect("read") == before, "file changed");
        // Refusing again (systemd restarts the agent) changes nothing either.
        assert!(Outbox::open(path, 1 << 24).is_err());
        assert!(std::fs::read(path).expect("read") == before, "file changed");
        text
    }

    #[test]
    fn a_truncated_outbox_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = written(dir.path(), 300);
        let len = std::fs::metadata(&path).expect("meta").len();
        assert!(len > 64 * 1024, "{len}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(len / 2).expect("truncate");
        drop(f);
        refused_untouched(&path);
    }

    #[test]
    fn a_garbage_header_or_a_zeroed_file_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = written(dir.path(), 20);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[..32].copy_from_slice(b"this is not SQLite, it is junk!!");
        std::fs::write(&path, &bytes).expect("write");
        let text = refused_untouched(&path);
        assert!(text.contains("not a database"), "{text}");

        std::fs::write(&path, vec![0u8; 64 * 1024]).expect("zeros");
        refused_untouched(&path);
    }

    #[test]
    fn a_damaged_page_inside_an_openable_file_is_found_before_any_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = written(dir.path(), 300);
        let mut bytes = std::fs::read(&path).expect("read");
        // A page in the middle of the batches table; the header, the
        // schema and `meta` (the first pages) are intact, so the file opens
        // and reads its epoch fine without the check.
        let page = 4096;
        let at = (bytes.len() / page / 2) * page;
        bytes[at..at + 64].fill(0xA5);
        std::fs::write(&path, &bytes).expect("write");
        {
            // What open reads without the check is intact.
            let c = Connection::open(&path).expect("open");
            let epoch: String = c
                .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .expect("the epoch reads fine");
            assert_eq!(epoch.len(), 16);
        }
        let text = refused_untouched(&path);
        assert!(text.contains("malformed"), "{text}");
    }

    #[test]
    fn another_sqlite_database_is_not_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let c = Connection::open(&path).expect("open");
        c.execute_batch(
            "CREATE TABLE photos (id INTEGER PRIMARY KEY); INSERT INTO photos VALUES (1);",
        )
        .expect("create");
        drop(c);
        let text = refused_untouched(&path);
        assert!(text.contains("no outbox schema version"), "{text}");
    }

    #[test]
    fn a_directory_in_its_place_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::write(path.join("inside"), b"keep").expect("write");
        let err = Outbox::open(&path, 1 << 20).expect_err("must refuse");
        assert!(matches!(err, OutboxError::NotAFile { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("directory") && text.contains("mv "), "{text}");
        assert_eq!(std::fs::read(path.join("inside")).expect("read"), b"keep");
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_file_is_an_access_error_not_damage() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = written(dir.path(), 3);
        let before = std::fs::read(&path).expect("read");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        if std::fs::File::open(&path).is_ok() {
            // root reads any file: nothing to test here (the CI user is not root).
            eprintln!("skipped: this user can read a mode-000 file");
            return;
        }
        let err = Outbox::open(&path, 1 << 20).expect_err("must refuse");
        assert!(matches!(err, OutboxError::Access { .. }), "{err:?}");
        assert!(err.to_string().contains("chown"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn an_empty_file_or_a_moved_away_one_starts_a_new_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        std::fs::write(&path, b"").expect("empty");
        let mut o = Outbox::open(&path, 1 << 20).expect("an empty file is a new outbox");
        assert_eq!(stored(o.append(dets(1)).expect("append")), 1);
    }

    #[test]
    fn shedding_is_counted_not_silent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(&dir.path().join("outbox.db"), 300).expect("open");
        let mut shed = 0;
        let mut stored_n = 0;
        for i in 0..20 {
            match o.append(vec![det(i), det(i + 100)]).expect("append") {
                Appended::Shed { detections } => shed += detections,
                Appended::Stored { .. } => stored_n += 2,
                Appended::Empty => panic!("not empty"),
            }
        }
        assert!(shed > 0);
        let h = o.health().expect("health");
        assert_eq!(h.shed_detections, shed);
        assert!(h.pending_bytes <= 300);
        assert_eq!(counter_of(&o, "enqueued_detections"), stored_n);
        // Seqs stay contiguous: shed batches take no seq.
        let seqs: Vec<u64> = o
            .pending(0, 100)
            .expect("pending")
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}
