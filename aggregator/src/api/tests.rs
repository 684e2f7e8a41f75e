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

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
}

fn fixture(token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let store = crate::store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .expect("store");
    Fixture {
        _dir: dir,
        state: AppState {
            store,
            live: LiveBus::new(16),
            ingest: Arc::new(IngestHealth::default()),
            admin_token: token.map(Arc::from),
            metrics: None,
        },
    }
}

async fn get(state: &AppState, uri: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get(uri);
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(state.clone())
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
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
    let f = fixture(Some("s3cret"));
    let (status, body) = get(&f.state, "/api/v1/nodes", None).await;
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
        get(&f.state, "/api/v1/stats/summary?access_token=s3cret", None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(get(&f.state, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_follows_the_broker_connection() {
    let f = fixture(None);
    let (status, body) = get(&f.state, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["mqtt"], "disconnected");
    f.state.ingest.connected.store(true, Ordering::Relaxed);
    assert_eq!(get(&f.state, "/readyz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn detections_page_through_with_cursors() {
    let f = fixture(None);
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

#[tokio::test]
async fn bad_parameters_get_json_errors() {
    let f = fixture(None);
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
