//! Per-node MQTT credentials: issued when a node is provisioned, rotated on
//! demand, checked by the broker gateway on every CONNECT.
//!
//! The user name is the node id; the password is 256 random bits shown once.
//! Only its SHA-256 digest is stored. A slow password hash (argon2, tens of
//! milliseconds by design) protects *guessable* human passwords; against a
//! 256-bit random secret it adds nothing, yet it would make a reconnect storm
//! of thousands of nodes after a restart cost minutes of CPU on the CONNECT
//! path. API keys are stored the same way for the same reason.
//!
//! Kept in its own component of the SQLite file (`schema_versions` row
//! `node_credentials`) so it migrates independently of the account tables.

use chrono::Utc;
use rusqlite::{params, OptionalExtension};
use tokio::sync::broadcast;

use crate::store::component::ComponentDb;
use crate::store::StoreResult;

const COMPONENT: &str = "node_credentials";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE node_credentials (
        node_id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        issued_ms INTEGER NOT NULL
    );
"#];

/// Marks generated passwords so a leaked one is recognisable in scans.
const PASSWORD_PREFIX: &str = "eqm_";

/// The credential store; cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    db: ComponentDb,
    /// Node ids whose password just changed: the gateway closes their open
    /// connections, so a rotated-out password stops working at once.
    rotated: broadcast::Sender<String>,
    /// A client id that is not a node (the aggregator's own ingest client).
    reserved: Option<std::sync::Arc<str>>,
}

fn digest(password: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, password.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time, so a digest cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random password.
fn new_password() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PASSWORD_PREFIX}{hex}")
}

impl NodeCredentials {
    /// Opens (and migrates) the store in the `sqlite://PATH` file.
    pub fn open(url: &str) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
            rotated: broadcast::channel(256).0,
            reserved: None,
        })
    }

    /// The same store, refusing to call `client_id` a node.
    pub fn with_reserved(&self, client_id: &str) -> Self {
        Self {
            reserved: Some(client_id.into()),
            ..self.clone()
        }
    }

    /// Is `node_id` a client id the aggregator keeps for itself?
    pub fn is_reserved(&self, node_id: &str) -> bool {
        self.reserved.as_deref() == Some(node_id)
    }

    /// Issues a new password for `node_id`, replacing any previous one, and
    /// returns it (the only time it is visible).
    pub async fn issue(&self, node_id: &str) -> StoreResult<String> {
        let password = new_password();
        let (n, h) = (node_id.to_owned(), digest(&password));
        self.db
            .with(move |c| -> StoreResult<()> {
                c.execute(
                    "INSERT INTO node_credentials (node_id, secret_sha256, issued_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(node_id) DO UPDATE SET secret_sha256 = ?2, issued_ms = ?3",
                    params![n, h, Utc::now().timestamp_millis()],
                )?;
                Ok(())
            })
            .await?;
        // No receiver (no gateway running) is fine.
        let _ = self.rotated.send(node_id.to_owned());
        Ok(password)
    }

    /// Revokes `node_id`'s credentials: its password stops working and its
    /// open connection is closed, as on rotation. `false` if it had none.
    pub async fn revoke(&self, node_id: &str) -> StoreResult<bool> {
        let n = node_id.to_owned();
        let removed = self
            .db
            .with(move |c| -> StoreResult<usize> {
                Ok(c.execute("DELETE FROM node_credentials WHERE node_id = ?1", [n])?)
            })
            .await?;
        if removed > 0 {
            let _ = self.rotated.send(node_id.to_owned());
        }
        Ok(removed > 0)
    }

    /// Does `password` belong to `node_id`? `false` for unknown nodes.
    pub async fn verify(&self, node_id: &str, password: &str) -> StoreResult<bool> {
        let n = node_id.to_owned();
        let stored: Option<String> = self
            .db
            .with(move |c| -> StoreResult<Option<String>> {
                Ok(c.query_row(
                    "SELECT secret_sha256 FROM node_credentials WHERE node_id = ?1",
                    [n],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        Ok(stored.is_some_and(|s| same(s.as_bytes(), digest(password).as_bytes())))
    }

    /// Has `node_id` been issued credentials?
    pub async fn exists(&self, node_id: &str) -> StoreResult<bool> {
        let n = node_id.to_owned();
        self.db
            .with(move |c| {
                Ok(c.query_row(
                    "SELECT 1 FROM node_credentials WHERE node_id = ?1",
                    [n],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
            })
            .await
    }

    /// Node ids whose credentials changed from now on.
    pub fn rotations(&self) -> broadcast::Receiver<String> {
        self.rotated.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issue_verify_rotate() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let creds = NodeCredentials::open(&url).expect("open");
        assert!(!creds.exists("cam-1").await.expect("exists"));
        assert!(!creds.verify("cam-1", "anything").await.expect("verify"));

        let mut rotations = creds.rotations();
        let first = creds.issue("cam-1").await.expect("issue");
        assert!(
            first.starts_with(PASSWORD_PREFIX) && first.len() == 68,
            "{first}"
        );
        assert_eq!(rotations.recv().await.expect("rotation"), "cam-1");
        assert!(creds.verify("cam-1", &first).await.expect("verify"));
        assert!(!creds.verify("cam-2", &first).await.expect("other node"));
        assert!(!creds.verify("cam-1", &first[..67]).await.expect("prefix"));

        let second = creds.issue("cam-1").await.expect("rotate");
        assert_ne!(first, second);
        assert!(!creds.verify("cam-1", &first).await.expect("old"));
        assert!(creds.verify("cam-1", &second).await.expect("new"));

        // Revoked: nothing verifies, the gateway hears of it, a second revoke finds nothing.
        let spare = creds.issue("cam-9").await.expect("issue");
        assert_eq!(rotations.recv().await.expect("rotation"), "cam-1");
        assert_eq!(rotations.recv().await.expect("rotation"), "cam-9");
        assert!(creds.revoke("cam-9").await.expect("revoke"));
        assert_eq!(rotations.recv().await.expect("revocation"), "cam-9");
        assert!(!creds.verify("cam-9", &spare).await.expect("revoked"));
        assert!(!creds.exists("cam-9").await.expect("exists"));
        assert!(!creds.revoke("cam-9").await.expect("again"));
        assert!(
            rotations.try_recv().is_err(),
            "nothing to close the second time"
        );

        // Only the digest is stored, and it survives a reopen.
        let reopened = NodeCredentials::open(&url).expect("reopen");
        assert!(reopened.verify("cam-1", &second).await.expect("verify"));
        let raw = std::fs::read(dir.path().join("c.db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("c.db-wal")).unwrap_or_default();
        let needle = second.as_bytes();
        for file in [raw, wal] {
            assert!(!file.windows(needle.len()).any(|w| w == needle));
        }
    }
}
