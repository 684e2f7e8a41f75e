//! The operator REST API and the live WebSocket feed (axum).
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; `main`
//! only binds it, so tests can drive it without a socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::ingest::IngestHealth;
use crate::live::LiveBus;
use crate::store::{DetectionQuery, Store};

mod dashboard;
mod error;
mod ws;

pub use error::ApiError;

/// Everything a handler may need.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub live: LiveBus,
    pub ingest: Arc<IngestHealth>,
    pub admin_token: Option<Arc<str>>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node))
        .route("/nodes/{id}/ledger", get(get_ledger))
        .route("/detections", get(list_detections))
        .route("/stats/summary", get(summary))
        .route("/dead-letters", get(dead_letters))
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .nest("/api/v1", api)
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With `EDGEQI_ADMIN_TOKEN` set, every /api/v1 route needs
/// `Authorization: Bearer <token>`; browsers' WebSockets cannot set headers,
/// so `?access_token=` is accepted too.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = &state.admin_token else {
        return next.run(req).await;
    };
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    match from_header.or(from_query) {
        Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.store.ping().await;
    let mqtt = state.ingest.connected.load(Ordering::Relaxed);
    let body = json!({
        "database": if db.is_ok() { "ok" } else { "unavailable" },
        "mqtt": if mqtt { "ok" } else { "disconnected" },
    });
    let status = if db.is_ok() && mqtt {
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
async fn list_nodes(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let now = Utc::now();
    let nodes = state.store.nodes().await?;
    let items: Vec<_> = nodes.iter().map(|n| node_json(n, now)).collect();
    Ok(Json(json!({ "items": items })))
}

#[tracing::instrument(skip_all)]
async fn get_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
async fn summary(State(state): State<AppState>) -> Result<Json<crate::store::Summary>, ApiError> {
    Ok(Json(state.store.summary(Utc::now()).await?))
}

#[derive(Debug, Deserialize)]
struct LimitParam {
    limit: Option<usize>,
}

#[tracing::instrument(skip_all)]
async fn dead_letters(
    State(state): State<AppState>,
    Query(p): Query<LimitParam>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(
        json!({ "items": state.store.dead_letters(limit).await? }),
    ))
}

#[cfg(test)]
mod tests;
