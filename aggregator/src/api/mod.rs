//! The operator REST API and the live WebSocket feed (axum).
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; `main`
//! only binds it, so tests can drive it without a socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accounts::AccountStore;
use crate::ingest::IngestHealth;
use crate::live::LiveBus;
use crate::store::{
    DeadLetter, DetectionQuery, LedgerEntry, NodeRecord, Store, StoredDetection, Summary,
    TimeseriesPoint,
};

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod cameras;
mod dashboard;
mod error;
pub mod events;
pub mod export;
pub mod incidents;
pub mod openapi;
pub mod reviews;
pub(crate) mod ws;

use auth::{AsViewer, Authed, Principal};
pub use error::ApiError;
use export::{Column, ListFormat, PageFuture};
use openapi::{ApiRoutes, ErrorBody, Page};
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub live: LiveBus,
    pub ingest: Arc<IngestHealth>,
    pub accounts: Arc<dyn AccountStore>,
    pub auth: Arc<auth::AuthKeys>,
    pub incidents: Arc<crate::incidents::Incidents>,
    pub events: crate::events::EventStore,
    pub reviews: crate::reviews::ReviewStore,
    /// Alert rules, fired alerts, webhook deliveries.
    pub alerts: Arc<crate::alerts::Alerts>,
    pub registry: crate::registry::Registry,
    pub metrics: Option<MetricsEndpoint>,
    /// Per-node MQTT credentials, issued by provisioning.
    pub node_credentials: crate::accounts::node_credentials::NodeCredentials,
}

/// What `GET /metrics` serves, and the bearer token a scraper must send
/// when `EDGEQI_METRICS_TOKEN` is set (node ids and tenants' traffic show in
/// the metrics; without a token the endpoint is open, for a scraper on a
/// trusted network).
#[derive(Clone)]
pub struct MetricsEndpoint {
    pub handle: metrics_exporter_prometheus::PrometheusHandle,
    pub token: Option<String>,
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Largest citizen report (photo and fields).
pub const MAX_REPORT_BODY: usize = 11 * 1024 * 1024;

/// Largest JSON request body accepted by the API.
pub const MAX_JSON_BODY: usize = 256 * 1024;

/// 413 at once for a body whose `Content-Length` is over `max`, before a
/// byte of it is read (hyper then closes the connection instead of
/// draining it). Every extractor of a body calls this first; bodies without
/// a length (chunked) are still cut at `max` as they are read.
pub(crate) fn refuse_declared_length(
    headers: &axum::http::HeaderMap,
    max: usize,
) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => Err(ApiError::PayloadTooLarge(format!(
            "the body is {n} bytes; at most {max} are accepted here"
        ))),
        _ => Ok(()),
    }
}

/// `Json<T>` whose rejections are API errors: 415 for a wrong content type,
/// 400 for bad JSON, 413 for a body over [`MAX_JSON_BODY`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        refuse_declared_length(req.headers(), MAX_JSON_BODY)?;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send Content-Type: application/json".into(),
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::PayloadTooLarge(format!("the body is over {MAX_JSON_BODY} bytes")),
            ),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Every `/api/v1` route, each a documented handler (see [`openapi`]).
/// Every handler names its role through the `Authed` extractor; only login,
/// citizen reports, report status and the OpenAPI document are open.
pub fn api_routes() -> ApiRoutes {
    ApiRoutes::new()
        .routes(routes!(openapi::serve))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::me))
        .routes(routes!(admin::list_users, admin::create_user))
        .routes(routes!(admin::get_user))
        .routes(routes!(admin::list_tenants, admin::create_tenant))
        .routes(routes!(admin::list_api_keys, admin::create_api_key))
        .routes(routes!(admin::revoke_api_key))
        .routes(routes!(admin::audit_log))
        .routes(routes!(list_nodes, admin::provision_node))
        .routes(routes!(get_node))
        .routes(routes!(
            admin::rotate_node_credentials,
            admin::revoke_node_credentials
        ))
        .routes(routes!(cameras::list, cameras::create))
        .routes(routes!(cameras::get, cameras::replace, cameras::delete))
        .routes(routes!(get_ledger))
        .routes(routes!(list_detections))
        .routes(routes!(summary))
        .routes(routes!(timeseries))
        .routes(routes!(dead_letters))
        .routes(routes!(ws::upgrade))
        .routes(routes!(events::list))
        .routes(routes!(events::snapshot))
        .routes(routes!(events::lines))
        .routes(routes!(incidents::list))
        .routes(routes!(incidents::get, incidents::patch))
        .routes(
            routes!(incidents::create_report)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BODY)),
        )
        .routes(routes!(incidents::photo))
        .routes(routes!(incidents::report_status))
        .routes(routes!(incidents::areas))
        .routes(routes!(incidents::incident_stats))
        .routes(routes!(incidents::hotspots))
        .routes(routes!(reviews::review_detection))
        .routes(routes!(reviews::review_report))
        .routes(routes!(reviews::list))
        .routes(routes!(reviews::export))
        .routes(routes!(alerts::list, alerts::create))
        .routes(routes!(alerts::get, alerts::patch, alerts::delete))
        .routes(routes!(alerts::rule_deliveries))
        .routes(routes!(alerts::fired))
        .routes(routes!(alerts::deliveries))
}

pub fn router(state: AppState) -> Router {
    let (api, _doc) = api_routes().into_parts();
    let api = api
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::map_request(admin::resolve_client_addr))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .nest(openapi::PREFIX, api)
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The nodes a caller may see: `None` for everything (global callers).
pub(crate) async fn visible_nodes(
    state: &AppState,
    who: &Principal,
) -> Result<Option<Vec<String>>, ApiError> {
    match who.scope() {
        None => Ok(None),
        Some(t) => Ok(Some(state.accounts.tenant_nodes(t).await?)),
    }
}

pub(crate) async fn ensure_node_visible(
    state: &AppState,
    who: &Principal,
    node_id: &str,
) -> Result<(), ApiError> {
    match visible_nodes(state, who).await? {
        Some(nodes) if !nodes.iter().any(|n| n == node_id) => {
            Err(ApiError::NotFound(format!("no node {node_id:?}")))
        }
        _ => Ok(()),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.store.ping().await;
    let mqtt = state.ingest.connected.load(Ordering::Relaxed);
    // A database that answers a ping but refuses writes (disk full, read
    // only) still stalls ingest: that is unready too.
    let storing = !state.ingest.store_failing.load(Ordering::Relaxed);
    let body = json!({
        "database": match (&db, storing) {
            (Err(_), _) => "unavailable",
            (Ok(()), false) => "failing writes",
            (Ok(()), true) => "ok",
        },
        "mqtt": if mqtt { "ok" } else { "disconnected" },
    });
    let status = if db.is_ok() && mqtt && storing {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let Some(m) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response();
    };
    if let Some(want) = &m.token {
        let given = auth::header_token(&headers).unwrap_or_default();
        if !auth::same_secret(given.as_bytes(), want.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.handle.render(),
    )
        .into_response()
}

/// A node as the API shows it: what the registry knows of it and whether it
/// is online now. A node provisioned with `POST /api/v1/nodes` that has not
/// reported yet has `reported: false` and null times.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub online: bool,
    /// Whether anything (heartbeat, status, detections) ever came from it.
    pub reported: bool,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Null until it has reported.
    pub heartbeat_interval_s: Option<u32>,
    /// Last status message (retained / last will), if any.
    pub status_online: Option<bool>,
    pub status_ts: Option<DateTime<Utc>>,
    /// The latest heartbeat as the agent sent it (docs/PROTOCOL.md).
    #[schema(value_type = Option<Object>)]
    pub last_heartbeat: Option<edgeqi_shared::Heartbeat>,
}

impl NodeView {
    fn new(n: NodeRecord, now: DateTime<Utc>) -> Self {
        Self {
            online: n.is_online(now),
            reported: true,
            node_id: n.node_id,
            first_seen: Some(n.first_seen),
            last_seen: Some(n.last_seen),
            last_heartbeat_at: n.last_heartbeat_at,
            heartbeat_interval_s: Some(n.heartbeat_interval_s),
            status_online: n.status_online,
            status_ts: n.status_ts,
            last_heartbeat: n.last_heartbeat,
        }
    }

    /// A node that is known (provisioned, or given cameras) but never reported.
    fn never_reported(node_id: String) -> Self {
        Self {
            node_id,
            online: false,
            reported: false,
            first_seen: None,
            last_seen: None,
            last_heartbeat_at: None,
            heartbeat_interval_s: None,
            status_online: None,
            status_ts: None,
            last_heartbeat: None,
        }
    }
}

/// `GET /api/v1/nodes/{id}`: the node, its tenant and MQTT login state, its
/// detection ledger, its registered cameras and the remote config it runs
/// against the one it should.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: NodeView,
    /// The tenant it was provisioned into; null for a node that reported
    /// without being provisioned (anonymous or external broker).
    pub tenant_id: Option<i64>,
    /// Whether it holds MQTT credentials for the embedded broker.
    pub mqtt_credentials: bool,
    pub ledger: Vec<LedgerEntry>,
    pub config: cameras::ConfigStatus,
    pub cameras: Vec<crate::registry::RegisteredCamera>,
}

/// `GET /api/v1/nodes/{id}/ledger`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ledger {
    pub node_id: String,
    pub epochs: Vec<LedgerEntry>,
}

/// The nodes the caller may see, by node id: those that have reported, with
/// their latest heartbeat and online state, and those provisioned
/// (`POST /api/v1/nodes`) that never did, offline with `reported: false` and
/// null times. `GET /api/v1/stats/summary` counts only the nodes that have
/// reported (`nodes_total`), so this list may be longer.
#[utoipa::path(get, path = "/nodes", tag = "nodes", operation_id = "list_nodes",
    security(("jwt" = ["viewer"])), params(export::FormatParam, export::PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every node as CSV or NDJSON (`format=`)",
            content((Page<NodeView> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn list_nodes(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<export::PageParams>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let mut nodes = state.store.nodes().await?;
    // Provisioned nodes: the caller's tenant's, or every tenant's.
    let provisioned = match visible_nodes(&state, &who).await? {
        Some(visible) => {
            nodes.retain(|n| visible.contains(&n.node_id));
            visible
        }
        None => {
            let mut all = Vec::new();
            for t in state.accounts.tenants().await? {
                all.extend(state.accounts.tenant_nodes(t.id).await?);
            }
            all
        }
    };
    let reported: std::collections::HashSet<String> =
        nodes.iter().map(|n| n.node_id.clone()).collect();
    let mut rows: Vec<_> = nodes.into_iter().map(|n| NodeView::new(n, now)).collect();
    // Those that never reported are listed too: offline, `reported: false`.
    let mut silent: Vec<String> = provisioned
        .into_iter()
        .filter(|n| !reported.contains(n))
        .collect();
    silent.sort();
    silent.dedup();
    rows.extend(silent.into_iter().map(NodeView::never_reported));
    let pages = export::sorted_pages(rows, |n: &NodeView| n.node_id.clone(), p.limit(format));
    export::respond(
        format,
        &[
            ("node_id", "node_id"),
            ("online", "online"),
            ("reported", "reported"),
            ("first_seen", "first_seen"),
            ("last_seen", "last_seen"),
            ("last_heartbeat_at", "last_heartbeat_at"),
            ("heartbeat_interval_s", "heartbeat_interval_s"),
            ("status_online", "status_online"),
            ("status_ts", "status_ts"),
        ],
        p.cursor,
        pages,
    )
    .await
}

/// One node with its tenant, ledger, registered cameras and remote config
/// status (desired against applied). A node that was provisioned (or given
/// cameras) but never reported is shown offline with null times and no
/// heartbeat; another tenant's node is a 404.
#[utoipa::path(get, path = "/nodes/{id}", tag = "nodes", operation_id = "get_node",
    security(("jwt" = ["viewer"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, body = NodeDetail), (status = 404, description = "no such node, or another tenant's", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn get_node(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
) -> Result<Json<NodeDetail>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no node {id:?}"));
    if !edgeqi_shared::topic::is_valid_node_id(&id) {
        return Err(not_found());
    }
    ensure_node_visible(&state, &who, &id).await?;
    let record = state.store.node(&id).await?;
    let tenant_id = state.accounts.node_tenant(&id).await?;
    let mqtt_credentials = state.node_credentials.exists(&id).await?;
    let cameras = state.registry.cameras(&id).await?;
    let desired = state.registry.desired(&id).await?;
    if record.is_none() && tenant_id.is_none() && !mqtt_credentials && desired.is_none() {
        return Err(not_found());
    }
    let config = cameras::config_status(
        desired,
        record.as_ref().and_then(|n| n.last_heartbeat.as_ref()),
    );
    let node = match record {
        Some(n) => NodeView::new(n, Utc::now()),
        None => NodeView::never_reported(id.clone()),
    };
    Ok(Json(NodeDetail {
        node,
        tenant_id,
        mqtt_credentials,
        ledger: state.store.ledger(&id).await?,
        config,
        cameras,
    }))
}

/// Per outbox epoch: the highest contiguous stored seq, the highest seq and the holes.
#[utoipa::path(get, path = "/nodes/{id}/ledger", tag = "nodes", operation_id = "get_ledger",
    security(("jwt" = ["viewer"])),
    params(("id" = String, Path, description = "node id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, body = Ledger, description = "the ledger; empty for a node that never delivered detections"),
        (status = 404, description = "not a node id, or another tenant's node", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn get_ledger(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
) -> Result<Json<Ledger>, ApiError> {
    if !edgeqi_shared::topic::is_valid_node_id(&id) {
        return Err(ApiError::NotFound(format!("no node {id:?}")));
    }
    ensure_node_visible(&state, &who, &id).await?;
    let epochs = state.store.ledger(&id).await?;
    Ok(Json(Ledger {
        node_id: id,
        epochs,
    }))
}

/// Query string of `GET /api/v1/detections`. Times and `min_score` are
/// read as strings so that a bad value becomes a 400 naming the parameter
/// and saying what to send; the document gives their real types.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DetectionParams {
    node_id: Option<String>,
    camera_id: Option<String>,
    label: Option<String>,
    /// RFC 3339 time, inclusive.
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
    /// RFC 3339 time, exclusive.
    #[param(value_type = Option<DateTime<Utc>>)]
    until: Option<String>,
    /// In [0, 1].
    #[param(value_type = Option<f64>, minimum = 0.0, maximum = 1.0)]
    min_score: Option<String>,
    #[param(inline)]
    limit: Option<export::PageLimit>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    v.parse::<DateTime<Utc>>().map_err(|_| {
        ApiError::BadRequest(format!(
            "{name}={v:?} is not an RFC 3339 time like 2026-11-23T10:00:00Z"
        ))
    })
}

/// Cursors are opaque to clients: `{ts_ms}.{id}` in hex.
fn encode_cursor((ts, id): (i64, i64)) -> String {
    format!("{ts:x}.{id:x}")
}

fn decode_cursor(c: &str) -> Result<(i64, i64), ApiError> {
    let bad = || export::bad_cursor(c);
    let (ts, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((
        i64::from_str_radix(ts, 16).map_err(|_| bad())?,
        i64::from_str_radix(id, 16).map_err(|_| bad())?,
    ))
}

/// Stored detections of the caller's nodes, newest first (keyset pagination).
#[utoipa::path(get, path = "/detections", tag = "detections", operation_id = "list_detections",
    security(("jwt" = ["viewer"])), params(export::FormatParam, DetectionParams),
    responses(
        (status = 200, description = "one page as JSON, or every matching row as CSV or NDJSON (`format=`)",
            content((Page<DetectionView> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a parameter is malformed; the message names it", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn list_detections(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<DetectionParams>,
) -> Result<Response, ApiError> {
    let limit = export::page_limit(p.limit, format);
    let min_score = match p.min_score.as_deref() {
        None => None,
        Some(s) => Some(
            // Checked as f64 before narrowing: -5e-324 and 1.0000000001
            // are out of range even though they round into it as f32.
            s.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .map(|v| v as f32)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("min_score={s:?} must be a number in [0, 1]"))
                })?,
        ),
    };
    let q = DetectionQuery {
        node_id: p.node_id,
        node_ids: visible_nodes(&state, &who).await?,
        camera_id: p.camera_id,
        label: p.label,
        since: p
            .since
            .as_deref()
            .map(|v| parse_time("since", v))
            .transpose()?,
        until: p
            .until
            .as_deref()
            .map(|v| parse_time("until", v))
            .transpose()?,
        min_score,
        limit,
        after: None,
    };
    let fetch = move |cursor: Option<String>| -> PageFuture<DetectionView> {
        let (state, mut q) = (state.clone(), q.clone());
        Box::pin(async move {
            q.after = cursor.as_deref().map(decode_cursor).transpose()?;
            let page = state.store.detections(&q).await?;
            let mut reviews = state
                .reviews
                .of(
                    crate::reviews::SubjectKind::Detection,
                    page.items.iter().map(|d| d.id.to_string()).collect(),
                )
                .await?;
            let items = page
                .items
                .into_iter()
                .map(|d| DetectionView {
                    review: reviews.remove(&d.id.to_string()),
                    detection: d,
                })
                .collect();
            Ok((items, page.next.map(encode_cursor)))
        })
    };
    export::respond(format, DETECTION_COLUMNS, p.cursor, fetch).await
}

/// CSV columns of detections.
const DETECTION_COLUMNS: &[Column] = &[
    ("id", "id"),
    ("ts", "ts"),
    ("node_id", "node_id"),
    ("camera_id", "camera_id"),
    ("class_id", "class_id"),
    ("label", "label"),
    ("score", "score"),
    ("x1", "bbox.0"),
    ("y1", "bbox.1"),
    ("x2", "bbox.2"),
    ("y2", "bbox.3"),
    ("track_id", "track_id"),
    ("zone", "zone"),
    ("review_verdict", "review.verdict"),
    ("review_label", "review.objects.0.label"),
];

/// A stored detection and its review, if it has one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DetectionView {
    #[serde(flatten)]
    pub detection: StoredDetection,
    pub review: Option<crate::reviews::Review>,
}

/// Totals by class and nodes online, over the caller's nodes.
#[utoipa::path(get, path = "/stats/summary", tag = "detections", operation_id = "summary",
    security(("jwt" = ["viewer"])), responses((status = 200, body = Summary)))]
#[tracing::instrument(skip_all)]
async fn summary(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<crate::store::Summary>, ApiError> {
    Ok(Json(match visible_nodes(&state, &who).await? {
        None => state.store.summary(Utc::now()).await?,
        Some(nodes) => state.store.summary_for(Utc::now(), &nodes).await?,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TimeseriesParams {
    /// Bucket width: a whole number of seconds (`90`, `90s`), minutes
    /// (`5m`), hours (`1h`) or days (`1d`); default `1m`.
    #[param(pattern = r"^[1-9][0-9]{0,5}[smhd]?$")]
    bucket: Option<String>,
    /// What the counts are grouped by (default `label`).
    #[param(inline)]
    by: Option<TimeseriesBy>,
    /// RFC 3339; default an hour before `until`; must be before `until`.
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
    /// RFC 3339; default now.
    #[param(value_type = Option<DateTime<Utc>>)]
    until: Option<String>,
}

/// `?by=` of `GET /api/v1/stats/timeseries`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeseriesBy {
    #[default]
    Label,
    Camera,
    Zone,
}

/// Seconds in a `bucket=` of exactly the documented grammar
/// (`^[1-9][0-9]{0,5}[smhd]?$`): digits without a leading zero, then an
/// optional unit.
fn bucket_seconds(v: &str) -> Option<i64> {
    let digits = v.trim_end_matches(['s', 'm', 'h', 'd']);
    let unit = &v[digits.len()..];
    let ok = (1..=6).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
        && unit.len() <= 1;
    let n: i64 = digits.parse().ok().filter(|_| ok)?;
    Some(
        n * match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 86_400,
        },
    )
}

/// `GET /api/v1/stats/timeseries`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeseries {
    pub bucket_s: i64,
    pub by: TimeseriesBy,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub points: Vec<TimeseriesPoint>,
}

/// Buckets a client may ask for; bounded so one request cannot ask for
/// millions of points.
const MAX_BUCKETS: i64 = 10_000;

/// `GET /api/v1/stats/timeseries?bucket=1m&by=label|camera|zone&since=&until=`
/// → `{"bucket_s":60,"by":"label","points":[{"bucket":…,"key":…,"count":n}]}`;
/// the default window is the last hour.
#[utoipa::path(get, path = "/stats/timeseries", tag = "detections", operation_id = "timeseries",
    security(("jwt" = ["viewer"])), params(TimeseriesParams),
    responses((status = 200, body = Timeseries), (status = 400, description = "a parameter is malformed; the message names it", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn timeseries(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<TimeseriesParams>,
) -> Result<Json<Timeseries>, ApiError> {
    let bucket_raw = p.bucket.as_deref().unwrap_or("1m");
    let bucket_s = bucket_seconds(bucket_raw).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "bucket={bucket_raw:?} must be a whole number of seconds, minutes, hours or days like 90s, 5m, 1h, 1d"
        ))
    })?;
    let bucket = std::time::Duration::from_secs(bucket_s.unsigned_abs());
    let by = p.by.unwrap_or_default();
    let until = p
        .until
        .as_deref()
        .map(|v| parse_time("until", v))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let since = p
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?
        .unwrap_or(until - chrono::Duration::hours(1));
    if since >= until {
        return Err(ApiError::BadRequest("since must be before until".into()));
    }
    if (until - since).num_seconds() / bucket_s > MAX_BUCKETS {
        return Err(ApiError::BadRequest(format!(
            "more than {MAX_BUCKETS} buckets: use a larger bucket or a shorter window"
        )));
    }
    let points = state
        .store
        .timeseries(&crate::store::TimeseriesQuery {
            since,
            until,
            bucket,
            by: match by {
                TimeseriesBy::Label => crate::store::TimeseriesBy::Label,
                TimeseriesBy::Camera => crate::store::TimeseriesBy::Camera,
                TimeseriesBy::Zone => crate::store::TimeseriesBy::Zone,
            },
            node_ids: visible_nodes(&state, &who).await?,
        })
        .await?;
    Ok(Json(Timeseries {
        bucket_s,
        by,
        since,
        until,
        points,
    }))
}

/// Refused payloads with their reason, newest first, of the caller's nodes
/// (global operators also see those of no known node), a page at a time.
#[utoipa::path(get, path = "/dead-letters", tag = "nodes", operation_id = "dead_letters",
    security(("jwt" = ["operator"])), params(export::FormatParam, export::PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every row from the cursor on as CSV or NDJSON (`format=`)",
            content((Page<DeadLetter> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn dead_letters(
    State(state): State<AppState>,
    Authed(who): auth::AsOperator,
    ListFormat(format): ListFormat,
    Query(p): Query<export::PageParams>,
) -> Result<Response, ApiError> {
    // A tenant's operator sees its own nodes' refused payloads only; the
    // store filters before it pages, so a tenant's pages are full.
    let node_ids = visible_nodes(&state, &who)
        .await?
        .map(|nodes| nodes.into_iter().collect::<Vec<_>>());
    let limit = p.limit(format);
    let store = state.store.clone();
    // The cursor is the last id of the previous page (ids descend).
    let fetch = move |cursor: Option<String>| -> export::PageFuture<DeadLetter> {
        let (store, node_ids) = (store.clone(), node_ids.clone());
        Box::pin(async move {
            let q = crate::store::DeadLetterQuery {
                before_id: export::id_cursor(cursor)?,
                node_ids,
                limit: limit + 1,
            };
            let mut items = store.dead_letters(&q).await?;
            let next = (items.len() > limit).then(|| {
                items.truncate(limit);
                items.last().map(|d| d.id.to_string())
            });
            Ok((items, next.flatten()))
        })
    };
    export::respond(
        format,
        &[
            ("id", "id"),
            ("received_at", "received_at"),
            ("topic", "topic"),
            ("node_id", "node_id"),
            ("reason_code", "reason_code"),
            ("reason", "reason"),
            ("payload_bytes", "payload_bytes"),
            ("payload", "payload"),
        ],
        p.cursor,
        fetch,
    )
    .await
}

#[cfg(test)]
pub(crate) mod tests;
