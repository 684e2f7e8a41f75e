//! The operator REST API and the live WebSocket feed (axum).
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; `main`
//! only binds it, so tests can drive it without a socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::AccountStore;
use crate::ingest::IngestHealth;
use crate::live::LiveBus;
use crate::store::{DetectionQuery, Store};

pub mod admin;
pub mod alerts;
pub mod auth;
mod dashboard;
mod error;
pub mod events;
pub mod incidents;
pub(crate) mod ws;

use auth::{AsViewer, Authed, Principal};
pub use error::ApiError;

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
    /// Alert rules, fired alerts, webhook deliveries.
    pub alerts: Arc<crate::alerts::Alerts>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Largest citizen report (photo and fields).
pub const MAX_REPORT_BODY: usize = 11 * 1024 * 1024;

/// Largest JSON request body accepted by the API.
pub const MAX_JSON_BODY: usize = 256 * 1024;

/// `Json<T>` whose rejections are API errors: 415 for a wrong content type,
/// 400 for bad JSON, 413 for a body over [`MAX_JSON_BODY`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
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

pub fn router(state: AppState) -> Router {
    // Every /api/v1 route names its role through the `Authed` extractor;
    // only login, citizen reports and report status are open.
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/me", get(auth::me))
        .route("/users", get(admin::list_users).post(admin::create_user))
        .route("/users/{id}", get(admin::get_user))
        .route(
            "/tenants",
            get(admin::list_tenants).post(admin::create_tenant),
        )
        .route("/api-keys", post(admin::create_api_key))
        .route("/audit", get(admin::audit_log))
        .route("/nodes", get(list_nodes).post(admin::provision_node))
        .route("/nodes/{id}", get(get_node))
        .route("/nodes/{id}/ledger", get(get_ledger))
        .route("/detections", get(list_detections))
        .route("/stats/summary", get(summary))
        .route("/stats/timeseries", get(timeseries))
        .route("/dead-letters", get(dead_letters))
        .route("/ws", get(ws::upgrade))
        .route("/events", get(events::list))
        .route("/events/{id}/snapshot", get(events::snapshot))
        .route("/stats/lines", get(events::lines))
        .route("/incidents", get(incidents::list))
        .route(
            "/incidents/{id}",
            get(incidents::get).patch(incidents::patch),
        )
        .route(
            "/reports",
            post(incidents::create_report)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BODY)),
        )
        .route("/reports/{id}/photo", get(incidents::photo))
        .route("/status/{id}", get(incidents::report_status))
        .route("/alert-rules", get(alerts::list).post(alerts::create))
        .route(
            "/alert-rules/{id}",
            get(alerts::get).patch(alerts::patch).delete(alerts::delete),
        )
        .route("/alert-rules/{id}/deliveries", get(alerts::rule_deliveries))
        .route("/alerts", get(alerts::fired))
        .route("/webhooks/deliveries", get(alerts::deliveries))
        .route("/analytics/areas", get(incidents::areas))
        .route("/analytics/incidents", get(incidents::incident_stats))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .nest("/api/v1", api)
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

async fn ensure_node_visible(
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

async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

fn node_json(n: &crate::store::NodeRecord, now: DateTime<Utc>) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or_default();
    v["online"] = json!(n.is_online(now));
    v
}

#[tracing::instrument(skip_all)]
async fn list_nodes(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = Utc::now();
    let mut nodes = state.store.nodes().await?;
    if let Some(visible) = visible_nodes(&state, &who).await? {
        nodes.retain(|n| visible.contains(&n.node_id));
    }
    let items: Vec<_> = nodes.iter().map(|n| node_json(n, now)).collect();
    Ok(Json(json!({ "items": items })))
}

#[tracing::instrument(skip_all)]
async fn get_node(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    ensure_node_visible(&state, &who, &id).await?;
    let node = state
        .store
        .node(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {id:?}")))?;
    let mut v = node_json(&node, Utc::now());
    v["ledger"] = serde_json::to_value(state.store.ledger(&id).await?).unwrap_or_default();
    Ok(Json(v))
}

#[tracing::instrument(skip_all)]
async fn get_ledger(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    ensure_node_visible(&state, &who, &id).await?;
    let ledger = state.store.ledger(&id).await?;
    Ok(Json(json!({ "node_id": id, "epochs": ledger })))
}

/// Query string of `GET /api/v1/detections`; all strings so that a bad value
/// becomes a 400 naming the parameter, not a generic rejection.
#[derive(Debug, Default, Deserialize)]
struct DetectionParams {
    node_id: Option<String>,
    camera_id: Option<String>,
    label: Option<String>,
    since: Option<String>,
    until: Option<String>,
    min_score: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

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
    let bad = || ApiError::BadRequest(format!("cursor {c:?} is not one this API returned"));
    let (ts, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((
        i64::from_str_radix(ts, 16).map_err(|_| bad())?,
        i64::from_str_radix(id, 16).map_err(|_| bad())?,
    ))
}

#[tracing::instrument(skip_all)]
async fn list_detections(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<DetectionParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = match p.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit={l:?} must be 1..={MAX_PAGE}")))?,
    };
    let min_score = match p.min_score.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<f32>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
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
        after: p.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let page = state.store.detections(&q).await?;
    Ok(Json(json!({
        "items": page.items,
        "next_cursor": page.next.map(encode_cursor),
    })))
}

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

#[derive(Debug, Default, Deserialize)]
struct TimeseriesParams {
    bucket: Option<String>,
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Buckets a client may ask for; bounded so one request cannot ask for
/// millions of points.
const MAX_BUCKETS: i64 = 10_000;

/// `GET /api/v1/stats/timeseries?bucket=1m&by=label|camera|zone&since=&until=`
/// → `{"bucket_s":60,"by":"label","points":[{"bucket":…,"key":…,"count":n}]}`;
/// the default window is the last hour.
#[tracing::instrument(skip_all)]
async fn timeseries(
    State(state): State<AppState>,
    Query(p): Query<TimeseriesParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bucket_raw = p.bucket.as_deref().unwrap_or("1m");
    let bucket = bucket_raw
        .parse::<edgeqi_shared::config::HumanDuration>()
        .ok()
        .map(|d| d.0)
        .filter(|d| d.as_secs() >= 1 && d.subsec_nanos() == 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "bucket={bucket_raw:?} must be a whole number of seconds like 1m, 5m, 1h"
            ))
        })?;
    let by = match p.by.as_deref().unwrap_or("label") {
        "label" => crate::store::TimeseriesBy::Label,
        "camera" => crate::store::TimeseriesBy::Camera,
        "zone" => crate::store::TimeseriesBy::Zone,
        other => {
            return Err(ApiError::BadRequest(format!(
                "by={other:?} must be label, camera or zone"
            )))
        }
    };
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
    let bucket_s = bucket.as_secs() as i64;
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
            by,
        })
        .await?;
    Ok(Json(json!({
        "bucket_s": bucket_s,
        "by": p.by.as_deref().unwrap_or("label"),
        "since": since,
        "until": until,
        "points": points,
    })))
}

#[derive(Debug, Deserialize)]
struct LimitParam {
    limit: Option<usize>,
}

#[tracing::instrument(skip_all)]
async fn dead_letters(
    State(state): State<AppState>,
    Authed(_who): auth::AsOperator,
    Query(p): Query<LimitParam>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(
        json!({ "items": state.store.dead_letters(limit).await? }),
    ))
}

#[cfg(test)]
mod tests;
