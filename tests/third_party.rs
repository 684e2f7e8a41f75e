//! Clients this project did not write: `mosquitto_pub` against the embedded
//! broker, and a real Mosquitto as the external broker.

use std::time::Duration;

use anyhow::{ensure, Result};
use edgeqi_e2e::{mosquitto_pub, wait_for, Agent, Aggregator, LiveFeed, Mosquitto};
use serde_json::{json, Value};

/// The start of the hour before this one: what the aggregator accepts
/// (ingest refuses timestamps far from its clock).
fn hour() -> String {
    (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H")
        .to_string()
}

/// A valid timestamp `n` seconds into [`hour`].
fn clock(n: u64) -> String {
    format!("{}:{:02}:{:02}.100Z", hour(), (n / 60) % 60, n % 60)
}

fn batch(node: &str, seq: u64, labels: &[&str]) -> Value {
    json!({
        "v": 1, "node_id": node, "epoch": "hand-1", "seq": seq,
        "sent_at": format!("{}:00:00.123Z", hour()),
        "detections": labels.iter().enumerate().map(|(i, l)| json!({
            "ts": clock(seq * 2 + i as u64),
            "camera_id": "north", "class_id": 5, "label": l, "score": 0.81,
            "bbox": [34.0, 233.0, 798.0, 766.0], "track_id": 17, "zone": "lane-1"
        })).collect::<Vec<_>>()
    })
}

fn publish(port: u16, node: &str, payload: &[u8]) -> Result<()> {
    mosquitto_pub(port, &format!("edgeqi/v1/nodes/{node}/detections"), payload)
}

#[test]
fn hand_written_batches_duplicates_and_malformed_payloads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::start(dir.path())?;
    let port = agg.mqtt_port;
    let feed = LiveFeed::connect(&agg.ws_url("node_id=cam-box"))?;

    // Watch acks with mosquitto_sub, as a third-party agent would.
    let acks_file = dir.path().join("acks.txt");
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "edgeqi/v1/nodes/cam-box/ack",
        ])
        .stdout(std::fs::File::create(&acks_file)?)
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));

    publish(
        port,
        "cam-box",
        batch("cam-box", 1, &["bus", "person"])
            .to_string()
            .as_bytes(),
    )?;
    publish(
        port,
        "cam-box",
        batch("cam-box", 2, &["car"]).to_string().as_bytes(),
    )?;
    // A resend of seq 2: acked again, stored once.
    publish(
        port,
        "cam-box",
        batch("cam-box", 2, &["car"]).to_string().as_bytes(),
    )?;
    // The four kinds of malformed payload, plus an oversized one.
    let mut wrong_version = batch("cam-box", 3, &["bus"]);
    wrong_version["v"] = json!(2);
    let mut missing = batch("cam-box", 3, &["bus"]);
    missing.as_object_mut().map(|o| o.remove("seq"));
    publish(port, "cam-box", b"{this is not json")?;
    publish(port, "cam-box", wrong_version.to_string().as_bytes())?;
    publish(port, "cam-box", missing.to_string().as_bytes())?;
    publish(
        port,
        "cam-box",
        batch("other-box", 3, &["bus"]).to_string().as_bytes(),
    )?;
    // Ingest goes on after all of that.
    publish(
        port,
        "cam-box",
        batch("cam-box", 3, &["truck"]).to_string().as_bytes(),
    )?;

    wait_for("seq 3 acked", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&acks_file).ok()?;
        text.lines()
            .any(|l| l.contains("\"acked_seq\":3"))
            .then_some(())
    })?;
    let acks = std::fs::read_to_string(&acks_file)?;
    let acked: Vec<u64> = acks
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["acked_seq"].as_u64())
        .collect();
    ensure!(acked == [1, 2, 2, 3], "acks {acked:?}");

    let check_counts = |agg: &Aggregator| -> Result<()> {
        ensure!(
            agg.detections_total()? == 4,
            "2 + 1 + 1 detections, the resend not twice"
        );
        let summary = agg.get("/api/v1/stats/summary")?;
        ensure!(
            summary["by_class"] == json!({"bus": 1, "person": 1, "car": 1, "truck": 1}),
            "{summary}"
        );
        let page = agg.get("/api/v1/detections?node_id=cam-box&label=bus")?;
        let item = &page["items"][0];
        ensure!(
            item["bbox"] == json!([34.0, 233.0, 798.0, 766.0]) && item["zone"] == "lane-1",
            "{item}"
        );
        let dl = agg.get("/api/v1/dead-letters")?;
        let mut reasons: Vec<String> = dl["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["reason_code"].as_str().map(str::to_owned))
            .collect();
        reasons.sort();
        ensure!(
            reasons
                == [
                    "invalid_json",
                    "missing_field",
                    "node_id_mismatch",
                    "unsupported_version"
                ],
            "{reasons:?}"
        );
        Ok(())
    };
    check_counts(&agg)?;
    // The API is closed without a token, open with the bootstrap one.
    let (status, body) = edgeqi_e2e::http_get(&agg.api("/api/v1/detections"), None)?;
    ensure!(
        status == 401 && body["error"]["code"] == "unauthorized",
        "{status} {body}"
    );
    let metrics = ureq::get(&agg.api("/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    ensure!(
        metrics.contains("edgeqi_ingest_rejected_total{reason=\"invalid_json\"} 1"),
        "{metrics}"
    );

    // The live feed carried the stored detections, not the rejected ones.
    wait_for("4 live detections", Duration::from_secs(5), || {
        (feed.of_type("detection").len() == 4).then_some(())
    })?;

    // kill -9 right after the ack, restart, count again: nothing acked is lost.
    agg.proc.kill9();
    agg.restart()?;
    check_counts(&agg)?;
    let node = agg.get("/api/v1/nodes/cam-box")?;
    ensure!(node["ledger"][0]["acked_seq"] == 3, "{node}");
    let _ = sub.kill();
    let _ = sub.wait();
    Ok(())
}

#[test]
fn oversized_payload_is_refused_and_ingest_goes_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    // A batch of 1,000 detections fits comfortably under the 1 MiB limit.
    let labels = vec!["person"; 1000];
    publish(
        agg.mqtt_port,
        "big-box",
        batch("big-box", 1, &labels).to_string().as_bytes(),
    )?;
    wait_for("1000 detections stored", Duration::from_secs(15), || {
        (agg.detections_total().ok()? == 1000).then_some(())
    })?;
    // Over the limit: the broker refuses the packet or ingest dead-letters it;
    // either way nothing is stored and the next batch still is.
    let mut huge = batch("big-box", 2, &["bus"]);
    huge["padding"] = json!("x".repeat(1_100_000));
    let _ = publish(agg.mqtt_port, "big-box", huge.to_string().as_bytes());
    publish(
        agg.mqtt_port,
        "big-box",
        batch("big-box", 2, &["car"]).to_string().as_bytes(),
    )?;
    wait_for("seq 2 stored", Duration::from_secs(15), || {
        (agg.detections_total().ok()? == 1001).then_some(())
    })?;
    ensure!(
        agg.get("/api/v1/stats/summary")?["by_class"]["bus"].is_null(),
        "the oversized batch was not stored"
    );
    Ok(())
}

#[test]
fn external_mosquitto_broker_mode() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mosq = Mosquitto::start(dir.path())?;
    let agg_dir = dir.path().join("agg");
    std::fs::create_dir_all(&agg_dir)?;
    let mut agg = Aggregator::new(&agg_dir, Some(mosq.url()), vec![])?;
    agg.restart()?;
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[outbox]\nbatch_max_age = \"300ms\"\n[[cameras]]\nid = \"gate\"\nuri = \"synthetic://?objects=2&frames=60\"\nfps = 30\n",
    )?;
    let agent = Agent::start(
        dir.path(),
        "via-mosquitto",
        &mosq.url(),
        &["--config", &cfg.display().to_string()],
    )?;
    let mut last = u64::MAX;
    wait_for(
        "the agent's clip stored and acked through Mosquitto",
        Duration::from_secs(60),
        || {
            let enq = agent.outbox_counter("enqueued_detections").ok()?;
            let done = enq > 0 && enq == last && agent.outbox_pending().ok()? == 0;
            last = enq;
            std::thread::sleep(Duration::from_millis(1000));
            done.then_some(())
        },
    )?;
    let enqueued = agent.outbox_counter("enqueued_detections")?;
    ensure!(
        agg.detections_total()? == enqueued,
        "stored vs enqueued through Mosquitto"
    );
    // Third-party publish through Mosquitto too.
    mosquitto_pub(
        mosq.port,
        "edgeqi/v1/nodes/hand/detections",
        batch("hand", 1, &["bus"]).to_string().as_bytes(),
    )?;
    wait_for("the hand-written batch", Duration::from_secs(10), || {
        (agg.detections_total().ok()? == enqueued + 1).then_some(())
    })?;
    // The aggregator's session survives its own restart: publishes made while
    // it is down are delivered when it comes back (Mosquitto keeps them).
    agg.proc.kill9();
    mosquitto_pub(
        mosq.port,
        "edgeqi/v1/nodes/hand/detections",
        batch("hand", 2, &["car"]).to_string().as_bytes(),
    )?;
    agg.restart()?;
    wait_for(
        "the batch published while the aggregator was down",
        Duration::from_secs(15),
        || (agg.detections_total().ok()? == enqueued + 2).then_some(()),
    )?;
    Ok(())
}
