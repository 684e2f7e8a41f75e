//! The OpenAPI 3.1 document of `/api/v1`, and the router builder that makes
//! it the one list of API routes.
//!
//! Handlers carry `#[utoipa::path]` annotations (method, path, parameters,
//! bodies, responses, and for protected routes the least role as the scope
//! of the `jwt` scheme: `security(("jwt" = ["operator"]))`). [`ApiRoutes`]
//! only accepts handlers collected with `utoipa_axum::routes!`, so a route
//! cannot be served without appearing in the document. [`document`] then
//! fills in what is the same for every operation, so annotations stay short:
//! the other two ways to send the same token (`api_key`, `access_token`),
//! `x-edgeqi-role`, the 401/403 answers of protected routes, and the error
//! body as the `default` answer.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::AppState;

/// Where the API is mounted.
pub const PREFIX: &str = "/api/v1";

/// Roles as `x-edgeqi-role` names them, least first.
pub const ROLES: [&str; 4] = ["public", "viewer", "operator", "admin"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "EdgeQI operator API",
        description = "Detections, nodes, incidents, citizen reports and accounts of an EdgeQI aggregator.\n\n\
            Every protected route takes one bearer token in `Authorization: Bearer TOKEN`: a session JWT from \
            `POST /api/v1/auth/login`, an API key (`eqk_…`) from `POST /api/v1/api-keys`, or the bootstrap \
            `EDGEQI_ADMIN_TOKEN`. WebSocket clients and `<img>` tags may send it as `?access_token=` on GET requests (never for a change). The least role a route \
            needs is the scope of its security requirement and `x-edgeqi-role` (`public` routes need none). \
            Roles are ordered admin > operator > viewer; a tenant's callers see only their tenant's data \
            (others' resources answer 404).\n\nErrors are `{\"error\":{\"code\",\"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "auth", description = "Sessions and the caller"),
        (name = "accounts", description = "Users, tenants, API keys, audit log"),
        (name = "nodes", description = "Edge nodes, their ledgers and provisioning"),
        (name = "detections", description = "Stored detections and statistics"),
        (name = "events", description = "Tracker events, line counts, snapshots"),
        (name = "incidents", description = "Incidents, citizen reports, analytics"),
        (name = "live", description = "The WebSocket feed"),
        (name = "reviews", description = "Human review of detections and reports; YOLO dataset export"),
        (name = "alerts", description = "Alert rules, watchlists, fired alerts, webhook deliveries"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// Every error answer: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    #[schema(example = "not_found")]
    pub code: ErrorCode,
    /// What went wrong and, where it helps, what to send instead.
    pub message: String,
}

/// The error codes [`super::ApiError`] produces.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    Unprocessable,
    TooLarge,
    UnsupportedMediaType,
    RateLimited,
    Unavailable,
    Internal,
}

/// A page of a list, in the list's order (newest first for records,
/// by id or name for accounts and nodes). Pass `next_cursor` back as
/// `cursor` for the next page; it is `null` on the last one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A file's bytes (images).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

/// The `/api/v1` routes, each one a documented handler.
pub struct ApiRoutes(OpenApiRouter<AppState>);

impl std::fmt::Debug for ApiRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRoutes")
            .field("paths", &self.0.get_openapi().paths.paths.keys())
            .finish()
    }
}

impl ApiRoutes {
    pub fn new() -> Self {
        Self(OpenApiRouter::with_openapi(ApiDoc::openapi()))
    }

    /// Adds the handlers of one path, collected with `utoipa_axum::routes!`
    /// (which takes their method and path from `#[utoipa::path]`). There is
    /// deliberately no way to add an undocumented route.
    pub fn routes(self, handlers: UtoipaMethodRouter<AppState>) -> Self {
        Self(self.0.routes(handlers))
    }

    /// The axum router to nest at [`PREFIX`] and the raw document of its routes.
    pub fn into_parts(self) -> (axum::Router<AppState>, OpenApiDoc) {
        self.0.split_for_parts()
    }
}

impl Default for ApiRoutes {
    fn default() -> Self {
        Self::new()
    }
}

/// The finished document for the raw one of [`super::api_routes`]: paths
/// under [`PREFIX`], security alternatives, roles and error answers filled in.
pub fn document(raw: &OpenApiDoc) -> Value {
    let mut doc = serde_json::to_value(raw).unwrap_or_default();
    let paths = std::mem::take(&mut doc["paths"]);
    let mut prefixed = serde_json::Map::new();
    if let Value::Object(paths) = paths {
        for (path, mut item) in paths {
            if let Value::Object(ops) = &mut item {
                for (method, op) in ops
                    .iter_mut()
                    .filter(|(_, op)| op.get("responses").is_some())
                {
                    complete_operation(op, method == "get" || method == "head");
                }
            }
            prefixed.insert(format!("{PREFIX}{path}"), item);
        }
    }
    doc["paths"] = Value::Object(prefixed);
    doc["servers"] = json!([{"url": "/", "description": "this aggregator"}]);
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        "jwt": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A session from POST /api/v1/auth/login (or the bootstrap EDGEQI_ADMIN_TOKEN)."
        },
        "api_key": {
            "type": "http", "scheme": "bearer", "bearerFormat": "eqk_…",
            "description": "An API key from POST /api/v1/api-keys, sent as a bearer token."
        },
        "access_token": {
            "type": "apiKey", "in": "query", "name": "access_token",
            "description": "The same token in the query string, on GET requests only, for WebSocket clients and images that cannot set headers."
        }
    });
    components["responses"] = json!({
        "Error": error_response("An error; `code` says which."),
        "Unauthorized": error_response("No token, or one that is unknown, expired or malformed."),
        "Forbidden": error_response("The caller's role is below the one this route needs."),
        "BadRequest": error_response("A path segment, query parameter or the body is malformed; the message names it."),
        "TooLarge": error_response("The body is over the limit (256 KiB for JSON)."),
        "UnsupportedMediaType": error_response("The body is not of the documented content type (send Content-Type: application/json)."),
        "Unavailable": error_response("The database is unreachable; retry later.")
    });
    doc
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Turns an operation's `jwt` role scope into the ways to authenticate (the
/// query-string token only for reads, see `auth::bearer`) and the answers
/// every protected (or every) route can give.
fn complete_operation(op: &mut Value, read: bool) {
    let is_document = op["operationId"] == "openapi";
    let role = op["security"]
        .as_array()
        .and_then(|reqs| reqs.iter().find_map(|r| r.get("jwt")))
        .and_then(|scopes| scopes.get(0))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match &role {
        Some(role) => {
            op["security"] = if read {
                json!([{"jwt": [role]}, {"api_key": [role]}, {"access_token": [role]}])
            } else {
                json!([{"jwt": [role]}, {"api_key": [role]}])
            };
            let responses = &mut op["responses"];
            responses["401"] = json!({"$ref": "#/components/responses/Unauthorized"});
            if role != "viewer" && responses.get("403").is_none() {
                responses["403"] = json!({"$ref": "#/components/responses/Forbidden"});
            }
        }
        // An empty list: this operation needs no credentials at all.
        None => op["security"] = json!([]),
    }
    op["x-edgeqi-role"] = json!(role.as_deref().unwrap_or("public"));
    // What the extractors of an operation can answer before its handler
    // runs: axum's rejections of a path, query string or body that does not
    // parse (400), and for a JSON body one over the limit (413) or of
    // another content type (415); and every operation but this document
    // reads the database (503 while it is unreachable).
    let has_params = op["parameters"].as_array().is_some_and(|p| !p.is_empty());
    let body = op.get("requestBody").cloned();
    let responses = &mut op["responses"];
    let mut add = |status: &str, name: &str| {
        if responses.get(status).is_none() {
            responses[status] = json!({"$ref": format!("#/components/responses/{name}")});
        }
    };
    if has_params || body.is_some() {
        add("400", "BadRequest");
    }
    if body
        .as_ref()
        .is_some_and(|b| b["content"].get("application/json").is_some())
    {
        add("413", "TooLarge");
        add("415", "UnsupportedMediaType");
    }
    if !is_document {
        add("503", "Unavailable");
    }
    op["responses"]["default"] = json!({"$ref": "#/components/responses/Error"});
}

/// The finished document of this build's API, computed once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, raw) = super::api_routes().into_parts();
        serde_json::to_string(&document(&raw)).unwrap_or_default()
    })
}

/// `GET /api/v1/openapi.json` (public): this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
