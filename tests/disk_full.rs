//! A full disk under the aggregator's SQLite database, end to end.
//!
//! The database lives on a 1 MiB tmpfs that a real agent's detections fill
//! up. The aggregator must stay up, say plainly that the disk is full, stop
//! acknowledging (the agent keeps buffering) and report unready; once the
//! volume grows it resumes by itself, and in the end exactly what the
//! agent's outbox accepted is stored, once.
//!
//! Needs permission to mount a tmpfs (root, as in `scripts/test` on CI);
//! elsewhere it says why it is skipped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeqi_e2e::{
    bin, fault_test_agent_config, free_port, http_get, readyz, wait_aggregator_ready, wait_for,
    Agent, Proc, ADMIN_TOKEN,
};

/// A size-limited tmpfs, unmounted on drop.
struct SmallVolume {
    path: std::path::PathBuf,
}

impl SmallVolume {
    fn mount(path: &Path, size: &str) -> Result<Option<Self>> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs ({}): disk-full test skipped (scripts/test runs it as root)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Self {
            path: path.to_path_buf(),
        }))
    }

    fn grow(&self, size: &str) -> Result<()> {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()?;
        ensure!(st.success(), "remount {} failed", self.path.display());
        Ok(())
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_stops_acks_and_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(volume) = SmallVolume::mount(&dir.path().join("db"), "1m")? else {
        return Ok(());
    };
    let db = volume.path.join("edgeqi.db");

    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut cmd = Command::new(bin("edgeqi-aggregator"));
    cmd.arg("--http-listen")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{mqtt_port}"))
        .arg("--mqtt-allow-anonymous")
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .env("RUST_LOG", "info,rumqttd=warn")
        .env("EDGEQI_ADMIN_TOKEN", ADMIN_TOKEN);
    // The log is outside the small volume: it must not be what fills it.
    let mut agg = Proc::spawn("edgeqi-aggregator", cmd, dir.path().join("aggregator.log"))?;
    wait_aggregator_ready(&mut agg, http_port, Duration::from_secs(30))?;

    // ~20 s of a busy synthetic camera: far more than 1 MiB of rows.
    let agent_cfg =
        fault_test_agent_config(dir.path(), "synthetic://?objects=12&frames=600&seed=5")?;
    let agent = Agent::start(
        dir.path(),
        "disk-full",
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        &["--config", &agent_cfg.display().to_string()],
    )?;

    wait_for("the disk to fill up", Duration::from_secs(60), || {
        agg.log_text()
            .contains("disk holding the database is full")
            .then_some(())
    })?;
    wait_for("/readyz to turn unready", Duration::from_secs(15), || {
        (readyz(http_port) == Some(503)).then_some(())
    })?;
    let pending_full = agent.outbox_pending()?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        agent.outbox_pending()? > pending_full,
        "with the disk full nothing may be acknowledged"
    );
    ensure!(agg.is_running(), "the aggregator must survive a full disk");

    // Space comes back: ingest resumes by itself.
    volume.grow("256m")?;
    wait_for("/readyz ready again", Duration::from_secs(30), || {
        (readyz(http_port) == Some(200)).then_some(())
    })?;

    agent.wait_drained(Duration::from_secs(120))?;
    let enqueued = agent.outbox_counter("enqueued_detections")?;
    ensure!(
        agent.outbox_counter("shed_detections")? == 0,
        "nothing may be shed"
    );
    let (status, summary) = http_get(
        &format!("http://127.0.0.1:{http_port}/api/v1/stats/summary"),
        Some(ADMIN_TOKEN),
    )?;
    ensure!(status == 200, "summary: {status} {summary}");
    let total = summary["detections_total"].as_u64().context("summary")?;
    ensure!(
        total == enqueued,
        "stored {total} detections, the agent's outbox accepted {enqueued}"
    );
    Ok(())
}
