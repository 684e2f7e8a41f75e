//! The operations dashboard: static ES modules and CSS from `aggregator/assets/`,
//! embedded in the binary with `include_bytes!` so that running the aggregator
//! needs no Node.js and no files beside it.
//!
//! - `/` and `/ui`, `/ui/*` answer `index.html` (the page routes itself with
//!   the History API, so a reload on `/ui/nodes/gate-01` works).
//! - `/assets/*` answers the file, or a 404 (a missing script must fail loudly,
//!   not come back as HTML).
//!
//! File names carry no content hash (there is no build step), so every
//! response is `Cache-Control: no-cache` with a strong `ETag`: browsers keep
//! their copy and revalidate it with one cheap 304 per file, and a new binary
//! is picked up on the next load.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    /// Path under `aggregator/assets/`, also the URL path under `/assets/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! embed {
    ($($path:literal => $ty:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $ty,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the dashboard is made of. A file added to `assets/` must be
/// listed here; the `index_references_only_embedded_assets` test catches a
/// script or stylesheet the page asks for that is missing.
static ASSETS: &[Asset] = embed![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/app.js" => JS,
    "js/api.js" => JS,
    "js/state.js" => JS,
    "js/live.js" => JS,
    "js/chart.js" => JS,
    "js/dom.js" => JS,
    "js/views/login.js" => JS,
    "js/views/overview.js" => JS,
    "js/views/nodes.js" => JS,
    "js/views/feed.js" => JS,
    "js/views/charts.js" => JS,
    "js/views/incidents.js" => JS,
    "js/views/map.js" => JS,
    "js/views/events.js" => JS,
];

/// What the page may load: only itself, plus images from anywhere (an
/// optional map tile server). WebSockets to the same host need `ws:`/`wss:`
/// spelled out in older Chromium.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss:; \
    frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

/// Routes of the dashboard; they need no state, so they merge into any router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*route}", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/favicon.ico", get(favicon))
}

/// FNV-1a, 64 bits: plenty to tell two versions of a file apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", fnv1a(a.body)))
            .collect()
    })
}

fn find(path: &str) -> Option<(&'static Asset, &'static str)> {
    let i = ASSETS.iter().position(|a| a.path == path)?;
    Some((&ASSETS[i], etags()[i].as_str()))
}

fn serve(path: &str, req_headers: &HeaderMap) -> Response {
    let Some((asset, etag)) = find(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no dashboard asset {path:?}"),
        )
            .into_response();
    };
    let fresh = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

async fn favicon(headers: HeaderMap) -> Response {
    serve("favicon.svg", &headers)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn fetch(uri: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(uri);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let resp = routes::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn root_and_client_routes_serve_the_page() {
        for uri in ["/", "/ui", "/ui/", "/ui/nodes/gate-01", "/ui/live"] {
            let (status, headers, body) = fetch(uri, None).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
            assert!(body.contains("<title>EdgeQI"), "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_content_type_and_revalidate() {
        let (status, headers, body) = fetch("/assets/js/app.js", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], JS);
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert!(body.contains("import"));
        let tag = headers[header::ETAG].to_str().expect("etag").to_owned();
        let (status, _, body) = fetch("/assets/js/app.js", Some(&tag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        let (status, _, _) = fetch("/assets/js/app.js", Some("\"stale\"")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, headers, _) = fetch("/assets/app.css", None).await;
        assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    }

    #[tokio::test]
    async fn a_missing_asset_is_a_404_not_the_page() {
        for uri in ["/assets/js/nope.js", "/assets/../Cargo.toml", "/assets/"] {
            let (status, _, body) = fetch(uri, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert!(!body.contains("<html"), "{uri}");
        }
    }

    /// Every `/assets/…` URL in the page and every relative import in the
    /// modules names an embedded file, so nothing 404s in a browser.
    #[test]
    fn index_references_only_embedded_assets() {
        let mut missing = vec![];
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body);
            for part in text.split("/assets/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                    .collect();
                if !name.is_empty() && find(&name).is_none() {
                    missing.push(format!("{} -> /assets/{name}", a.path));
                }
            }
            if a.path.ends_with(".js") {
                let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
                for part in text.split("from '").skip(1) {
                    let Some((spec, _)) = part.split_once('\'') else {
                        continue;
                    };
                    let resolved = resolve(dir, spec);
                    if find(&resolved).is_none() {
                        missing.push(format!("{} imports {spec} ({resolved})", a.path));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "not embedded: {missing:#?}");
    }

    fn resolve(dir: &str, spec: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for seg in spec.split('/') {
            match seg {
                "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    }
}
