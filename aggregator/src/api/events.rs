//! Tracker events, line counts and snapshots for operators.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{AsViewer, Authed};
use super::export::{respond, sorted_pages, Column, ListFormat, PageFuture, PageParams};
use super::openapi::{Binary, Page};
use super::{visible_nodes, ApiError, AppState};
use crate::events::{EventQuery, LineTotal, StoredEvent};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    node_id: Option<String>,
    camera_id: Option<String>,
    #[param(inline)]
    kind: Option<EventKind>,
    #[param(inline)]
    limit: Option<super::export::PageLimit>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// The kinds of track event (`edgeqi_shared::protocol::track_event`); any
/// other `kind=` is a 400.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Appeared,
    Left,
    ZoneEntered,
    ZoneLeft,
    LineCrossed,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        use edgeqi_shared::protocol::track_event as k;
        match self {
            EventKind::Appeared => k::APPEARED,
            EventKind::Left => k::LEFT,
            EventKind::ZoneEntered => k::ZONE_ENTERED,
            EventKind::ZoneLeft => k::ZONE_LEFT,
            EventKind::LineCrossed => k::LINE_CROSSED,
        }
    }
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || super::export::bad_cursor(c);
    let (ts, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((
        i64::from_str_radix(ts, 16).map_err(|_| bad())?,
        id.to_owned(),
    ))
}

/// Tracker events of the caller's nodes (appeared/left/zone/line), newest first.
#[utoipa::path(get, path = "/events", tag = "events", operation_id = "list_events",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, EventParams),
    responses((status = 200, description = "one page as JSON, or every matching event as CSV or NDJSON (`format=`)",
        content((Page<StoredEvent> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson")))))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<EventParams>,
) -> Result<Response, ApiError> {
    let limit = super::export::page_limit(p.limit, format);
    let q = EventQuery {
        node_ids: visible_nodes(&state, &who).await?,
        node_id: p.node_id,
        camera_id: p.camera_id,
        kind: p.kind.map(|k| k.as_str().to_owned()),
        limit,
        after: None,
    };
    let fetch = move |cursor: Option<String>| -> PageFuture<StoredEvent> {
        let (state, mut q) = (state.clone(), q.clone());
        Box::pin(async move {
            q.after = cursor.as_deref().map(decode_cursor).transpose()?;
            let (items, next) = state.events.events(q).await?;
            Ok((items, next.map(|(ts, id)| format!("{ts:x}.{id}"))))
        })
    };
    respond(format, EVENT_COLUMNS, p.cursor, fetch).await
}

/// CSV columns of track events.
const EVENT_COLUMNS: &[Column] = &[
    ("id", "id"),
    ("ts", "ts"),
    ("node_id", "node_id"),
    ("camera_id", "camera_id"),
    ("track_id", "track_id"),
    ("kind", "kind"),
    ("class_id", "class_id"),
    ("label", "label"),
    ("score", "score"),
    ("x1", "bbox.0"),
    ("y1", "bbox.1"),
    ("x2", "bbox.2"),
    ("y2", "bbox.3"),
    ("zone", "zone"),
    ("line", "line"),
    ("direction", "direction"),
    ("dwell_s", "dwell_s"),
    ("has_snapshot", "has_snapshot"),
];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotParams {
    #[param(inline)]
    view: Option<SnapshotView>,
}

/// `full` for the whole frame when the agent sent one; `crop` (the
/// default) for the best crop of the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotView {
    Crop,
    Full,
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
        .snapshot_for_event(&id, p.view == Some(SnapshotView::Full))
        .await?
        .ok_or_else(not_found)?;
    if let Some(nodes) = visible_nodes(&state, &who).await? {
        if !nodes.contains(&node) {
            return Err(not_found());
        }
    }
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response())
}

/// Crossings per line, class and direction over the caller's nodes, by
/// node, camera, line, label and direction.
#[utoipa::path(get, path = "/stats/lines", tag = "events", operation_id = "line_totals",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every total as CSV or NDJSON (`format=`)",
            content((Page<LineTotal> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "a cursor this API did not return", body = super::openapi::ErrorBody)))]
pub async fn lines(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    let nodes = visible_nodes(&state, &who).await?;
    let rows = state.events.line_totals(nodes).await?;
    let pages = sorted_pages(
        rows,
        |t: &LineTotal| {
            (
                t.node_id.clone(),
                t.camera_id.clone(),
                t.line.clone(),
                t.label.clone(),
                t.direction.clone(),
            )
        },
        p.limit(format),
    );
    respond(
        format,
        &[
            ("node_id", "node_id"),
            ("camera_id", "camera_id"),
            ("line", "line"),
            ("label", "label"),
            ("direction", "direction"),
            ("count", "count"),
        ],
        p.cursor,
        pages,
    )
    .await
}
