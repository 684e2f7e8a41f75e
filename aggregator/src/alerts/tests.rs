//! Alerting end to end: rules made through the API, detections stored and
//! handed to the running evaluator (and once through real MQTT ingest),
//! alerts, incidents, live messages and webhooks against a real local HTTP
//! server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Timelike, Utc};
use edgeqi_shared::{Detection, DetectionBatch};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::*;
use crate::api::AppState;
use crate::live::{LiveBus, LiveEvent};

const ADMIN: &str = "alerts-admin-token";

struct Harness {
    _dir: tempfile::TempDir,
    state: AppState,
    _shutdown: watch::Sender<bool>,
    seq: AtomicU32,
}

/// Fast retries; webhooks may reach the test receivers on 127.0.0.1.
fn settings() -> AlertSettings {
    AlertSettings {
        webhook_timeout: Duration::from_millis(700),
        webhook_backoff: Duration::from_millis(30),
        webhook_backoff_max: Duration::from_millis(200),
        allow_private_webhooks: true,
        ..AlertSettings::default()
    }
}

async fn harness() -> Harness {
    harness_with(settings()).await
}

async fn harness_with(settings: AlertSettings) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let accounts = crate::accounts::open(&url).expect("accounts");
    let incidents = Arc::new(crate::incidents::Incidents::new(
        crate::incidents::open(&url).expect("incidents"),
        None,
    ));
    let live = LiveBus::new(256);
    let registry =
        crate::registry::Registry::open(&url, edgeqi_shared::protocol::DEFAULT_MAX_PAYLOAD_BYTES)
            .expect("registry");
    let (alerts, evaluator) = Alerts::open(&url, settings).expect("alerts");
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(evaluator.run(
        EngineDeps {
            incidents: incidents.clone(),
            live: live.clone(),
            accounts: accounts.clone(),
            registry: registry.clone(),
        },
        shutdown_rx,
    ));
    let state = AppState {
        store: crate::store::open(&url).expect("store"),
        live,
        ingest: Arc::new(crate::ingest::IngestHealth::default()),
        accounts,
        auth: Arc::new(crate::api::auth::AuthKeys::new(
            b"test-secret",
            chrono::Duration::hours(1),
            Some(ADMIN.into()),
        )),
        incidents,
        events: crate::events::EventStore::open(&url).expect("events"),
        reviews: crate::reviews::ReviewStore::open(&url).expect("reviews"),
        alerts,
        registry,
        metrics: None,
        node_credentials: crate::accounts::node_credentials::NodeCredentials::open(&url)
            .expect("node credentials"),
    };
    Harness {
        _dir: dir,
        state,
        _shutdown: shutdown,
        seq: AtomicU32::new(0),
    }
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    crate::api::tests::send(state, method, uri, Some(token), body).await
}

async fn create_rule(state: &AppState, token: &str, rule: Value) -> i64 {
    let (status, body) = call(state, "POST", "/api/v1/alert-rules", token, Some(rule)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().expect("rule id")
}

fn detection(label: &str, ts: DateTime<Utc>, track: Option<u64>, zone: Option<&str>) -> Detection {
    Detection {
        ts,
        camera_id: "north".into(),
        class_id: None,
        label: label.into(),
        score: 0.9,
        bbox: [0.0, 0.0, 10.0, 10.0],
        track_id: track,
        zone: zone.map(str::to_owned),
    }
}

impl Harness {
    /// Stores a batch and hands what was committed to the evaluator, as
    /// ingest does after its commit.
    async fn ingest(&self, node: &str, detections: Vec<Detection>) {
        let seq = u64::from(self.seq.fetch_add(1, Ordering::Relaxed)) + 1;
        let batch = DetectionBatch {
            v: 1,
            node_id: node.into(),
            epoch: "e".into(),
            seq,
            sent_at: Utc::now(),
            detections,
            counts: vec![],
        };
        let outcome = self.state.store.ingest_batch(&batch).await.expect("ingest");
        let mut obs = Vec::new();
        Observation::from_detections(&batch, &outcome.detection_ids, &mut obs);
        self.state.alerts.feed().offer(obs);
    }

    async fn alerts_of(&self, rule: i64) -> Vec<Value> {
        let (status, body) = call(
            &self.state,
            "GET",
            &format!("/api/v1/alerts?rule_id={rule}"),
            ADMIN,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["items"].as_array().expect("items").clone()
    }
}

/// Waits for the next live `alert` of `rule`.
async fn next_alert(rx: &mut broadcast::Receiver<LiveEvent>, rule: i64) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(LiveEvent::Alert(a)) if a["rule_id"] == rule => return a,
                Ok(_) => {}
                Err(e) => panic!("live bus: {e}"),
            }
        }
    })
    .await
    .expect("an alert within 10 s")
}

/// Everything offered before this has been evaluated once its sentinel
/// alert comes back (the evaluator works in order).
async fn flush(h: &Harness, rx: &mut broadcast::Receiver<LiveEvent>, sentinel: i64) {
    h.ingest(
        "flush-node",
        vec![detection("sentinel", Utc::now(), None, None)],
    )
    .await;
    next_alert(rx, sentinel).await;
}

async fn sentinel(h: &Harness) -> i64 {
    create_rule(
        &h.state,
        ADMIN,
        json!({"name": "sentinel", "kind": "watchlist", "labels": ["sentinel"], "cooldown_s": 0}),
    )
    .await
}

#[tokio::test]
async fn threshold_counts_distinct_objects_in_the_window_and_cooldown_holds() {
    let h = harness().await;
    let mut rx = h.state.live.subscribe();
    let flush_rule = sentinel(&h).await;
    let rule = create_rule(
        &h.state,
        ADMIN,
        json!({
            "name": "crowd at the gate", "labels": ["person"], "zone": "gate",
            "threshold": 3, "window_s": 60, "cooldown_s": 600,
            "actions": {"incident": {"category": "crowding", "severity": "high"}}
        }),
    )
    .await;
    let t0 = Utc::now();
    let s = chrono::Duration::seconds;
    // Two people, one of them in many frames, one outside the zone, one car: not three people.
    h.ingest(
        "gate-01",
        vec![
            detection("person", t0, Some(1), Some("gate")),
            detection("person", t0 + s(1), Some(1), Some("gate")),
            detection("person", t0 + s(2), Some(1), Some("gate")),
            detection("person", t0 + s(3), Some(2), Some("gate")),
            detection("person", t0 + s(4), Some(3), Some("road")),
            detection("car", t0 + s(5), Some(4), Some("gate")),
        ],
    )
    .await;
    flush(&h, &mut rx, flush_rule).await;
    assert!(
        h.alerts_of(rule).await.is_empty(),
        "two people are not three"
    );
    // A third person 100 s later: the first two have left the 60 s window.
    h.ingest(
        "gate-01",
        vec![detection("person", t0 + s(100), Some(5), Some("gate"))],
    )
    .await;
    flush(&h, &mut rx, flush_rule).await;
    assert!(h.alerts_of(rule).await.is_empty(), "the window slid");
    // Two more within the window of the third: three distinct people.
    h.ingest(
        "gate-01",
        vec![
            detection("person", t0 + s(110), Some(6), Some("gate")),
            detection("person", t0 + s(120), Some(7), Some("gate")),
        ],
    )
    .await;
    let live = next_alert(&mut rx, rule).await;
    assert_eq!(live["count"], 3);
    assert_eq!(live["zone"], "gate");
    assert_eq!(live["detection_ids"].as_array().map(Vec::len), Some(3));
    let stored = h.alerts_of(rule).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], live["id"]);
    // The incident action opened an incident from the alert.
    let incident = live["incident_id"].as_i64().expect("incident id");
    let (status, inc) = call(
        &h.state,
        "GET",
        &format!("/api/v1/incidents/{incident}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{inc}");
    assert_eq!(
        (
            inc["source"].as_str(),
            inc["category"].as_str(),
            inc["severity"].as_str()
        ),
        (Some("alert"), Some("crowding"), Some("high"))
    );
    // Still crowded, but within the 600 s cooldown: no second alert.
    h.ingest(
        "gate-01",
        (8..12)
            .map(|t| detection("person", t0 + s(130), Some(t), Some("gate")))
            .collect(),
    )
    .await;
    flush(&h, &mut rx, flush_rule).await;
    assert_eq!(h.alerts_of(rule).await.len(), 1, "cooldown holds");
    let (_, audit) = call(&h.state, "GET", "/api/v1/audit", ADMIN, None).await;
    assert!(
        audit["items"].as_array().expect("items").iter().any(|e| e["action"] == "incident.create" && e["actor"] == format!("alert-rule:{rule}")),
        "{audit}"
    );
}

#[tokio::test]
async fn cooldown_expires_and_incidents_dedup() {
    let h = harness().await;
    let mut rx = h.state.live.subscribe();
    let flush_rule = sentinel(&h).await;
    let rule = create_rule(
        &h.state,
        ADMIN,
        json!({
            "name": "truck on the list", "kind": "watchlist", "labels": ["truck", "bus"], "cooldown_s": 5,
            "actions": {"incident": {"category": "watchlist", "severity": "medium"}}
        }),
    )
    .await;
    let t0 = Utc::now();
    let s = chrono::Duration::seconds;
    h.ingest("gate-01", vec![detection("truck", t0, None, None)])
        .await;
    let first = next_alert(&mut rx, rule).await;
    assert_eq!(first["count"], 1);
    h.ingest("gate-01", vec![detection("bus", t0 + s(2), None, None)])
        .await;
    flush(&h, &mut rx, flush_rule).await;
    assert_eq!(
        h.alerts_of(rule).await.len(),
        1,
        "2 s is inside the 5 s cooldown"
    );
    h.ingest("gate-01", vec![detection("bus", t0 + s(6), None, None)])
        .await;
    let second = next_alert(&mut rx, rule).await;
    assert_eq!(second["label"], "bus");
    // Same category, no location, within the dedup window: one incident.
    assert!(first["incident_id"].is_i64());
    assert_eq!(first["incident_id"], second["incident_id"]);
}

#[tokio::test]
async fn alert_incidents_are_placed_at_the_registered_camera() {
    let h = harness().await;
    let mut rx = h.state.live.subscribe();
    let place = |node: &'static str, lat: f64| {
        let registry = h.state.registry.clone();
        async move {
            registry
                .create(
                    node,
                    edgeqi_shared::camera::CameraSpec {
                        id: "north".into(),
                        name: None,
                        location: Some(edgeqi_shared::camera::GeoPoint { lat, lng: 4.8952 }),
                        heading: None,
                        detect_fps: None,
                        zones: vec![],
                        lines: vec![],
                    },
                )
                .await
                .expect("camera registered");
        }
    };
    place("gate-01", 52.3702).await;
    // The same camera id on another node, 11 km north.
    place("gate-far", 52.4702).await;
    let rule = create_rule(
        &h.state,
        ADMIN,
        json!({
            "name": "truck on the list", "kind": "watchlist", "labels": ["truck"], "cooldown_s": 0,
            "actions": {"incident": {"category": "watchlist", "severity": "medium"}}
        }),
    )
    .await;
    let incident_of = |alert: &Value| alert["incident_id"].as_i64().expect("incident id");
    let fetch = |id: i64| {
        let state = h.state.clone();
        async move {
            let (status, body) = call(
                &state,
                "GET",
                &format!("/api/v1/incidents/{id}"),
                ADMIN,
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let t0 = Utc::now();
    let s = chrono::Duration::seconds;
    h.ingest("gate-01", vec![detection("truck", t0, None, None)])
        .await;
    let here = incident_of(&next_alert(&mut rx, rule).await);
    let inc = fetch(here).await;
    assert_eq!(
        (inc["lat"].as_f64(), inc["lng"].as_f64()),
        (Some(52.3702), Some(4.8952)),
        "{inc}"
    );
    assert_eq!(inc["source"], "alert");
    // 11 km away is outside the dedup radius: its own incident, at its camera.
    h.ingest("gate-far", vec![detection("truck", t0 + s(1), None, None)])
        .await;
    let far = incident_of(&next_alert(&mut rx, rule).await);
    assert_ne!(far, here);
    assert_eq!(fetch(far).await["lat"].as_f64(), Some(52.4702));
    // The same camera again joins its incident.
    h.ingest("gate-01", vec![detection("truck", t0 + s(2), None, None)])
        .await;
    assert_eq!(incident_of(&next_alert(&mut rx, rule).await), here);
    assert_eq!(fetch(here).await["report_count"], 2);
    // A camera the registry does not know gives an incident without a place,
    // which joins neither located one.
    h.ingest(
        "gate-unplaced",
        vec![detection("truck", t0 + s(3), None, None)],
    )
    .await;
    let nowhere = incident_of(&next_alert(&mut rx, rule).await);
    assert!(nowhere != here && nowhere != far);
    assert_eq!(fetch(nowhere).await["lat"], Value::Null);
    // Hotspots count the located alert incidents.
    let (status, hot) = call(
        &h.state,
        "GET",
        "/api/v1/analytics/hotspots?cell_m=1000",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{hot}");
    assert_eq!(hot["incidents"], 2, "{hot}");
    assert_eq!(hot["items"].as_array().map(Vec::len), Some(2), "{hot}");
}

#[tokio::test]
async fn schedules_gate_rules_by_time_of_day() {
    let h = harness().await;
    let mut rx = h.state.live.subscribe();
    let flush_rule = sentinel(&h).await;
    // Local hour at +02:00 now, and a one-hour window that excludes or includes it.
    let offset = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
    let hour = Utc::now().with_timezone(&offset).hour();
    let hhmm = |h: u32| format!("{:02}:00", h % 24);
    let closed = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "off hours", "kind": "watchlist", "labels": ["dog"],
               "schedule": {"start": hhmm(hour + 2), "end": hhmm(hour + 3), "timezone": "+02:00"}}),
    )
    .await;
    let open = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "now", "kind": "watchlist", "labels": ["dog"],
               "schedule": {"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": hhmm(hour), "end": if hour == 23 { "24:00".to_owned() } else { hhmm(hour + 1) }, "timezone": "+02:00"}}),
    )
    .await;
    h.ingest("gate-01", vec![detection("dog", Utc::now(), None, None)])
        .await;
    next_alert(&mut rx, open).await;
    flush(&h, &mut rx, flush_rule).await;
    assert!(h.alerts_of(closed).await.is_empty(), "outside its hours");
}

/// A webhook receiver that fails its first calls (500, then too slow) and
/// records what it got.
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
}

/// Headers and raw body of one request.
type Call = (HeaderMap, Vec<u8>);

async fn hook(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = {
        let mut calls = r.calls.lock().expect("lock");
        calls.push((headers, body.to_vec()));
        calls.len()
    };
    match n {
        1 => StatusCode::INTERNAL_SERVER_ERROR,
        2 => {
            // Longer than the sender's 700 ms timeout.
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK
        }
        _ => StatusCode::NO_CONTENT,
    }
}

async fn deliveries(h: &Harness, rule: i64) -> Vec<Value> {
    let (status, body) = call(
        &h.state,
        "GET",
        &format!("/api/v1/alert-rules/{rule}/deliveries"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().expect("items").clone()
}

async fn settled_delivery(h: &Harness, rule: i64) -> Value {
    for _ in 0..200 {
        if let Some(d) = deliveries(h, rule).await.into_iter().next() {
            if d["status"] != "pending" {
                return d;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("delivery did not settle: {:?}", deliveries(h, rule).await);
}

#[tokio::test]
async fn webhook_retries_with_signed_bodies_until_delivered() {
    let h = harness().await;
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = "webhook-secret-0123456789";
    let rule = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "hooked", "kind": "watchlist", "labels": ["truck"],
               "actions": {"websocket": false, "webhook": {"url": format!("http://{addr}/hook"), "secret": secret, "max_attempts": 4}}}),
    )
    .await;
    h.ingest(
        "gate-01",
        vec![detection("truck", Utc::now(), Some(9), None)],
    )
    .await;
    let d = settled_delivery(&h, rule).await;
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    let log = d["attempt_log"].as_array().expect("attempts");
    let outcomes: Vec<_> = log
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    assert_eq!(
        (
            log[0]["status_code"].as_u64(),
            log[2]["status_code"].as_u64()
        ),
        (Some(500), Some(204))
    );
    assert!(
        log[1]["error"].as_str().is_some_and(|e| e.contains("time")),
        "{d}"
    );
    // Every request the receiver got carries a valid, fresh signature.
    let calls = receiver.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3);
    for (headers, body) in &calls {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .expect(n)
                .to_owned()
        };
        let ts: i64 = header("x-edgeqi-timestamp").parse().expect("timestamp");
        assert!((Utc::now().timestamp() - ts).abs() < 60);
        assert!(webhook::verify(
            secret.as_bytes(),
            ts,
            body,
            &header("x-edgeqi-signature")
        ));
        assert!(!webhook::verify(
            b"not-the-secret-at-all",
            ts,
            body,
            &header("x-edgeqi-signature")
        ));
        assert_eq!(header("x-edgeqi-delivery"), d["id"].to_string());
        let payload: Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(
            (
                payload["type"].as_str(),
                payload["data"]["rule_id"].as_i64()
            ),
            (Some("alert"), Some(rule))
        );
        assert_eq!(payload["data"]["label"], "truck");
    }
    // The global log shows it too, filtered by status.
    let (_, all) = call(
        &h.state,
        "GET",
        "/api/v1/webhooks/deliveries?status=delivered",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn webhook_to_a_dead_port_ends_as_a_failed_delivery() {
    let h = harness().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let rule = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "nobody home", "kind": "watchlist", "labels": ["truck"],
               "actions": {"webhook": {"url": format!("http://{dead}/hook"), "secret": "0123456789abcdef", "max_attempts": 3}}}),
    )
    .await;
    h.ingest("gate-01", vec![detection("truck", Utc::now(), None, None)])
        .await;
    let d = settled_delivery(&h, rule).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 3);
    let log = d["attempt_log"].as_array().expect("attempts");
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|a| a["status_code"].is_null() && a["error"].is_string()),
        "{d}"
    );
    assert_eq!(log[2]["outcome"], "failed");
    // The alert itself was stored and the aggregator goes on.
    assert_eq!(h.alerts_of(rule).await.len(), 1);
}

#[tokio::test]
async fn webhooks_to_internal_addresses_are_refused_by_default() {
    let h = harness_with(AlertSettings {
        allow_private_webhooks: false,
        ..settings()
    })
    .await;
    let s = &h.state;
    let rule = |url: &str| {
        json!({"name": "inside", "kind": "watchlist", "labels": ["truck"],
               "actions": {"websocket": false, "webhook": {"url": url, "secret": "0123456789abcdef", "max_attempts": 3}}})
    };
    // At create time: address literals inside and localhost names.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://172.20.0.1/hook",
        "http://192.168.1.10:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://localhost:8443/hook",
        "http://api.localhost/hook",
    ] {
        let (status, body) = call(s, "POST", "/api/v1/alert-rules", ADMIN, Some(rule(url))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "unprocessable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("alerts.allow_private_webhooks")),
            "{body}"
        );
    }
    // A public address is fine; changing it to an internal one is not.
    let id = create_rule(s, ADMIN, rule("https://93.184.216.34/hook")).await;
    let (status, body) = call(
        s,
        "PATCH",
        &format!("/api/v1/alert-rules/{id}"),
        ADMIN,
        Some(json!({"actions": {"webhook": {"url": "http://10.0.0.8/hook"}}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unprocessable", "{body}");
    let (status, body) = call(
        s,
        "PATCH",
        &format!("/api/v1/alert-rules/{id}"),
        ADMIN,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    call(
        s,
        "DELETE",
        &format!("/api/v1/alert-rules/{id}"),
        ADMIN,
        None,
    )
    .await;

    // At delivery time, after resolution: `127.1` is no address literal to
    // the create-time check, but the resolver makes it 127.0.0.1. The
    // receiver must never be called, and the refusal is not retried.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let id = create_rule(s, ADMIN, rule(&format!("http://127.1:{port}/hook"))).await;
    h.ingest("gate-01", vec![detection("truck", Utc::now(), None, None)])
        .await;
    let d = settled_delivery(&h, id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 1, "refused at once, not retried: {d}");
    let error = d["attempt_log"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("127.0.0.1") && error.contains("loopback"),
        "{d}"
    );
    assert!(receiver.calls.lock().expect("lock").is_empty());
    assert_eq!(h.alerts_of(id).await.len(), 1, "the alert itself is kept");
}

#[tokio::test]
async fn rules_are_validated_scoped_audited_and_paged() {
    let h = harness().await;
    let s = &h.state;
    let mut keys = Vec::new();
    for (name, node) in [("tenant-a", "node-a"), ("tenant-b", "node-b")] {
        let (_, t) = call(
            s,
            "POST",
            "/api/v1/tenants",
            ADMIN,
            Some(json!({"name": name})),
        )
        .await;
        let t = t["id"].as_i64().expect("tenant id");
        let (status, body) = call(
            s,
            "POST",
            "/api/v1/nodes",
            ADMIN,
            Some(json!({"node_id": node, "tenant_id": t})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let mut k = Vec::new();
        for role in ["operator", "viewer"] {
            let (status, key) = call(
                s,
                "POST",
                "/api/v1/api-keys",
                ADMIN,
                Some(json!({"name": format!("{name}-{role}"), "role": role, "tenant_id": t})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{key}");
            k.push(key["key"].as_str().expect("key").to_owned());
        }
        keys.push((t, k));
    }
    let (op_a, viewer_a) = (keys[0].1[0].clone(), keys[0].1[1].clone());
    let op_b = keys[1].1[0].clone();

    // Bad input: 422 with an error object, one reason each.
    let base = json!({"name": "r", "labels": ["person"]});
    let bad = [
        json!({"window_s": -5}),
        json!({"window_s": "abc"}),
        json!({"threshold": 0}),
        json!({"cooldown_s": -1}),
        json!({"min_score": 2}),
        json!({"direction": "left_to_right"}),
        json!({"on": "teleported"}),
        json!({"bogus": 1}),
        json!({"name": ""}),
        json!({"kind": "watchlist", "labels": []}),
        json!({"schedule": {"start": "25:00"}}),
        json!({"schedule": {"timezone": "Mars/Olympus"}}),
        json!({"schedule": {"days": ["someday"]}}),
        json!({"actions": {"webhook": {"url": "not a url", "secret": "0123456789abcdef"}}}),
        json!({"actions": {"webhook": {"url": "ftp://example.com/x", "secret": "0123456789abcdef"}}}),
        json!({"actions": {"webhook": {"url": "https://example.com/x", "secret": "short"}}}),
        json!({"actions": {"webhook": {"url": "https://example.com/x", "secret": "0123456789abcdef", "max_attempts": 0}}}),
        json!({"actions": {"incident": {"category": "x", "severity": "apocalyptic"}}}),
    ];
    for b in bad {
        let mut rule = base.clone();
        merge_patch(&mut rule, &b);
        let (status, body) =
            call(s, "POST", "/api/v1/alert-rules", &op_a, Some(rule.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rule} -> {body}");
        assert_eq!(body["error"]["code"], "unprocessable", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Roles: a viewer reads but may not write.
    let (status, _) = call(
        s,
        "POST",
        "/api/v1/alert-rules",
        &viewer_a,
        Some(base.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(s, "POST", "/api/v1/alert-rules", "nope", Some(base.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another tenant's id is refused; an unknown label is fine.
    let (status, _) = call(
        s,
        "POST",
        "/api/v1/alert-rules",
        &op_a,
        Some(json!({"name": "x", "tenant_id": keys[1].0})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let secret = "very-secret-webhook-key";
    let rule = create_rule(
        s,
        &op_a,
        json!({
            "name": "unicorns", "labels": ["unicorn"], "threshold": 2, "window_s": 30,
            "actions": {"webhook": {"url": "https://hooks.example.com/edgeqi", "secret": secret}}
        }),
    )
    .await;
    let (status, got) = call(
        s,
        "GET",
        &format!("/api/v1/alert-rules/{rule}"),
        &viewer_a,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["tenant_id"], keys[0].0);
    assert_eq!(got["actions"]["webhook"]["secret_set"], true);
    assert!(
        !got.to_string().contains(secret),
        "the secret is never shown"
    );

    // PATCH is a merge patch: the webhook (and its secret) stays.
    let (status, patched) = call(
        s,
        "PATCH",
        &format!("/api/v1/alert-rules/{rule}"),
        &op_a,
        Some(json!({"threshold": 4, "enabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (patched["threshold"].as_u64(), patched["enabled"].as_bool()),
        (Some(4), Some(false))
    );
    let stored = s.alerts.store.rule(rule).await.expect("db").expect("rule");
    assert_eq!(
        stored.spec.actions.webhook.map(|w| w.secret).as_deref(),
        Some(secret)
    );
    let (status, body) = call(
        s,
        "PATCH",
        &format!("/api/v1/alert-rules/{rule}"),
        &op_a,
        Some(json!({"window_s": -1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Tenant b sees none of it.
    let (_, list_b) = call(s, "GET", "/api/v1/alert-rules", &op_b, None).await;
    assert_eq!(list_b["items"].as_array().map(Vec::len), Some(0));
    for (m, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"name": "mine"}))),
        ("DELETE", None),
    ] {
        let (status, _) = call(s, m, &format!("/api/v1/alert-rules/{rule}"), &op_b, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{m}");
    }
    let (status, _) = call(
        s,
        "GET",
        &format!("/api/v1/alert-rules/{rule}/deliveries"),
        &op_b,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Paging: newest first, with a cursor.
    for n in 0..2 {
        create_rule(s, &op_a, json!({"name": format!("more {n}")})).await;
    }
    let (_, p1) = call(s, "GET", "/api/v1/alert-rules?limit=2", &viewer_a, None).await;
    assert_eq!(p1["items"].as_array().map(Vec::len), Some(2));
    let cursor = p1["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, p2) = call(
        s,
        "GET",
        &format!("/api/v1/alert-rules?limit=2&cursor={cursor}"),
        &viewer_a,
        None,
    )
    .await;
    assert_eq!(p2["items"][0]["id"], rule);
    let (status, _) = call(s, "GET", "/api/v1/alert-rules?limit=0", &viewer_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Deleting, and every mutation in the audit log, without the secret.
    let (status, _) = call(
        s,
        "DELETE",
        &format!("/api/v1/alert-rules/{rule}"),
        &op_a,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        s,
        "GET",
        &format!("/api/v1/alert-rules/{rule}"),
        &op_a,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = call(s, "GET", "/api/v1/audit?limit=100", ADMIN, None).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["target"] == format!("alert_rule:{rule}"))
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "alert_rule.delete",
            "alert_rule.update",
            "alert_rule.create"
        ]
    );
    assert!(!audit.to_string().contains(secret));
}

#[tokio::test]
async fn live_alerts_reach_only_their_tenant() {
    use crate::api::ws::{serve, LiveFilter};
    use axum::extract::ws::Message;
    use futures_util::StreamExt;

    let h = harness().await;
    let s = &h.state;
    let mut tenants = Vec::new();
    for (name, node) in [("a", "cam-a"), ("b", "cam-b")] {
        let (_, t) = call(
            s,
            "POST",
            "/api/v1/tenants",
            ADMIN,
            Some(json!({"name": name})),
        )
        .await;
        let t = t["id"].as_i64().expect("id");
        call(
            s,
            "POST",
            "/api/v1/nodes",
            ADMIN,
            Some(json!({"node_id": node, "tenant_id": t})),
        )
        .await;
        tenants.push(t);
    }
    let (_, key) = call(
        s,
        "POST",
        "/api/v1/api-keys",
        ADMIN,
        Some(json!({"name": "op-a", "role": "operator", "tenant_id": tenants[0]})),
    )
    .await;
    let rule = create_rule(
        s,
        key["key"].as_str().expect("key"),
        json!({"name": "fire", "kind": "watchlist", "labels": ["fire"]}),
    )
    .await;
    // Two dashboards: tenant a's and tenant b's, both asking for alerts only.
    let mut clients = Vec::new();
    for (t, nodes) in [
        (tenants[0], vec!["cam-a".to_owned()]),
        (tenants[1], vec!["cam-b".to_owned()]),
    ] {
        let (out_tx, out_rx) = futures_channel::mpsc::unbounded::<Message>();
        let (in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let mut filter: LiveFilter = serde_json::from_str(r#"{"types":"alert"}"#).expect("filter");
        filter.tenant_id = Some(t);
        filter.allowed_nodes = Some(nodes);
        tokio::spawn(serve(out_tx, in_rx, s.live.subscribe(), filter));
        clients.push((out_rx, in_tx));
    }
    // Tenant b's own node sees fire too: b has no rule, so no alert for b.
    h.ingest("cam-b", vec![detection("fire", Utc::now(), None, None)])
        .await;
    h.ingest("cam-a", vec![detection("fire", Utc::now(), None, None)])
        .await;
    let text = |m: Message| match m {
        Message::Text(t) => serde_json::from_str::<Value>(&t).expect("json"),
        other => panic!("unexpected {other:?}"),
    };
    let (rx_a, _) = &mut clients[0];
    assert_eq!(text(rx_a.next().await.expect("hello"))["type"], "hello");
    let frame = tokio::time::timeout(Duration::from_secs(10), rx_a.next())
        .await
        .expect("alert in time")
        .expect("frame");
    let frame = text(frame);
    assert_eq!(frame["type"], "alert", "{frame}");
    assert_eq!(
        (
            frame["data"]["rule_id"].as_i64(),
            frame["data"]["node_id"].as_str()
        ),
        (Some(rule), Some("cam-a"))
    );
    assert_eq!(frame["data"]["tenant_id"], tenants[0]);
    assert_eq!(
        h.alerts_of(rule).await.len(),
        1,
        "the rule only watches its tenant's nodes"
    );
    let (rx_b, _) = &mut clients[1];
    assert_eq!(text(rx_b.next().await.expect("hello"))["type"], "hello");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx_b.next())
            .await
            .is_err(),
        "tenant b gets no alert"
    );
}

#[tokio::test]
async fn a_global_rules_incident_belongs_to_the_observing_nodes_tenant() {
    let h = harness().await;
    let s = &h.state;
    let (_, t) = call(
        s,
        "POST",
        "/api/v1/tenants",
        ADMIN,
        Some(json!({"name": "north"})),
    )
    .await;
    let tenant = t["id"].as_i64().expect("tenant id");
    call(
        s,
        "POST",
        "/api/v1/nodes",
        ADMIN,
        Some(json!({"node_id": "cam-n", "tenant_id": tenant})),
    )
    .await;
    // A rule made by the global admin: it watches every tenant's nodes.
    let rule = create_rule(
        s,
        ADMIN,
        json!({"name": "smoke", "kind": "watchlist", "labels": ["smoke"],
               "actions": {"incident": {"category": "fire", "severity": "high"}}}),
    )
    .await;
    let mut rx = s.live.subscribe();
    h.ingest("cam-n", vec![detection("smoke", Utc::now(), None, None)])
        .await;
    let alert = next_alert(&mut rx, rule).await;
    assert_eq!(
        alert["tenant_id"],
        Value::Null,
        "the alert is the global rule's"
    );
    let incident = alert["incident_id"].as_i64().expect("an incident");
    // The tenant's operator sees and can work the incident.
    let (_, key) = call(
        s,
        "POST",
        "/api/v1/api-keys",
        ADMIN,
        Some(json!({"name": "op-n", "role": "operator", "tenant_id": tenant})),
    )
    .await;
    let op = key["key"].as_str().expect("key");
    let (status, body) = call(s, "GET", &format!("/api/v1/incidents/{incident}"), op, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant_id"], tenant, "{body}");
}

#[tokio::test]
async fn line_crossings_fire_through_real_mqtt_ingest() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};

    let h = harness().await;
    // rumqttd itself (no gateway): every client logs in with its internal token.
    let broker = crate::broker::start_embedded(1 << 20, 64).expect("broker");
    let addr = broker.internal;
    let health = Arc::new(crate::ingest::IngestHealth::default());
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(crate::ingest::run(
        crate::ingest::IngestSettings {
            endpoint: edgeqi_shared::MqttEndpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: false,
                credentials: None,
            },
            client_id: "alerts-test-ingest".into(),
            username: Some("alerts-test-ingest".into()),
            password: Some(broker.token.to_string()),
            keep_alive: Duration::from_secs(10),
            max_packet_size: 1 << 20,
            group_max_detections: 1000,
            max_age: Duration::from_secs(365 * 86_400),
            max_clock_skew: Duration::from_secs(600),
            events: Some(h.state.events.clone()),
            alerts: Some(h.state.alerts.feed()),
            registry: None,
        },
        h.state.store.clone(),
        h.state.live.clone(),
        health.clone(),
        stop_rx,
    ));
    let mut rx = h.state.live.subscribe();
    let crossing = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "wrong way", "labels": ["car"], "line": "entry", "direction": "right_to_left",
               "threshold": 2, "window_s": 60,
               "actions": {"incident": {"category": "wrong_way", "severity": "critical"}}}),
    )
    .await;
    let watch_rule = create_rule(
        &h.state,
        ADMIN,
        json!({"name": "buses", "kind": "watchlist", "labels": ["bus"]}),
    )
    .await;
    for _ in 0..200 {
        if health.connected.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(health.connected.load(Ordering::Relaxed), "ingest connected");
    let mut opts = MqttOptions::new("alerts-test-agent", addr.ip().to_string(), addr.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_credentials("alerts-test-agent", broker.token.to_string());
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let now = Utc::now();
    let batch = DetectionBatch {
        v: 1,
        node_id: "gate-07".into(),
        epoch: "ep".into(),
        seq: 1,
        sent_at: now,
        detections: vec![detection("bus", now, Some(3), None)],
        counts: vec![],
    };
    client
        .publish(
            "edgeqi/v1/nodes/gate-07/detections",
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&batch).expect("json"),
        )
        .await
        .expect("publish");
    let bus = next_alert(&mut rx, watch_rule).await;
    assert_eq!(bus["node_id"], "gate-07");
    // The alert points at the stored detection: it was committed first.
    let id = bus["detection_ids"][0].as_i64().expect("detection id");
    let (_, dets) = call(
        &h.state,
        "GET",
        "/api/v1/detections?node_id=gate-07",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(dets["items"][0]["id"], id);

    let event = |n: u64, direction: &str| {
        json!({"id": format!("run-north-{n}-1"), "ts": Utc::now(), "camera_id": "north", "track_id": n,
               "track_key": format!("run-north-{n}"), "kind": "line_crossed", "label": "car", "score": 0.8,
               "bbox": [0.0, 0.0, 5.0, 5.0], "line": "entry", "direction": direction})
    };
    let events = json!({"v": 1, "node_id": "gate-07", "sent_at": Utc::now(),
                        "events": [event(1, "right_to_left"), event(2, "left_to_right"), event(3, "right_to_left")]});
    client
        .publish(
            "edgeqi/v1/nodes/gate-07/events",
            QoS::AtLeastOnce,
            false,
            events.to_string(),
        )
        .await
        .expect("publish");
    let wrong_way = next_alert(&mut rx, crossing).await;
    assert_eq!(
        wrong_way["count"], 2,
        "the left_to_right crossing does not count"
    );
    assert_eq!(wrong_way["event_ids"].as_array().map(Vec::len), Some(2));
    let (_, incidents) = call(
        &h.state,
        "GET",
        "/api/v1/incidents?category=wrong_way",
        ADMIN,
        None,
    )
    .await;
    let items = incidents["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{incidents}");
    assert_eq!(
        (items[0]["severity"].as_str(), items[0]["id"].as_i64()),
        (Some("critical"), wrong_way["incident_id"].as_i64())
    );
}

#[test]
fn windows_count_each_object_once_and_respect_cooldowns() {
    let mut w = Window::default();
    let t0 = Utc::now();
    let s = chrono::Duration::seconds;
    let obs = |w: &mut Window, at: i64, obj: Option<&str>| {
        w.observe(
            t0 + s(at),
            obj.map(str::to_owned),
            Evidence::Detection(at),
            3,
            s(10),
            s(30),
        )
    };
    assert!(obs(&mut w, 0, Some("a")).is_none());
    assert!(obs(&mut w, 1, Some("a")).is_none());
    assert!(obs(&mut w, 2, Some("b")).is_none());
    assert_eq!(w.count(), 2);
    // Late and already outside the window: ignored.
    assert!(obs(&mut w, -20, Some("z")).is_none());
    let f = obs(&mut w, 3, None).expect("three distinct objects");
    assert_eq!(f.count, 3);
    assert_eq!(f.evidence.first(), Some(&Evidence::Detection(3)));
    assert!(obs(&mut w, 4, Some("c")).is_none(), "cooling down");
    // 40 s on: the old hits slid out; three fresh objects fire again.
    assert!(obs(&mut w, 40, Some("d")).is_none());
    assert_eq!(w.count(), 1);
    assert!(obs(&mut w, 41, Some("e")).is_none());
    assert!(obs(&mut w, 42, Some("f")).is_some());
}

#[test]
fn schedules_span_midnight_and_read_their_timezone() {
    let sched = |start: &str, end: &str, tz: &str, days: &[&str]| {
        Schedule {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            start: start.into(),
            end: end.into(),
            timezone: tz.into(),
        }
        .compile()
        .expect("valid")
    };
    let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
    // 2026-11-23 is a Monday.
    let night = sched("22:00", "06:00", "UTC", &["mon"]);
    assert!(night.allows(at("2026-11-23T23:00:00Z")));
    assert!(
        night.allows(at("2026-11-24T05:59:00Z")),
        "Tuesday early hours belong to Monday night"
    );
    assert!(
        !night.allows(at("2026-11-24T23:00:00Z")),
        "Tuesday night is not listed"
    );
    assert!(!night.allows(at("2026-11-23T12:00:00Z")));
    let office = sched(
        "09:00",
        "17:00",
        "+02:00",
        &["mon", "tue", "wed", "thu", "fri"],
    );
    assert!(office.allows(at("2026-11-23T07:30:00Z")), "09:30 at +02:00");
    assert!(
        !office.allows(at("2026-11-23T15:30:00Z")),
        "17:30 at +02:00"
    );
    assert!(!office.allows(at("2026-11-22T10:00:00Z")), "Sunday");
    let all_day = sched("00:00", "24:00", "UTC", &["sun"]);
    assert!(all_day.allows(at("2026-11-22T23:59:59Z")));
    for (start, end, tz) in [
        ("9:00", "10:00", "UTC"),
        ("10:00", "10:00", "UTC"),
        ("10:00", "24:01", "UTC"),
        ("10:00", "11:00", "CEST"),
    ] {
        let s = Schedule {
            days: vec!["mon".into()],
            start: start.into(),
            end: end.into(),
            timezone: tz.into(),
        };
        assert!(s.compile().is_err(), "{start}-{end} {tz}");
    }
}
