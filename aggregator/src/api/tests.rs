use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::Message;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use edgeqi_shared::{Detection, DetectionBatch};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::ws::{serve, LiveFilter};
use super::*;
use crate::live::{LiveEvent, NodeStatusEvent};

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
}

/// The bootstrap admin token every fixture accepts.
pub(super) const ADMIN: &str = "s3cret";

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = crate::store::open(&url).expect("store");
    let accounts = crate::accounts::open(&url).expect("accounts");
    Fixture {
        _dir: dir,
        state: AppState {
            store,
            live: LiveBus::new(16),
            ingest: Arc::new(IngestHealth::default()),
            accounts,
            auth: Arc::new(auth::AuthKeys::new(
                b"test-secret",
                chrono::Duration::hours(1),
                Some(ADMIN.into()),
            )),
            incidents: Arc::new(crate::incidents::Incidents::new(
                crate::incidents::open(&url).expect("incidents"),
                None,
            )),
            events: crate::events::EventStore::open(&url).expect("events"),
            reviews: crate::reviews::ReviewStore::open(&url).expect("reviews"),
            // No evaluator runs here: alerting is tested in crate::alerts.
            alerts: crate::alerts::Alerts::open(&url, Default::default())
                .expect("alerts")
                .0,
            node_credentials: crate::accounts::node_credentials::NodeCredentials::open(&url)
                .expect("node credentials")
                .with_reserved("edgeqi-aggregator"),
            registry: crate::registry::Registry::open(
                &url,
                edgeqi_shared::protocol::DEFAULT_MAX_PAYLOAD_BYTES,
            )
            .expect("registry"),
            metrics: None,
        },
    }
}

/// One request through the whole router (also used by the alerts tests).
pub(crate) async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = router(state.clone())
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// GET as the bootstrap admin unless another token is given.
pub(super) async fn get(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    send(state, "GET", uri, Some(token.unwrap_or(ADMIN)), None).await
}

async fn seed(state: &AppState, n_batches: u64, per_batch: usize) {
    for seq in 1..=n_batches {
        let batch = DetectionBatch {
            v: 1,
            node_id: "gate-01".into(),
            epoch: "e".into(),
            seq,
            sent_at: Utc::now(),
            detections: (0..per_batch)
                .map(|i| Detection {
                    ts: Utc::now(),
                    camera_id: "north".into(),
                    class_id: Some(5),
                    label: if i % 2 == 0 { "bus" } else { "person" }.into(),
                    score: 0.9,
                    bbox: [0.0, 0.0, 1.0, 1.0],
                    track_id: None,
                    zone: None,
                })
                .collect(),
            counts: vec![],
        };
        state.store.ingest_batch(&batch).await.expect("seed");
    }
}

#[tokio::test]
async fn token_guards_the_api_but_not_health() {
    let f = fixture();
    let (status, body) = send(&f.state, "GET", "/api/v1/nodes", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        get(&f.state, "/api/v1/nodes", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&f.state, "/api/v1/nodes", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &f.state,
            "GET",
            "/api/v1/stats/summary?access_token=s3cret",
            None,
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(get(&f.state, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_follows_the_broker_connection() {
    let f = fixture();
    let (status, body) = get(&f.state, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["mqtt"], "disconnected");
    f.state.ingest.connected.store(true, Ordering::Relaxed);
    assert_eq!(get(&f.state, "/readyz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn detections_page_through_with_cursors() {
    let f = fixture();
    seed(&f.state, 3, 5).await;
    let mut uri = "/api/v1/detections?node_id=gate-01&limit=4".to_owned();
    let mut ids = Vec::new();
    loop {
        let (status, body) = get(&f.state, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for item in body["items"].as_array().expect("items") {
            ids.push(item["id"].as_i64().expect("id"));
        }
        match body["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/detections?node_id=gate-01&limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 15);
    let mut dedup = ids.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), 15);

    let (_, body) = get(&f.state, "/api/v1/detections?label=bus&limit=100", None).await;
    assert_eq!(body["items"].as_array().expect("items").len(), 9);
    let (_, body) = get(&f.state, "/api/v1/stats/summary", None).await;
    assert_eq!(body["detections_total"], 15);
    assert_eq!(body["by_class"]["person"], 6);
    let (status, body) = get(&f.state, "/api/v1/nodes/gate-01", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ledger"][0]["acked_seq"], 3);
}

/// The document's ranges, enums and patterns are what the handlers take:
/// a value outside them is refused (not clamped or ignored), one inside is
/// served (tests/schemathesis.rs checks the whole document this way).
#[tokio::test]
async fn parameters_outside_the_document_are_refused_and_inside_it_served() {
    let f = fixture();
    for uri in [
        "/api/v1/nodes?limit=0",
        "/api/v1/nodes?limit=1001",
        "/api/v1/users?limit=",
        "/api/v1/audit?limit=18446744073709551616",
        "/api/v1/alerts?limit=0",
        "/api/v1/alerts?rule_id=0",
        "/api/v1/webhooks/deliveries?status=lost",
        "/api/v1/events?kind=vanished",
        "/api/v1/events?limit=5000",
        "/api/v1/incidents?status=",
        "/api/v1/reviews?kind=",
        "/api/v1/reviews?verdict=maybe",
        "/api/v1/reviews/export.zip?kind=photo",
        "/api/v1/stats/timeseries?by=",
        "/api/v1/stats/timeseries?bucket=",
        "/api/v1/stats/timeseries?bucket=1.5m",
        "/api/v1/stats/timeseries?bucket=0s",
        "/api/v1/stats/timeseries?bucket=05m",
        "/api/v1/stats/timeseries?bucket=5ms",
        "/api/v1/detections?min_score=-5e-324",
        "/api/v1/detections?min_score=1.0000000001",
        "/api/v1/events/e1/snapshot?view=huge",
    ] {
        let (status, body) = get(&f.state, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{uri}");
    }
    for uri in [
        "/api/v1/nodes?limit=1",
        "/api/v1/nodes?limit=1000",
        "/api/v1/alerts?rule_id=7&limit=1000",
        "/api/v1/webhooks/deliveries?status=failed",
        "/api/v1/events?kind=line_crossed",
        "/api/v1/incidents?status=in_progress",
        "/api/v1/reviews?kind=report&verdict=relabeled",
        "/api/v1/stats/timeseries?by=zone&bucket=90",
        "/api/v1/detections?min_score=0&limit=1",
    ] {
        let (status, body) = get(&f.state, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    let (_, ts) = get(&f.state, "/api/v1/stats/timeseries?bucket=2h", None).await;
    assert_eq!(ts["bucket_s"], 7200);
    assert_eq!(ts["by"], "label");
    let (status, _) = get(&f.state, "/api/v1/nodes/no%20such%20id/ledger", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a node id the pattern refuses"
    );
    // A tenant name counts characters (not bytes) and is not blank.
    let long = "é".repeat(128);
    let (status, body) = send(
        &f.state,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": long})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = send(
        &f.state,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": " \t "})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn bad_parameters_get_json_errors() {
    let f = fixture();
    for uri in [
        "/api/v1/detections?limit=0",
        "/api/v1/detections?limit=abc",
        "/api/v1/detections?since=yesterday",
        "/api/v1/detections?min_score=2",
        "/api/v1/detections?cursor=zz",
    ] {
        let (status, body) = get(&f.state, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["code"], "bad_request", "{uri}");
    }
    let (status, body) = get(&f.state, "/api/v1/nodes/ghost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("ghost"));
    // axum's own rejections speak the same error format.
    for (method, uri, want, code) in [
        (
            "GET",
            "/api/v1/incidents/abc",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/audit?limit=many",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("GET", "/api/v1/ws", StatusCode::BAD_REQUEST, "bad_request"),
        (
            "DELETE",
            "/api/v1/detections",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ] {
        let (status, body) = send(&f.state, method, uri, Some(ADMIN), None).await;
        assert_eq!(status, want, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], code, "{method} {uri}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {uri}: {body}"
        );
    }
}

fn status_event(node: &str) -> LiveEvent {
    LiveEvent::NodeStatus(NodeStatusEvent {
        node_id: node.into(),
        online: true,
        cause: "status".into(),
    })
}

#[tokio::test]
async fn websocket_filters_and_reports_lag() {
    let bus = LiveBus::new(4);
    let rx = bus.subscribe();
    let (out_tx, mut out_rx) = futures_channel::mpsc::unbounded::<Message>();
    let (in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
    let filter: LiveFilter = serde_json::from_str(r#"{"node_id":"a"}"#).expect("filter");
    // Overflow the 4-slot channel before the client reads anything.
    for i in 0..10 {
        bus.send(status_event(if i % 2 == 0 { "a" } else { "b" }));
    }
    let task = tokio::spawn(serve(out_tx, in_rx, rx, filter));
    let text = |m: Message| match m {
        Message::Text(t) => serde_json::from_str::<serde_json::Value>(&t).expect("json"),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(text(out_rx.next().await.expect("hello"))["type"], "hello");
    let lag = text(out_rx.next().await.expect("lag"));
    assert_eq!(lag["type"], "lagged");
    assert_eq!(lag["data"]["missed"], 6);
    // Of the 4 kept events, only node a's pass the filter.
    for _ in 0..2 {
        let e = text(out_rx.next().await.expect("event"));
        assert_eq!(
            (e["type"].as_str(), e["data"]["node_id"].as_str()),
            (Some("node_status"), Some("a"))
        );
    }
    // A new filter from the client takes effect.
    in_tx
        .unbounded_send(Ok(Message::Text(r#"{"types":["detection"]}"#.into())))
        .expect("send filter");
    assert_eq!(
        text(out_rx.next().await.expect("ack"))["type"],
        "subscribed"
    );
    bus.send(status_event("a"));
    in_tx
        .unbounded_send(Ok(Message::Text("{\"bogus\":1}".into())))
        .expect("send");
    assert_eq!(
        text(out_rx.next().await.expect("err"))["type"],
        "error",
        "status events are filtered out now"
    );
    drop(in_tx);
    task.await.expect("loop ends when the client goes away");
}

pub(super) async fn login(
    state: &AppState,
    user: &str,
    password: &str,
) -> (StatusCode, serde_json::Value) {
    send(
        state,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(serde_json::json!({"username": user, "password": password})),
    )
    .await
}

pub(super) async fn create_user(
    state: &AppState,
    token: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    send(state, "POST", "/api/v1/users", Some(token), Some(body)).await
}

#[tokio::test]
async fn provisioning_issues_mqtt_credentials_and_rotation_replaces_them() {
    let f = fixture();
    let s = &f.state;
    let (_, tenant) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "mqtt-city"})),
    )
    .await;
    let tenant = tenant["id"].as_i64().expect("tenant id");
    let provision = |node: &str| serde_json::json!({"node_id": node, "tenant_id": tenant});
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(provision("cam-7")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mqtt"]["username"], "cam-7");
    assert_eq!(body["mqtt"]["client_id"], "cam-7");
    let first = body["mqtt"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    assert!(s
        .node_credentials
        .verify("cam-7", &first)
        .await
        .expect("verify"));

    // Rotation: a new password, the old one is dead.
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes/cam-7/credentials",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = body["mqtt"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    assert_ne!(first, second);
    assert!(!s
        .node_credentials
        .verify("cam-7", &first)
        .await
        .expect("old"));
    assert!(s
        .node_credentials
        .verify("cam-7", &second)
        .await
        .expect("new"));

    // Unknown nodes, the aggregator's own client id, and non-admins are refused.
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes/ghost/credentials",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
    let (status, _) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(provision("edgeqi-aggregator")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    create_user(s, ADMIN, serde_json::json!({"username": "op-m", "password": "operator-m", "role": "operator", "tenant_id": tenant})).await;
    let (_, session) = login(s, "op-m", "operator-m").await;
    let op = session["token"].as_str().expect("token").to_owned();
    let (status, _) = send(
        s,
        "POST",
        "/api/v1/nodes/cam-7/credentials",
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(s, "POST", "/api/v1/nodes/cam-7/credentials", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Both are audited, and no password ever reaches the audit log.
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    let text = audit.to_string();
    assert!(
        text.contains("node.provision") && text.contains("node.credentials.rotate"),
        "{text}"
    );
    assert!(!text.contains(&first) && !text.contains(&second));
}

/// POSTs `body` as `ctype` to `uri`, no token.
async fn post_raw(
    state: &AppState,
    uri: &str,
    ctype: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let req = Request::post(uri)
        .header("content-type", ctype)
        .body(Body::from(body))
        .expect("request");
    let resp = router(state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn sign_in_refusals_say_what_is_wrong() {
    let f = fixture();
    let s = &f.state;
    let (status, _) = create_user(
        s,
        ADMIN,
        serde_json::json!({"username": "wanda", "password": "right-pass", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for (user, pass) in [("wanda", "wrong-pass"), ("nobody", "right-pass")] {
        let (status, body) = login(s, user, pass).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(
            body["error"]["message"], "unknown username or wrong password",
            "not a hint to send a token: {body}"
        );
    }
    // A route without a token still says to send one.
    let (_, body) = send(s, "GET", "/api/v1/auth/me", None, None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"),
        "{body}"
    );
    // Over the JSON limit: 413, as documented for every JSON body.
    let huge = serde_json::json!({"username": "u".repeat(1 << 20), "password": "x"});
    let (status, body) = post_raw(
        s,
        "/api/v1/auth/login",
        "application/json",
        huge.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    // Not JSON at all: 415 that says what to send.
    let (status, body) = post_raw(
        s,
        "/api/v1/auth/login",
        "application/x-www-form-urlencoded",
        b"username=wanda&password=right-pass".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("application/json"),
        "{body}"
    );
    // JSON of the wrong shape: 400 with the expected shape.
    let (status, body) = post_raw(
        s,
        "/api/v1/auth/login",
        "application/json",
        b"{\"user\": 1}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("username"),
        "{body}"
    );
}

#[tokio::test]
async fn login_roles_and_refresh() {
    let f = fixture();
    let s = &f.state;
    let (status, tenant) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "city-a"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let t = tenant["id"].as_i64().expect("tenant id");
    let (status, user) = create_user(s, ADMIN, serde_json::json!({"username": "vera", "password": "viewer-pass", "role": "viewer", "tenant_id": t})).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert!(
        user.get("password_hash").is_none(),
        "hashes never leave the server"
    );
    // Duplicate usernames are a conflict, bad roles unprocessable.
    let (status, _) = create_user(s, ADMIN, serde_json::json!({"username": "vera", "password": "viewer-pass", "role": "viewer", "tenant_id": t})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = create_user(s, ADMIN, serde_json::json!({"username": "x", "password": "long-enough", "role": "god", "tenant_id": t})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    assert_eq!(
        login(s, "vera", "wrong-pass").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(s, "nobody", "viewer-pass").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, session) = login(s, "vera", "viewer-pass").await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let token = session["token"].as_str().expect("token").to_owned();
    assert_eq!(session["user"]["role"], "viewer");

    let (status, me) = get(s, "/api/v1/auth/me", Some(&token)).await;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("viewer"))
    );
    // A viewer reads but cannot administer.
    assert_eq!(
        get(s, "/api/v1/nodes", Some(&token)).await.0,
        StatusCode::OK
    );
    let (status, body) = create_user(
        s,
        &token,
        serde_json::json!({"username": "eve", "password": "12345678", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        get(s, "/api/v1/audit", Some(&token)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(s, "/api/v1/dead-letters", Some(&token)).await.0,
        StatusCode::FORBIDDEN
    );
    // Tampered tokens are refused.
    let tampered = format!("{}x", token);
    assert_eq!(
        get(s, "/api/v1/nodes", Some(&tampered)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, fresh) = send(s, "POST", "/api/v1/auth/refresh", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fresh["token"].is_string());

    // Every mutation above is in the audit log, with who did it.
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["user.create", "tenant.create"]);
    assert_eq!(audit["items"][0]["actor"], "bootstrap-admin");
    assert_eq!(audit["items"][0]["after"]["username"], "vera");
}

#[tokio::test]
async fn tenants_see_only_their_nodes() {
    let f = fixture();
    let s = &f.state;
    seed(s, 2, 3).await; // node gate-01
    let mut other = DetectionBatch {
        v: 1,
        node_id: "other-01".into(),
        epoch: "e".into(),
        seq: 1,
        sent_at: Utc::now(),
        detections: vec![],
        counts: vec![],
    };
    other.detections.push(Detection {
        ts: Utc::now(),
        camera_id: "c".into(),
        class_id: None,
        label: "car".into(),
        score: 0.5,
        bbox: [0.0, 0.0, 1.0, 1.0],
        track_id: None,
        zone: None,
    });
    s.store.ingest_batch(&other).await.expect("ingest");
    let mut tenant_ids = Vec::new();
    for (name, node) in [("a", "gate-01"), ("b", "other-01")] {
        let (_, t) = send(
            s,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(serde_json::json!({"name": name})),
        )
        .await;
        let t = t["id"].as_i64().expect("id");
        let (status, body) = send(
            s,
            "POST",
            "/api/v1/nodes",
            Some(ADMIN),
            Some(serde_json::json!({"node_id": node, "tenant_id": t})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tenant_ids.push(t);
    }
    create_user(s, ADMIN, serde_json::json!({"username": "op-b", "password": "operator-b", "role": "operator", "tenant_id": tenant_ids[1]})).await;
    let (_, session) = login(s, "op-b", "operator-b").await;
    let token = session["token"].as_str().expect("token").to_owned();

    let (_, nodes) = get(s, "/api/v1/nodes", Some(&token)).await;
    let ids: Vec<&str> = nodes["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["other-01"]);
    assert_eq!(
        get(s, "/api/v1/nodes/gate-01", Some(&token)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(s, "/api/v1/nodes/gate-01/ledger", Some(&token)).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, dets) = get(s, "/api/v1/detections?limit=100", Some(&token)).await;
    assert_eq!(dets["items"].as_array().expect("items").len(), 1);
    let (_, dets) = get(s, "/api/v1/detections?node_id=gate-01", Some(&token)).await;
    assert!(dets["items"].as_array().expect("items").is_empty());
    let (_, sum) = get(s, "/api/v1/stats/summary", Some(&token)).await;
    assert_eq!(
        (
            sum["detections_total"].as_u64(),
            sum["nodes_total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, tenants) = get(s, "/api/v1/tenants", Some(&token)).await;
    assert_eq!(tenants["items"].as_array().expect("items").len(), 1);
    // The global admin sees everything.
    let (_, sum) = get(s, "/api/v1/stats/summary", None).await;
    assert_eq!(sum["detections_total"], 7);
}

#[tokio::test]
async fn api_keys_and_bad_request_bodies() {
    let f = fixture();
    let s = &f.state;
    let (status, key) = send(
        s,
        "POST",
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(serde_json::json!({"name": "grafana", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let k = key["key"].as_str().expect("key").to_owned();
    assert!(k.starts_with("eqk_"));
    let (_, keys) = get(s, "/api/v1/api-keys", None).await;
    assert_eq!(keys["items"][0]["id"], key["id"]);
    assert!(
        keys["items"][0].get("key").is_none(),
        "the key is shown once, at creation"
    );
    assert_eq!(
        get(s, "/api/v1/stats/summary", Some(&k)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(s, "/api/v1/stats/summary", Some("eqk_0000")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Revoked, the key stops working at once; the revocation is audited.
    let uri = format!("/api/v1/api-keys/{}", key["id"]);
    assert_eq!(
        send(s, "DELETE", &uri, Some(ADMIN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(s, "/api/v1/stats/summary", Some(&k)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(s, "DELETE", &uri, Some(ADMIN), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    assert_eq!(audit["items"][0]["action"], "api_key.revoke");

    // Wrong content type, broken JSON, unknown fields, huge body: error objects.
    let req = Request::post("/api/v1/users")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "text/plain")
        .body(Body::from("username=x"))
        .expect("req");
    let resp = router(s.clone()).oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let req = Request::post("/api/v1/users")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"username\": "))
        .expect("req");
    let resp = router(s.clone()).oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json error");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = create_user(s, ADMIN, serde_json::json!({"username": "a", "password": "long-enough", "role": "admin", "sudo": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = serde_json::json!({"name": "x".repeat(MAX_JSON_BODY + 10)});
    let (status, body) = send(s, "POST", "/api/v1/tenants", Some(ADMIN), Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // SQL-looking input is just data.
    let (status, t) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "x'); DROP TABLE users;--"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(t["name"], "x'); DROP TABLE users;--");
}

#[tokio::test]
async fn first_start_creates_one_admin() {
    let f = fixture();
    auth::bootstrap_admin(&f.state.accounts, false)
        .await
        .expect("bootstrap");
    assert_eq!(f.state.accounts.user_count().await.expect("count"), 1);
    auth::bootstrap_admin(&f.state.accounts, false)
        .await
        .expect("second start");
    assert_eq!(
        f.state.accounts.user_count().await.expect("count"),
        1,
        "only on the very first start"
    );
}

pub(super) fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "edgeqi-test-boundary";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub(super) async fn post_report(
    state: &AppState,
    fields: &[(&str, Option<&str>, &[u8])],
) -> (StatusCode, serde_json::Value) {
    let (ctype, body) = multipart(fields);
    let req = Request::post("/api/v1/reports")
        .header("content-type", ctype)
        .header("x-forwarded-for", "203.0.113.7")
        .body(Body::from(body))
        .expect("req");
    let resp = router(state.clone()).oneshot(req).await.expect("resp");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

pub(super) fn test_photo() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/bus.jpg"
    ))
    .expect("../shared/testdata/bus.jpg beside the checkout")
}

#[tokio::test]
async fn citizen_report_becomes_an_incident_and_walks_the_lifecycle() {
    let f = fixture();
    let s = &f.state;
    let photo = test_photo();
    let (status, rep) = post_report(
        s,
        &[
            ("photo", Some("bus.jpg"), &photo),
            ("lat", None, b"52.5200"),
            ("lng", None, b"13.4050"),
            ("notes", None, b"blocked lane"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let incident_id = rep["incident_id"].as_i64().expect("incident");
    assert_eq!(rep["status"], "new");
    let report_id = rep["id"].as_str().expect("id").to_owned();
    // A second report 20 m away joins the same incident; one 5 km away does not.
    let (_, near) = post_report(
        s,
        &[
            ("photo", Some("bus.jpg"), &photo),
            ("lat", None, b"52.52018"),
            ("lng", None, b"13.4050"),
        ],
    )
    .await;
    assert_eq!(near["incident_id"].as_i64(), Some(incident_id), "{near}");
    assert_eq!(near["joined_existing"], true);
    let (_, far) = post_report(
        s,
        &[
            ("photo", Some("bus.jpg"), &photo),
            ("lat", None, b"52.5650"),
            ("lng", None, b"13.4050"),
        ],
    )
    .await;
    assert_ne!(far["incident_id"].as_i64(), Some(incident_id));

    // Public status, no login.
    let (status, st) = send(s, "GET", &format!("/api/v1/status/{report_id}"), None, None).await;
    assert_eq!(
        (status, st["status"].as_str()),
        (StatusCode::OK, Some("new"))
    );
    assert_eq!(
        send(s, "GET", "/api/v1/status/rpt_nope", None, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // A viewer may look but not act.
    let (_, t) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "t"})),
    )
    .await;
    let t = t["id"].as_i64().expect("tenant");
    create_user(s, ADMIN, serde_json::json!({"username": "viv", "password": "viewer-pw", "role": "viewer", "tenant_id": t})).await;
    create_user(
        s,
        ADMIN,
        serde_json::json!({"username": "ops", "password": "operator-pw", "role": "admin"}),
    )
    .await;
    let viewer = login(s, "viv", "viewer-pw").await.1["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let ops = login(s, "ops", "operator-pw").await.1["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let path = format!("/api/v1/incidents/{incident_id}");
    let (status, _) = send(
        s,
        "PATCH",
        &path,
        Some(&viewer),
        Some(serde_json::json!({"status": "acknowledged"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The public incident belongs to no tenant: the tenant viewer does not see it.
    assert_eq!(get(s, &path, Some(&viewer)).await.0, StatusCode::NOT_FOUND);

    // Walk it: new → acknowledged → in_progress → resolved → closed, refusing a skip.
    let (status, body) = send(
        s,
        "PATCH",
        &path,
        Some(&ops),
        Some(serde_json::json!({"status": "closed"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, body) = send(
        s,
        "PATCH",
        &path,
        Some(&ops),
        Some(serde_json::json!({"status": "teleported"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for (next, extra) in [
        ("acknowledged", serde_json::json!({"assignee": "crew-7"})),
        (
            "in_progress",
            serde_json::json!({"comment": "crew on site"}),
        ),
        ("resolved", serde_json::json!({})),
        ("closed", serde_json::json!({})),
    ] {
        let mut body = extra;
        body["status"] = serde_json::json!(next);
        let (status, inc) = send(s, "PATCH", &path, Some(&ops), Some(body)).await;
        assert_eq!(
            (status, inc["status"].as_str()),
            (StatusCode::OK, Some(next)),
            "{inc}"
        );
    }
    let (_, inc) = get(s, &path, Some(&ops)).await;
    assert_eq!(inc["assignee"], "crew-7");
    assert_eq!(inc["report_count"], 2);
    assert_eq!(inc["reports"].as_array().map(Vec::len), Some(2));
    assert_eq!(inc["comments"][0]["body"], "crew on site");
    assert_eq!(inc["comments"][0]["author"], "ops");
    assert!(inc["resolved_at"].is_string() && inc["acknowledged_at"].is_string());
    assert_eq!(inc["sla_breached"], false);
    let (status, st) = send(s, "GET", &format!("/api/v1/status/{report_id}"), None, None).await;
    assert_eq!(
        (status, st["status"].as_str()),
        (StatusCode::OK, Some("closed"))
    );

    // The photo is kept and served to staff.
    let req = Request::get(format!("/api/v1/reports/{report_id}/photo"))
        .header("authorization", format!("Bearer {ops}"))
        .body(Body::empty())
        .expect("req");
    let resp = router(s.clone()).oneshot(req).await.expect("resp");
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len(),
        photo.len()
    );

    // Analytics and the audit trail.
    let (_, stats) = get(s, "/api/v1/analytics/incidents", None).await;
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["by_status"]["closed"], 1);
    let (_, areas) = get(s, "/api/v1/analytics/areas?cell_deg=0.01", None).await;
    assert_eq!(areas["items"][0]["rank"], 1);
    let (status, hot) = get(s, "/api/v1/analytics/hotspots?cell_m=500", None).await;
    assert_eq!(status, StatusCode::OK, "{hot}");
    let cells = hot["items"].as_array().expect("items");
    assert!(!cells.is_empty(), "{hot}");
    let counted: u64 = cells.iter().map(|c| c["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(hot["incidents"].as_u64(), Some(counted), "{hot}");
    let (status, bad) = get(s, "/api/v1/analytics/hotspots?cell_m=1", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    let (_, audit) = get(s, "/api/v1/audit?limit=100", None).await;
    let updates = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "incident.update")
        .count();
    assert_eq!(updates, 4);
}

#[tokio::test]
async fn malformed_reports_are_refused_with_error_objects() {
    let f = fixture();
    let s = &f.state;
    let photo = test_photo();
    let cases: Vec<(Vec<(&str, Option<&str>, &[u8])>, StatusCode)> = vec![
        (
            vec![
                ("photo", Some("x.jpg"), b"not an image at all"),
                ("lat", None, b"52.5"),
                ("lng", None, b"13.4"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![
                ("photo", Some("bus.jpg"), &photo),
                ("lat", None, b"200"),
                ("lng", None, b"13.4"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![("photo", Some("bus.jpg"), &photo), ("lat", None, b"52.5")],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![("lat", None, b"52.5"), ("lng", None, b"13.4")],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![
                ("photo", Some("bus.jpg"), &photo),
                ("lat", None, b"1; DROP TABLE incidents"),
                ("lng", None, b"13.4"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![
                ("photo", Some("bus.jpg"), &photo[..photo.len() / 3]),
                ("lat", None, b"52.5"),
                ("lng", None, b"13.4"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (i, (fields, want)) in cases.into_iter().enumerate() {
        let (status, body) = post_report(s, &fields).await;
        assert_eq!(status, want, "case {i}: {body}");
        assert!(body["error"]["message"].is_string(), "case {i}: {body}");
    }
    // Wrong content type.
    let req = Request::post("/api/v1/reports")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .expect("req");
    assert_eq!(
        router(s.clone()).oneshot(req).await.expect("resp").status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Over the size limit.
    let huge = vec![0xffu8; MAX_REPORT_BODY + 1024];
    let (status, body) = post_report(
        s,
        &[
            ("photo", Some("big.jpg"), &huge),
            ("lat", None, b"1"),
            ("lng", None, b"1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        get(s, "/api/v1/analytics/incidents", None).await.1["total"],
        0,
        "nothing was created"
    );
}

#[tokio::test]
async fn a_bus_photo_is_classified_by_yolo_into_a_vehicle_incident() {
    let dir = tempfile::tempdir().expect("tmp");
    let onnx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/models/yolov8n_int8.onnx"
    );
    let model = dir.path().join("yolov8n.safetensors");
    edgeqi_shared::detector::import::import_onnx(
        std::path::Path::new(onnx),
        &model,
        &mut |_, _| {},
    )
    .expect("import ../shared/models/yolov8n_int8.onnx");
    let analyzer = crate::incidents::yolo::YoloAnalyzer::load(&model).expect("load model");
    let mut f = fixture();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    f.state.incidents = Arc::new(crate::incidents::Incidents::new(
        crate::incidents::open(&url).expect("incidents"),
        Some(Arc::new(analyzer)),
    ));
    let photo = test_photo();
    let (status, rep) = post_report(
        &f.state,
        &[
            ("photo", Some("bus.jpg"), &photo),
            ("lat", None, b"52.52"),
            ("lng", None, b"13.40"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let labels: Vec<&str> = rep["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .filter_map(|d| d["label"].as_str())
        .collect();
    assert!(labels.contains(&"bus"), "{labels:?}");
    assert!(labels.contains(&"person"), "{labels:?}");
    assert_eq!(rep["category"], "vehicle", "the bus is the main subject");
    assert_eq!(rep["severity"], "high", "the bus fills most of the photo");
    let (_, inc) = get(
        &f.state,
        &format!("/api/v1/incidents/{}", rep["incident_id"]),
        None,
    )
    .await;
    assert_eq!(inc["category"], "vehicle");
    assert_eq!(inc["title"], "vehicle: bus reported");
}

#[tokio::test]
async fn track_events_line_counts_and_snapshots_are_served() {
    use base64::Engine;
    use edgeqi_shared::protocol::{EventBatch, LineCount, Snapshot, TrackEvent};
    let f = fixture();
    let s = &f.state;
    let now = Utc::now();
    let event = |id: &str, kind: &str| TrackEvent {
        id: id.into(),
        ts: now,
        camera_id: "north".into(),
        track_id: 7,
        track_key: "run1-north-7".into(),
        kind: kind.into(),
        class_id: Some(5),
        label: "bus".into(),
        score: 0.8,
        bbox: [1.0, 2.0, 3.0, 4.0],
        zone: None,
        line: (kind == "line_crossed").then(|| "stop-line".to_owned()),
        direction: (kind == "line_crossed").then(|| "in".to_owned()),
        dwell_s: None,
    };
    let batch = EventBatch {
        v: 1,
        node_id: "gate-01".into(),
        sent_at: now,
        events: vec![
            event("e1", "appeared"),
            event("e2", "line_crossed"),
            event("e3", "left"),
        ],
        line_counts: vec![LineCount {
            camera_id: "north".into(),
            line: "stop-line".into(),
            label: "bus".into(),
            direction: "in".into(),
            count: 3,
            since: now,
        }],
    };
    s.events.record_events(batch.clone()).await.expect("events");
    s.events
        .record_events(batch)
        .await
        .expect("a resend is harmless");
    let jpeg = [0xFFu8, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9];
    let snap = Snapshot {
        v: 1,
        node_id: "gate-01".into(),
        camera_id: "north".into(),
        track_id: 7,
        track_key: "run1-north-7".into(),
        event_id: "e3".into(),
        ts: now,
        class_id: Some(5),
        label: "bus".into(),
        score: 0.8,
        bbox: [1.0, 2.0, 3.0, 4.0],
        content_type: "image/jpeg".into(),
        jpeg_b64: base64::engine::general_purpose::STANDARD.encode(jpeg),
        frame_jpeg_b64: None,
    };
    s.events.record_snapshot(&snap).await.expect("snapshot");
    let mut bad = snap;
    bad.jpeg_b64 = "not base64!".into();
    assert!(s.events.record_snapshot(&bad).await.is_err());

    let (status, body) = get(s, "/api/v1/events?node_id=gate-01", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["items"][0]["has_snapshot"], true);
    let (_, body) = get(s, "/api/v1/events?kind=line_crossed", None).await;
    assert_eq!(body["items"][0]["direction"], "in");
    let (_, lines) = get(s, "/api/v1/stats/lines", None).await;
    assert_eq!(lines["items"][0]["count"], 3);
    // Every event of the track shows the track's snapshot.
    for id in ["e1", "e3"] {
        let req = Request::get(format!("/api/v1/events/{id}/snapshot"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .expect("req");
        let resp = router(s.clone()).oneshot(req).await.expect("resp");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "image/jpeg");
        assert_eq!(
            &resp.into_body().collect().await.expect("body").to_bytes()[..],
            &jpeg[..]
        );
    }
    assert_eq!(
        get(s, "/api/v1/events/nope/snapshot", None).await.0,
        StatusCode::NOT_FOUND
    );
}

/// Every `(METHOD, path)` the OpenAPI document lists, with its `x-edgeqi-role`.
fn documented_operations(doc: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if op.get("responses").is_none() {
                continue; // `parameters` and other non-operation keys
            }
            ops.push((
                method.to_uppercase(),
                path.clone(),
                op["x-edgeqi-role"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    ops.sort();
    ops
}

/// A URI for a documented path, with `1` for every path parameter.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('1');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.as_str()) {
                    ("$ref", Some(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_public_complete_and_consistent() {
    let f = fixture();
    let (status, doc) = send(&f.state, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "served without a token");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let ops = documented_operations(&doc);
    assert!(ops.len() >= 30, "{ops:?}");
    for expected in [
        ("GET", "/api/v1/detections"),
        ("PATCH", "/api/v1/incidents/{id}"),
        ("POST", "/api/v1/reports"),
        ("GET", "/api/v1/openapi.json"),
    ] {
        assert!(
            ops.iter()
                .any(|(m, p, _)| (m.as_str(), p.as_str()) == expected),
            "{expected:?} missing"
        );
    }

    // Every reference resolves, every operation id is unique.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r.rsplit('/').next().expect("ref name");
        let kind = if r.starts_with("#/components/schemas/") {
            "schemas"
        } else {
            "responses"
        };
        assert!(doc["components"][kind].get(name).is_some(), "dangling {r}");
    }
    let mut ids: Vec<_> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("item").values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "operation ids must be unique");

    // The document and the router agree: every documented operation is
    // routed (not the API fallback, not 405), and its declared role is what
    // the handler asks for (protected ones refuse a missing token).
    for (method, path, role) in &ops {
        assert!(
            openapi::ROLES.contains(&role.as_str()),
            "{method} {path}: x-edgeqi-role {role:?}"
        );
        let (status, body) = send(&f.state, method, &concrete(path), None, None).await;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} not routed"
        );
        assert_ne!(
            body["error"]["message"], "no such API route",
            "{method} {path} not routed"
        );
        if role == "public" {
            assert_ne!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} is public"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} needs {role}"
            );
            assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
}

/// The router's one source of routes is `api_routes()`: an `/api/v1` route
/// added with a bare `.route(…)` would be served but missing from the
/// document, so no API module may call it.
#[test]
fn api_routes_are_only_added_through_the_documented_builder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    for entry in std::fs::read_dir(&dir).expect("src/api") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".rs") || name == "dashboard.rs" || name.starts_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        for (i, line) in text.lines().enumerate() {
            let bare = [".route(", ".route_service(", ".nest_service("]
                .iter()
                .any(|c| line.contains(c));
            // Outside /api/v1: health, readiness and metrics.
            let allowed = ["\"/healthz\"", "\"/readyz\"", "\"/metrics\""]
                .iter()
                .any(|p| line.contains(p));
            assert!(
                !bare || allowed,
                "{name}:{}: add API routes with ApiRoutes::routes(routes!(handler)) and a \
                 #[utoipa::path] on the handler, so they appear in the OpenAPI document: {line}",
                i + 1
            );
        }
    }
}

/// A request from a socket peer, the way `main` serves (ConnectInfo).
async fn from_peer(
    state: &AppState,
    peer: &str,
    forwarded_for: &str,
    uri: &str,
    body: serde_json::Value,
) -> StatusCode {
    let mut req = Request::post(uri)
        .header("content-type", "application/json")
        .header("x-forwarded-for", forwarded_for)
        .body(Body::from(body.to_string()))
        .expect("req");
    let peer: std::net::SocketAddr = peer.parse().expect("peer");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    router(state.clone())
        .oneshot(req)
        .await
        .expect("resp")
        .status()
}

#[tokio::test]
async fn sign_ins_and_reports_are_rate_limited_per_address_not_per_header() {
    let f = fixture();
    let s = &f.state;
    let wrong = serde_json::json!({"username": "nobody", "password": "wrong-password"});
    // A client that names a new X-Forwarded-For every time is still one address.
    for i in 0..auth::LOGIN_ATTEMPTS_PER_MINUTE {
        let status = from_peer(
            s,
            "198.51.100.9:4000",
            &format!("10.0.0.{i}"),
            "/api/v1/auth/login",
            wrong.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let status = from_peer(
        s,
        "198.51.100.9:4001",
        "10.9.9.9",
        "/api/v1/auth/login",
        wrong.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected.
    let status = from_peer(
        s,
        "198.51.100.10:4000",
        "",
        "/api/v1/auth/login",
        wrong.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Behind a reverse proxy on this host, the forwarded address counts.
    for i in 0..20 {
        let status = from_peer(
            s,
            "127.0.0.1:5000",
            &format!("203.0.113.{i}"),
            "/api/v1/reports",
            serde_json::json!({}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "report {i} is counted per forwarded address"
        );
    }
    for i in 0..20 {
        let status = from_peer(
            s,
            "198.51.100.11:5000",
            &format!("203.0.113.{i}"),
            "/api/v1/reports",
            serde_json::json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "report {i}");
    }
    let status = from_peer(
        s,
        "198.51.100.11:5001",
        "203.0.113.200",
        "/api/v1/reports",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the 21st report from one address"
    );

    // The audit log records where a change came from, not where the client says it did.
    let mut req = Request::post("/api/v1/tenants")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-real-ip", "5.6.7.8")
        .body(Body::from(
            serde_json::json!({"name": "from-afar"}).to_string(),
        ))
        .expect("req");
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "198.51.100.12:6000"
            .parse::<std::net::SocketAddr>()
            .expect("peer"),
    ));
    let resp = router(s.clone()).oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "tenant.create", "{audit}");
    assert_eq!(entry["remote_addr"], "198.51.100.12");
}

#[tokio::test]
async fn reviews_are_audited_shown_in_lists_and_export_as_a_yolo_dataset() {
    use std::io::Read;
    let f = fixture();
    let s = &f.state;
    seed(s, 1, 2).await;
    let (_, page) = get(s, "/api/v1/detections", None).await;
    let det = page["items"][0]["id"].as_i64().expect("detection id");
    assert!(page["items"][0]["review"].is_null(), "not reviewed yet");
    let photo = test_photo();
    let (width, height) = image::image_dimensions(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/bus.jpg"
    ))
    .expect("bus.jpg size");
    let fields = |lat: &'static [u8]| -> Vec<(&'static str, Option<&'static str>, Vec<u8>)> {
        vec![
            ("photo", Some("p.jpg"), photo.clone()),
            ("lat", None, lat.to_vec()),
            ("lng", None, b"13.4".to_vec()),
        ]
    };
    let mut report_ids = Vec::new();
    for lat in [&b"52.5"[..], &b"48.1"[..]] {
        let f = fields(lat);
        let refs: Vec<(&str, Option<&str>, &[u8])> =
            f.iter().map(|(a, b, c)| (*a, *b, c.as_slice())).collect();
        let (status, report) = post_report(s, &refs).await;
        assert_eq!(status, StatusCode::CREATED, "{report}");
        report_ids.push((
            report["id"].as_str().expect("id").to_owned(),
            report["incident_id"].as_i64().expect("incident"),
        ));
    }
    let (kept, incident) = report_ids[0].clone();
    let (rejected, _) = report_ids[1].clone();

    // Who may review, and what a review must say.
    let (status, viewer) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "r"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    create_user(s, ADMIN, serde_json::json!({"username": "rev-viewer", "password": "password-1", "role": "viewer", "tenant_id": viewer["id"]})).await;
    let (_, session) = login(s, "rev-viewer", "password-1").await;
    let viewer_token = session["token"].as_str().expect("token").to_owned();
    let review_uri = format!("/api/v1/reports/{kept}/review");
    let (status, _) = send(
        s,
        "POST",
        &review_uri,
        Some(&viewer_token),
        Some(serde_json::json!({"verdict": "confirmed"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        serde_json::json!({"verdict": "maybe"}),
        serde_json::json!({"verdict": "relabeled"}),
        serde_json::json!({"verdict": "confirmed", "label": "bus"}),
        serde_json::json!({"verdict": "relabeled", "objects": [{"label": "bus", "bbox": [10.0, 10.0, 5.0, 20.0]}]}),
    ] {
        let (status, body) = send(s, "POST", &review_uri, Some(ADMIN), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(
        send(
            s,
            "POST",
            "/api/v1/reports/rpt_nope/review",
            Some(ADMIN),
            Some(serde_json::json!({"verdict": "confirmed"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // A report relabeled with two boxes, another rejected, a detection relabeled.
    let objects = serde_json::json!([
        {"label": "bus", "bbox": [10.0, 200.0, 800.0, 760.0]},
        {"label": "person", "bbox": [50.5, 400.0, 250.0, 900.0]}
    ]);
    let (status, review) = send(
        s,
        "POST",
        &review_uri,
        Some(ADMIN),
        Some(
            serde_json::json!({"verdict": "relabeled", "objects": objects, "note": "two, not one"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert_eq!(review["verdict"], "relabeled");
    assert_eq!(review["reviewer"], "bootstrap-admin");
    let (status, _) = send(
        s,
        "POST",
        &format!("/api/v1/reports/{rejected}/review"),
        Some(ADMIN),
        Some(serde_json::json!({"verdict": "rejected"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, review) = send(
        s,
        "POST",
        &format!("/api/v1/detections/{det}/review"),
        Some(ADMIN),
        Some(serde_json::json!({"verdict": "relabeled", "label": "truck"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert_eq!(review["objects"][0]["label"], "truck");

    // Visible where the subjects are listed, and audited.
    let (_, page) = get(s, "/api/v1/detections", None).await;
    let listed = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|d| d["id"] == det)
        .expect("det");
    assert_eq!(listed["review"]["verdict"], "relabeled");
    let (_, detail) = get(s, &format!("/api/v1/incidents/{incident}"), None).await;
    assert_eq!(
        detail["reports"][0]["review"]["verdict"], "relabeled",
        "{detail}"
    );
    let (_, reviews) = get(s, "/api/v1/reviews?kind=report", None).await;
    assert_eq!(reviews["items"].as_array().map(Vec::len), Some(2));
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    assert!(audit["items"]
        .as_array()
        .expect("audit")
        .iter()
        .any(|e| e["action"] == "review.record" && e["target"] == format!("report:{kept}")));

    // The export: the kept report's photo and labels, nothing of the rejected one.
    let req = Request::get("/api/v1/reviews/export.zip")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .expect("req");
    let resp = router(s.clone()).oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).expect("a zip");
    let mut names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "data.yaml".to_owned(),
            format!("images/{kept}.jpg"),
            format!("labels/{kept}.txt"),
            "manifest.json".to_owned()
        ]
    );
    let mut read = |name: &str| {
        let mut text = String::new();
        zip.by_name(name)
            .expect(name)
            .read_to_string(&mut text)
            .expect("utf-8");
        text
    };
    let yaml = read("data.yaml");
    assert!(
        yaml.contains("nc: 2\nnames:\n  - 'bus'\n  - 'person'\n"),
        "{yaml}"
    );
    let labels = read(&format!("labels/{kept}.txt"));
    let (w, h) = (f64::from(width), f64::from(height));
    let expect = |class: usize, b: [f64; 4]| {
        let (x2, y2) = (b[2].min(w), b[3].min(h));
        format!(
            "{class} {:.6} {:.6} {:.6} {:.6}",
            (b[0] + x2) / 2.0 / w,
            (b[1] + y2) / 2.0 / h,
            (x2 - b[0]) / w,
            (y2 - b[1]) / h
        )
    };
    let lines: Vec<&str> = labels.lines().collect();
    assert_eq!(
        lines,
        vec![
            expect(0, [10.0, 200.0, 800.0, 760.0]),
            expect(1, [50.5, 400.0, 250.0, 900.0])
        ],
        "{labels}"
    );
    for line in &lines {
        let v: Vec<f64> = line
            .split(' ')
            .skip(1)
            .map(|x| x.parse().expect("number"))
            .collect();
        assert!(
            v.iter().all(|x| (0.0..=1.0).contains(x)),
            "normalised: {line}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&read("manifest.json")).expect("manifest");
    let skipped = manifest["skipped"].as_array().expect("skipped");
    assert!(skipped
        .iter()
        .any(|e| e["reason"] == "rejected" && e["review"]["subject"] == rejected.as_str()));
    assert!(skipped
        .iter()
        .any(|e| e["review"]["kind"] == "detection" && e["objects"][0]["label"] == "truck"));
    let mut image = Vec::new();
    zip.by_name(&format!("images/{kept}.jpg"))
        .expect("image")
        .read_to_end(&mut image)
        .expect("read");
    assert_eq!(image, photo, "the photo as the citizen sent it");
}

/// A minimal RFC 4180 reader for checking exports: records of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

async fn raw(
    state: &AppState,
    uri: &str,
    token: &str,
    accept: Option<&str>,
) -> (StatusCode, String, String) {
    let mut req = Request::get(uri).header("authorization", format!("Bearer {token}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = router(state.clone())
        .oneshot(req.body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        ctype,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

#[tokio::test]
async fn lists_export_as_csv_and_ndjson_streaming_every_page_within_scope() {
    let f = fixture();
    let s = &f.state;
    seed(s, 3, 500).await;
    let tricky = "bus, \"double-decker\"\nred";
    let mut batch = DetectionBatch {
        v: 1,
        node_id: "gate-01".into(),
        epoch: "e".into(),
        seq: 4,
        sent_at: Utc::now(),
        detections: vec![],
        counts: vec![],
    };
    batch.detections.push(Detection {
        ts: Utc::now(),
        camera_id: "north".into(),
        class_id: None,
        label: tricky.into(),
        score: 0.5,
        bbox: [1.0, 2.0, 3.0, 4.0],
        track_id: None,
        zone: Some("a,b".into()),
    });
    s.store.ingest_batch(&batch).await.expect("tricky");

    // CSV: every row (past the 1000-row page), fields quoted where needed.
    let (status, ctype, text) = raw(s, "/api/v1/detections?format=csv&limit=5", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    assert!(
        text.contains("\"bus, \"\"double-decker\"\"\nred\""),
        "quoted: {}",
        &text[..300.min(text.len())]
    );
    let rows = parse_csv(&text);
    assert_eq!(
        rows[0][..6],
        ["id", "ts", "node_id", "camera_id", "class_id", "label"]
    );
    assert_eq!(rows.len(), 1 + 1501, "header and every detection");
    assert!(
        rows.iter().all(|r| r.len() == rows[0].len()),
        "same width everywhere"
    );
    let trick = rows
        .iter()
        .find(|r| r[5] == tricky)
        .expect("the tricky label survives the round trip");
    assert_eq!(trick[12], "a,b");
    assert_eq!(trick[7..11], ["1.0", "2.0", "3.0", "4.0"]);
    let mut ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1501, "no row twice across pages");
    // Filters apply to exports too.
    let (_, _, text) = raw(s, "/api/v1/detections?format=csv&label=person", ADMIN, None).await;
    assert_eq!(parse_csv(&text).len(), 1 + 750);

    // NDJSON by Accept header: one JSON object a line.
    let (status, ctype, text) =
        raw(s, "/api/v1/detections", ADMIN, Some("application/x-ndjson")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/x-ndjson");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1501);
    assert!(lines.iter().any(|l| l["label"] == tricky));

    // A bad format is a JSON error; a tenant's viewer exports only its nodes (none here).
    let (status, body) = get(s, "/api/v1/detections?format=xml", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (_, tenant) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "empty"})),
    )
    .await;
    create_user(s, ADMIN, serde_json::json!({"username": "ex-viewer", "password": "password-1", "role": "viewer", "tenant_id": tenant["id"]})).await;
    let (_, session) = login(s, "ex-viewer", "password-1").await;
    let token = session["token"].as_str().expect("token").to_owned();
    let (status, _, text) = raw(s, "/api/v1/detections?format=csv", &token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse_csv(&text).len(), 1, "only the header");
    let (_, _, text) = raw(s, "/api/v1/detections?format=ndjson", &token, None).await;
    assert!(text.is_empty());

    // Incidents: free text (the assignee) with commas, quotes and a newline.
    let photo = test_photo();
    let (status, report) = post_report(
        s,
        &[
            ("photo", Some("p.jpg"), &photo),
            ("lat", None, b"52.5"),
            ("lng", None, b"13.4"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = report["incident_id"].as_i64().expect("incident");
    let assignee = "Smith, \"Jo\"\nteam 2";
    let (status, _) = send(
        s,
        "PATCH",
        &format!("/api/v1/incidents/{id}"),
        Some(ADMIN),
        Some(serde_json::json!({"assignee": assignee})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, ctype, text) = raw(s, "/api/v1/incidents?format=csv", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/csv"));
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 2, "{text}");
    let col = |name: &str| rows[0].iter().position(|h| h == name).expect(name);
    assert_eq!(rows[1][col("assignee")], assignee);
    assert_eq!(rows[1][col("id")], id.to_string());
    assert_eq!(rows[1][col("status")], "new");
    let (_, _, text) = raw(s, "/api/v1/incidents?format=ndjson", ADMIN, None).await;
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).expect("one line");
    assert_eq!(line["assignee"], assignee);
    // The JSON page is unchanged by all this.
    let (_, page) = get(s, "/api/v1/incidents", None).await;
    assert_eq!(page["items"][0]["assignee"], assignee);
    // Audit, users, nodes export too.
    for uri in [
        "/api/v1/audit?format=csv",
        "/api/v1/users?format=csv",
        "/api/v1/nodes?format=csv",
        "/api/v1/events?format=csv",
        "/api/v1/reviews?format=csv",
        "/api/v1/tenants?format=ndjson",
        "/api/v1/dead-letters?format=csv",
    ] {
        let (status, ctype, _) = raw(s, uri, ADMIN, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            ctype.starts_with("text/csv") || ctype == "application/x-ndjson",
            "{uri}: {ctype}"
        );
    }
}

/// Walks `uri` (which has a `?`) page by page as `token`; the ids in order.
async fn walk_ids(state: &AppState, uri: &str, token: &str) -> (Vec<i64>, Vec<usize>) {
    let (mut ids, mut sizes, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let page_uri = match &cursor {
            Some(c) => format!("{uri}&cursor={c}"),
            None => uri.to_owned(),
        };
        let (status, page) = get(state, &page_uri, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page_uri}: {page}");
        let items = page["items"].as_array().expect("items");
        sizes.push(items.len());
        ids.extend(items.iter().map(|d| d["id"].as_i64().expect("id")));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (ids, sizes),
        }
        assert!(sizes.len() < 50, "the walk does not end");
    }
}

#[tokio::test]
async fn dead_letters_walk_in_pages_newest_first_within_the_tenant() {
    let f = fixture();
    let s = &f.state;
    let (_, t) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "dl-city"})),
    )
    .await;
    let t = t["id"].as_i64().expect("tenant");
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(serde_json::json!({"node_id": "gate-a", "tenant_id": t})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    create_user(s, ADMIN, serde_json::json!({"username": "dl-op", "password": "operator-pw", "role": "operator", "tenant_id": t})).await;
    let op = login(s, "dl-op", "operator-pw").await.1["token"]
        .as_str()
        .expect("token")
        .to_owned();
    // Seven refused payloads: four of the tenant's node, three of others.
    for (i, node) in [
        "gate-a", "gate-b", "gate-a", "gate-b", "gate-a", "gate-a", "gate-b",
    ]
    .into_iter()
    .enumerate()
    {
        s.store
            .dead_letter(
                &format!("edgeqi/v1/nodes/{node}/detections"),
                Some(node),
                "invalid_json",
                &format!("bad {i}"),
                b"{oops",
            )
            .await
            .expect("dead letter");
    }
    let (all, sizes) = walk_ids(s, "/api/v1/dead-letters?limit=3", ADMIN).await;
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    // The tenant's operator walks only its node's, in full pages.
    let (mine, sizes) = walk_ids(s, "/api/v1/dead-letters?limit=2", &op).await;
    assert_eq!(sizes, [2, 2]);
    let (_, everything) = get(s, "/api/v1/dead-letters?limit=100", None).await;
    let expected: Vec<i64> = everything["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|d| d["node_id"] == "gate-a")
        .map(|d| d["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(mine, expected);
    assert_eq!(everything["next_cursor"], serde_json::Value::Null);
    // A row refused between two pages neither repeats nor hides the older ones.
    let (_, first) = get(s, "/api/v1/dead-letters?limit=3", None).await;
    s.store
        .dead_letter(
            "edgeqi/v1/nodes/gate-b/detections",
            Some("gate-b"),
            "invalid_json",
            "late",
            b"x",
        )
        .await
        .expect("dead letter");
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let (_, second) = get(
        s,
        &format!("/api/v1/dead-letters?limit=3&cursor={cursor}"),
        None,
    )
    .await;
    let second: Vec<i64> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(second, all[3..6]);
    // A cursor this API did not hand out is a 400.
    let (status, body) = get(s, "/api/v1/dead-letters?cursor=bogus", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

mod matrix;

/// Export throughput against paging through JSON (run with `--ignored --nocapture`;
/// numbers in docs/PERFORMANCE.md).
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_csv_export_against_json_paging() {
    let f = fixture();
    let s = &f.state;
    seed(s, 100, 1000).await;
    let t = std::time::Instant::now();
    let (status, _, text) = raw(s, "/api/v1/detections?format=csv", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    let csv = t.elapsed();
    let rows = text.lines().count() - 1;
    let t = std::time::Instant::now();
    let (mut cursor, mut seen) = (None::<String>, 0usize);
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/detections?limit=1000&cursor={c}"),
            None => "/api/v1/detections?limit=1000".into(),
        };
        let (_, page) = get(s, &uri, None).await;
        seen += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let json = t.elapsed();
    assert_eq!(rows, seen);
    println!(
        "{rows} detections: CSV export {:.2} s ({:.0} rows/s, {} bytes); JSON pages of 1000 {:.2} s ({:.0} rows/s)",
        csv.as_secs_f64(),
        rows as f64 / csv.as_secs_f64(),
        text.len(),
        json.as_secs_f64(),
        seen as f64 / json.as_secs_f64()
    );
}

/// Walks `uri` (which has a query string) page by page with `limit`,
/// checking every page's size, and returns every item in the order served.
async fn walk_pages(s: &AppState, uri: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page_uri = match &cursor {
            None => format!("{uri}&limit={limit}"),
            Some(c) => format!("{uri}&limit={limit}&cursor={c}"),
        };
        let (status, body) = get(s, &page_uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page_uri}: {body}");
        let items = body["items"].as_array().expect("items");
        assert!(
            items.len() <= limit,
            "{page_uri}: {} > {limit}",
            items.len()
        );
        out.extend(items.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), limit, "only the last page is short: {body}");
                cursor = Some(c.to_owned());
            }
            None => return out,
        }
    }
    panic!("{uri}: pages never end");
}

#[tokio::test]
async fn every_list_pages_with_limit_and_cursor() {
    use crate::incidents::{DedupWindow, NewIncident, Severity};
    use edgeqi_shared::protocol::{EventBatch, LineCount};
    let f = fixture();
    let s = &f.state;
    let mut tenant = 0;
    for i in 0..7 {
        let (status, t) = send(
            s,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(serde_json::json!({"name": format!("paged-{i}")})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        tenant = t["id"].as_i64().expect("id");
    }
    for i in 0..7 {
        let (status, u) = create_user(s, ADMIN, serde_json::json!({"username": format!("pager-{i}"), "password": "password-p-1", "role": "viewer", "tenant_id": tenant})).await;
        assert_eq!(status, StatusCode::CREATED, "{u}");
        let (status, k) = send(
            s,
            "POST",
            "/api/v1/api-keys",
            Some(ADMIN),
            Some(serde_json::json!({"name": format!("key-{i}"), "role": "viewer", "tenant_id": tenant})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{k}");
    }
    let now = Utc::now();
    for i in 0..7 {
        let node = format!("node-{i}");
        let batch = DetectionBatch {
            v: 1,
            node_id: node.clone(),
            epoch: "e".into(),
            seq: 1,
            sent_at: now,
            detections: vec![],
            counts: vec![],
        };
        s.store.ingest_batch(&batch).await.expect("node");
        let line = |line: &str, direction: &str| LineCount {
            camera_id: "north".into(),
            line: line.into(),
            label: "car".into(),
            direction: direction.into(),
            count: 2,
            since: now,
        };
        s.events
            .record_events(EventBatch {
                v: 1,
                node_id: node,
                sent_at: now,
                events: vec![],
                line_counts: vec![line("stop", "left_to_right"), line("stop", "right_to_left")],
            })
            .await
            .expect("line counts");
    }
    for i in 0..7 {
        s.incidents
            .store
            .open_or_join(
                NewIncident {
                    tenant_id: None,
                    category: "pothole".into(),
                    severity: Severity::Medium,
                    title: format!("pothole {i}"),
                    lat: Some(10.0 + f64::from(i)),
                    lng: Some(20.0),
                    source: "report".into(),
                },
                DedupWindow::default(),
                s.incidents.sla.sla("pothole", Severity::Medium),
            )
            .await
            .expect("incident");
    }

    // (list, query, how many there are at least, what identifies an item)
    let lists: [(&str, usize, fn(&serde_json::Value) -> String); 6] = [
        ("/api/v1/users?", 7, |v| v["id"].to_string()),
        ("/api/v1/tenants?", 7, |v| v["id"].to_string()),
        ("/api/v1/api-keys?", 7, |v| v["id"].to_string()),
        ("/api/v1/nodes?", 7, |v| v["node_id"].to_string()),
        ("/api/v1/stats/lines?", 14, |v| {
            format!("{}/{}/{}", v["node_id"], v["line"], v["direction"])
        }),
        ("/api/v1/analytics/areas?cell_deg=0.5", 7, |v| {
            v["area"].to_string()
        }),
    ];
    for (uri, at_least, id) in lists {
        // One page holding everything is the reference.
        let (status, all) = get(s, &format!("{uri}&limit=1000"), None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {all}");
        assert!(all["next_cursor"].is_null(), "{uri}: {all}");
        let all: Vec<String> = all["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(id)
            .collect();
        assert!(all.len() >= at_least, "{uri}: {all:?}");
        // The default page is 100: these lists fit in one.
        let (_, default) = get(s, uri, None).await;
        assert_eq!(default["items"].as_array().map(Vec::len), Some(all.len()));
        for limit in [1, 2, 3] {
            let walked: Vec<String> = walk_pages(s, uri, limit).await.iter().map(id).collect();
            assert_eq!(
                walked, all,
                "{uri} limit={limit}: same items, same order, once each"
            );
        }
        let (status, first) = get(s, &format!("{uri}&limit=2"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["items"].as_array().map(Vec::len), Some(2), "{uri}");
        assert!(first["next_cursor"].is_string(), "{uri}: {first}");
        for bad in ["not-a-cursor", "e30", "%22%22"] {
            let (status, body) = get(s, &format!("{uri}&cursor={bad}"), None).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{uri} cursor={bad}: {body}"
            );
            assert_eq!(body["error"]["code"], "bad_request", "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }

    // The document says so: `limit` and `cursor`, and a page with `next_cursor`.
    let (_, doc) = send(s, "GET", "/api/v1/openapi.json", None, None).await;
    for path in [
        "/api/v1/users",
        "/api/v1/tenants",
        "/api/v1/api-keys",
        "/api/v1/nodes",
        "/api/v1/stats/lines",
        "/api/v1/analytics/areas",
    ] {
        let op = &doc["paths"][path]["get"];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no parameters"))
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            params.contains(&"limit") && params.contains(&"cursor"),
            "{path}: {params:?}"
        );
        let mut schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        if let Some(r) = schema["$ref"].as_str() {
            schema = &doc["components"]["schemas"][r.rsplit('/').next().unwrap_or("")];
        }
        assert!(
            schema["properties"]["next_cursor"].is_object()
                && schema["properties"]["items"].is_object(),
            "{path}: {schema}"
        );
        assert!(
            op["responses"]["400"].is_object(),
            "{path}: bad cursor documented"
        );
    }

    // Areas keep their grid size beside the page; CSV streams every row.
    let (_, areas) = get(s, "/api/v1/analytics/areas?cell_deg=0.5&limit=2", None).await;
    assert_eq!(areas["cell_deg"], 0.5);
    assert_eq!(areas["items"][0]["rank"], 1);
    assert_eq!(areas["items"][1]["rank"], 2);
    let (status, _, csv) = raw(s, "/api/v1/stats/lines?format=csv&limit=1", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse_csv(&csv).len(), 1 + 14, "{csv}");

    // A row added between two pages neither repeats nor hides the others.
    let (_, first) = get(s, "/api/v1/tenants?limit=3", None).await;
    let cursor = first["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, newest) = send(
        s,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "paged-late"})),
    )
    .await;
    let (_, rest) = walk_pages_from(s, "/api/v1/tenants?limit=1000", &cursor).await;
    let seen: Vec<i64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .chain(rest.iter())
        .map(|t| t["id"].as_i64().expect("id"))
        .collect();
    let (_, everything) = get(s, "/api/v1/tenants?limit=1000", None).await;
    let everything: Vec<i64> = everything["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(seen, everything);
    assert!(seen.contains(&newest["id"].as_i64().expect("id")));
}

async fn walk_pages_from(
    s: &AppState,
    uri: &str,
    cursor: &str,
) -> (StatusCode, Vec<serde_json::Value>) {
    let (status, body) = get(s, &format!("{uri}&cursor={cursor}"), None).await;
    assert!(body["next_cursor"].is_null(), "{body}");
    (
        status,
        body["items"].as_array().cloned().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_provisioned_node_that_never_reported_is_shown_and_its_credentials_revoked() {
    let f = fixture();
    let s = &f.state;
    let mut tenants = Vec::new();
    for name in ["quiet-city", "other-city"] {
        let (_, t) = send(
            s,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(serde_json::json!({"name": name})),
        )
        .await;
        tenants.push(t["id"].as_i64().expect("tenant id"));
    }
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(serde_json::json!({"node_id": "quiet-1", "tenant_id": tenants[0]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let password = body["mqtt"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes/quiet-1/cameras",
        Some(ADMIN),
        Some(serde_json::json!({"camera_id": "north", "name": "North gate"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut tokens = Vec::new();
    for (user, role, t) in [
        ("quiet-viewer", "viewer", tenants[0]),
        ("quiet-op", "operator", tenants[0]),
        ("other-viewer", "viewer", tenants[1]),
        ("other-admin", "admin", tenants[1]),
    ] {
        let (status, body) = create_user(s, ADMIN, serde_json::json!({"username": user, "password": "password-q-1", "role": role, "tenant_id": t})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, session) = login(s, user, "password-q-1").await;
        tokens.push(session["token"].as_str().expect("token").to_owned());
    }
    let (viewer, operator, other_viewer, other_admin) =
        (&tokens[0], &tokens[1], &tokens[2], &tokens[3]);

    // Never reported: 200, offline, no times, no heartbeat, its tenant,
    // its cameras and a config it has not applied yet.
    for token in [None, Some(viewer.as_str())] {
        let (status, node) = get(s, "/api/v1/nodes/quiet-1", token).await;
        assert_eq!(status, StatusCode::OK, "{node}");
        assert_eq!(node["node_id"], "quiet-1");
        assert_eq!(node["tenant_id"], tenants[0]);
        assert_eq!(node["online"], false);
        assert_eq!(node["reported"], false);
        assert_eq!(node["mqtt_credentials"], true);
        for field in [
            "first_seen",
            "last_seen",
            "last_heartbeat_at",
            "last_heartbeat",
            "heartbeat_interval_s",
        ] {
            assert!(node[field].is_null(), "{field}: {node}");
        }
        assert_eq!(node["ledger"], serde_json::json!([]));
        assert_eq!(node["cameras"][0]["camera_id"], "north", "{node}");
        assert_eq!(node["config"]["desired_version"], 1, "{node}");
        assert!(node["config"]["applied_version"].is_null(), "{node}");
        assert_eq!(node["config"]["in_sync"], false, "{node}");
    }
    // The list shows it too, offline and never reported, to its tenant and
    // global callers only; the summary counts nodes that reported.
    for token in [None, Some(viewer.as_str())] {
        let (status, list) = get(s, "/api/v1/nodes", token).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let items = list["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["node_id"], "quiet-1");
        assert_eq!(items[0]["reported"], false);
        assert_eq!(items[0]["online"], false);
        assert!(items[0]["last_seen"].is_null(), "{list}");
        let (_, summary) = get(s, "/api/v1/stats/summary", token).await;
        assert_eq!(summary["nodes_total"], 0, "{summary}");
        assert_eq!(summary["nodes_online"], 0, "{summary}");
    }
    let (_, list) = get(s, "/api/v1/nodes", Some(other_viewer)).await;
    assert_eq!(list["items"], serde_json::json!([]), "{list}");
    // Another tenant, and nodes nobody knows, get 404 with an error object.
    for (uri, token) in [
        ("/api/v1/nodes/quiet-1", Some(other_viewer.as_str())),
        ("/api/v1/nodes/nobody-knows", None),
        ("/api/v1/nodes/bad%20id", None),
    ] {
        let (status, body) = get(s, uri, token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // Once it reports, it is a node like any other.
    let batch = DetectionBatch {
        v: 1,
        node_id: "quiet-1".into(),
        epoch: "e".into(),
        seq: 1,
        sent_at: Utc::now(),
        detections: vec![],
        counts: vec![],
    };
    s.store.ingest_batch(&batch).await.expect("batch");
    let (_, node) = get(s, "/api/v1/nodes/quiet-1", None).await;
    assert_eq!(node["reported"], true, "{node}");
    let (_, list) = get(s, "/api/v1/nodes", Some(viewer)).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "listed once: {list}"
    );
    assert_eq!(list["items"][0]["reported"], true, "{list}");
    let (_, summary) = get(s, "/api/v1/stats/summary", Some(viewer)).await;
    assert_eq!(summary["nodes_total"], 1, "{summary}");
    // Reported and silent nodes page together, by node id.
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(serde_json::json!({"node_id": "quiet-0", "tenant_id": tenants[0]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, first) = get(s, "/api/v1/nodes?limit=1", Some(viewer)).await;
    assert_eq!(first["items"][0]["node_id"], "quiet-0", "{first}");
    assert_eq!(first["items"][0]["reported"], false, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (_, second) = get(
        s,
        &format!("/api/v1/nodes?limit=1&cursor={cursor}"),
        Some(viewer),
    )
    .await;
    assert_eq!(second["items"][0]["node_id"], "quiet-1", "{second}");
    assert_eq!(second["next_cursor"], serde_json::Value::Null, "{second}");
    assert!(node["first_seen"].is_string(), "{node}");
    assert_eq!(node["ledger"][0]["acked_seq"], 1, "{node}");

    // Revocation: admins of its tenant only; the password dies at once and
    // the gateway is told to close the node's connection.
    let mut closed = s.node_credentials.rotations();
    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(operator.as_str()), StatusCode::FORBIDDEN),
        (Some(other_admin.as_str()), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = send(
            s,
            "DELETE",
            "/api/v1/nodes/quiet-1/credentials",
            token,
            None,
        )
        .await;
        assert_eq!(status, want, "{body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    assert!(s
        .node_credentials
        .verify("quiet-1", &password)
        .await
        .expect("verify"));
    let (status, body) = send(
        s,
        "DELETE",
        "/api/v1/nodes/quiet-1/credentials",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(closed.try_recv().expect("connection closed"), "quiet-1");
    assert!(!s
        .node_credentials
        .verify("quiet-1", &password)
        .await
        .expect("revoked"));
    let (status, node) = get(s, "/api/v1/nodes/quiet-1", None).await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["mqtt_credentials"], false, "{node}");
    assert_eq!(node["tenant_id"], tenants[0], "the node stays registered");
    for method in ["DELETE", "POST"] {
        let (status, body) = send(
            s,
            method,
            "/api/v1/nodes/quiet-1/credentials",
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} after revoke: {body}"
        );
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let (_, audit) = get(s, "/api/v1/audit", None).await;
    let revokes: Vec<_> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "node.credentials.revoke")
        .collect();
    assert_eq!(revokes.len(), 1, "{audit}");
    assert_eq!(revokes[0]["target"], "node:quiet-1");
    assert!(!audit.to_string().contains(&password));
    // Provisioning again issues new credentials.
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(serde_json::json!({"node_id": "quiet-1", "tenant_id": tenants[0]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fresh = body["mqtt"]["password"].as_str().expect("password");
    assert!(s
        .node_credentials
        .verify("quiet-1", fresh)
        .await
        .expect("verify"));
}

#[tokio::test]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let f = fixture();
    let mut state = f.state.clone();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let status = |state: AppState, token: Option<&'static str>| async move {
        send(&state, "GET", "/metrics", token, None).await.0
    };
    state.metrics = Some(super::MetricsEndpoint {
        handle: handle.clone(),
        token: None,
    });
    assert_eq!(status(state.clone(), None).await, StatusCode::OK, "open");
    state.metrics = Some(super::MetricsEndpoint {
        handle,
        token: Some("scrape-me".into()),
    });
    assert_eq!(status(state.clone(), None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(state.clone(), Some("wrong")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(state, Some("scrape-me")).await, StatusCode::OK);
}

/// Counts stored before ingest bounded them (an older aggregator, or one
/// that trusted its nodes) must not make any statistics query fail.
#[tokio::test]
async fn statistics_answer_over_counts_that_overflow_a_sum() {
    use edgeqi_shared::protocol::{DetectionCount, EventBatch, LineCount};
    let f = fixture();
    let s = &f.state;
    let now = Utc::now();
    let minute = now - chrono::Duration::minutes(5);
    for (run, seq) in [(1, 1u64), (2, 2)] {
        s.store
            .ingest_batch(&DetectionBatch {
                v: 1,
                node_id: "gate-01".into(),
                epoch: "e".into(),
                seq,
                sent_at: now,
                detections: vec![],
                counts: vec![DetectionCount {
                    minute,
                    camera_id: "north".into(),
                    zone: None,
                    class_id: None,
                    label: "car".into(),
                    count: u64::MAX,
                }],
            })
            .await
            .expect("stored");
        // Two agent runs, each with a huge cumulative line count.
        s.events
            .record_events(EventBatch {
                v: 1,
                node_id: "gate-01".into(),
                sent_at: now,
                events: vec![],
                line_counts: vec![LineCount {
                    camera_id: "north".into(),
                    line: "stop-line".into(),
                    label: "car".into(),
                    direction: "left_to_right".into(),
                    count: u64::MAX,
                    since: now - chrono::Duration::hours(run),
                }],
            })
            .await
            .expect("events");
    }
    let (status, lines) = get(s, "/api/v1/stats/lines", None).await;
    assert_eq!(status, StatusCode::OK, "{lines}");
    assert_eq!(lines["items"][0]["count"], i64::MAX);
    let since =
        (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, series) = get(
        s,
        &format!("/api/v1/stats/timeseries?since={since}&bucket=1m"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{series}");
    let (status, body) = get(s, "/api/v1/stats/summary", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
