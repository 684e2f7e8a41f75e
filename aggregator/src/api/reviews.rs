//! Review routes: operators confirm, relabel or reject a detection or a
//! citizen report (tenant-scoped, audited), list reviews, and export the
//! reviewed reports as a YOLO dataset zip (see [`crate::reviews`]).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::admin::audit;
use super::auth::{AsOperator, AsViewer, Authed, Principal};
use super::export::{respond, Format, ListFormat, PageFuture};
use super::openapi::{Binary, ErrorBody, Page};
use super::{visible_nodes, ApiError, AppState, JsonBody};
use crate::reviews::{
    yolo_dataset, LabeledImage, NewReview, Review, ReviewFilter, ReviewedObject, SubjectKind,
    Verdict,
};

/// Most reviews one export walks; a larger set is cut there (the manifest says so).
pub const MAX_EXPORT: usize = 10_000;

/// What a reviewer says about a detection or report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    #[schema(value_type = Verdict)]
    verdict: String,
    /// The right label of a relabeled detection (only with `relabeled`).
    #[schema(min_length = 1, max_length = 64)]
    label: Option<String>,
    /// Every object of a relabeled report, as it should be (labels and boxes
    /// in photo pixels; only with `relabeled`).
    #[schema(max_items = 1000)]
    objects: Option<Vec<ReviewedObject>>,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    note: Option<String>,
}

/// The body of `POST /api/v1/detections/{id}/review` (documents
/// [`ReviewRequest`] as a detection takes it). `label` is given exactly when
/// the verdict is `relabeled`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct DetectionReview {
    verdict: Verdict,
    /// The right label (only with `relabeled`): 1-64 characters, not blank,
    /// no control characters.
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    label: Option<String>,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    note: Option<String>,
}

/// The body of `POST /api/v1/reports/{id}/review` (documents
/// [`ReviewRequest`] as a report takes it). `objects` is given exactly when
/// the verdict is `relabeled`; each box has x1 < x2 and y1 < y2.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct ReportReview {
    verdict: Verdict,
    /// Every object of the photo as it should be (only with `relabeled`).
    #[schema(max_items = 1000)]
    objects: Option<Vec<ReviewedObject>>,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    note: Option<String>,
}

fn check_label(l: &str) -> Result<String, ApiError> {
    let l = l.trim();
    if l.is_empty() || l.chars().count() > 64 || l.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "a label is 1-64 printable characters".into(),
        ));
    }
    Ok(l.to_owned())
}

fn check_object(o: &ReviewedObject) -> Result<ReviewedObject, ApiError> {
    let [x1, y1, x2, y2] = o.bbox;
    if !o.bbox.iter().all(|v| v.is_finite() && *v >= 0.0) || x2 <= x1 || y2 <= y1 {
        return Err(ApiError::Unprocessable(format!(
            "bbox {:?} must be [x1, y1, x2, y2] in pixels with x1 < x2 and y1 < y2",
            o.bbox
        )));
    }
    Ok(ReviewedObject {
        label: check_label(&o.label)?,
        bbox: o.bbox,
    })
}

/// Parses the request into a verdict and note, and checks the fields a
/// subject kind allows.
fn parse(req: &ReviewRequest, kind: SubjectKind) -> Result<(Verdict, Option<String>), ApiError> {
    let verdict = Verdict::parse(&req.verdict).map_err(ApiError::Unprocessable)?;
    let note = req
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(ApiError::Unprocessable(
            "note may be at most 2000 characters".into(),
        ));
    }
    let (wants, other) = match kind {
        SubjectKind::Detection => (req.label.is_some(), req.objects.is_some()),
        SubjectKind::Report => (req.objects.is_some(), req.label.is_some()),
    };
    let field = match kind {
        SubjectKind::Detection => ("label", "objects"),
        SubjectKind::Report => ("objects", "label"),
    };
    if other {
        return Err(ApiError::Unprocessable(format!(
            "a {} review takes {}, not {}",
            kind.as_str(),
            field.0,
            field.1
        )));
    }
    if (verdict == Verdict::Relabeled) != wants {
        return Err(ApiError::Unprocessable(format!(
            "give {} exactly when the verdict is relabeled",
            field.0
        )));
    }
    Ok((verdict, note))
}

async fn record(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    new: NewReview,
) -> Result<Review, ApiError> {
    let target = format!("{}:{}", new.kind.as_str(), new.subject);
    let (before, after) = state.reviews.record(new).await?;
    audit(
        state,
        who,
        headers,
        "review.record",
        target,
        before.and_then(|b| serde_json::to_value(b).ok()),
        serde_json::to_value(&after).ok(),
    )
    .await;
    metrics::counter!("edgeqi_reviews_total", "kind" => after.kind.as_str(), "verdict" => after.verdict.as_str())
        .increment(1);
    Ok(after)
}

/// Confirms, relabels or rejects a stored detection (operator). Audited;
/// the latest review is the detection's state.
#[utoipa::path(post, path = "/detections/{id}/review", tag = "reviews", operation_id = "review_detection",
    security(("jwt" = ["operator"])), params(("id" = i64, Path, description = "detection id")),
    request_body = DetectionReview,
    responses(
        (status = 200, body = Review),
        (status = 404, description = "no such detection, or another tenant's", body = ErrorBody),
        (status = 422, description = "bad verdict, label or note", body = ErrorBody),
    ))]
pub async fn review_detection(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<ReviewRequest>,
) -> Result<Json<Review>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no detection {id}"));
    let det = state.store.detection(id).await?.ok_or_else(not_found)?;
    if let Some(nodes) = visible_nodes(&state, &who).await? {
        if !nodes.contains(&det.node_id) {
            return Err(not_found());
        }
    }
    let (verdict, note) = parse(&req, SubjectKind::Detection)?;
    let objects = match verdict {
        Verdict::Rejected => vec![],
        Verdict::Confirmed => vec![ReviewedObject {
            label: det.label.clone(),
            bbox: det.bbox,
        }],
        Verdict::Relabeled => vec![ReviewedObject {
            label: check_label(req.label.as_deref().unwrap_or_default())?,
            bbox: det.bbox,
        }],
    };
    let review = record(
        &state,
        &who,
        &headers,
        NewReview {
            kind: SubjectKind::Detection,
            subject: id.to_string(),
            tenant_id: who.tenant_id,
            node_id: Some(det.node_id),
            verdict,
            objects,
            note,
            reviewer: who.name.clone(),
        },
    )
    .await?;
    Ok(Json(review))
}

/// Confirms, relabels (with the full corrected object list) or rejects a
/// citizen report's detections (operator). Audited.
#[utoipa::path(post, path = "/reports/{id}/review", tag = "reviews", operation_id = "review_report",
    security(("jwt" = ["operator"])), params(("id" = String, Path, description = "report id (`rpt_…`)", pattern = r"^rpt_[0-9a-f]{1,60}$")),
    request_body = ReportReview,
    responses(
        (status = 200, body = Review),
        (status = 404, description = "no such report, or another tenant's", body = ErrorBody),
        (status = 422, description = "bad verdict, objects or note", body = ErrorBody),
    ))]
pub async fn review_report(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ReviewRequest>,
) -> Result<Json<Review>, ApiError> {
    let report = state
        .incidents
        .store
        .report(&id)
        .await?
        .filter(|r| who.can_access(r.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no report {id:?}")))?;
    let (verdict, note) = parse(&req, SubjectKind::Report)?;
    let objects = match verdict {
        Verdict::Rejected => vec![],
        Verdict::Confirmed => {
            // What the detector found, as stored with the report (score dropped).
            #[derive(Deserialize)]
            struct Found {
                label: String,
                bbox: [f32; 4],
            }
            serde_json::from_value::<Vec<Found>>(report.detections.clone())
                .map_err(|e| ApiError::Internal(format!("stored detections of {id}: {e}")))?
                .into_iter()
                .map(|o| ReviewedObject {
                    label: o.label,
                    bbox: o.bbox,
                })
                .collect()
        }
        Verdict::Relabeled => {
            let given = req.objects.as_deref().unwrap_or_default();
            if given.len() > 1000 {
                return Err(ApiError::Unprocessable(
                    "at most 1000 objects per report".into(),
                ));
            }
            given.iter().map(check_object).collect::<Result<_, _>>()?
        }
    };
    let review = record(
        &state,
        &who,
        &headers,
        NewReview {
            kind: SubjectKind::Report,
            subject: report.id,
            tenant_id: report.tenant_id,
            node_id: None,
            verdict,
            objects,
            note,
            reviewer: who.name.clone(),
        },
    )
    .await?;
    Ok(Json(review))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReviewParams {
    #[param(inline)]
    kind: Option<SubjectKind>,
    #[param(inline)]
    verdict: Option<Verdict>,
    #[param(inline)]
    limit: Option<super::export::PageLimit>,
    /// `next_cursor` of the previous page.
    cursor: Option<i64>,
}

async fn filter_for(
    state: &AppState,
    who: &Principal,
    p: &ReviewParams,
) -> Result<ReviewFilter, ApiError> {
    let tenant = match who.tenant_id {
        None => None,
        Some(t) => Some((t, visible_nodes(state, who).await?.unwrap_or_default())),
    };
    Ok(ReviewFilter {
        tenant,
        kind: p.kind,
        verdict: p.verdict,
        limit: super::export::page_limit(p.limit, super::export::Format::Json),
        before_id: p.cursor,
    })
}

/// Reviews of the caller's tenant, newest first.
#[utoipa::path(get, path = "/reviews", tag = "reviews", operation_id = "list_reviews",
    security(("jwt" = ["viewer"])), params(super::export::FormatParam, ReviewParams),
    responses(
        (status = 200, description = "one page as JSON, or every matching review as CSV or NDJSON (`format=`)",
            content((Page<Review> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "unknown kind or verdict", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    ListFormat(format): ListFormat,
    Query(p): Query<ReviewParams>,
) -> Result<Response, ApiError> {
    let mut f = filter_for(&state, &who, &p).await?;
    if format != Format::Json {
        f.limit = 1000;
    }
    let fetch = move |cursor: Option<String>| -> PageFuture<Review> {
        let (state, mut f) = (state.clone(), f.clone());
        Box::pin(async move {
            f.before_id = super::export::id_cursor(cursor)?;
            let limit = f.limit;
            let items = state.reviews.list(f).await?;
            let next_cursor = (items.len() == limit)
                .then(|| items.last().map(|r| r.id.to_string()))
                .flatten();
            Ok((items, next_cursor))
        })
    };
    respond(
        format,
        &[
            ("id", "id"),
            ("reviewed_at", "reviewed_at"),
            ("kind", "kind"),
            ("subject", "subject"),
            ("tenant_id", "tenant_id"),
            ("node_id", "node_id"),
            ("verdict", "verdict"),
            ("objects", "objects"),
            ("note", "note"),
            ("reviewer", "reviewer"),
        ],
        p.cursor.map(|c| c.to_string()),
        fetch,
    )
    .await
}

/// The reviewed data of the caller's tenant as a YOLO dataset (operator):
/// `images/`, `labels/*.txt` (`class cx cy w h`, normalised), `data.yaml`
/// and `manifest.json`. Confirmed and relabeled reports are included with
/// their photo; rejected subjects are left out; detection reviews are listed
/// in the manifest only, since no frame is stored for a detection.
#[utoipa::path(get, path = "/reviews/export.zip", tag = "reviews", operation_id = "export_reviews",
    security(("jwt" = ["operator"])),
    params(
        ("kind" = inline(Option<SubjectKind>), Query, description = "only reviews of detections or of reports"),
        ("verdict" = inline(Option<Verdict>), Query, description = "only this verdict (rejected subjects are never exported)"),
    ),
    responses((status = 200, content_type = "application/zip", body = Binary)))]
pub async fn export(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    Query(p): Query<ReviewParams>,
) -> Result<Response, ApiError> {
    let mut f = filter_for(&state, &who, &p).await?;
    f.limit = 1000;
    let mut reviews = Vec::new();
    loop {
        let page = state.reviews.list(f.clone()).await?;
        let done = page.len() < f.limit;
        f.before_id = page.last().map(|r| r.id);
        reviews.extend(page);
        if done || reviews.len() >= MAX_EXPORT {
            break;
        }
    }
    let truncated = reviews.len() >= MAX_EXPORT;
    reviews.truncate(MAX_EXPORT);
    let mut images = Vec::new();
    let mut included = Vec::new();
    let mut skipped = Vec::new();
    for r in reviews {
        let entry = json!({"kind": r.kind, "subject": r.subject, "verdict": r.verdict});
        if r.verdict == Verdict::Rejected {
            skipped.push(json!({"review": entry, "reason": "rejected"}));
            continue;
        }
        match r.kind {
            SubjectKind::Detection => skipped.push(json!({
                "review": entry,
                "node_id": r.node_id,
                "objects": r.objects,
                "reason": "no frame is stored for a detection (agents send only track snapshot crops)",
            })),
            SubjectKind::Report => {
                let Some((bytes, ctype)) = state.incidents.store.report_photo(&r.subject).await?
                else {
                    skipped.push(json!({"review": entry, "reason": "the photo is gone"}));
                    continue;
                };
                let dims = image::ImageReader::new(std::io::Cursor::new(&bytes))
                    .with_guessed_format()
                    .ok()
                    .and_then(|i| i.into_dimensions().ok());
                let Some((width, height)) = dims else {
                    skipped.push(json!({"review": entry, "reason": "the photo does not decode"}));
                    continue;
                };
                included.push(entry);
                images.push(LabeledImage {
                    name: r.subject,
                    extension: if ctype == "image/png" { "png" } else { "jpg" },
                    bytes,
                    width,
                    height,
                    objects: r.objects,
                });
            }
        }
    }
    let manifest = json!({
        "generated_at": chrono::Utc::now(),
        "exported_by": who.name,
        "included": included,
        "skipped": skipped,
        "truncated_at": truncated.then_some(MAX_EXPORT),
    });
    let n = images.len();
    let zip = tokio::task::spawn_blocking(move || yolo_dataset(&images, manifest))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    tracing::info!(images = n, bytes = zip.len(), who = %who.name, "review dataset exported");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"edgeqi-reviews.zip\"",
            ),
        ],
        zip,
    )
        .into_response())
}
