//! Citizen reports and tenants: the form's `tenant_id`, the configured
//! default, refusals, and dedup that stays inside a tenant.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::super::tests::{create_user, fixture, get, login, post_report, send, test_photo, ADMIN};
use super::super::AppState;

async fn tenant(state: &AppState, name: &str) -> i64 {
    let (status, body) = send(
        state,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().expect("tenant id")
}

/// Signs in a new operator of `tenant`.
async fn operator(state: &AppState, name: &str, tenant: i64) -> String {
    let (status, body) = create_user(
        state,
        ADMIN,
        json!({"username": name, "password": "operator-pw-1", "role": "operator", "tenant_id": tenant}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, session) = login(state, name, "operator-pw-1").await;
    assert_eq!(status, StatusCode::OK, "{session}");
    session["token"].as_str().expect("token").to_owned()
}

/// Posts the bus photo at (lat, lng), with `tenant_id` when given.
async fn report(state: &AppState, lat: &str, tenant_id: Option<&str>) -> (StatusCode, Value) {
    let photo = test_photo();
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("photo", Some("bus.jpg"), &photo),
        ("lat", None, lat.as_bytes()),
        ("lng", None, b"13.4050"),
    ];
    if let Some(t) = tenant_id {
        fields.push(("tenant_id", None, t.as_bytes()));
    }
    post_report(state, &fields).await
}

/// The incident ids in the caller's `GET /api/v1/incidents`.
async fn listed(state: &AppState, token: &str) -> Vec<i64> {
    let (status, body) = get(state, "/api/v1/incidents", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_i64())
        .collect()
}

#[tokio::test]
async fn a_report_naming_a_tenant_is_that_tenants_incident_only() {
    let f = fixture();
    let s = &f.state;
    let (a, b) = (tenant(s, "north").await, tenant(s, "south").await);
    let (op_a, op_b) = (
        operator(s, "op-north", a).await,
        operator(s, "op-south", b).await,
    );
    let (status, rep) = report(s, "52.5200", Some(&a.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let incident = rep["incident_id"].as_i64().expect("incident");
    let report_id = rep["id"].as_str().expect("report id");

    let path = format!("/api/v1/incidents/{incident}");
    let (status, seen) = get(s, &path, Some(&op_a)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["tenant_id"], a);
    assert_eq!(seen["reports"][0]["tenant_id"], a, "{seen}");
    assert_eq!(listed(s, &op_a).await, [incident]);
    let photo = format!("/api/v1/reports/{report_id}/photo");
    assert_eq!(
        send(s, "GET", &photo, Some(&op_a), None).await.0,
        StatusCode::OK
    );

    // Tenant B sees none of it.
    assert_eq!(get(s, &path, Some(&op_b)).await.0, StatusCode::NOT_FOUND);
    assert!(listed(s, &op_b).await.is_empty());
    assert_eq!(
        send(s, "GET", &photo, Some(&op_b), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, stats) = get(s, "/api/v1/analytics/incidents", Some(&op_b)).await;
    assert_eq!(stats["total"], 0, "{stats}");

    // Dedup stays inside the tenant: the same spot for B opens B's own
    // incident; another report for A joins A's.
    let (_, for_b) = report(s, "52.5200", Some(&b.to_string())).await;
    assert_ne!(for_b["incident_id"].as_i64(), Some(incident), "{for_b}");
    assert_eq!(for_b["joined_existing"], false);
    let (_, again_a) = report(s, "52.52018", Some(&format!(" {a} "))).await;
    assert_eq!(again_a["incident_id"].as_i64(), Some(incident), "{again_a}");
    assert_eq!(again_a["joined_existing"], true);
    // And a report of no tenant joins neither.
    let (_, global) = report(s, "52.5200", None).await;
    let global = global["incident_id"].as_i64().expect("incident");
    assert!(global != incident && Some(global) != for_b["incident_id"].as_i64());
    assert_eq!(listed(s, &op_b).await.len(), 1);

    // The audit entry of the report is the tenant's.
    let (_, audit) = get(s, "/api/v1/audit?limit=100", None).await;
    let created = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "incident.create" && e["target"] == format!("incident:{incident}"))
        .cloned()
        .expect("audited");
    assert_eq!(created["tenant_id"], a, "{created}");
}

#[tokio::test]
async fn a_tenant_id_that_names_no_tenant_is_refused_without_detail() {
    let f = fixture();
    let s = &f.state;
    let a = tenant(s, "secret-city-name").await;
    for bad in [
        (a + 1).to_string(),
        "0".into(),
        "-3".into(),
        "north".into(),
        "1 OR 1=1".into(),
    ] {
        let (status, body) = report(s, "52.5", Some(&bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "unprocessable", "{bad}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert_eq!(message, "tenant_id does not name a tenant", "{bad}");
    }
    let (_, all) = get(s, "/api/v1/incidents", None).await;
    assert!(all["items"].as_array().expect("items").is_empty(), "{all}");
    // Empty is the same as leaving the field out.
    let (status, body) = report(s, "52.5", Some("")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, inc) = get(
        s,
        &format!("/api/v1/incidents/{}", body["incident_id"]),
        None,
    )
    .await;
    assert_eq!(inc["tenant_id"], Value::Null, "{inc}");
}

#[tokio::test]
async fn the_configured_default_tenant_takes_reports_that_name_none() {
    let f = fixture();
    let (a, b) = (
        tenant(&f.state, "north").await,
        tenant(&f.state, "south").await,
    );
    // As `reports.default_tenant_id = b` does at start-up.
    let mut incidents = crate::incidents::Incidents::new(f.state.incidents.store.clone(), None);
    incidents.report_tenant = Some(b);
    let s = &AppState {
        incidents: Arc::new(incidents),
        ..f.state.clone()
    };
    let (op_a, op_b) = (
        operator(s, "op-north", a).await,
        operator(s, "op-south", b).await,
    );
    let (status, rep) = report(s, "52.5200", None).await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let incident = rep["incident_id"].as_i64().expect("incident");
    assert_eq!(listed(s, &op_b).await, [incident]);
    assert!(listed(s, &op_a).await.is_empty());
    // A tenant named in the form wins over the default.
    let (_, named) = report(s, "52.5200", Some(&a.to_string())).await;
    let named = named["incident_id"].as_i64().expect("incident");
    assert_ne!(named, incident, "different tenants never share an incident");
    assert_eq!(listed(s, &op_a).await, [named]);
    assert_eq!(listed(s, &op_b).await, [incident]);
}

/// Posts `photo` as a report's photo (`name` is what the client calls it).
async fn report_photo(state: &AppState, name: &str, photo: &[u8]) -> (StatusCode, Value) {
    post_report(
        state,
        &[
            ("photo", Some(name), photo),
            ("lat", None, b"52.5200"),
            ("lng", None, b"13.4050"),
        ],
    )
    .await
}

#[tokio::test]
async fn photo_bombs_get_413_at_once_and_real_photos_still_go_through() {
    use crate::incidents::photo::tests::{jpeg_bomb, png_bomb, real_photo};
    let f = fixture();
    let s = &f.state;
    for (name, bomb) in [
        ("grey1.png", png_bomb(20_000, 20_000, 1, 0)),
        ("rgba.png", png_bomb(6000, 6000, 8, 6)),
        ("bomb.jpg", jpeg_bomb(20_000, 20_000)),
        // Within the pixel cap, over the decoded-bytes cap (16-bit RGBA:
        // 8 bytes a pixel natively, plus 3 for RGB8).
        ("deep.png", png_bomb(4500, 4500, 16, 6)),
    ] {
        let t = std::time::Instant::now();
        let (status, body) = report_photo(s, name, &bomb).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{name}: {body}");
        assert_eq!(body["error"]["code"], "too_large", "{name}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("scale it down"), "{name}: {msg}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{name} took {:?}",
            t.elapsed()
        );
    }
    let (status, body) = report_photo(s, "bus.jpg", &test_photo()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let png = real_photo(800, 600, image::ImageFormat::Png);
    let (status, body) = report_photo(s, "photo.png", &png).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = report_photo(s, "x.gif", b"GIF89a not really").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// A detector that holds its decode slot until told to let go.
#[derive(Debug)]
struct Gate {
    started: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl crate::incidents::PhotoAnalyzer for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn analyze(&self, _: &image::RgbImage) -> Result<Vec<crate::incidents::PhotoObject>, String> {
        if let Some(tx) = self.started.lock().expect("lock").take() {
            let _ = tx.send(());
            let _ = self.release.lock().expect("lock").recv();
        }
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_decode_slot_busy_a_report_gets_503_with_retry_after() {
    use crate::incidents::photo::{PhotoDecoder, PhotoLimits};
    let mut f = fixture();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        started: std::sync::Mutex::new(Some(started_tx)),
        release: std::sync::Mutex::new(release_rx),
    };
    let mut incidents =
        crate::incidents::Incidents::new(f.state.incidents.store.clone(), Some(Arc::new(gate)));
    incidents.photos = PhotoDecoder::new(PhotoLimits::default(), 1);
    incidents.photos.wait = std::time::Duration::from_millis(300);
    f.state.incidents = Arc::new(incidents);
    let s = f.state.clone();
    let photo = test_photo();
    let first = tokio::spawn({
        let (s, photo) = (s.clone(), photo.clone());
        async move { report_photo(&s, "a.jpg", &photo).await }
    });
    started_rx.await.expect("the first report holds the slot");
    // Straight through the router to read the Retry-After header.
    let (ctype, body) = super::super::tests::multipart(&[
        ("photo", Some("b.jpg"), &photo),
        ("lat", None, b"52.5200"),
        ("lng", None, b"13.4050"),
    ]);
    let req = axum::http::Request::post("/api/v1/reports")
        .header("content-type", ctype)
        .header("x-forwarded-for", "203.0.113.7")
        .body(axum::body::Body::from(body))
        .expect("req");
    let resp = tower::ServiceExt::oneshot(super::super::router(s.clone()), req)
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    release_tx.send(()).expect("release");
    let (status, body) = first.await.expect("join");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = report_photo(&s, "c.jpg", &photo).await;
    assert_eq!(status, StatusCode::CREATED, "slot free again: {body}");
}

#[tokio::test]
async fn an_oversized_content_length_gets_413_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::http_server::serve(
        listener,
        super::super::router(f.state.clone()),
        crate::http_server::HttpLimits::default(),
        rx,
    ));
    for (path, ctype) in [
        ("/api/v1/reports", "multipart/form-data; boundary=x"),
        ("/api/v1/auth/login", "application/json"),
    ] {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The head only: not one byte of the 100 MB announced.
        c.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: 100000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let t = std::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("answered without the body")
                .expect("read");
            assert!(n > 0, "{path}: closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{path}: {text}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{path}");
    }
}
