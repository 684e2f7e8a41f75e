//! The camera registry and each node's desired remote config.
//!
//! Operators register a node's cameras (name, position, heading, inference
//! pace, zones and lines). Every change bumps the node's config version and
//! publishes the node's whole config document ([`RemoteConfig`]) retained,
//! QoS 1, on `edgeqi/v1/nodes/{node}/config`; every (re)connect of the
//! aggregator's MQTT client publishes all of them again, so a broker that
//! restarted empty (the embedded one keeps retained messages in memory)
//! has them back. Agents report the version they run in heartbeats.
//!
//! Storage is the aggregator's SQLite file with its own schema version
//! (`schema_versions` row `registry`), beside the accounts that own node
//! tenancy: the registry is small, edited by people, and scoped by tenant
//! through `node_tenants`, so it lives with them even when detections go to
//! PostgreSQL. A change, its version bump and the document built from it
//! are one transaction, and the document is handed to MQTT while the
//! connection is still held, so documents go out in version order.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use edgeqi_shared::camera::{check_cameras, describe, CameraSpec, GeoPoint, LineSpec, ZoneSpec};
use edgeqi_shared::protocol::encode;
use edgeqi_shared::{NodeConfig, RemoteConfig, Topic, TopicKind, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, QoS};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "registry";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE node_configs (
        node_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE cameras (
        node_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (node_id, camera_id)
    ) WITHOUT ROWID;
"#];

/// A registered camera as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RegisteredCamera {
    pub node_id: String,
    pub camera_id: String,
    pub name: Option<String>,
    #[schema(value_type = Option<GeoPointDoc>)]
    pub location: Option<GeoPoint>,
    /// Degrees clockwise from north.
    pub heading: Option<f64>,
    pub detect_fps: Option<f64>,
    #[schema(value_type = Vec<ZoneDoc>)]
    pub zones: Vec<ZoneSpec>,
    #[schema(value_type = Vec<LineDoc>)]
    pub lines: Vec<LineSpec>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RegisteredCamera {
    /// The entry as it travels in the node's config document.
    pub fn spec(&self) -> CameraSpec {
        CameraSpec {
            id: self.camera_id.clone(),
            name: self.name.clone(),
            location: self.location,
            heading: self.heading,
            detect_fps: self.detect_fps,
            zones: self.zones.clone(),
            lines: self.lines.clone(),
        }
    }
}

/// WGS 84 position, decimal degrees (`-90..=90`, `-180..=180`).
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = GeoPoint)]
#[allow(dead_code)] // describes [`GeoPoint`] in the OpenAPI document only
pub struct GeoPointDoc {
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    #[schema(minimum = -180.0, maximum = 180.0)]
    lng: f64,
}

/// A point `[x, y]` in normalised frame coordinates (`0..=1`, `y` down).
#[derive(Debug)]
pub struct PointDoc;

impl utoipa::PartialSchema for PointDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0.0))
                    .maximum(Some(1.0)),
            )
            .min_items(Some(2))
            .max_items(Some(2))
            .into()
    }
}

impl utoipa::ToSchema for PointDoc {}

/// A zone: 3 to 64 `[x, y]` corners in normalised frame coordinates
/// (`0..=1`, `y` down), enclosing some area; `id` `[A-Za-z0-9_-]{1,64}`,
/// unique on the camera.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Zone)]
#[allow(dead_code)] // describes [`ZoneSpec`] in the OpenAPI document only
pub struct ZoneDoc {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    id: String,
    #[schema(value_type = Vec<PointDoc>, inline, min_items = 3, max_items = 64)]
    polygon: Vec<[f64; 2]>,
}

/// A counting line from `from` to `to`, two different `[x, y]` points in
/// normalised frame coordinates; `id` unique on the camera. Crossings are
/// `left_to_right` / `right_to_left` as seen from `from` towards `to`.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Line)]
#[allow(dead_code)] // describes [`LineSpec`] in the OpenAPI document only
pub struct LineDoc {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    id: String,
    #[schema(value_type = PointDoc, inline)]
    from: [f64; 2],
    #[schema(value_type = PointDoc, inline)]
    to: [f64; 2],
}

/// A node's desired config version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The change would make a config no agent accepts (too many cameras,
    /// too large); nothing was stored.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(e.into())
    }
}

/// One registry change: the camera before and after, and the document now
/// desired for the node.
#[derive(Debug, Clone)]
pub struct Change {
    pub before: Option<RegisteredCamera>,
    pub after: Option<RegisteredCamera>,
    pub config: RemoteConfig,
}

enum Op {
    Create(CameraSpec),
    Replace(CameraSpec),
    Delete(String),
}

/// The MQTT client documents go out through: ingest's, attached once it
/// exists. Until then (and in API tests) publishing is skipped; the next
/// connect publishes everything anyway.
#[derive(Clone, Default)]
struct Publisher(Arc<Mutex<Option<AsyncClient>>>);

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = self.0.lock().map(|c| c.is_some()).unwrap_or(false);
        f.debug_struct("Publisher")
            .field("attached", &attached)
            .finish()
    }
}

impl Publisher {
    /// Queues `doc` retained, QoS 1; never blocks.
    fn publish(&self, doc: &RemoteConfig) -> bool {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(client) = guard.as_ref() else {
            tracing::debug!(node_id = %doc.node_id, version = doc.version,
                "no MQTT client yet; the config goes out when ingest connects");
            return false;
        };
        let topic = Topic::new(&doc.node_id, TopicKind::Config).to_string();
        match client.try_publish(topic, QoS::AtLeastOnce, true, encode(doc)) {
            Ok(()) => {
                metrics::counter!("edgeqi_registry_configs_published_total").increment(1);
                true
            }
            Err(e) => {
                // The next reconnect republishes every node's document.
                tracing::warn!(node_id = %doc.node_id, version = doc.version, error = %e,
                    "cannot queue the config publish; it goes out at the next reconnect");
                false
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    db: ComponentDb,
    publisher: Publisher,
    max_payload_bytes: usize,
}

fn ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn camera_row(node_id: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<RegisteredCamera> {
    let spec: String = r.get("spec")?;
    let spec: CameraSpec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(RegisteredCamera {
        node_id: node_id.to_owned(),
        camera_id: r.get("camera_id")?,
        name: spec.name,
        location: spec.location,
        heading: spec.heading,
        detect_fps: spec.detect_fps,
        zones: spec.zones,
        lines: spec.lines,
        created_at: ts(r.get("created_ms")?),
        updated_at: ts(r.get("updated_ms")?),
    })
}

fn cameras_of(c: &Connection, node_id: &str) -> rusqlite::Result<Vec<RegisteredCamera>> {
    let mut stmt = c.prepare_cached(
        "SELECT camera_id, spec, created_ms, updated_ms FROM cameras WHERE node_id = ?1 ORDER BY camera_id",
    )?;
    let rows = stmt.query_map([node_id], |r| camera_row(node_id, r))?;
    rows.collect()
}

fn camera_of(
    c: &Connection,
    node_id: &str,
    camera_id: &str,
) -> rusqlite::Result<Option<RegisteredCamera>> {
    c.query_row(
        "SELECT camera_id, spec, created_ms, updated_ms FROM cameras WHERE node_id = ?1 AND camera_id = ?2",
        [node_id, camera_id],
        |r| camera_row(node_id, r),
    )
    .optional()
}

fn desired_of(c: &Connection, node_id: &str) -> rusqlite::Result<Option<Desired>> {
    c.query_row(
        "SELECT version, updated_ms FROM node_configs WHERE node_id = ?1",
        [node_id],
        |r| {
            Ok(Desired {
                version: r.get::<_, i64>(0)?.max(0) as u64,
                updated_at: ts(r.get(1)?),
            })
        },
    )
    .optional()
}

/// The node's whole config document as stored now.
fn document(c: &Connection, node_id: &str) -> rusqlite::Result<Option<RemoteConfig>> {
    let Some(desired) = desired_of(c, node_id)? else {
        return Ok(None);
    };
    Ok(Some(RemoteConfig {
        v: PROTOCOL_VERSION,
        node_id: node_id.to_owned(),
        version: desired.version,
        issued_at: Some(desired.updated_at),
        config: NodeConfig {
            cameras: cameras_of(c, node_id)?
                .iter()
                .map(RegisteredCamera::spec)
                .collect(),
        },
    }))
}

fn spec_json(spec: &CameraSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

impl Registry {
    /// Opens the registry in the aggregator's `sqlite://` file; documents
    /// larger than `max_payload_bytes` (the MQTT packet limit) are refused.
    pub fn open(url: &str, max_payload_bytes: usize) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
            publisher: Publisher::default(),
            max_payload_bytes,
        })
    }

    /// From now on documents are published through `client` (ingest's).
    pub fn attach(&self, client: AsyncClient) {
        *self.publisher.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
    }

    pub async fn cameras(&self, node_id: &str) -> StoreResult<Vec<RegisteredCamera>> {
        let n = node_id.to_owned();
        self.db
            .with(move |c| Ok::<_, StoreError>(cameras_of(c, &n)?))
            .await
    }

    pub async fn camera(
        &self,
        node_id: &str,
        camera_id: &str,
    ) -> StoreResult<Option<RegisteredCamera>> {
        let (n, id) = (node_id.to_owned(), camera_id.to_owned());
        self.db
            .with(move |c| Ok::<_, StoreError>(camera_of(c, &n, &id)?))
            .await
    }

    /// The node's desired version; `None` before its first camera.
    pub async fn desired(&self, node_id: &str) -> StoreResult<Option<Desired>> {
        let n = node_id.to_owned();
        self.db
            .with(move |c| Ok::<_, StoreError>(desired_of(c, &n)?))
            .await
    }

    /// The node's config document as it was last published.
    pub async fn document(&self, node_id: &str) -> StoreResult<Option<RemoteConfig>> {
        let n = node_id.to_owned();
        self.db
            .with(move |c| Ok::<_, StoreError>(document(c, &n)?))
            .await
    }

    /// Registers a camera; `Conflict` if the node has one with that id.
    pub async fn create(&self, node_id: &str, spec: CameraSpec) -> Result<Change, RegistryError> {
        self.change(node_id, Op::Create(spec)).await
    }

    /// Replaces a camera's entry; `NotFound` if there is none.
    pub async fn replace(&self, node_id: &str, spec: CameraSpec) -> Result<Change, RegistryError> {
        self.change(node_id, Op::Replace(spec)).await
    }

    pub async fn delete(&self, node_id: &str, camera_id: &str) -> Result<Change, RegistryError> {
        self.change(node_id, Op::Delete(camera_id.to_owned())).await
    }

    async fn change(&self, node_id: &str, op: Op) -> Result<Change, RegistryError> {
        let node_id = node_id.to_owned();
        let publisher = self.publisher.clone();
        let max_bytes = self.max_payload_bytes;
        self.db
            .with(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let change = apply(&tx, &node_id, op, max_bytes)?;
                tx.commit()?;
                // Still holding the connection: publishes leave in commit order.
                if publisher.publish(&change.config) {
                    tracing::info!(%node_id, version = change.config.version,
                        cameras = change.config.config.cameras.len(), "config published");
                }
                Ok(change)
            })
            .await
    }

    /// Publishes every node's current document (after each connect of the
    /// aggregator's MQTT client). Returns how many were queued.
    pub async fn publish_all(&self) -> StoreResult<usize> {
        let publisher = self.publisher.clone();
        self.db
            .with(move |c| {
                let nodes: Vec<String> = {
                    let mut stmt =
                        c.prepare_cached("SELECT node_id FROM node_configs ORDER BY node_id")?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let mut sent = 0;
                for node in nodes {
                    if let Some(doc) = document(c, &node)? {
                        sent += usize::from(publisher.publish(&doc));
                    }
                }
                Ok::<_, StoreError>(sent)
            })
            .await
    }
}

/// One change inside a transaction: write, bump the version, build and
/// check the document.
fn apply(
    tx: &Transaction<'_>,
    node_id: &str,
    op: Op,
    max_bytes: usize,
) -> Result<Change, RegistryError> {
    let now = Utc::now().timestamp_millis();
    let camera_id = match &op {
        Op::Create(s) | Op::Replace(s) => s.id.clone(),
        Op::Delete(id) => id.clone(),
    };
    let before = camera_of(tx, node_id, &camera_id)?;
    match (&op, &before) {
        (Op::Create(_), Some(_)) => {
            return Err(RegistryError::Conflict(format!(
                "node {node_id:?} already has camera {camera_id:?}; PUT replaces it"
            )))
        }
        (Op::Replace(_) | Op::Delete(_), None) => {
            return Err(RegistryError::NotFound(format!(
                "node {node_id:?} has no camera {camera_id:?}"
            )))
        }
        _ => {}
    }
    match &op {
        Op::Create(spec) => {
            tx.execute(
                "INSERT INTO cameras (node_id, camera_id, spec, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![node_id, camera_id, spec_json(spec), now],
            )?;
        }
        Op::Replace(spec) => {
            tx.execute(
                "UPDATE cameras SET spec = ?3, updated_ms = ?4 WHERE node_id = ?1 AND camera_id = ?2",
                params![node_id, camera_id, spec_json(spec), now],
            )?;
        }
        Op::Delete(_) => {
            tx.execute(
                "DELETE FROM cameras WHERE node_id = ?1 AND camera_id = ?2",
                params![node_id, camera_id],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO node_configs (node_id, version, updated_ms) VALUES (?1, 1, ?2)
         ON CONFLICT(node_id) DO UPDATE SET version = version + 1, updated_ms = excluded.updated_ms",
        params![node_id, now],
    )?;
    let config = document(tx, node_id)?.ok_or_else(|| {
        RegistryError::Store(StoreError::Database("config version vanished".into()))
    })?;
    // The same checks an agent runs on receipt, on the whole document, so
    // nothing is stored that every agent would refuse.
    let problems = check_cameras("config.", &config.config.cameras);
    if !problems.is_empty() {
        return Err(RegistryError::Invalid(describe(&problems)));
    }
    let size = encode(&config).len();
    if size > max_bytes {
        return Err(RegistryError::Invalid(format!(
            "the node's config would be {size} bytes, over the {max_bytes}-byte MQTT packet limit; use fewer or simpler zones"
        )));
    }
    let after = camera_of(tx, node_id, &camera_id)?;
    Ok(Change {
        before,
        after,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeqi_shared::protocol::DEFAULT_MAX_PAYLOAD_BYTES;

    fn open(dir: &tempfile::TempDir) -> Registry {
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        Registry::open(&url, DEFAULT_MAX_PAYLOAD_BYTES).expect("open")
    }

    fn spec(id: &str) -> CameraSpec {
        CameraSpec {
            id: id.into(),
            name: Some(format!("camera {id}")),
            location: Some(GeoPoint {
                lat: 52.0,
                lng: 4.0,
            }),
            heading: Some(90.0),
            detect_fps: None,
            zones: vec![],
            lines: vec![LineSpec {
                id: "l".into(),
                from: [0.1, 0.5],
                to: [0.9, 0.5],
            }],
        }
    }

    /// Two connections to one database file (as the aggregator's components
    /// have) change cameras at once: every change lands. A deferred
    /// transaction that reads before it writes failed at once with
    /// "database is locked" when the other connection wrote in between
    /// (SQLite does not wait for a lock upgrade); schemathesis met it as a
    /// 500 on POST /api/v1/nodes/{id}/cameras.
    #[tokio::test]
    async fn concurrent_changes_from_two_connections_all_land() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, b) = (open(&dir), open(&dir));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let r = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                r.create(&format!("n{}", i % 4), spec(&format!("c{i}")))
                    .await
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done.expect("task") {
                failed.push(e.to_string());
            }
        }
        assert!(
            failed.is_empty(),
            "{} of 40 changes failed: {failed:?}",
            failed.len()
        );
        for n in 0..4 {
            let d = a
                .desired(&format!("n{n}"))
                .await
                .expect("desired")
                .expect("some");
            assert_eq!(d.version, 10, "n{n}");
        }
    }

    #[tokio::test]
    async fn every_change_bumps_the_version_and_builds_the_whole_document() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = open(&dir);
        assert_eq!(r.desired("n1").await.expect("desired"), None);
        let c = r.create("n1", spec("a")).await.expect("create");
        assert_eq!(c.config.version, 1);
        assert!(c.before.is_none());
        assert_eq!(c.after.as_ref().map(|a| a.camera_id.as_str()), Some("a"));
        let c = r.create("n1", spec("b")).await.expect("create b");
        assert_eq!(c.config.version, 2);
        let ids: Vec<&str> = c
            .config
            .config
            .cameras
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(matches!(
            r.create("n1", spec("a")).await,
            Err(RegistryError::Conflict(_))
        ));
        let mut moved = spec("a");
        moved.heading = Some(180.0);
        let c = r.replace("n1", moved).await.expect("replace");
        assert_eq!(c.config.version, 3);
        assert_eq!(c.before.and_then(|b| b.heading), Some(90.0));
        assert_eq!(c.after.and_then(|a| a.heading), Some(180.0));
        assert!(matches!(
            r.replace("n1", spec("zz")).await,
            Err(RegistryError::NotFound(_))
        ));
        let c = r.delete("n1", "b").await.expect("delete");
        assert_eq!(c.config.version, 4);
        assert_eq!(c.config.config.cameras.len(), 1);
        assert!(c.after.is_none());
        // Failed changes did not bump anything; other nodes are separate.
        assert_eq!(
            r.desired("n1").await.expect("d").map(|d| d.version),
            Some(4)
        );
        assert_eq!(r.cameras("n2").await.expect("n2"), vec![]);
        let doc = r.document("n1").await.expect("doc").expect("some");
        assert_eq!(doc.version, 4);
        assert_eq!(doc.config.cameras[0].heading, Some(180.0));
        // Not attached to MQTT: nothing goes out, nothing fails.
        assert_eq!(r.publish_all().await.expect("publish"), 0);
    }

    #[tokio::test]
    async fn a_document_over_the_packet_limit_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let r = Registry::open(&url, 800).expect("open");
        r.create("n1", spec("a")).await.expect("small fits");
        let mut big = spec("b");
        big.zones = (0..20)
            .map(|i| ZoneSpec {
                id: format!("z{i}"),
                polygon: vec![[0.0, 0.0], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]],
            })
            .collect();
        let err = r.create("n1", big).await.expect_err("too big");
        assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("packet limit"), "{err}");
        assert_eq!(
            r.desired("n1").await.expect("d").map(|d| d.version),
            Some(1)
        );
        assert_eq!(r.cameras("n1").await.expect("c").len(), 1);
    }
}
