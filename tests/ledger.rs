//! The detection ledger end to end: real agent and aggregator processes,
//! kill -9 of either mid-stream, a broker that is not there yet — and in
//! every case exactly what the agent's outbox accepted is stored, once.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use edgeqi_e2e::{wait_for, Agent, Aggregator, LiveFeed};

/// An agent config with one fast synthetic camera producing `frames` frames.
fn agent_config(dir: &Path, frames: u32) -> Result<String> {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[outbox]
batch_max_age = "300ms"
ack_timeout = "3s"

[mqtt]
reconnect_max = "1s"

[[cameras]]
id = "north"
uri = "synthetic://?objects=3&frames={frames}&seed=7"
fps = 30
"#
        ),
    )?;
    Ok(path.display().to_string())
}

/// Waits until the agent's source is done and its outbox is empty, then
/// checks that the aggregator stored exactly what the outbox accepted.
fn assert_exactly_once(agg: &Aggregator, agent: &Agent) -> Result<u64> {
    agent.wait_drained(Duration::from_secs(90))?;
    let enqueued = agent.outbox_counter("enqueued_detections")?;
    let batches = agent.outbox_counter("enqueued_batches")?;
    ensure!(
        agent.outbox_counter("shed_detections")? == 0,
        "nothing may be shed"
    );
    ensure!(
        agent.outbox_counter("compacted_detections")? == 0,
        "nothing compacted"
    );
    let stored = agg.detections_total()?;
    ensure!(
        stored == enqueued,
        "aggregator stored {stored} detections, the agent's outbox accepted {enqueued}"
    );
    let node = agg.get(&format!("/api/v1/nodes/{}", agent.node_id))?;
    let epoch = agent.epoch()?;
    let ledger = node["ledger"].as_array().cloned().unwrap_or_default();
    let entry = ledger
        .iter()
        .find(|e| e["epoch"] == epoch.as_str())
        .ok_or_else(|| anyhow::anyhow!("no ledger entry for epoch {epoch}: {node}"))?;
    ensure!(
        entry["acked_seq"] == batches,
        "ledger {entry} vs {batches} batches enqueued"
    );
    ensure!(
        entry["holes"].as_array().is_some_and(Vec::is_empty),
        "holes: {entry}"
    );
    Ok(stored)
}

#[test]
fn detections_are_stored_once_streamed_and_acked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    let feed = LiveFeed::connect(&agg.ws_url("types=detection,heartbeat"))?;
    let cfg = agent_config(dir.path(), 120)?;
    let agent = Agent::start(dir.path(), "e2e-flow", &agg.mqtt_url(), &["--config", &cfg])?;
    let stored = assert_exactly_once(&agg, &agent)?;
    ensure!(
        stored >= 100,
        "a 120-frame synthetic clip with 3 objects gives many detections, got {stored}"
    );

    // The live feed saw every stored detection, once, and heartbeats.
    wait_for("live detections", Duration::from_secs(10), || {
        (feed.of_type("detection").len() as u64 >= stored).then_some(())
    })?;
    let live = feed.of_type("detection");
    let mut ids: Vec<i64> = live
        .iter()
        .filter_map(|f| f["data"]["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        ids.len() as u64 == stored,
        "{} distinct live detections vs {stored} stored",
        ids.len()
    );
    ensure!(feed.of_type("lagged").is_empty());
    ensure!(live
        .iter()
        .all(|f| f["data"]["node_id"] == "e2e-flow" && f["data"]["label"] == "motion"));
    ensure!(
        !feed.of_type("heartbeat").is_empty(),
        "heartbeats on the live feed"
    );

    // The registry knows the node from its heartbeats.
    let node = agg.get("/api/v1/nodes/e2e-flow")?;
    ensure!(node["online"] == true, "{node}");
    ensure!(node["last_heartbeat"]["version"].is_string(), "{node}");
    // REST pages newest first through everything stored.
    let page = agg.get("/api/v1/detections?node_id=e2e-flow&limit=50")?;
    ensure!(page["items"].as_array().map(Vec::len) == Some(50));
    ensure!(page["next_cursor"].is_string());
    Ok(())
}

#[test]
fn kill9_of_aggregator_and_agent_mid_stream_loses_and_duplicates_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::start(dir.path())?;
    let cfg = agent_config(dir.path(), 240)?;
    let mut agent = Agent::start(dir.path(), "e2e-kill", &agg.mqtt_url(), &["--config", &cfg])?;

    wait_for("some detections stored", Duration::from_secs(30), || {
        (agg.detections_total().ok()? > 30).then_some(())
    })?;
    agg.proc.kill9();
    // The agent keeps detecting into its outbox while the aggregator is gone.
    std::thread::sleep(Duration::from_secs(2));
    agg.restart()?;
    let before = agg.detections_total()?;
    wait_for(
        "ingest to resume after restart",
        Duration::from_secs(30),
        || (agg.detections_total().ok()? > before).then_some(()),
    )?;
    agent.proc.kill9();
    std::thread::sleep(Duration::from_millis(500));
    // Same data dir: same epoch, and the unacked batches go out again.
    let epoch = agent.epoch()?;
    agent.restart()?;
    assert_exactly_once(&agg, &agent)?;
    ensure!(
        agent.epoch()? == epoch,
        "the outbox keeps its epoch across restarts"
    );
    Ok(())
}

#[test]
fn broker_unreachable_at_first_then_back_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::new(dir.path(), None, vec![])?;
    let cfg = agent_config(dir.path(), 150)?;
    // Nothing listens at the broker address yet.
    let agent = Agent::start(dir.path(), "e2e-late", &agg.mqtt_url(), &["--config", &cfg])?;
    wait_for(
        "the outbox to fill while offline",
        Duration::from_secs(30),
        || (agent.outbox_pending().ok()? >= 3).then_some(()),
    )?;
    agg.restart()?;
    assert_exactly_once(&agg, &agent)?;
    Ok(())
}

#[test]
fn sigterm_publishes_offline_status() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    let cfg = agent_config(dir.path(), 30)?;
    let mut agent = Agent::start(dir.path(), "e2e-bye", &agg.mqtt_url(), &["--config", &cfg])?;
    wait_for("the node online", Duration::from_secs(30), || {
        let n = agg.get("/api/v1/nodes/e2e-bye").ok()?;
        (n["online"] == true).then_some(())
    })?;
    let status = agent.proc.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "agent exit status {status}");
    wait_for("the node offline", Duration::from_secs(10), || {
        let n = agg.get("/api/v1/nodes/e2e-bye").ok()?;
        (n["online"] == false).then_some(())
    })?;
    Ok(())
}
