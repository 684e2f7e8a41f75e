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

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `?limit=&cursor=` (plus filters) of the list endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=1000, default 100.
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only this rule's.
    rule_id: Option<String>,
    /// Deliveries only: `pending`, `delivered` or `failed`.
    status: Option<String>,
}

impl ListParams {
    fn query(&self, who: &Principal) -> Result<ListQuery, ApiError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit={l:?} must be 1..={MAX_PAGE}"))
                })?,
        };
        let id = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(|c| {
                    c.parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| ApiError::BadRequest(format!("{name}={c:?} is not an id")))
                })
                .transpose()
        };
        let status = match self.status.as_deref() {
            None => None,
            Some(s @ ("pending" | "delivered" | "failed")) => Some(s.to_owned()),
            Some(s) => {
                return Err(ApiError::BadRequest(format!(
                    "status={s:?} must be pending, delivered or failed"
                )))
            }
        };
        Ok(ListQuery {
            tenant_id: who.scope(),
            rule_id: id("rule_id", &self.rule_id)?,
            status,
            limit,
            before_id: id("cursor", &self.cursor)?,
        })
    }
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
    request_body(content = Object, description = "an alert rule or watchlist (see README, Alert rules)"),
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
    request_body(content = Object, description = "a JSON merge patch (RFC 7386) over the rule"),
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
    p.rule_id = Some(id.to_string());
    deliveries(State(state), Authed(who), Query(p)).await
}
