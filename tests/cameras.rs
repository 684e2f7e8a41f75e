//! Cameras end to end: a GStreamer RTSP server streams the test clip to a
//! real agent, which reports to a real aggregator. The server is killed and
//! comes back; broken sources are reported without taking the agent down;
//! `edgeqi-agent process` runs the same pipeline over the file.
//!
//! Needs `../shared/testdata/street.mp4` and GStreamer
//! (scripts/lib/gstreamer.sh); a missing clip fails the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeqi_e2e::{bin, free_port, shared_dir, wait_for, Agent, Aggregator, LiveFeed, Proc};
use serde_json::Value;

fn street_mp4() -> PathBuf {
    let p = shared_dir().join("testdata/street.mp4");
    assert!(
        p.is_file(),
        "test clip {} is missing: the camera tests need ../shared/testdata/street.mp4",
        p.display()
    );
    p
}

fn start_rtsp_server(dir: &Path, port: u16, n: u32) -> Result<Proc> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeqi-test-rtsp-server"));
    cmd.arg(port.to_string()).arg(street_mp4());
    let proc = Proc::spawn("rtsp-server", cmd, dir.join(format!("rtsp-{n}.log")))?;
    wait_for("the RTSP server to listen", Duration::from_secs(10), || {
        proc.log_text().contains("ready").then_some(())
    })?;
    Ok(proc)
}

/// The newest heartbeat's entry for `camera`.
fn camera_health(feed: &LiveFeed, camera: &str) -> Option<Value> {
    feed.of_type("heartbeat").last().and_then(|hb| {
        hb["data"]["cameras"]
            .as_array()?
            .iter()
            .find(|c| c["camera_id"] == camera)
            .cloned()
    })
}

fn detector(feed: &LiveFeed) -> String {
    feed.of_type("heartbeat")
        .last()
        .and_then(|hb| hb["data"]["detector"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn rtsp_camera_is_tracked_reported_down_and_recovers_on_its_own() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    let feed = LiveFeed::connect(&agg.ws_url("types=detection,heartbeat"))?;
    let port = free_port();
    let mut server = start_rtsp_server(dir.path(), port, 1)?;
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[outbox]
batch_max_age = "300ms"
[[cameras]]
id = "street"
uri = "rtsp://127.0.0.1:{port}/street"
detect_fps = 5
stall_timeout = "3s"
"#
        ),
    )?;
    let mut agent = Agent::start(
        dir.path(),
        "cam-rtsp",
        &agg.mqtt_url(),
        &["--config", &cfg.display().to_string()],
    )?;

    // Streaming, fewer frames inferred than seen, tracked detections.
    let first = wait_for(
        "the camera to stream and detections with track ids",
        Duration::from_secs(40),
        || {
            let h = camera_health(&feed, "street")?;
            let tracked = feed
                .of_type("detection")
                .iter()
                .filter(|d| d["data"]["camera_id"] == "street" && d["data"]["track_id"].is_u64())
                .count();
            (h["state"] == "streaming" && h["frames_total"].as_u64()? >= 40 && tracked >= 3)
                .then_some(h)
        },
    )
    .with_context(|| agent.proc.log_text())?;
    let seen = first["frames_total"].as_u64().unwrap_or(0);
    let inferred = first["frames_inferred"].as_u64().unwrap_or(0);
    ensure!(
        inferred > 0 && inferred < seen,
        "inferred {inferred} of {seen}: {first}"
    );
    ensure!(first["last_frame_at"].is_string(), "{first}");
    ensure!(
        first["fps"].as_f64().unwrap_or(0.0) > 3.0,
        "about 10 fps: {first}"
    );

    // With a real detector the clip's bus and persons are found and tracked.
    if detector(&feed) != "motion" {
        wait_for("bus and person detections", Duration::from_secs(30), || {
            let dets = feed.of_type("detection");
            let has = |l: &str| {
                dets.iter()
                    .any(|d| d["data"]["label"] == l && d["data"]["track_id"].is_u64())
            };
            (has("bus") && has("person")).then_some(())
        })?;
    }

    // The server dies: the camera is reported down, the agent stays up.
    server.kill9();
    let down = wait_for(
        "the camera to be reported down",
        Duration::from_secs(20),
        || {
            let h = camera_health(&feed, "street")?;
            let state = h["state"].as_str()?.to_owned();
            ["stalled", "reconnecting", "failed"]
                .contains(&state.as_str())
                .then_some(h)
        },
    )
    .with_context(|| agent.proc.log_text())?;
    ensure!(
        down["last_error"].is_string(),
        "the outage says why: {down}"
    );
    ensure!(agent.proc.is_running(), "the agent stays up");
    let frames_when_down = down["frames_total"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(3));
    let still_down = camera_health(&feed, "street").context("heartbeat")?;
    ensure!(
        still_down["state"] != "streaming",
        "no server, no stream: {still_down}"
    );

    // The server returns on the same port: the agent resumes on its own.
    let detections_before = feed.of_type("detection").len();
    let _server = start_rtsp_server(dir.path(), port, 2)?;
    wait_for(
        "the camera to stream again and detect",
        Duration::from_secs(60),
        || {
            let h = camera_health(&feed, "street")?;
            let more_frames = h["frames_total"].as_u64()? > frames_when_down + 30;
            let more_detections = feed.of_type("detection").len() > detections_before;
            (h["state"] == "streaming" && more_frames && more_detections).then_some(())
        },
    )
    .with_context(|| agent.proc.log_text())?;
    ensure!(agent.proc.is_running());
    let log = agent.proc.log_text();
    ensure!(log.contains("camera is back"), "recovery is logged");
    agent.proc.terminate(Duration::from_secs(15))?;
    Ok(())
}

#[test]
fn broken_sources_are_reported_and_the_agent_stays_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    let feed = LiveFeed::connect(&agg.ws_url("types=heartbeat"))?;
    let corrupt = dir.path().join("corrupt.mp4");
    std::fs::write(
        &corrupt,
        b"this is not a video, just bytes that end in .mp4\n".repeat(100),
    )?;
    let truncated = dir.path().join("truncated.mp4");
    let bytes = std::fs::read(street_mp4())?;
    std::fs::write(&truncated, &bytes[..bytes.len() / 20])?;
    let nobody = free_port();
    let sources = [
        format!("corrupt=file://{}", corrupt.display()),
        format!("truncated=file://{}", truncated.display()),
        format!("wrongurl=rtsp://127.0.0.1:{nobody}/nothing"),
        "nodevice=v4l2:///dev/video97".to_owned(),
        "good=synthetic://?objects=2&fps=10".to_owned(),
    ];
    let mut args = vec![];
    for s in &sources {
        args.push("--source");
        args.push(s.as_str());
    }
    let mut agent = Agent::start(dir.path(), "cam-broken", &agg.mqtt_url(), &args)?;
    let cams = wait_for(
        "every broken camera reported with a reason",
        Duration::from_secs(40),
        || {
            let hb = feed.of_type("heartbeat").last()?.clone();
            let cams = hb["data"]["cameras"].as_array()?.clone();
            let get = |id: &str| cams.iter().find(|c| c["camera_id"] == id).cloned();
            let failed = |id: &str| {
                get(id).is_some_and(|c| c["state"] == "failed" && c["last_error"].is_string())
            };
            let good = get("good")?;
            let truncated_done = get("truncated").is_some_and(|c| c["state"] != "connecting");
            (failed("corrupt")
                && failed("wrongurl")
                && failed("nodevice")
                && truncated_done
                && good["state"] == "streaming"
                && good["frames_total"].as_u64()? > 10)
                .then_some(cams)
        },
    )
    .with_context(|| agent.proc.log_text())?;
    let error_of = |id: &str| {
        cams.iter()
            .find(|c| c["camera_id"] == id)
            .and_then(|c| c["last_error"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        error_of("nodevice").contains("does not exist"),
        "{}",
        error_of("nodevice")
    );
    ensure!(
        error_of("wrongurl").contains("rtsp://127.0.0.1"),
        "{}",
        error_of("wrongurl")
    );
    ensure!(
        error_of("corrupt").contains("corrupt.mp4"),
        "{}",
        error_of("corrupt")
    );
    ensure!(agent.proc.is_running(), "the agent stays up");
    agent.proc.terminate(Duration::from_secs(15))?;
    Ok(())
}

#[test]
fn process_runs_the_pipeline_over_a_recording() -> Result<()> {
    let out = Command::new(bin("edgeqi-agent"))
        .args(["--node-id", "offline", "process", "--json"])
        .arg(street_mp4())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout)?;
    let seen = r["frames_seen"].as_u64().unwrap_or(0);
    let inferred = r["frames_inferred"].as_u64().unwrap_or(0);
    let gated = r["frames_gated"].as_u64().unwrap_or(0);
    ensure!((140..=160).contains(&seen), "15 s at 10 fps: {seen}");
    // The clip opens with 3 s of a still picture: the motion gate skips most of it.
    ensure!(
        gated >= 15 && inferred + gated == seen && inferred < seen,
        "{inferred} inferred, {gated} gated of {seen}"
    );
    ensure!(
        r["media_s"].as_f64().unwrap_or(0.0) > 14.0,
        "{}",
        r["media_s"]
    );
    ensure!(
        !r["tracks"].as_object().map_or(true, |t| t.is_empty()),
        "tracks: {}",
        r["tracks"]
    );
    let events = r["events"].as_array().context("events")?;
    ensure!(
        events.iter().any(|e| e["kind"] == "appeared")
            && events.iter().any(|e| e["kind"] == "left")
    );

    // A file that is not a video: a clear error, not a panic.
    let dir = tempfile::tempdir()?;
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"junk".repeat(1000))?;
    let out = Command::new(bin("edgeqi-agent"))
        .args(["--node-id", "offline", "process"])
        .arg(&junk)
        .output()?;
    ensure!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("cannot open") && !err.contains("panicked"),
        "{err}"
    );
    Ok(())
}
