//! Tracker events, line counts and snapshots for operators.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::{AsViewer, Authed};
use super::openapi::{Binary, Items, Page};
use super::{visible_nodes, ApiError, AppState};
use crate::events::{EventQuery, LineTotal, StoredEvent};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    node_id: Option<String>,
    camera_id: Option<String>,
    /// `appeared`, `left`, `zone_entered`, `zone_left` or `line_crossed`.
    kind: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
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

/// Tracker events of the caller's nodes (appeared/left/zone/line), newest first.
#[utoipa::path(get, path = "/events", tag = "events", operation_id = "list_events",
    security(("jwt" = ["viewer"])), params(EventParams),
    responses((status = 200, body = Page<StoredEvent>)))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<EventParams>,
) -> Result<Json<Page<StoredEvent>>, ApiError> {
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
    Ok(Json(Page {
        items,
        next_cursor: next.map(|(ts, id)| format!("{ts:x}.{id}")),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotParams {
    /// `full` for the whole frame when the agent sent one.
    view: Option<String>,
}

/// The best JPEG crop of the event's track (or the whole frame with `view=full`).
#[utoipa::path(get, path = "/events/{id}/snapshot", tag = "events", operation_id = "event_snapshot",
    security(("jwt" = ["viewer"])),
    params(("id" = String, Path, description = "event id"), SnapshotParams),
    responses(
        (status = 200, content_type = "image/jpeg", body = Binary),
        (status = 404, description = "no such event or no snapshot, or another tenant's", body = super::openapi::ErrorBody),
    ))]
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

/// Crossings per line, class and direction over the caller's nodes.
#[utoipa::path(get, path = "/stats/lines", tag = "events", operation_id = "line_totals",
    security(("jwt" = ["viewer"])), responses((status = 200, body = Items<LineTotal>)))]
pub async fn lines(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<Items<LineTotal>>, ApiError> {
    let nodes = visible_nodes(&state, &who).await?;
    Ok(Json(Items {
        items: state.events.line_totals(nodes).await?,
    }))
}
