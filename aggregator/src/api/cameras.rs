//! Camera registry routes, `/api/v1/nodes/{id}/cameras[/{camera_id}]`, and
//! the desired-vs-applied config status `GET /api/v1/nodes/{id}` shows.
//!
//! Viewers read, operators change. A node of another tenant is a 404, as if
//! it did not exist. Every change is checked with the shared camera rules
//! (the agent runs the same ones), audited with before and after, and
//! pushed to the node as a new config version by the [`Registry`].
//!
//! [`Registry`]: crate::registry::Registry

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use edgeqi_shared::camera::{describe, CameraSpec, GeoPoint, LineSpec, ZoneSpec};
use edgeqi_shared::topic::is_valid_node_id;
use edgeqi_shared::Heartbeat;
use serde_json::json;

use super::admin::remote_addr;
use super::auth::{AsOperator, AsViewer, Authed, Principal};
use super::openapi::ErrorBody;
use super::{ensure_node_visible, ApiError, AppState, JsonBody};
use crate::accounts::AuditRecord;
use crate::registry::{Change, Desired, RegisteredCamera, RegistryError};

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Conflict(m) => ApiError::Conflict(m),
            RegistryError::NotFound(m) => ApiError::NotFound(m),
            RegistryError::Invalid(m) => ApiError::Unprocessable(m),
            RegistryError::Store(e) => e.into(),
        }
    }
}

/// A camera as `POST` takes it (this type documents the body; it is read
/// key by key so a bad key is named in the 422, and unknown keys are
/// refused).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct NewCamera {
    /// The agent's camera id (`[[cameras]] id`).
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    camera_id: String,
    /// Display name, at most 128 bytes, no control characters.
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    name: Option<String>,
    #[schema(value_type = Option<crate::registry::GeoPointDoc>)]
    location: Option<GeoPoint>,
    /// Degrees clockwise from north, 0..=360.
    #[schema(minimum = 0.0, maximum = 360.0)]
    heading: Option<f64>,
    /// Inferences per second at most, (0, 60]; absent: the agent's own.
    #[schema(exclusive_minimum = 0.0, maximum = 60.0)]
    detect_fps: Option<f64>,
    /// At most 32, ids unique on the camera.
    #[schema(value_type = Option<Vec<crate::registry::ZoneDoc>>, max_items = 32)]
    zones: Vec<ZoneSpec>,
    /// At most 32, ids unique on the camera.
    #[schema(value_type = Option<Vec<crate::registry::LineDoc>>, max_items = 32)]
    lines: Vec<LineSpec>,
}

/// A camera as `PUT` takes it: [`NewCamera`] whose `camera_id` may be left
/// out (it must equal the path's when given).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct CameraInput {
    /// The path's camera id, if given.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    camera_id: Option<String>,
    /// Display name, at most 128 bytes, no control characters.
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    name: Option<String>,
    #[schema(value_type = Option<crate::registry::GeoPointDoc>)]
    location: Option<GeoPoint>,
    /// Degrees clockwise from north, 0..=360.
    #[schema(minimum = 0.0, maximum = 360.0)]
    heading: Option<f64>,
    /// Inferences per second at most, (0, 60]; absent: the agent's own.
    #[schema(exclusive_minimum = 0.0, maximum = 60.0)]
    detect_fps: Option<f64>,
    /// At most 32, ids unique on the camera.
    #[schema(value_type = Option<Vec<crate::registry::ZoneDoc>>, max_items = 32)]
    zones: Vec<ZoneSpec>,
    /// At most 32, ids unique on the camera.
    #[schema(value_type = Option<Vec<crate::registry::LineDoc>>, max_items = 32)]
    lines: Vec<LineSpec>,
}

/// A node's cameras and its desired config version.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CameraList {
    pub node_id: String,
    /// The desired remote config version (0: no camera was ever registered).
    pub config_version: u64,
    pub items: Vec<RegisteredCamera>,
}

/// A camera after a change, with the node's new config version.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CameraChanged {
    #[serde(flatten)]
    pub camera: RegisteredCamera,
    pub config_version: u64,
}

/// A deleted camera and the node's new config version.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CameraDeleted {
    pub node_id: String,
    pub camera_id: String,
    pub deleted: bool,
    pub config_version: u64,
}

/// `config` of `GET /api/v1/nodes/{id}`: what the registry wants the node to
/// run against what its last heartbeat says it runs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ConfigStatus {
    /// The registry's version (0: no camera was ever registered).
    pub desired_version: u64,
    pub desired_at: Option<chrono::DateTime<chrono::Utc>>,
    /// From the node's last heartbeat; `null`: it runs its config file alone.
    pub applied_version: Option<u64>,
    /// `applied_version` (or 0) equals `desired_version`.
    pub in_sync: bool,
    /// The last remote config the node refused: `{version, code, reason}`.
    #[schema(value_type = Option<Object>)]
    pub last_error: Option<edgeqi_shared::ConfigRejection>,
    /// Registered cameras the node does not have.
    pub unknown_cameras: Vec<String>,
}

/// Keys a camera body may have. Unknown keys are refused: a misspelt
/// `heading` must not silently become "no heading".
const CAMERA_KEYS: &[&str] = &[
    "camera_id",
    "name",
    "location",
    "heading",
    "detect_fps",
    "zones",
    "lines",
];

/// One key of a camera body; a wrong shape names the key and the shape
/// expected. `null` is the same as absent.
fn field<T: serde::de::DeserializeOwned>(
    body: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    shape: &str,
) -> Result<Option<T>, ApiError> {
    match body.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ApiError::Unprocessable(format!("{key}: expected {shape} ({e})"))),
    }
}

/// Reads and checks a camera body (`POST`, `PUT`); every problem of the
/// values is named in one 422. `camera_id` comes from the path for a `PUT`,
/// where the body may leave it out but must not contradict it.
fn camera_spec(body: serde_json::Value, path_camera: Option<&str>) -> Result<CameraSpec, ApiError> {
    let serde_json::Value::Object(b) = body else {
        return Err(ApiError::Unprocessable(
            "expected a JSON object describing a camera".into(),
        ));
    };
    if let Some(k) = b.keys().find(|k| !CAMERA_KEYS.contains(&k.as_str())) {
        return Err(ApiError::Unprocessable(format!(
            "{k}: unknown field (known: {})",
            CAMERA_KEYS.join(", ")
        )));
    }
    let body_id: Option<String> = field(&b, "camera_id", "a string")?;
    let id = match (path_camera, body_id) {
        (None, None) => return Err(ApiError::Unprocessable("camera_id: missing".into())),
        (None, Some(id)) => id,
        (Some(p), Some(id)) if id != p => {
            return Err(ApiError::Unprocessable(format!(
                "camera_id: {id:?} differs from {p:?} in the path (a camera cannot be renamed; create a new one)"
            )))
        }
        (Some(p), _) => p.to_owned(),
    };
    let spec = CameraSpec {
        id,
        name: field(&b, "name", "a string")?,
        location: field::<GeoPoint>(&b, "location", r#"{"lat": degrees, "lng": degrees}"#)?,
        heading: field(&b, "heading", "degrees clockwise from north")?,
        detect_fps: field(&b, "detect_fps", "inferences per second")?,
        zones: field::<Vec<ZoneSpec>>(&b, "zones", r#"[{"id": "…", "polygon": [[x, y], …]}]"#)?
            .unwrap_or_default(),
        lines: field::<Vec<LineSpec>>(
            &b,
            "lines",
            r#"[{"id": "…", "from": [x, y], "to": [x, y]}]"#,
        )?
        .unwrap_or_default(),
    };
    let problems = spec.problems("");
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(ApiError::Unprocessable(describe(&problems)))
    }
}

/// The node must exist for the caller: visible to their tenant, and known
/// to the aggregator (it reported in, was provisioned, or has cameras
/// already). Returns the node's tenant for the audit log.
async fn known_node(
    state: &AppState,
    who: &Principal,
    node_id: &str,
) -> Result<Option<i64>, ApiError> {
    let missing = || ApiError::NotFound(format!("no node {node_id:?}"));
    if !is_valid_node_id(node_id) {
        return Err(missing());
    }
    ensure_node_visible(state, who, node_id).await?;
    let tenant = state.accounts.node_tenant(node_id).await?;
    if tenant.is_some()
        || state.store.node(node_id).await?.is_some()
        || state.registry.desired(node_id).await?.is_some()
    {
        Ok(tenant.or(who.tenant_id))
    } else {
        Err(missing())
    }
}

/// Records a registry change under the node's tenant, so the tenant's
/// admins see changes a global admin made to their cameras.
async fn audit(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    tenant: Option<i64>,
    action: &str,
    change: &Change,
) {
    let camera_id = change
        .after
        .as_ref()
        .or(change.before.as_ref())
        .map_or("", |c| c.camera_id.as_str());
    let with_version = |c: &Option<crate::registry::RegisteredCamera>| {
        c.as_ref().map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            v["config_version"] = json!(change.config.version);
            v
        })
    };
    let record = AuditRecord {
        actor: who.name.clone(),
        tenant_id: tenant,
        action: action.to_owned(),
        target: format!("node:{}/camera:{camera_id}", change.config.node_id),
        before: change
            .before
            .as_ref()
            .and_then(|c| serde_json::to_value(c).ok()),
        after: with_version(&change.after).or_else(|| {
            // A deletion: the after state is the new config version.
            Some(json!({"config_version": change.config.version}))
        }),
        remote_addr: remote_addr(headers),
    };
    if let Err(e) = state.accounts.audit(record).await {
        tracing::error!(error = %e, action, "cannot write the audit log");
    }
}

fn changed(change: Change) -> Result<CameraChanged, ApiError> {
    let version = change.config.version;
    let camera = change
        .after
        .ok_or_else(|| ApiError::Internal("a changed camera is missing".into()))?;
    Ok(CameraChanged {
        camera,
        config_version: version,
    })
}

/// Every camera registered on the node, with the node's desired config version.
#[utoipa::path(get, path = "/nodes/{id}/cameras", tag = "nodes", operation_id = "list_cameras",
    security(("jwt" = ["viewer"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, body = CameraList),
        (status = 404, description = "no such node, or another tenant's", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(node_id): Path<String>,
) -> Result<Json<CameraList>, ApiError> {
    known_node(&state, &who, &node_id).await?;
    let items = state.registry.cameras(&node_id).await?;
    let desired = state.registry.desired(&node_id).await?;
    Ok(Json(CameraList {
        node_id,
        config_version: desired.map_or(0, |d| d.version),
        items,
    }))
}

/// One registered camera.
#[utoipa::path(get, path = "/nodes/{id}/cameras/{camera_id}", tag = "nodes", operation_id = "get_camera",
    security(("jwt" = ["viewer"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("camera_id" = String, Path, description = "camera id")),
    responses((status = 200, body = RegisteredCamera),
        (status = 404, description = "no such node or camera, or another tenant's", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path((node_id, camera_id)): Path<(String, String)>,
) -> Result<Json<RegisteredCamera>, ApiError> {
    known_node(&state, &who, &node_id).await?;
    let camera = state
        .registry
        .camera(&node_id, &camera_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("node {node_id:?} has no camera {camera_id:?}"))
        })?;
    Ok(Json(camera))
}

/// Registers a camera and pushes the node's new config version (retained
/// on `edgeqi/v1/nodes/{id}/config`; the agent applies it without restarting).
#[utoipa::path(post, path = "/nodes/{id}/cameras", tag = "nodes", operation_id = "create_camera",
    security(("jwt" = ["operator"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body = NewCamera,
    responses((status = 201, body = CameraChanged),
        (status = 404, description = "no such node, or another tenant's", body = ErrorBody),
        (status = 409, description = "the node has a camera with this id (PUT replaces it)", body = ErrorBody),
        (status = 422, description = "invalid camera; the message names every bad field", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    Path(node_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<CameraChanged>), ApiError> {
    let tenant = known_node(&state, &who, &node_id).await?;
    let spec = camera_spec(body, None)?;
    let change = state.registry.create(&node_id, spec).await?;
    audit(&state, &who, &headers, tenant, "camera.create", &change).await;
    Ok((StatusCode::CREATED, Json(changed(change)?)))
}

/// Replaces the camera's whole entry (keys left out are cleared) and pushes
/// the node's new config version.
#[utoipa::path(put, path = "/nodes/{id}/cameras/{camera_id}", tag = "nodes", operation_id = "replace_camera",
    security(("jwt" = ["operator"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("camera_id" = String, Path, description = "camera id")),
    request_body = CameraInput,
    responses((status = 200, body = CameraChanged),
        (status = 404, description = "no such node or camera, or another tenant's", body = ErrorBody),
        (status = 422, description = "invalid camera; the message names every bad field", body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    Path((node_id, camera_id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<CameraChanged>, ApiError> {
    let tenant = known_node(&state, &who, &node_id).await?;
    let spec = camera_spec(body, Some(&camera_id))?;
    let change = state.registry.replace(&node_id, spec).await?;
    audit(&state, &who, &headers, tenant, "camera.update", &change).await;
    Ok(Json(changed(change)?))
}

/// Removes the camera from the registry and pushes the node's new config
/// version: the camera falls back to the agent's config file.
#[utoipa::path(delete, path = "/nodes/{id}/cameras/{camera_id}", tag = "nodes", operation_id = "delete_camera",
    security(("jwt" = ["operator"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("camera_id" = String, Path, description = "camera id")),
    responses((status = 200, body = CameraDeleted),
        (status = 404, description = "no such node or camera, or another tenant's", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    Path((node_id, camera_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CameraDeleted>, ApiError> {
    let tenant = known_node(&state, &who, &node_id).await?;
    let change = state.registry.delete(&node_id, &camera_id).await?;
    audit(&state, &who, &headers, tenant, "camera.delete", &change).await;
    Ok(Json(CameraDeleted {
        node_id,
        camera_id,
        deleted: true,
        config_version: change.config.version,
    }))
}

/// The node's remote config status from the registry and its last heartbeat.
pub fn config_status(desired: Option<Desired>, last: Option<&Heartbeat>) -> ConfigStatus {
    let desired_version = desired.map_or(0, |d| d.version);
    let applied = last.and_then(|h| h.config_version);
    ConfigStatus {
        desired_version,
        desired_at: desired.map(|d| d.updated_at),
        applied_version: applied,
        in_sync: applied.unwrap_or(0) == desired_version,
        last_error: last.and_then(|h| h.config_error.clone()),
        unknown_cameras: last
            .map(|h| h.config_unknown_cameras.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
#[path = "cameras_tests.rs"]
mod tests;
