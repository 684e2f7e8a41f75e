//! Remote config end to end: cameras registered through the REST API reach
//! a real agent as a retained, versioned config over MQTT; the agent applies
//! them without restarting (its line-crossing events follow the new lines),
//! refuses a bad config while keeping the good one, keeps the applied config
//! across its own restart with no broker in sight, and a restarted broker
//! gets the config again from the aggregator.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use edgeqi_e2e::{mosquitto_pub, wait_for, Agent, Aggregator, ADMIN_TOKEN};
use serde_json::{json, Value};

const NODE: &str = "cfg-node";

/// HTTP request with a JSON body (`POST`, `PUT`) or none (`DELETE`),
/// returning status and JSON body (Null when not JSON).
fn http_send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("DELETE", _) => {
            let mut req = agent.delete(url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        (m, b) => {
            let mut req = match m {
                "POST" => agent.post(url),
                "PUT" => agent.put(url),
                other => anyhow::bail!("http_send: unsupported method {other}"),
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send_json(b.cloned().unwrap_or(Value::Null))
        }
    };
    let mut resp = resp.with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    Ok((status, body))
}

/// The message the broker keeps retained on `topic`, read with
/// `mosquitto_sub --retained-only`; fails when there is none in time.
fn mosquitto_retained(port: u16, topic: &str, timeout_s: u32) -> Result<String> {
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .args(["--retained-only", "-C", "1", "-W", &timeout_s.to_string()])
        .output()
        .context("run mosquitto_sub (apt-get install mosquitto-clients)")?;
    ensure!(
        out.status.success(),
        "no retained message on {topic} within {timeout_s}s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn node(agg: &Aggregator) -> Result<Value> {
    agg.get(&format!("/api/v1/nodes/{NODE}"))
}

/// Waits until the node's heartbeat reports `version` applied.
fn wait_applied(agg: &Aggregator, agent: &Agent, version: u64) -> Result<Value> {
    wait_for(
        &format!("the agent to apply config version {version}"),
        Duration::from_secs(30),
        || {
            let n = node(agg).ok()?;
            (n["config"]["applied_version"] == version && n["config"]["in_sync"] == true)
                .then_some(n)
        },
    )
    .with_context(|| agent.proc.log_text())
}

/// Line-crossing events of the node, newest first.
fn crossings(agg: &Aggregator) -> Vec<Value> {
    agg.get(&format!(
        "/api/v1/events?node_id={NODE}&kind=line_crossed&limit=1000"
    ))
    .ok()
    .and_then(|v| v["items"].as_array().cloned())
    .unwrap_or_default()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ts_of(e: &Value) -> DateTime<Utc> {
    time(&e["ts"])
}

fn query_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[test]
fn registry_cameras_reach_the_agent_and_apply_without_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::start(dir.path())?;
    let mut agent = Agent::start(
        dir.path(),
        NODE,
        &agg.mqtt_url(),
        &["--source", "gate=synthetic://?objects=4&fps=15"],
    )?;
    wait_for("the node to report in", Duration::from_secs(30), || {
        node(&agg).ok()
    })
    .with_context(|| agent.proc.log_text())?;
    ensure!(
        crossings(&agg).is_empty(),
        "no lines in the config file, no crossings"
    );

    // 1. A camera with a vertical line through the middle of the frame.
    let cameras = agg.api(&format!("/api/v1/nodes/{NODE}/cameras"));
    let (status, cam) = http_send(
        "POST",
        &cameras,
        Some(ADMIN_TOKEN),
        Some(&json!({
            "camera_id": "gate",
            "name": "Gate, looking west",
            "location": {"lat": 52.3702, "lng": 4.8952},
            "heading": 270,
            "lines": [{"id": "mid-v", "from": [0.5, 0.0], "to": [0.5, 1.0]}]
        })),
    )?;
    ensure!(status == 201, "HTTP {status}: {cam}");
    ensure!(cam["config_version"] == 1, "{cam}");
    let first = wait_applied(&agg, &agent, 1)?;
    let uptime_first = first["last_heartbeat"]["uptime_s"].as_u64().unwrap_or(0);
    let pid = agent.proc.pid();
    wait_for(
        "objects crossing the remote line",
        Duration::from_secs(60),
        || {
            crossings(&agg)
                .iter()
                .any(|e| e["line"] == "mid-v")
                .then_some(())
        },
    )
    .with_context(|| agent.proc.log_text())?;

    // 2. Replace it with a horizontal line and a zone over the left half:
    //    the running agent switches over.
    let (status, cam) = http_send(
        "PUT",
        &format!("{cameras}/gate"),
        Some(ADMIN_TOKEN),
        Some(&json!({
            "name": "Gate, looking west",
            "heading": 270,
            "zones": [{"id": "left-half", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}],
            "lines": [{"id": "mid-h", "from": [0.0, 0.5], "to": [1.0, 0.5]}]
        })),
    )?;
    ensure!(status == 200, "HTTP {status}: {cam}");
    ensure!(cam["config_version"] == 2, "{cam}");
    let second = wait_applied(&agg, &agent, 2)?;
    // The heartbeat that reported version 2 was sent after the cameras got
    // the new lines: no frame captured after it uses the old ones.
    let switched_at = time(&second["last_heartbeat"]["ts"]);
    ensure!(
        agent.proc.is_running() && agent.proc.pid() == pid,
        "applied without a restart"
    );
    ensure!(
        second["last_heartbeat"]["uptime_s"].as_u64().unwrap_or(0) >= uptime_first,
        "uptime keeps growing: {second}"
    );
    wait_for(
        "objects crossing the new line",
        Duration::from_secs(60),
        || {
            crossings(&agg)
                .iter()
                .any(|e| e["line"] == "mid-h" && ts_of(e) > switched_at)
                .then_some(())
        },
    )
    .with_context(|| agent.proc.log_text())?;
    wait_for(
        "detections inside the remote zone",
        Duration::from_secs(30),
        || {
            let d = agg
                .get(&format!("/api/v1/detections?node_id={NODE}&limit=200"))
                .ok()?;
            d["items"]
                .as_array()?
                .iter()
                .any(|d| d["zone"] == "left-half")
                .then_some(())
        },
    )?;
    // The old line is gone: nothing crosses it once the switch is a second old.
    let stale: Vec<Value> = crossings(&agg)
        .into_iter()
        .filter(|e| e["line"] == "mid-v" && ts_of(e) > switched_at)
        .collect();
    ensure!(stale.is_empty(), "old line still counted: {stale:?}");

    // 3. A config the agent must refuse (published by hand, as a buggy
    //    third party might): it keeps version 2 and says why.
    let topic = format!("edgeqi/v1/nodes/{NODE}/config");
    mosquitto_pub(
        agg.mqtt_port,
        &topic,
        json!({"v": 1, "node_id": NODE, "version": 999, "config": {"cameras": [
            {"id": "gate", "lines": [{"id": "bad", "from": [0.2, 0.2], "to": [0.2, 0.2]}]}
        ]}})
        .to_string()
        .as_bytes(),
    )?;
    let refused = wait_for(
        "the agent to report the refusal",
        Duration::from_secs(20),
        || {
            let n = node(&agg).ok()?;
            (n["config"]["last_error"]["version"] == 999).then_some(n)
        },
    )
    .with_context(|| agent.proc.log_text())?;
    ensure!(
        refused["config"]["applied_version"] == 2,
        "keeps the good one: {refused}"
    );
    let reason = refused["config"]["last_error"]["reason"]
        .as_str()
        .unwrap_or_default();
    ensure!(reason.contains("config.cameras[0].lines[0]"), "{reason}");
    ensure!(
        agent.proc.log_text().contains("refused a remote config"),
        "logged"
    );

    // 4. The aggregator restarts (and with it the embedded broker, which
    //    forgets retained messages): it publishes the config again.
    //    Meanwhile the agent restarts with no broker: it runs the saved config.
    agg.proc.kill9();
    agent.restart()?;
    let restarted_at = Utc::now();
    std::thread::sleep(Duration::from_secs(6));
    let broker_back_at = Utc::now();
    agg.restart()?;
    wait_for(
        "the restarted agent to report version 2",
        Duration::from_secs(45),
        || {
            let n = node(&agg).ok()?;
            // Only the restarted process can have sent a heartbeat since.
            let fresh = time(&n["last_heartbeat"]["ts"]) > broker_back_at;
            (fresh && n["config"]["applied_version"] == 2 && n["config"]["in_sync"] == true)
                .then_some(())
        },
    )
    .with_context(|| agent.proc.log_text())?;
    let retained = mosquitto_retained(agg.mqtt_port, &topic, 15)?;
    let doc: Value = serde_json::from_str(&retained).context("retained config is JSON")?;
    ensure!(doc["v"] == 1 && doc["node_id"] == NODE, "{doc}");
    ensure!(
        doc["version"] == 2,
        "the registry's version, not the bad one: {doc}"
    );
    ensure!(
        doc["config"]["cameras"][0]["lines"][0]["id"] == "mid-h",
        "{doc}"
    );
    ensure!(doc["config"]["cameras"][0]["heading"] == 270.0, "{doc}");
    // Detections made while the broker was down (sent from the outbox
    // afterwards) already carry the remote zone: the saved config applied at
    // start, before any broker was reachable.
    wait_for(
        "detections from the offline window in the remote zone",
        Duration::from_secs(30),
        || {
            let d = agg
                .get(&format!(
                    "/api/v1/detections?node_id={NODE}&since={}&until={}&limit=1000",
                    query_time(restarted_at),
                    query_time(broker_back_at)
                ))
                .ok()?;
            d["items"]
                .as_array()?
                .iter()
                .any(|d| d["zone"] == "left-half")
                .then_some(())
        },
    )
    .with_context(|| agent.proc.log_text())?;
    ensure!(
        agent
            .proc
            .log_text()
            .contains("applying the saved remote config"),
        "{}",
        agent.proc.log_text()
    );

    // 5. Deleting the camera hands it back to the config file (no lines).
    let (status, del) = http_send(
        "DELETE",
        &format!("{cameras}/gate"),
        Some(ADMIN_TOKEN),
        None,
    )?;
    ensure!(status == 200 && del["config_version"] == 3, "{del}");
    let after = wait_applied(&agg, &agent, 3)?;
    ensure!(after["cameras"] == json!([]), "{after}");
    ensure!(after["config"]["last_error"].is_null(), "cleared: {after}");
    Ok(())
}
