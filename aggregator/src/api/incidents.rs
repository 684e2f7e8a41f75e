//! Incidents, citizen reports and incident analytics.
//!
//! `POST /api/v1/reports` and `GET /api/v1/status/{id}` are public (a
//! citizen has no account) but rate-limited and size-limited; everything else
//! needs a role and is scoped to the caller's tenant.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Multipart, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::{audit, remote_addr};
use super::auth::{AsOperator, AsViewer, Authed, Principal};
use super::export::{respond, sorted_pages, Column, Format, ListFormat, PageFuture, PageParams};
use super::openapi::{Binary, ErrorBody, Page};
use super::{ApiError, AppState, JsonBody};
use crate::incidents::photo::PhotoError;
use crate::incidents::service::severity;
use crate::incidents::{
    area_scores, AreaScore, Comment, Incident, IncidentChange, IncidentError, IncidentFilter,
    NewIncident, PhotoObject, Report, Severity, Sla, Status,
};
use crate::live::LiveEvent;

impl From<IncidentError> for ApiError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::NotFound(id) => ApiError::NotFound(format!("no incident {id}")),
            e @ IncidentError::InvalidTransition { .. } => ApiError::Conflict(e.to_string()),
            IncidentError::Store(e) => e.into(),
        }
    }
}

/// The caller's address, as rate limits count it: the socket's peer, or
/// `X-Forwarded-For` / `X-Real-IP` when the peer is a reverse proxy on this
/// host (loopback). Headers from anyone else are ignored: a client could
/// name a new address on every request and never be limited.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let socket = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        // No socket at all: an in-process caller (tests), which may say who it is.
        let via_local_proxy = socket.is_none_or(|ip| ip.is_loopback());
        let forwarded = via_local_proxy
            .then(|| remote_addr(&parts.headers))
            .flatten();
        Ok(ClientAddr(
            forwarded
                .or(socket.map(|ip| ip.to_string()))
                .unwrap_or_else(|| "unknown".into()),
        ))
    }
}

async fn visible_incident(
    state: &AppState,
    who: &Principal,
    id: i64,
) -> Result<Incident, ApiError> {
    state
        .incidents
        .store
        .incident(id)
        .await?
        .filter(|i| who.can_access(i.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id}")))
}

/// An incident as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IncidentView {
    #[serde(flatten)]
    pub incident: Incident,
    /// An SLA deadline passed without the step it asks for.
    pub sla_breached: bool,
}

impl IncidentView {
    pub fn new(incident: Incident, now: chrono::DateTime<Utc>) -> Self {
        Self {
            sla_breached: incident.sla_breached(now),
            incident,
        }
    }
}

/// `GET /api/v1/incidents/{id}`: the incident with its comments, reports and SLA.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: IncidentView,
    pub comments: Vec<Comment>,
    pub reports: Vec<ReportView>,
    pub sla: Sla,
}

/// A citizen report and its review, if it has one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportView {
    #[serde(flatten)]
    pub report: Report,
    pub review: Option<crate::reviews::Review>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(inline)]
    status: Option<Status>,
    category: Option<String>,
    #[param(inline)]
    limit: Option<super::export::PageLimit>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Incidents of the caller's tenant, newest first.
#[utoipa::path(get, path = "/incidents", tag = "incidents", operation_id = "list_incidents",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, ListParams),
    responses(
        (status = 200, description = "one page as JSON, or every matching incident as CSV or NDJSON (`format=`)",
            content((Page<IncidentView> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "unknown status", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    let limit = super::export::page_limit(p.limit, format);
    let filter = IncidentFilter {
        tenant_id: who.scope(),
        status: p.status,
        category: p.category,
        limit,
        before_id: None,
    };
    let fetch = move |cursor: Option<String>| -> PageFuture<IncidentView> {
        let (state, mut filter) = (state.clone(), filter.clone());
        Box::pin(async move {
            filter.before_id = super::export::id_cursor(cursor)?;
            let items = state.incidents.store.incidents(&filter).await?;
            let now = Utc::now();
            let next_cursor = (items.len() == filter.limit)
                .then(|| items.last().map(|i| i.id.to_string()))
                .flatten();
            let items = items
                .into_iter()
                .map(|i| IncidentView::new(i, now))
                .collect();
            Ok((items, next_cursor))
        })
    };
    respond(format, INCIDENT_COLUMNS, p.cursor, fetch).await
}

/// CSV columns of incidents.
const INCIDENT_COLUMNS: &[Column] = &[
    ("id", "id"),
    ("tenant_id", "tenant_id"),
    ("category", "category"),
    ("severity", "severity"),
    ("status", "status"),
    ("title", "title"),
    ("lat", "lat"),
    ("lng", "lng"),
    ("source", "source"),
    ("assignee", "assignee"),
    ("report_count", "report_count"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
    ("acknowledged_at", "acknowledged_at"),
    ("resolved_at", "resolved_at"),
    ("closed_at", "closed_at"),
    ("acknowledge_due", "acknowledge_due"),
    ("resolve_due", "resolve_due"),
    ("sla_breached", "sla_breached"),
];

/// One incident with its comments, reports and SLA; another tenant's is a 404.
#[utoipa::path(get, path = "/incidents/{id}", tag = "incidents", operation_id = "get_incident",
    security(("jwt" = ["viewer"])), params(("id" = i64, Path, description = "incident id")),
    responses((status = 200, body = IncidentDetail), (status = 404, description = "no such incident, or another tenant's", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<i64>,
) -> Result<Json<IncidentDetail>, ApiError> {
    let incident = visible_incident(&state, &who, id).await?;
    let sla = state
        .incidents
        .sla
        .sla(&incident.category, incident.severity);
    let reports = state.incidents.store.reports_of(id).await?;
    let mut reviews = state
        .reviews
        .of(
            crate::reviews::SubjectKind::Report,
            reports.iter().map(|r| r.id.clone()).collect(),
        )
        .await?;
    Ok(Json(IncidentDetail {
        incident: IncidentView::new(incident, Utc::now()),
        comments: state.incidents.store.comments(id).await?,
        reports: reports
            .into_iter()
            .map(|r| ReportView {
                review: reviews.remove(&r.id),
                report: r,
            })
            .collect(),
        sla,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// The next lifecycle state.
    #[schema(value_type = Option<Status>)]
    status: Option<String>,
    /// Who works on it; empty to unassign.
    assignee: Option<String>,
    /// 1-10000 characters.
    comment: Option<String>,
}

/// Walks the lifecycle, assigns, comments (operator). Audited.
#[utoipa::path(patch, path = "/incidents/{id}", tag = "incidents", operation_id = "update_incident",
    security(("jwt" = ["operator"])), params(("id" = i64, Path, description = "incident id")),
    request_body = Patch,
    responses(
        (status = 200, body = IncidentView),
        (status = 404, description = "no such incident, or another tenant's", body = ErrorBody),
        (status = 409, description = "the lifecycle does not allow this move", body = ErrorBody),
        (status = 422, description = "unknown status, empty change or bad comment", body = ErrorBody),
    ))]
pub async fn patch(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<i64>,
    JsonBody(p): JsonBody<Patch>,
) -> Result<Json<IncidentView>, ApiError> {
    visible_incident(&state, &who, id).await?;
    let status = p
        .status
        .as_deref()
        .map(str::parse::<Status>)
        .transpose()
        .map_err(ApiError::Unprocessable)?;
    if p.comment
        .as_ref()
        .is_some_and(|c| c.trim().is_empty() || c.len() > 10_000)
    {
        return Err(ApiError::Unprocessable(
            "comment must be 1-10000 characters".into(),
        ));
    }
    if status.is_none() && p.assignee.is_none() && p.comment.is_none() {
        return Err(ApiError::Unprocessable(
            "give at least one of status, assignee, comment".into(),
        ));
    }
    let (before, after) = state
        .incidents
        .store
        .change(
            id,
            IncidentChange {
                status,
                assignee: p.assignee,
                comment: p.comment.clone(),
            },
            &who.name,
        )
        .await?;
    let now = Utc::now();
    audit(
        &state,
        &who,
        &headers,
        "incident.update",
        format!("incident:{id}"),
        Some(before.to_json(now)),
        Some(json!({"incident": after.to_json(now), "comment": p.comment})),
    )
    .await;
    state.live.send(LiveEvent::Incident(after.to_json(now)));
    Ok(Json(IncidentView::new(after, now)))
}

/// The photo of a citizen report; another tenant's is a 404.
#[utoipa::path(get, path = "/reports/{id}/photo", tag = "incidents", operation_id = "report_photo",
    security(("jwt" = ["viewer"])), params(("id" = String, Path, description = "report id (`rpt_…`)", pattern = r"^rpt_[0-9a-f]{1,60}$")),
    responses(
        (status = 200, description = "the photo as uploaded", content((Binary = "image/jpeg"), (Binary = "image/png"))),
        (status = 404, description = "no such report, or another tenant's", body = ErrorBody),
    ))]
pub async fn photo(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let report = state
        .incidents
        .store
        .report(&id)
        .await?
        .filter(|r| who.can_access(r.tenant_id));
    let not_found = || ApiError::NotFound(format!("no report {id:?}"));
    report.ok_or_else(not_found)?;
    let (bytes, ctype) = state
        .incidents
        .store
        .report_photo(&id)
        .await?
        .ok_or_else(not_found)?;
    Ok(([(header::CONTENT_TYPE, ctype)], bytes).into_response())
}

/// The fields of a report form.
#[derive(Debug, Default)]
struct ReportForm {
    photo: Option<Bytes>,
    lat: Option<String>,
    lng: Option<String>,
    notes: Option<String>,
    tenant_id: Option<String>,
}

fn coordinate(name: &str, v: Option<&str>, limit: f64) -> Result<f64, ApiError> {
    let v = v.ok_or_else(|| ApiError::Unprocessable(format!("{name} is required")))?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && x.abs() <= limit)
        .ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "{name}={v:?} must be a number in [-{limit}, {limit}]"
            ))
        })
}

/// The form of `POST /api/v1/reports`.
/// Unknown fields are refused (422), hence closed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the multipart form for the document only
pub struct ReportUpload {
    /// A JPEG or PNG photo, at most 10 MiB.
    #[schema(value_type = String, format = Binary)]
    photo: Vec<u8>,
    /// Latitude in [-90, 90].
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude in [-180, 180].
    #[schema(minimum = -180.0, maximum = 180.0)]
    lng: f64,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    notes: Option<String>,
    /// The tenant (city, district) the report is for: the id of an existing
    /// tenant. Without it (or empty) the report goes to the aggregator's
    /// `reports.default_tenant_id`, or to no tenant when that is not set.
    tenant_id: Option<i64>,
}

/// The tenant a report is filed under: the form's `tenant_id` when it names
/// an existing tenant (anything else is a 422 that says no more than that:
/// the public may not probe for tenant names), else the configured default.
async fn report_tenant(state: &AppState, field: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = field.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(state.incidents.report_tenant);
    };
    let refused = || ApiError::Unprocessable("tenant_id does not name a tenant".into());
    let id = raw
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(refused)?;
    match state.accounts.tenant(id).await? {
        Some(_) => Ok(Some(id)),
        None => Err(refused()),
    }
}

/// What a citizen gets back for a report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportCreated {
    pub id: String,
    pub incident_id: i64,
    pub category: String,
    pub severity: Severity,
    pub status: Status,
    /// The report joined an open incident nearby instead of opening one.
    pub joined_existing: bool,
    /// What the detector found, in photo pixels.
    pub detections: Vec<PhotoObject>,
    /// The detector model, when one is configured.
    pub detector: Option<String>,
}

/// A citizen's photo report (public, rate-limited per client address, at most
/// 10 MiB): the photo runs through the detector and opens or joins an
/// incident of the report's tenant (`tenant_id`, else the configured
/// default, else none); joining only ever happens within that tenant.
/// A photo is judged by its header before it is decoded: more than
/// `reports.max_photo_pixels`, or more than `reports.max_photo_decoded_bytes`
/// to decode (its own colour type plus RGB8), is a 413; when every decode
/// slot stays busy for 5 s the answer is 503 with `Retry-After`.
#[utoipa::path(post, path = "/reports", tag = "incidents", operation_id = "create_report",
    request_body(content = ReportUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = ReportCreated),
        (status = 413, description = "the body or photo is too large: bytes, or pixels or decoded size by its header", body = ErrorBody),
        (status = 415, description = "not multipart/form-data", body = ErrorBody),
        (status = 422, description = "not a JPEG/PNG, bad coordinates, unknown field, or a tenant_id that names no tenant", body = ErrorBody),
        (status = 429, description = "too many reports from this address", body = ErrorBody),
        (status = 503, description = "every photo decode slot is busy; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait"))),
    ))]
pub async fn create_report(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<ReportCreated>), ApiError> {
    let svc = &state.incidents;
    if let Err(wait) = svc.report_limiter.check(&client) {
        return Err(ApiError::TooManyRequests(format!(
            "too many reports from {client}; try again in {wait} s"
        )));
    }
    super::refuse_declared_length(&headers, super::MAX_REPORT_BODY)?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::UnsupportedMediaType(
            "send multipart/form-data with fields photo, lat, lng, notes, tenant_id".into(),
        )
    })?;
    let mut form = ReportForm::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(format!(
                    "a report may be at most {} bytes",
                    svc.max_photo_bytes
                )))
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "malformed multipart body: {}",
                    e.body_text()
                )))
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "a report may be at most {} bytes",
                    svc.max_photo_bytes
                ))
            } else {
                ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
            }
        })?;
        let text = || {
            String::from_utf8(data.to_vec())
                .map_err(|_| ApiError::Unprocessable(format!("{name} must be UTF-8 text")))
        };
        match name.as_str() {
            "photo" => form.photo = Some(data.clone()),
            "lat" => form.lat = Some(text()?),
            "lng" => form.lng = Some(text()?),
            "notes" => form.notes = Some(text()?),
            "tenant_id" => form.tenant_id = Some(text()?),
            other => {
                return Err(ApiError::Unprocessable(format!(
                    "unknown field {other:?}; use photo, lat, lng, notes, tenant_id"
                )))
            }
        }
    }
    let lat = coordinate("lat", form.lat.as_deref(), 90.0)?;
    let lng = coordinate("lng", form.lng.as_deref(), 180.0)?;
    let notes = form
        .notes
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if notes.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(ApiError::Unprocessable(
            "notes may be at most 2000 characters".into(),
        ));
    }
    let tenant_id = report_tenant(&state, form.tenant_id.as_deref()).await?;
    let photo = form
        .photo
        .ok_or_else(|| ApiError::Unprocessable("photo is required".into()))?;
    if photo.len() > svc.max_photo_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the photo may be at most {} bytes",
            svc.max_photo_bytes
        )));
    }
    // Header checked, decoded within caps, a bounded number at a time,
    // off the async runtime (crate::incidents::photo).
    let analyzer = svc.analyzer.clone();
    let (header, objects) = svc
        .photos
        .run(photo.clone(), move |rgb| match &analyzer {
            Some(a) => a.analyze(&rgb),
            None => Ok(Vec::new()),
        })
        .await
        .map_err(|e| photo_refused(e, svc.photos.wait))?;
    let (width, height) = (header.width, header.height);
    let (category, best) = svc.categories.classify(&objects);
    let same = objects
        .iter()
        .filter(|o| svc.categories.by_label.get(&o.label) == Some(&category))
        .count();
    let sev = severity(best, same, width, height);
    let title = match best {
        Some(o) => format!("{category}: {} reported", o.label),
        None => format!("{category} reported"),
    };
    let sla = svc.sla.sla(&category, sev);
    let (incident, created) = svc
        .store
        .open_or_join(
            NewIncident {
                tenant_id,
                category: category.clone(),
                severity: sev,
                title,
                lat: Some(lat),
                lng: Some(lng),
                source: "report".into(),
            },
            svc.dedup,
            sla,
        )
        .await?;
    let mut id_bytes = [0u8; 10];
    rand::Rng::fill(&mut rand::rng(), &mut id_bytes[..]);
    let detections = json!(objects);
    let report = Report {
        id: format!(
            "rpt_{}",
            id_bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        incident_id: incident.id,
        tenant_id,
        lat,
        lng,
        notes,
        category: category.clone(),
        severity: sev,
        detections,
        created_at: Utc::now(),
    };
    svc.store
        .add_report(&report, &photo, header.content_type())
        .await?;
    let now = Utc::now();
    metrics::counter!("edgeqi_reports_total", "category" => category.clone()).increment(1);
    tracing::info!(report = %report.id, incident = incident.id, created, %category, severity = sev.as_str(), %client, "citizen report");
    let who = Principal {
        name: format!("citizen@{client}"),
        user_id: None,
        role: crate::accounts::Role::Viewer,
        tenant_id,
    };
    let action = if created {
        "incident.create"
    } else {
        "incident.join"
    };
    audit(
        &state,
        &who,
        &headers,
        action,
        format!("incident:{}", incident.id),
        None,
        Some(json!({"report": report.id})),
    )
    .await;
    state.live.send(LiveEvent::Incident(incident.to_json(now)));
    Ok((
        StatusCode::CREATED,
        Json(ReportCreated {
            id: report.id,
            incident_id: incident.id,
            category,
            severity: sev,
            status: incident.status,
            joined_existing: !created,
            detections: objects,
            detector: svc.analyzer.as_ref().map(|a| a.name().to_owned()),
        }),
    ))
}

/// The answer to a refused photo: 413 for one that costs too much to decode
/// (what a client must change is the photo's size), 422 for one that is not
/// an image, 503 with `Retry-After` when every decode slot stayed busy.
fn photo_refused(e: PhotoError, wait: std::time::Duration) -> ApiError {
    match e {
        PhotoError::TooLarge(m) => ApiError::PayloadTooLarge(m),
        PhotoError::Busy => ApiError::Busy {
            message: e.to_string(),
            retry_after_s: wait.as_secs().max(1),
        },
        e @ (PhotoError::NotAnImage
        | PhotoError::Truncated
        | PhotoError::Corrupt(_)
        | PhotoError::Analysis(_)) => ApiError::Unprocessable(e.to_string()),
    }
}

/// Where a citizen's report stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportStatus {
    pub id: String,
    pub status: Status,
    pub category: String,
    pub severity: Severity,
    pub reported_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
}

/// Where a citizen's report stands (public: the report id is the secret).
#[utoipa::path(get, path = "/status/{id}", tag = "incidents", operation_id = "report_status",
    params(("id" = String, Path, description = "report id (`rpt_…`)", pattern = r"^rpt_[0-9a-f]{1,60}$")),
    responses((status = 200, body = ReportStatus), (status = 404, description = "no such report", body = ErrorBody)))]
pub async fn report_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReportStatus>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no report {id:?}"));
    if !id.starts_with("rpt_") || id.len() > 64 {
        return Err(not_found());
    }
    let report = state
        .incidents
        .store
        .report(&id)
        .await?
        .ok_or_else(not_found)?;
    let incident = state
        .incidents
        .store
        .incident(report.incident_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ReportStatus {
        id: report.id,
        status: incident.status,
        category: report.category,
        severity: report.severity,
        reported_at: report.created_at,
        updated_at: incident.updated_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AreaParams {
    /// Grid cell size in degrees, in [0.0001, 10] (default 0.01).
    #[param(minimum = 0.0001, maximum = 10.0)]
    cell_deg: Option<f64>,
}

/// `GET /api/v1/analytics/areas`: one page of areas by rank.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Areas {
    pub cell_deg: f64,
    pub items: Vec<AreaScore>,
    /// Pass back as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Performance score (70% SLA compliance, 30% resolution speed) and rank per
/// grid cell, best first. Scores are computed per request, so pages walk the
/// ranking (the cursor is a rank): areas whose score changes between two
/// requests may move across the page boundary.
#[utoipa::path(get, path = "/analytics/areas", tag = "incidents", operation_id = "area_scores",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, AreaParams, PageParams),
    responses(
        (status = 200, description = "one page as JSON, or every area as CSV or NDJSON (`format=`)",
            content((Areas = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "cell_deg out of range, or a cursor this API did not return", body = ErrorBody)))]
pub async fn areas(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<AreaParams>,
    Query(page): Query<PageParams>,
) -> Result<Response, ApiError> {
    let cell = p.cell_deg.unwrap_or(0.01);
    if !(0.0001..=10.0).contains(&cell) {
        return Err(ApiError::BadRequest(
            "cell_deg must be in [0.0001, 10]".into(),
        ));
    }
    let all = all_incidents(&state, &who).await?;
    let rows = area_scores(&all, &state.incidents.sla, cell, Utc::now());
    let mut pages = sorted_pages(rows, |a: &AreaScore| a.rank, page.limit(format));
    if format == Format::Json {
        let (items, next_cursor) = pages(page.cursor).await?;
        return Ok(Json(Areas {
            cell_deg: cell,
            items,
            next_cursor,
        })
        .into_response());
    }
    respond(
        format,
        &[
            ("rank", "rank"),
            ("area", "area"),
            ("lat", "center.0"),
            ("lng", "center.1"),
            ("incidents", "incidents"),
            ("resolved", "resolved"),
            ("sla_compliance", "sla_compliance"),
            ("speed", "speed"),
            ("score", "score"),
        ],
        page.cursor,
        pages,
    )
    .await
}

async fn all_incidents(state: &AppState, who: &Principal) -> Result<Vec<Incident>, ApiError> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .incidents
            .store
            .incidents(&IncidentFilter {
                tenant_id: who.scope(),
                limit: 1000,
                before_id: before,
                ..Default::default()
            })
            .await?;
        let done = page.len() < 1000;
        before = page.last().map(|i| i.id);
        out.extend(page);
        if done || out.len() >= 100_000 {
            return Ok(out);
        }
    }
}

/// `GET /api/v1/analytics/hotspots` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HotspotQuery {
    /// Grid cell size in metres, 10–50,000 (default 250).
    #[param(minimum = 10.0, maximum = 50000.0)]
    pub cell_m: Option<f64>,
    /// Only incidents created at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<Utc>>,
    /// Only this category.
    pub category: Option<String>,
    /// Busiest cells returned, 1–1,000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `GET /api/v1/analytics/hotspots`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Hotspots {
    pub cell_m: f64,
    /// Located incidents counted (those without a position are left out).
    pub incidents: u64,
    pub items: Vec<crate::incidents::hotspots::Hotspot>,
}

/// Incidents clustered on a square grid of `cell_m` metres, busiest cells first.
#[utoipa::path(get, path = "/analytics/hotspots", tag = "incidents", operation_id = "incident_hotspots",
    params(HotspotQuery),
    security(("jwt" = ["viewer"])),
    responses((status = 200, body = Hotspots), (status = 422, body = ErrorBody)))]
pub async fn hotspots(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(q): Query<HotspotQuery>,
) -> Result<Json<Hotspots>, ApiError> {
    let cell_m = q.cell_m.unwrap_or(250.0);
    if !(10.0..=50_000.0).contains(&cell_m) {
        return Err(ApiError::Unprocessable(
            "cell_m must be between 10 and 50000 metres".into(),
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Unprocessable(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let chosen: Vec<Incident> = all_incidents(&state, &who)
        .await?
        .into_iter()
        .filter(|i| q.since.is_none_or(|t| i.created_at >= t))
        .filter(|i| q.category.as_ref().is_none_or(|c| *c == i.category))
        .filter(|i| i.lat.is_some() && i.lng.is_some())
        .collect();
    let mut items = crate::incidents::hotspots::hotspots(&chosen, cell_m);
    items.truncate(limit);
    Ok(Json(Hotspots {
        cell_m,
        incidents: chosen.len() as u64,
        items,
    }))
}

/// `GET /api/v1/analytics/incidents`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IncidentStats {
    pub total: usize,
    pub by_category: BTreeMap<String, u64>,
    pub by_severity: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    pub sla_breached: u64,
    pub resolved: u64,
    pub mean_resolution_s: Option<i64>,
}

/// Counts by category, severity and status; SLA breaches; mean time to resolve.
#[utoipa::path(get, path = "/analytics/incidents", tag = "incidents", operation_id = "incident_stats",
    security(("jwt" = ["viewer"])), responses((status = 200, body = IncidentStats)))]
pub async fn incident_stats(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<IncidentStats>, ApiError> {
    let all = all_incidents(&state, &who).await?;
    let now = Utc::now();
    let mut by_category = BTreeMap::<String, u64>::new();
    let mut by_severity = BTreeMap::<String, u64>::new();
    let mut by_status = BTreeMap::<String, u64>::new();
    let (mut breached, mut resolved, mut resolve_secs) = (0u64, 0u64, 0i64);
    for i in &all {
        *by_category.entry(i.category.clone()).or_default() += 1;
        *by_severity
            .entry(i.severity.as_str().to_owned())
            .or_default() += 1;
        *by_status.entry(i.status.as_str().to_owned()).or_default() += 1;
        breached += u64::from(i.sla_breached(now));
        if let Some(r) = i.resolved_at {
            resolved += 1;
            resolve_secs += (r - i.created_at).num_seconds();
        }
    }
    Ok(Json(IncidentStats {
        total: all.len(),
        by_category,
        by_severity,
        by_status,
        sla_breached: breached,
        resolved,
        mean_resolution_s: (resolved > 0).then(|| resolve_secs / resolved as i64),
    }))
}

#[cfg(test)]
#[path = "reports_tests.rs"]
mod tests;
