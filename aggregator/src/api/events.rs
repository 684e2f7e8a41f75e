//! Tracker events, line counts and snapshots for operators.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{AsViewer, Authed};
use super::{visible_nodes, ApiError, AppState};
use crate::events::EventQuery;

#[derive(Debug, Deserialize)]
pub struct EventParams {
    node_id: Option<String>,
    camera_id: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("cursor {c:?} is not one this API returned"));
    let (ts, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((
        i64::from_str_radix(ts, 16).map_err(|_| bad())?,
        id.to_owned(),
    ))
}

/// `GET /api/v1/events`: appeared/left/zone/line events, newest first.
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<EventParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let q = EventQuery {
        node_ids: visible_nodes(&state, &who).await?,
        node_id: p.node_id,
        camera_id: p.camera_id,
        kind: p.kind,
        limit,
        after: p.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let (items, next) = state.events.events(q).await?;
    Ok(Json(json!({
        "items": items,
        "next_cursor": next.map(|(ts, id)| format!("{ts:x}.{id}")),
    })))
}

#[derive(Debug, Deserialize)]
pub struct SnapshotParams {
    /// `full` for the whole frame when the agent sent one.
    view: Option<String>,
}

/// `GET /api/v1/events/{id}/snapshot`: the best JPEG crop of the event's track.
pub async fn snapshot(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
    Query(p): Query<SnapshotParams>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no snapshot for event {id:?}"));
    let (node, jpeg) = state
        .events
        .snapshot_for_event(&id, p.view.as_deref() == Some("full"))
        .await?
        .ok_or_else(not_found)?;
    if let Some(nodes) = visible_nodes(&state, &who).await? {
        if !nodes.contains(&node) {
            return Err(not_found());
        }
    }
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response())
}

/// `GET /api/v1/stats/lines`: crossings per line, class and direction.
pub async fn lines(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<serde_json::Value>, ApiError> {
    let nodes = visible_nodes(&state, &who).await?;
    Ok(Json(
        json!({ "items": state.events.line_totals(nodes).await? }),
    ))
}
