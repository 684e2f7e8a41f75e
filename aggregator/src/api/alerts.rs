//! Alert rules, fired alerts and the webhook delivery log.
//!
//! Viewers read; operators create, change and delete rules. Everything is
//! scoped to the caller's tenant: another tenant's rule answers 404. Every
//! rule mutation is audited (the webhook secret never appears in the log).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::admin::audit;
use super::auth::{AsOperator, AsViewer, Authed, Principal};
use super::openapi::ErrorBody;
use super::{ApiError, AppState, JsonBody};
use crate::alerts::store::ListQuery;
use crate::alerts::{merge_patch, RuleInput, StoredRule};

/// `?limit=&cursor=` (plus filters) of the list endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(inline)]
    limit: Option<super::export::PageLimit>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Only this rule's.
    #[param(minimum = 1)]
    rule_id: Option<i64>,
    /// Deliveries only.
    #[param(inline)]
    status: Option<DeliveryStatus>,
}

/// The states of a webhook delivery.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl ListParams {
    fn query(&self, who: &Principal) -> Result<ListQuery, ApiError> {
        let rule_id = match self.rule_id {
            Some(id) if id < 1 => {
                return Err(ApiError::BadRequest(format!("rule_id={id} is not an id")))
            }
            id => id,
        };
        Ok(ListQuery {
            tenant_id: who.scope(),
            rule_id,
            status: self.status.map(|s| s.as_str().to_owned()),
            limit: super::export::page_limit(self.limit, super::export::Format::Json),
            before_id: super::export::id_cursor(self.cursor.clone())?,
        })
    }
}

/// The body of `POST /api/v1/alert-rules` (documents
/// [`crate::alerts::RuleInput`], which is read with every field optional so
/// that each problem gets its own 422). Rules between fields that the
/// schema does not carry: a `watchlist` needs `labels` and takes neither
/// `threshold` (other than 1) nor `window_s` (other than 0); `direction`
/// needs `line`, and `line` needs `on: line_crossed` (the default with a
/// line); `schedule.start` and `schedule.end` differ.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct RuleDoc {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// Default `threshold`.
    #[schema(inline)]
    kind: Option<RuleKindDoc>,
    /// Default true.
    enabled: Option<bool>,
    /// Labels that match (none: every label); at most 100.
    #[schema(max_items = 100, value_type = Option<Vec<LabelDoc>>, inline)]
    labels: Option<Vec<String>>,
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    node_id: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    camera_id: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    zone: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    line: Option<String>,
    #[schema(inline)]
    direction: Option<DirectionDoc>,
    /// What is counted: stored detections (default) or one kind of track event.
    #[schema(inline)]
    on: Option<SourceDoc>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    min_score: Option<f64>,
    /// Matches in the window that fire the rule (default 1).
    #[schema(minimum = 1, maximum = 10000)]
    threshold: Option<i64>,
    /// Seconds (default 60; 0 only for a watchlist).
    #[schema(minimum = 0, maximum = 86400)]
    window_s: Option<i64>,
    /// Seconds before it fires again (default 60).
    #[schema(minimum = 0, maximum = 604800)]
    cooldown_s: Option<i64>,
    #[schema(inline)]
    schedule: Option<ScheduleDoc>,
    #[schema(inline)]
    actions: Option<ActionsDoc>,
}

/// The body of `PATCH /api/v1/alert-rules/{id}`: a JSON merge patch (RFC
/// 7386) of [`RuleDoc`]'s fields; `null` removes a field (its default
/// applies). The merged rule must be valid as a whole.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON shape in the OpenAPI document only
pub struct RulePatchDoc {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    /// Default `threshold`.
    #[schema(inline)]
    kind: Option<RuleKindDoc>,
    /// Default true.
    enabled: Option<bool>,
    /// Labels that match (none: every label); at most 100.
    #[schema(max_items = 100, value_type = Option<Vec<LabelDoc>>, inline)]
    labels: Option<Vec<String>>,
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    node_id: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    camera_id: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    zone: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    line: Option<String>,
    #[schema(inline)]
    direction: Option<DirectionDoc>,
    /// What is counted: stored detections (default) or one kind of track event.
    #[schema(inline)]
    on: Option<SourceDoc>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    min_score: Option<f64>,
    /// Matches in the window that fire the rule (default 1).
    #[schema(minimum = 1, maximum = 10000)]
    threshold: Option<i64>,
    /// Seconds (default 60; 0 only for a watchlist).
    #[schema(minimum = 0, maximum = 86400)]
    window_s: Option<i64>,
    /// Seconds before it fires again (default 60).
    #[schema(minimum = 0, maximum = 604800)]
    cooldown_s: Option<i64>,
    #[schema(inline)]
    schedule: Option<ScheduleDoc>,
    #[schema(inline)]
    actions: Option<ActionsDoc>,
}

/// A label a rule matches: 1-64 characters, not blank, no control characters.
#[derive(Debug)]
pub struct LabelDoc;

impl utoipa::PartialSchema for LabelDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(64))
            .pattern(Some(TEXT_PATTERN))
            .into()
    }
}

impl utoipa::ToSchema for LabelDoc {}

/// Names and labels of rules: not blank (stored trimmed), no control characters.
const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKindDoc {
    Threshold,
    Watchlist,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DirectionDoc {
    LeftToRight,
    RightToLeft,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceDoc {
    Detection,
    Appeared,
    Left,
    ZoneEntered,
    ZoneLeft,
    LineCrossed,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DayDoc {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// When the rule is armed (default: always).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ScheduleDoc {
    #[schema(min_items = 1, inline)]
    days: Option<Vec<DayDoc>>,
    /// `HH:MM` (default `00:00`).
    #[schema(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    start: Option<String>,
    /// `HH:MM` or `24:00` (default).
    #[schema(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    end: Option<String>,
    /// `UTC` (default), `local` or an offset like `+02:00`.
    #[schema(pattern = r"^(UTC|utc|Z|local|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    timezone: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ActionsDoc {
    #[schema(inline)]
    incident: Option<IncidentActionDoc>,
    /// Push to the live feed (default true).
    websocket: Option<bool>,
    #[schema(inline)]
    webhook: Option<WebhookDoc>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct IncidentActionDoc {
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    category: String,
    /// Default `medium`.
    #[schema(value_type = Option<crate::incidents::Severity>)]
    severity: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WebhookDoc {
    /// An absolute `http://` or `https://` URL with a host and no
    /// credentials, at most 2048 characters; an internal address only when
    /// `alerts.allow_private_webhooks` is set.
    #[schema(max_length = 2048, pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://")]
    url: String,
    /// 16-256 bytes; signs each delivery (HMAC-SHA256).
    #[schema(min_length = 16, max_length = 256)]
    secret: String,
    /// Default 5.
    #[schema(minimum = 1, maximum = 10)]
    max_attempts: Option<i64>,
}

fn page(items: Vec<serde_json::Value>, limit: usize, last_id: Option<i64>) -> serde_json::Value {
    let next = (items.len() == limit).then_some(last_id).flatten();
    json!({"items": items, "next_cursor": next.map(|n| n.to_string())})
}

/// The rule if the caller may see it; 404 otherwise (another tenant's rule
/// does not exist for them).
async fn visible_rule(state: &AppState, who: &Principal, id: i64) -> Result<StoredRule, ApiError> {
    state
        .alerts
        .store
        .rule(id)
        .await?
        .filter(|r| who.can_access(r.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no alert rule {id}")))
}

/// Rule changes take effect at once: the evaluator reloads before the next
/// observation.
async fn apply(state: &AppState) -> Result<(), ApiError> {
    state.alerts.rules_changed().await?;
    Ok(())
}

/// Refuses a webhook URL that points inside (unless the aggregator allows
/// it); `before` is the URL the rule had, which a patch that leaves the
/// webhook alone may keep.
fn check_webhook_destination(
    state: &AppState,
    spec: &crate::alerts::RuleSpec,
    before: Option<&str>,
) -> Result<(), ApiError> {
    match &spec.actions.webhook {
        Some(w) if Some(w.url.as_str()) != before => crate::alerts::webhook::check_destination(
            &w.url,
            state.alerts.settings.allow_private_webhooks,
        )
        .map_err(ApiError::Unprocessable),
        _ => Ok(()),
    }
}

/// `POST /api/v1/alert-rules` (operator): a rule, or a watchlist
/// (`"kind":"watchlist"`). A global admin may give `tenant_id`.
#[utoipa::path(post, path = "/alert-rules", tag = "alerts", operation_id = "create_alert_rule",
    security(("jwt" = ["operator"])),
    request_body(content = RuleDoc, description = "an alert rule or watchlist (see README, Alert rules)"),
    responses(
        (status = 201, description = "the stored rule (the webhook secret is never shown)", body = Object),
        (status = 422, description = "the rule is invalid (the message says why), or its webhook URL is an internal address (see alerts.allow_private_webhooks)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::Unprocessable("a rule is a JSON object".into()))?;
    let asked = match obj.remove("tenant_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::Unprocessable("tenant_id must be an integer".into()))?,
        ),
    };
    let tenant_id = match (who.tenant_id, asked) {
        (Some(mine), Some(t)) if t != mine => {
            return Err(ApiError::Forbidden(
                "you may only create rules for your own tenant".into(),
            ))
        }
        (Some(mine), _) => Some(mine),
        (None, Some(t)) => {
            if state.accounts.tenant(t).await?.is_none() {
                return Err(ApiError::Unprocessable(format!("no tenant {t}")));
            }
            Some(t)
        }
        (None, None) => None,
    };
    let spec = RuleInput::from_json(body)
        .and_then(RuleInput::validate)
        .map_err(ApiError::Unprocessable)?;
    check_webhook_destination(&state, &spec, None)?;
    let rule = state
        .alerts
        .store
        .create_rule(tenant_id, spec, &who.name)
        .await?;
    apply(&state).await?;
    tracing::info!(rule = rule.id, tenant = rule.tenant_id, by = %who.name, "alert rule created");
    audit(
        &state,
        &who,
        &headers,
        "alert_rule.create",
        format!("alert_rule:{}", rule.id),
        None,
        Some(rule.to_json()),
    )
    .await;
    Ok((StatusCode::CREATED, Json(rule.to_json())))
}

/// `GET /api/v1/alert-rules` (viewer): newest first, `?limit=&cursor=`.
#[utoipa::path(get, path = "/alert-rules", tag = "alerts", operation_id = "list_alert_rules",
    security(("jwt" = ["viewer"])), params(ListParams),
    responses((status = 200, description = "`{items: [rule], next_cursor}`", body = Object)))]
pub async fn list(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = p.query(&who)?;
    let rules = state.alerts.store.rules(&q).await?;
    let last = rules.last().map(|r| r.id);
    Ok(Json(page(
        rules.iter().map(StoredRule::to_json).collect(),
        q.limit,
        last,
    )))
}

/// `GET /api/v1/alert-rules/{id}` (viewer)
#[utoipa::path(get, path = "/alert-rules/{id}", tag = "alerts", operation_id = "get_alert_rule",
    security(("jwt" = ["viewer"])), params(("id" = i64, Path, description = "rule id")),
    responses((status = 200, description = "the rule", body = Object),
        (status = 404, description = "no such rule, or another tenant's", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(visible_rule(&state, &who, id).await?.to_json()))
}

/// `PATCH /api/v1/alert-rules/{id}` (operator): a JSON merge patch (RFC
/// 7386) over the rule; the result is validated like a new rule.
#[utoipa::path(patch, path = "/alert-rules/{id}", tag = "alerts", operation_id = "update_alert_rule",
    security(("jwt" = ["operator"])), params(("id" = i64, Path, description = "rule id")),
    request_body(content = RulePatchDoc, description = "a JSON merge patch (RFC 7386) over the rule"),
    responses((status = 200, description = "the changed rule", body = Object),
        (status = 404, description = "no such rule, or another tenant's", body = ErrorBody),
        (status = 422, description = "the patched rule is invalid, or its new webhook URL is an internal address", body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<i64>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let current = visible_rule(&state, &who, id).await?;
    let Some(changes) = patch.as_object() else {
        return Err(ApiError::Unprocessable(
            "a patch is a JSON object of the fields to change".into(),
        ));
    };
    if changes.contains_key("tenant_id") {
        return Err(ApiError::Unprocessable(
            "tenant_id cannot change; create the rule in the other tenant".into(),
        ));
    }
    let mut merged = serde_json::to_value(&current.spec)
        .map_err(|e| ApiError::Internal(format!("rule to JSON: {e}")))?;
    merge_patch(&mut merged, &patch);
    let spec = RuleInput::from_json(merged)
        .and_then(RuleInput::validate)
        .map_err(ApiError::Unprocessable)?;
    let old_url = current
        .spec
        .actions
        .webhook
        .as_ref()
        .map(|w| w.url.as_str());
    check_webhook_destination(&state, &spec, old_url)?;
    let (before, after) = state
        .alerts
        .store
        .update_rule(id, spec)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert rule {id}")))?;
    apply(&state).await?;
    audit(
        &state,
        &who,
        &headers,
        "alert_rule.update",
        format!("alert_rule:{id}"),
        Some(before.to_json()),
        Some(after.to_json()),
    )
    .await;
    Ok(Json(after.to_json()))
}

/// `DELETE /api/v1/alert-rules/{id}` (operator): its alerts and deliveries stay.
#[utoipa::path(delete, path = "/alert-rules/{id}", tag = "alerts", operation_id = "delete_alert_rule",
    security(("jwt" = ["operator"])), params(("id" = i64, Path, description = "rule id")),
    responses((status = 204, description = "deleted"),
        (status = 404, description = "no such rule, or another tenant's", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Authed(who): AsOperator,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    visible_rule(&state, &who, id).await?;
    let before = state
        .alerts
        .store
        .delete_rule(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert rule {id}")))?;
    apply(&state).await?;
    audit(
        &state,
        &who,
        &headers,
        "alert_rule.delete",
        format!("alert_rule:{id}"),
        Some(before.to_json()),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/alerts` (viewer): fired alerts, newest first, `?rule_id=`.
#[utoipa::path(get, path = "/alerts", tag = "alerts", operation_id = "list_alerts",
    security(("jwt" = ["viewer"])), params(ListParams),
    responses((status = 200, description = "`{items: [alert], next_cursor}`", body = Object)))]
pub async fn fired(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = p.query(&who)?;
    let items = state.alerts.store.alerts(&q).await?;
    let last = items.last().and_then(|a| a["id"].as_i64());
    Ok(Json(page(items, q.limit, last)))
}

/// `GET /api/v1/webhooks/deliveries` (viewer): the delivery log with every
/// attempt, newest first, `?rule_id=&status=`.
#[utoipa::path(get, path = "/webhooks/deliveries", tag = "alerts", operation_id = "list_webhook_deliveries",
    security(("jwt" = ["viewer"])), params(ListParams),
    responses((status = 200, description = "`{items: [delivery], next_cursor}`", body = Object)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = p.query(&who)?;
    let items = state.alerts.store.deliveries(&q).await?;
    let last = items.last().map(|d| d.id);
    Ok(Json(page(
        items.iter().map(|d| json!(d)).collect(),
        q.limit,
        last,
    )))
}

/// `GET /api/v1/alert-rules/{id}/deliveries` (viewer): one rule's log.
#[utoipa::path(get, path = "/alert-rules/{id}/deliveries", tag = "alerts", operation_id = "list_rule_deliveries",
    security(("jwt" = ["viewer"])), params(("id" = i64, Path, description = "rule id"), ListParams),
    responses((status = 200, description = "`{items: [delivery], next_cursor}`", body = Object),
        (status = 404, description = "no such rule, or another tenant's", body = ErrorBody)))]
pub async fn rule_deliveries(
    State(state): State<AppState>,
    Authed(who): AsViewer,
    Path(id): Path<i64>,
    Query(mut p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    visible_rule(&state, &who, id).await?;
    // The query is checked as sent (a `rule_id=0` is still a 400) before
    // the path's rule replaces its `rule_id`.
    p.query(&who)?;
    p.rule_id = Some(id);
    deliveries(State(state), Authed(who), Query(p)).await
}
