//! Alert rules end to end on the real binary: a rule made over HTTP fires on
//! a batch published with `mosquitto_pub`, opens an incident, reaches a
//! WebSocket client, and is delivered to a webhook receiver that fails once,
//! signed with the rule's secret.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeqi_e2e::{mosquitto_pub, wait_for, Aggregator, LiveFeed, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Requests the receiver got: headers we check, and the raw body.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1:0 that answers 503 to its first request.
fn start_receiver() -> Result<(u16, Seen)> {
    let seen: Seen = Arc::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let mut seen = state.lock().unwrap_or_else(|p| p.into_inner());
                    seen.push((
                        h("x-edgeqi-timestamp"),
                        h("x-edgeqi-signature"),
                        body.to_vec(),
                    ));
                    if seen.len() == 1 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    std::thread::spawn(move || {
        let _ = rt.block_on(async move { axum::serve(listener, app).await });
    });
    Ok((port, seen))
}

fn post(url: &str, body: &Value) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    Ok((
        status,
        resp.body_mut().read_json::<Value>().unwrap_or(Value::Null),
    ))
}

fn hmac_hex(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &[ts.as_bytes(), b".", body].concat());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_watchlist_hit_becomes_an_incident_a_live_alert_and_a_signed_webhook() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The receiver is on 127.0.0.1, which webhooks may not reach by default.
    let mut agg = Aggregator::new(dir.path(), None, vec![])?.arg("--alerts-allow-private-webhooks");
    agg.restart()?;
    let (hook_port, seen) = start_receiver()?;
    let secret = "e2e-webhook-secret-123";
    let (status, rule) = post(
        &agg.api("/api/v1/alert-rules"),
        &json!({
            "name": "buses at the gate", "kind": "watchlist", "labels": ["bus"],
            "camera_id": "north", "cooldown_s": 600,
            "actions": {
                "incident": {"category": "vehicle_watch", "severity": "high"},
                "webhook": {"url": format!("http://127.0.0.1:{hook_port}/hook"), "secret": secret, "max_attempts": 3}
            }
        }),
    )?;
    ensure!(status == 201, "create rule: {status} {rule}");
    let rule_id = rule["id"].as_i64().context("rule id")?;
    let (status, bad) = post(
        &agg.api("/api/v1/alert-rules"),
        &json!({"name": "bad", "window_s": -60}),
    )?;
    ensure!(
        status == 422 && bad["error"]["code"] == "unprocessable",
        "{status} {bad}"
    );

    let feed = LiveFeed::connect(&agg.ws_url("types=alert"))?;
    std::thread::sleep(Duration::from_millis(300));
    let now = chrono::Utc::now();
    let batch = |seq: u64, label: &str| {
        json!({
            "v": 1, "node_id": "gate-09", "epoch": "e2e", "seq": seq, "sent_at": now,
            "detections": [{"ts": now, "camera_id": "north", "class_id": 5, "label": label,
                            "score": 0.9, "bbox": [1.0, 2.0, 300.0, 200.0], "track_id": 4, "zone": null}]
        })
        .to_string()
    };
    let topic = "edgeqi/v1/nodes/gate-09/detections";
    mosquitto_pub(agg.mqtt_port, topic, batch(1, "car").as_bytes())?;
    mosquitto_pub(agg.mqtt_port, topic, batch(2, "bus").as_bytes())?;

    let alert = wait_for("live alert", Duration::from_secs(15), || {
        feed.of_type("alert").into_iter().next()
    })?;
    let data = &alert["data"];
    ensure!(
        data["rule_id"] == rule_id && data["label"] == "bus" && data["node_id"] == "gate-09",
        "{alert}"
    );
    let incident_id = data["incident_id"].as_i64().context("incident id")?;
    let incident = agg.get(&format!("/api/v1/incidents/{incident_id}"))?;
    ensure!(
        incident["source"] == "alert" && incident["category"] == "vehicle_watch",
        "{incident}"
    );
    let alerts = agg.get(&format!("/api/v1/alerts?rule_id={rule_id}"))?;
    ensure!(
        alerts["items"].as_array().map(Vec::len) == Some(1),
        "{alerts}"
    );

    // 503 first, then delivered; both attempts logged, both signed.
    let delivery = wait_for("webhook delivered", Duration::from_secs(20), || {
        let log = agg
            .get(&format!("/api/v1/alert-rules/{rule_id}/deliveries"))
            .ok()?;
        let d = log["items"].get(0)?.clone();
        (d["status"] != "pending").then_some(d)
    })?;
    ensure!(
        delivery["status"] == "delivered" && delivery["attempts"] == 2,
        "{delivery}"
    );
    ensure!(
        delivery["attempt_log"][0]["status_code"] == 503
            && delivery["attempt_log"][1]["status_code"] == 200,
        "{delivery}"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(seen.len() == 2, "{} requests", seen.len());
    for (ts, sig, body) in &seen {
        let ts = ts.as_deref().context("timestamp header")?;
        let sig = sig.as_deref().context("signature header")?;
        ensure!(
            sig == format!("sha256={}", hmac_hex(secret.as_bytes(), ts, body)),
            "signature {sig} does not verify"
        );
        let payload: Value = serde_json::from_slice(body)?;
        ensure!(
            payload["type"] == "alert" && payload["data"]["id"] == data["id"],
            "{payload}"
        );
    }
    let audit = agg.get("/api/v1/audit?limit=50")?;
    ensure!(
        audit["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["action"] == "alert_rule.create")),
        "{audit}"
    );
    ensure!(
        !audit.to_string().contains(secret),
        "the audit log must not hold the secret"
    );
    Ok(())
}
