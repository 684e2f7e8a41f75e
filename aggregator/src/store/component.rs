//! A connection to the aggregator's SQLite file for one component (accounts,
//! incidents, events) that keeps its own schema version in
//! `schema_versions`, so each evolves independently of the detection store.

use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::{StoreError, StoreResult};

#[derive(Debug, Clone)]
pub struct ComponentDb {
    conn: Arc<Mutex<Connection>>,
}

impl ComponentDb {
    /// Opens `sqlite://PATH` and applies `migrations` not yet recorded for
    /// `component`; refuses a database a newer aggregator migrated further.
    pub fn open(url: &str, component: &str, migrations: &[&str]) -> StoreResult<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| StoreError::UnsupportedUrl(super::redact_url(url)))?;
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);",
        )
        .map_err(|e| open_err(e.to_string()))?;
        let current: i64 = conn
            .query_row(
                "SELECT version FROM schema_versions WHERE component = ?1",
                [component],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| open_err(e.to_string()))?
            .unwrap_or(0);
        if current > migrations.len() as i64 {
            return Err(open_err(format!(
                "{component} schema version {current} is newer than this aggregator's {}; run the newer aggregator",
                migrations.len()
            )));
        }
        for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
            let tx = conn
                .unchecked_transaction()
                .map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(sql)
                .map_err(|e| open_err(format!("{component} migration {}: {e}", i + 1)))?;
            tx.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
                 ON CONFLICT(component) DO UPDATE SET version = ?2",
                params![component, i as i64 + 1],
            )
            .map_err(|e| open_err(e.to_string()))?;
            tx.commit().map_err(|e| open_err(e.to_string()))?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    pub async fn with<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| E::from(StoreError::Database(format!("storage task failed: {e}"))))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("new/dir/c.db").display());
        ComponentDb::open(&url, "demo", &["CREATE TABLE a (x INTEGER)"]).expect("first");
        ComponentDb::open(
            &url,
            "demo",
            &["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"],
        )
        .expect("second migration only");
        let err =
            ComponentDb::open(&url, "demo", &["CREATE TABLE a (x INTEGER)"]).expect_err("newer db");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
