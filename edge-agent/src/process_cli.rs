//! `edgeqi-agent process FILE`: the camera pipeline over a recording.
//!
//! Every frame of the file is decoded (as fast as it decodes, no real-time
//! pacing) and goes through the same [`Analyzer`] as a live camera:
//! detect-fps sampling, motion gate, detector, tracker, zones and lines.
//! Frame times are the recording's own (start + presentation time; the
//! start is `--start`, or the run's start when the recording's is not
//! given), so dwell times and track ages mean what they would have meant
//! live. A progress bar shows on a terminal; the results are printed, as a
//! summary or, with `--json`, as one JSON document, and, when a broker is
//! configured, sent to the aggregator ([`crate::agent::deliver_recording`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use edgeqi_shared::protocol::{track_event, LineCount, Snapshot, TrackEvent};
use edgeqi_shared::Detection;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::agent::{Delivered, Recording};
use crate::config::{default_stall_timeout, AgentConfig, CameraConfig};
use crate::detect;
use crate::pipeline::{new_run_id, Analyzer};
use crate::source::{self, OpenOptions, SourceSpec};

/// What `process` prints with `--json`.
#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub file: String,
    pub camera_id: String,
    pub detector: String,
    /// Media seconds processed.
    pub media_s: f64,
    pub wall_s: f64,
    /// CPU seconds this process used (all threads), where the OS says.
    pub cpu_s: Option<f64>,
    pub frames_seen: u64,
    pub frames_inferred: u64,
    pub frames_gated: u64,
    pub decode_errors: u64,
    /// Decoded frames per wall-clock second.
    pub fps: f64,
    pub infer_ms_mean: f64,
    /// Confirmed tracks per label.
    pub tracks: BTreeMap<String, u64>,
    pub line_counts: Vec<LineCount>,
    pub events: Vec<TrackEvent>,
    pub detections: Vec<Detection>,
    /// Snapshots made (one per confirmed track with a crop); not printed.
    pub snapshots: u64,
    #[serde(skip)]
    pub snapshot_items: Vec<Snapshot>,
    /// What was sent to the aggregator; absent when nothing was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<Delivered>,
}

impl ProcessReport {
    /// The results to send, as the daemon would have sent them live.
    pub fn recording(&self) -> Recording {
        Recording {
            detections: self.detections.clone(),
            events: self.events.clone(),
            line_counts: self.line_counts.clone(),
            snapshots: self.snapshot_items.clone(),
        }
    }
}

/// CPU time of this process so far (Linux `/proc/self/stat`).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux the agent targets.
    Some((utime + stime) / 100.0)
}

/// The camera whose zones, lines, masks and detect fps apply: `camera` by
/// id, else the first configured camera, else defaults.
fn camera_for(
    config: &AgentConfig,
    file: &Path,
    camera: Option<&str>,
    detect_fps: Option<f64>,
) -> anyhow::Result<CameraConfig> {
    let uri = format!("file://{}", file.display());
    let (spec, _) = SourceSpec::parse(&uri).map_err(|e| anyhow::anyhow!(e))?;
    let base = match camera {
        Some(id) => Some(
            config
                .cameras
                .iter()
                .find(|c| c.id == id)
                .with_context(|| format!("no camera {id:?} in the configuration"))?
                .clone(),
        ),
        None => config.cameras.first().cloned(),
    };
    let mut cam = base.unwrap_or(CameraConfig {
        id: "file".into(),
        uri: uri.clone(),
        source: spec.clone(),
        fps: crate::config::default_camera_fps(),
        detect_fps: None,
        stall_timeout: default_stall_timeout(),
        frame_limits: crate::source::FrameLimits::default(),
        zones: vec![],
        lines: vec![],
        masks: vec![],
    });
    cam.uri = uri;
    cam.source = spec;
    if detect_fps.is_some() {
        cam.detect_fps = detect_fps;
    }
    Ok(cam)
}

/// Runs the pipeline over `file`; see the module doc.
pub fn process(
    config: &AgentConfig,
    file: &Path,
    camera: Option<&str>,
    detect_fps: Option<f64>,
    start: Option<DateTime<Utc>>,
) -> anyhow::Result<ProcessReport> {
    if !file.is_file() {
        bail!("{} does not exist or is not a file", file.display());
    }
    let cam = camera_for(config, file, camera, detect_fps)?;
    let opts = OpenOptions {
        stall_timeout: Duration::from_secs(30),
        offline: true,
        stop: None,
        limits: cam.frame_limits,
    };
    let mut src = source::open(&cam.source, &cam.id, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut analyzer = Analyzer::new(config, &cam, detect::for_camera(config), &new_run_id());
    let detector = analyzer.detector_name().to_owned();

    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let base = start.unwrap_or_else(Utc::now);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ms of video {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = ProcessReport {
        file: file.display().to_string(),
        camera_id: cam.id.clone(),
        detector,
        media_s: 0.0,
        wall_s: 0.0,
        cpu_s: None,
        frames_seen: 0,
        frames_inferred: 0,
        frames_gated: 0,
        decode_errors: 0,
        fps: 0.0,
        infer_ms_mean: 0.0,
        tracks: BTreeMap::new(),
        line_counts: vec![],
        events: vec![],
        detections: vec![],
        snapshots: 0,
        snapshot_items: vec![],
        sent: None,
    };
    let mut infer_total = Duration::ZERO;
    let mut last_t = Duration::ZERO;
    let mut counts: BTreeMap<(String, String, String), LineCount> = BTreeMap::new();
    loop {
        let mut frame = match src.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(source::SourceError::Decode { what, reason }) => {
                report.decode_errors += 1;
                tracing::warn!(source = %what, %reason, "skipping a frame that does not decode");
                continue;
            }
            Err(e) => {
                bar.finish_and_clear();
                if report.frames_seen == 0 {
                    bail!("{e}");
                }
                // A truncated recording: keep what was processed, say so.
                tracing::warn!(error = %e, "the recording ends in an error; results cover what was read");
                report.decode_errors += 1;
                break;
            }
        };
        if bar.length() == Some(0) {
            if let Some(d) = src.duration() {
                bar.set_length(d.as_millis() as u64);
            }
        }
        // Media time: the presentation time, else the frame number at the camera fps.
        let t = src
            .position()
            .unwrap_or_else(|| Duration::from_secs_f64(frame.seq as f64 / cam.fps));
        last_t = t;
        frame.ts = base + chrono::Duration::from_std(t).unwrap_or(chrono::Duration::zero());
        report.frames_seen += 1;
        let result = analyzer
            .analyze(&frame, t)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if result.inferred {
            report.frames_inferred += 1;
            infer_total += result.infer_time;
        }
        if result.gated {
            report.frames_gated += 1;
        }
        report.snapshot_items.extend(result.snapshots);
        report.detections.extend(result.detections);
        report.events.extend(result.events);
        for c in analyzer.take_line_counts() {
            counts.insert((c.line.clone(), c.label.clone(), c.direction.clone()), c);
        }
        bar.set_position(t.as_millis() as u64);
        bar.set_message(format!(
            "{} frames, {} inferred",
            report.frames_seen, report.frames_inferred
        ));
    }
    let end = base + chrono::Duration::from_std(last_t).unwrap_or(chrono::Duration::zero());
    let last = analyzer.finish(end);
    report.snapshot_items.extend(last.snapshots);
    report.snapshots = report.snapshot_items.len() as u64;
    report.events.extend(last.events);
    bar.finish_and_clear();

    for e in &report.events {
        if e.kind == track_event::APPEARED {
            *report.tracks.entry(e.label.clone()).or_insert(0) += 1;
        }
    }
    report.line_counts = counts.into_values().collect();
    report.media_s = last_t.as_secs_f64();
    report.wall_s = started.elapsed().as_secs_f64();
    report.cpu_s = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    report.fps = report.frames_seen as f64 / report.wall_s.max(1e-9);
    if report.frames_inferred > 0 {
        report.infer_ms_mean = infer_total.as_secs_f64() * 1000.0 / report.frames_inferred as f64;
    }
    Ok(report)
}

/// Prints `report` for people.
pub fn print_summary(r: &ProcessReport) {
    println!(
        "{}: {:.1} s of video, camera {:?}, detector {}",
        r.file, r.media_s, r.camera_id, r.detector
    );
    println!(
        "frames: {} decoded, {} inferred, {} skipped by the motion gate, {} decode errors",
        r.frames_seen, r.frames_inferred, r.frames_gated, r.decode_errors
    );
    let cpu = r
        .cpu_s
        .map_or_else(|| "?".to_owned(), |c| format!("{c:.2}"));
    println!(
        "speed: {:.1} frames/s, {:.1} ms per inference, {:.2} s wall, {cpu} s CPU",
        r.fps, r.infer_ms_mean, r.wall_s
    );
    println!(
        "detections: {}, events: {}, snapshots: {}",
        r.detections.len(),
        r.events.len(),
        r.snapshots
    );
    for (label, n) in &r.tracks {
        println!("tracks: {n} × {label}");
    }
    for c in &r.line_counts {
        println!("line {}: {} × {} {}", c.line, c.count, c.label, c.direction);
    }
    if let Some(s) = &r.sent {
        println!(
            "sent to {}: {} detections (outbox {}, {} batches unacknowledged), {} events, {} snapshots",
            s.broker, s.detections, s.outbox, s.unacked_batches, s.events, s.snapshots
        );
    }
}
