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
use serde::Deserialize;
use serde_json::json;

use super::admin::{audit, remote_addr};
use super::auth::{AsOperator, AsViewer, Authed, Principal};
use super::{ApiError, AppState, JsonBody};
use crate::incidents::service::severity;
use crate::incidents::{
    area_scores, Incident, IncidentChange, IncidentError, IncidentFilter, NewIncident, Report,
    Status,
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

/// The caller's address: proxy header first, then the socket.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let socket = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(ClientAddr(
            remote_addr(&parts.headers)
                .or(socket)
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

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    category: Option<String>,
    limit: Option<usize>,
    cursor: Option<i64>,
}

/// `GET /api/v1/incidents`: newest first; `cursor` is the last id seen.
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let status = p
        .status
        .as_deref()
        .map(str::parse::<Status>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let items = state
        .incidents
        .store
        .incidents(&IncidentFilter {
            tenant_id: who.scope(),
            status,
            category: p.category,
            limit,
            before_id: p.cursor,
        })
        .await?;
    let now = Utc::now();
    let next = (items.len() == limit)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    Ok(Json(json!({
        "items": items.iter().map(|i| i.to_json(now)).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// `GET /api/v1/incidents/{id}`: with comments, reports and its SLA.
pub async fn get(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let incident = visible_incident(&state, &who, id).await?;
    let mut v = incident.to_json(Utc::now());
    v["comments"] = json!(state.incidents.store.comments(id).await?);
    v["reports"] = json!(state.incidents.store.reports_of(id).await?);
    v["sla"] = json!(state
        .incidents
        .sla
        .sla(&incident.category, incident.severity));
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    status: Option<String>,
    assignee: Option<String>,
    comment: Option<String>,
}

/// `PATCH /api/v1/incidents/{id}` (operator): status, assignee, comment.
pub async fn patch(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<i64>,
    JsonBody(p): JsonBody<Patch>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(after.to_json(now)))
}

/// `GET /api/v1/reports/{id}/photo` (viewer)
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

/// `POST /api/v1/reports` (public): multipart `photo`, `lat`, `lng`, `notes`.
pub async fn create_report(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let svc = &state.incidents;
    if let Err(wait) = svc.report_limiter.check(&client) {
        return Err(ApiError::TooManyRequests(format!(
            "too many reports from {client}; try again in {wait} s"
        )));
    }
    let mut multipart = multipart.map_err(|_| {
        ApiError::UnsupportedMediaType(
            "send multipart/form-data with fields photo, lat, lng, notes".into(),
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
            other => {
                return Err(ApiError::Unprocessable(format!(
                    "unknown field {other:?}; use photo, lat, lng, notes"
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
    let photo = form
        .photo
        .ok_or_else(|| ApiError::Unprocessable("photo is required".into()))?;
    if photo.len() > svc.max_photo_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the photo may be at most {} bytes",
            svc.max_photo_bytes
        )));
    }
    // An image is what decodes as one, whatever the client called it.
    let format = image::guess_format(&photo)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::Jpeg | image::ImageFormat::Png))
        .ok_or_else(|| ApiError::Unprocessable("photo must be a JPEG or PNG image".into()))?;
    // Decoders fill a cut-off JPEG with grey; a real photo ends with its EOI
    // marker (0xFF 0xD9 cannot occur inside entropy-coded data).
    if format == image::ImageFormat::Jpeg
        && !photo[photo.len().saturating_sub(4096)..]
            .windows(2)
            .any(|w| w == [0xFF, 0xD9])
    {
        return Err(ApiError::Unprocessable("photo is a truncated JPEG".into()));
    }
    let analyzer = svc.analyzer.clone();
    let bytes = photo.clone();
    let analysis = tokio::task::spawn_blocking(move || {
        let img = image::load_from_memory_with_format(&bytes, format)
            .map_err(|e| format!("photo does not decode: {e}"))?;
        let rgb = img.to_rgb8();
        let objects = match &analyzer {
            Some(a) => a.analyze(&rgb)?,
            None => Vec::new(),
        };
        Ok::<_, String>((rgb.width(), rgb.height(), objects))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (width, height, objects) = analysis.map_err(ApiError::Unprocessable)?;
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
                tenant_id: svc.report_tenant,
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
        tenant_id: svc.report_tenant,
        lat,
        lng,
        notes,
        category: category.clone(),
        severity: sev,
        detections: detections.clone(),
        created_at: Utc::now(),
    };
    let ctype = if format == image::ImageFormat::Png {
        "image/png"
    } else {
        "image/jpeg"
    };
    svc.store.add_report(&report, &photo, ctype).await?;
    let now = Utc::now();
    metrics::counter!("edgeqi_reports_total", "category" => category.clone()).increment(1);
    tracing::info!(report = %report.id, incident = incident.id, created, %category, severity = sev.as_str(), %client, "citizen report");
    let who = Principal {
        name: format!("citizen@{client}"),
        user_id: None,
        role: crate::accounts::Role::Viewer,
        tenant_id: svc.report_tenant,
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
        Json(json!({
            "id": report.id,
            "incident_id": incident.id,
            "category": category,
            "severity": sev,
            "status": incident.status,
            "joined_existing": !created,
            "detections": detections,
            "detector": svc.analyzer.as_ref().map(|a| a.name().to_owned()),
        })),
    ))
}

/// `GET /api/v1/status/{id}` (public): where a citizen's report stands.
pub async fn report_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({
        "id": report.id,
        "status": incident.status,
        "category": report.category,
        "severity": report.severity,
        "reported_at": report.created_at,
        "updated_at": incident.updated_at,
    })))
}

#[derive(Debug, Deserialize)]
pub struct AreaParams {
    cell_deg: Option<f64>,
}

/// `GET /api/v1/analytics/areas`: performance score and rank per grid cell.
pub async fn areas(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<AreaParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cell = p.cell_deg.unwrap_or(0.01);
    if !(0.0001..=10.0).contains(&cell) {
        return Err(ApiError::BadRequest(
            "cell_deg must be in [0.0001, 10]".into(),
        ));
    }
    let all = all_incidents(&state, &who).await?;
    Ok(Json(
        json!({ "cell_deg": cell, "items": area_scores(&all, &state.incidents.sla, cell, Utc::now()) }),
    ))
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

/// `GET /api/v1/analytics/incidents`: counts by category, severity and status.
pub async fn incident_stats(
    State(state): State<AppState>,
    Authed(who): AsViewer,
) -> Result<Json<serde_json::Value>, ApiError> {
    let all = all_incidents(&state, &who).await?;
    let now = Utc::now();
    let mut by_category = std::collections::BTreeMap::<String, u64>::new();
    let mut by_severity = std::collections::BTreeMap::<&str, u64>::new();
    let mut by_status = std::collections::BTreeMap::<&str, u64>::new();
    let (mut breached, mut resolved, mut resolve_secs) = (0u64, 0u64, 0i64);
    for i in &all {
        *by_category.entry(i.category.clone()).or_default() += 1;
        *by_severity.entry(i.severity.as_str()).or_default() += 1;
        *by_status.entry(i.status.as_str()).or_default() += 1;
        breached += u64::from(i.sla_breached(now));
        if let Some(r) = i.resolved_at {
            resolved += 1;
            resolve_secs += (r - i.created_at).num_seconds();
        }
    }
    Ok(Json(json!({
        "total": all.len(),
        "by_category": by_category,
        "by_severity": by_severity,
        "by_status": by_status,
        "sla_breached": breached,
        "resolved": resolved,
        "mean_resolution_s": if resolved == 0 { None } else { Some(resolve_secs / resolved as i64) },
    })))
}
