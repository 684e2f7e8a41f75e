//! Per-camera pipelines: capture → sampler → motion gate → detector →
//! tracker → zones/lines → detections, events and snapshots.
//!
//! Each camera runs two OS threads, because sources and detectors block:
//! - capture opens the source, pulls frames at the source's rate into a
//!   one-frame mailbox ([`LatestFrame`]), and re-opens a failing or stalled
//!   source with backoff, forever, reporting its state in [`CameraHealth`];
//! - analysis takes the newest frame, and runs the [`Analyzer`] on it.
//!
//! Detections go out on a bounded channel (a slow uplink slows analysis
//! down instead of growing memory; capture keeps only the newest frame
//! meanwhile). Events and snapshots go on a second channel without
//! blocking: they are best effort, and a full channel drops them with a
//! log line. The [`Analyzer`] is also what `edgeqi-agent process` runs over
//! a recording.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use edgeqi_shared::protocol::{track_event, LineCount, Snapshot, TrackEvent};
use edgeqi_shared::{CameraHealth, Detection};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, CameraConfig};
use crate::detect::{self, DetectError, Detector};
use crate::frame::Frame;
use crate::motion_gate::MotionGate;
use crate::sampler::{DetectPacer, LatestFrame, Taken};
use crate::snapshot::{SnapshotKeeper, SnapshotMeta};
use crate::source::{self, OpenOptions, SourceError};
use crate::tracker::{Track, Tracker};
use crate::zones::{GeoEvent, Line, Zone, ZoneLines, DEFAULT_LINE_MARGIN};

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the fps and infer_ms figures are recomputed.
const FPS_WINDOW: Duration = Duration::from_secs(2);
/// How long analysis waits for a frame before checking the stop flag.
const TAKE_WAIT: Duration = Duration::from_millis(100);

/// Camera states as reported in heartbeats.
pub mod state {
    /// Opening the source for the first time.
    pub const CONNECTING: &str = "connecting";
    /// Frames are arriving.
    pub const STREAMING: &str = "streaming";
    /// Was streaming, then no frame for the stall timeout; about to reconnect.
    pub const STALLED: &str = "stalled";
    /// Was streaming, lost the stream, re-opening it (with backoff).
    pub const RECONNECTING: &str = "reconnecting";
    /// Could not open the source (wrong URL, refused, corrupt file, no
    /// device); retried with backoff.
    pub const FAILED: &str = "failed";
    /// The source ended on its own (a finite `synthetic://?frames=N`,
    /// `images://…?loop=false`, a `file://` without `loop=true`).
    pub const ENDED: &str = "ended";
}

/// What cameras produce besides detections.
#[derive(Debug, Clone)]
pub enum Analytics {
    Event(TrackEvent),
    /// Totals of lines whose counts changed.
    LineCounts(Vec<LineCount>),
    Snapshot(Box<Snapshot>),
}

type SharedHealth = Arc<Mutex<CameraHealth>>;

fn lock<T>(h: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take health reporting (or config updates) down with it.
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The part of a camera's configuration that can change while it runs (a
/// remote config from the aggregator): swapped into its [`Analyzer`]
/// between two frames, without restarting capture or losing tracks.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub detect_fps: Option<f64>,
    pub zones: Vec<Zone>,
    pub lines: Vec<Line>,
}

impl LiveSettings {
    pub fn of(camera: &CameraConfig) -> Self {
        Self {
            detect_fps: camera.detect_fps,
            zones: camera.zones.clone(),
            lines: camera.lines.clone(),
        }
    }
}

/// A settings change waiting for a camera's analysis thread to pick it up.
type PendingSettings = Arc<Mutex<Option<LiveSettings>>>;

/// A random id for this agent run, so track keys and event ids stay unique
/// across restarts (track ids start at 1 again).
pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Everything one camera turns frames into: see the module doc.
pub struct Analyzer {
    node_id: String,
    camera_id: String,
    run_id: String,
    detector: Box<dyn Detector>,
    detect_fps: Option<f64>,
    pacer: DetectPacer,
    gate: MotionGate,
    tracker: Tracker,
    zones: ZoneLines,
    snapshots: SnapshotKeeper,
    next_event: u64,
    counts_since: DateTime<Utc>,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("camera_id", &self.camera_id)
            .field("detector", &self.detector.name())
            .finish()
    }
}

/// The result of one frame.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Whether the detector ran.
    pub inferred: bool,
    /// Whether the motion gate skipped the detector.
    pub gated: bool,
    pub infer_time: Duration,
    pub detections: Vec<Detection>,
    pub events: Vec<TrackEvent>,
    pub snapshots: Vec<Snapshot>,
}

impl Analyzer {
    pub fn new(
        config: &AgentConfig,
        camera: &CameraConfig,
        detector: Box<dyn Detector>,
        run_id: &str,
    ) -> Self {
        let mut tracker = config.tracker.clone();
        if detector.name() == "motion" {
            // Motion-blob "scores" are how much of the box changed, not a
            // confidence: every blob is as good as any other for tracking.
            tracker.high_score = 0.0;
            tracker.low_score = 0.0;
        }
        Self {
            node_id: config.node_id.clone(),
            camera_id: camera.id.clone(),
            run_id: run_id.to_owned(),
            detector,
            detect_fps: camera.detect_fps,
            pacer: DetectPacer::new(camera.detect_fps),
            gate: MotionGate::new(config.motion_gate.clone(), camera.masks.clone()),
            tracker: Tracker::new(tracker),
            zones: ZoneLines::new(
                camera.zones.clone(),
                camera.lines.clone(),
                DEFAULT_LINE_MARGIN,
            ),
            snapshots: SnapshotKeeper::new(config.snapshots.clone()),
            next_event: 0,
            counts_since: Utc::now(),
        }
    }

    pub fn detector_name(&self) -> &str {
        self.detector.name()
    }

    /// Applies new live settings at `ts`; returns the zone exits of tracks
    /// whose zone was removed (see [`ZoneLines::replace`]). Tracks, the
    /// motion gate's background and line totals of kept lines carry on.
    pub fn reconfigure(&mut self, settings: LiveSettings, ts: DateTime<Utc>) -> Vec<TrackEvent> {
        if settings.detect_fps != self.detect_fps {
            self.detect_fps = settings.detect_fps;
            self.pacer = DetectPacer::new(settings.detect_fps);
        }
        let left = self.zones.replace(settings.zones, settings.lines, ts);
        left.into_iter()
            .filter_map(|(track_id, g)| {
                let track = self.tracker.get(track_id).cloned()?;
                Some(self.geo_event(g, &track, ts))
            })
            .collect()
    }

    fn track_key(&self, track_id: u64) -> String {
        format!("{}-{}-{track_id}", self.run_id, self.camera_id)
    }

    fn event(&mut self, kind: &str, track: &Track, ts: DateTime<Utc>) -> TrackEvent {
        self.next_event += 1;
        TrackEvent {
            id: format!(
                "{}-{}-{}-{}",
                self.run_id, self.camera_id, track.id, self.next_event
            ),
            ts,
            camera_id: self.camera_id.clone(),
            track_id: track.id,
            track_key: self.track_key(track.id),
            kind: kind.to_owned(),
            class_id: track.class_id,
            label: track.label.clone(),
            score: track.score,
            bbox: track.bbox,
            zone: None,
            line: None,
            direction: None,
            dwell_s: None,
        }
    }

    fn geo_event(&mut self, g: GeoEvent, track: &Track, ts: DateTime<Utc>) -> TrackEvent {
        match g {
            GeoEvent::ZoneEntered { zone } => TrackEvent {
                zone: Some(zone),
                ..self.event(track_event::ZONE_ENTERED, track, ts)
            },
            GeoEvent::ZoneLeft { zone, dwell_s } => TrackEvent {
                zone: Some(zone),
                dwell_s: Some(dwell_s),
                ..self.event(track_event::ZONE_LEFT, track, ts)
            },
            GeoEvent::LineCrossed { line, direction } => TrackEvent {
                line: Some(line),
                direction: Some(direction.to_owned()),
                ..self.event(track_event::LINE_CROSSED, track, ts)
            },
        }
    }

    /// Ends `tracks`: zone exits, the `left` event, the snapshot.
    fn end_tracks(&mut self, tracks: Vec<Track>, ts: DateTime<Utc>, out: &mut Analysis) {
        for track in tracks {
            for g in self.zones.remove(track.id, ts) {
                let e = self.geo_event(g, &track, ts);
                out.events.push(e);
            }
            let mut left = self.event(track_event::LEFT, &track, ts);
            left.dwell_s = Some(
                (track.last_seen - track.first_seen)
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0,
            );
            let key = self.track_key(track.id);
            if let Some(s) = self.snapshots.finish(SnapshotMeta {
                node_id: &self.node_id,
                camera_id: &self.camera_id,
                track_id: track.id,
                track_key: &key,
                event_id: &left.id,
                class_id: track.class_id,
                label: &track.label,
            }) {
                out.snapshots.push(s);
            }
            out.events.push(left);
        }
    }

    /// Runs one frame at stream time `t` (monotonic within the stream).
    pub fn analyze(&mut self, frame: &Frame, t: Duration) -> Result<Analysis, DetectError> {
        let mut out = Analysis::default();
        if !self.pacer.due(t) {
            return Ok(out);
        }
        let verdict = self.gate.check(frame, t, self.tracker.is_tracking());
        if let Some((dx, dy)) = verdict.camera_shift {
            self.tracker.shift(dx, dy);
        }
        if !verdict.infer {
            out.gated = true;
            let left = self.tracker.expire(frame.ts);
            self.end_tracks(left, frame.ts, &mut out);
            return Ok(out);
        }
        let started = Instant::now();
        let boxes = self.detector.detect(frame)?;
        out.infer_time = started.elapsed();
        out.inferred = true;
        self.tracker
            .set_view(frame.width as f32, frame.height as f32);
        let update = self.tracker.update(&boxes, frame.ts);
        for id in &update.appeared {
            if let Some(track) = self.tracker.get(*id).cloned() {
                let e = self.event(track_event::APPEARED, &track, frame.ts);
                out.events.push(e);
            }
        }
        let (fw, fh) = (frame.width.max(1) as f32, frame.height.max(1) as f32);
        for (b, track_id) in boxes.into_iter().zip(update.assigned) {
            // Where the object stands: the bottom centre of its box.
            let anchor = [(b.bbox[0] + b.bbox[2]) / 2.0 / fw, b.bbox[3] / fh];
            let zone = self.zones.zone_of(anchor).map(str::to_owned);
            if let Some(id) = track_id {
                self.snapshots.offer(id, b.score, b.bbox, frame);
                if !self.zones.is_empty() {
                    let geo = self.zones.update(id, &b.label, anchor, frame.ts);
                    if let Some(track) = self.tracker.get(id).cloned() {
                        for g in geo {
                            let e = self.geo_event(g, &track, frame.ts);
                            out.events.push(e);
                        }
                    }
                }
            }
            out.detections.push(Detection {
                ts: frame.ts,
                camera_id: frame.camera_id.clone(),
                class_id: b.class_id,
                label: b.label,
                score: b.score,
                bbox: b.bbox,
                track_id,
                zone,
            });
        }
        self.end_tracks(update.left, frame.ts, &mut out);
        Ok(out)
    }

    /// The stream is over: every live track leaves.
    pub fn finish(&mut self, ts: DateTime<Utc>) -> Analysis {
        let mut out = Analysis::default();
        let tracks = self.tracker.finish();
        self.end_tracks(tracks, ts, &mut out);
        out
    }

    /// Line totals that changed since the last call.
    pub fn take_line_counts(&mut self) -> Vec<LineCount> {
        self.zones
            .take_changed_counts()
            .into_iter()
            .map(|(line, label, direction, count)| LineCount {
                camera_id: self.camera_id.clone(),
                line,
                label,
                direction: direction.to_owned(),
                count,
                since: self.counts_since,
            })
            .collect()
    }
}

/// The running camera threads.
#[derive(Debug)]
pub struct Pipelines {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    health: Vec<SharedHealth>,
    /// Per camera, in config order: id, what it runs with, and the slot its
    /// analysis thread takes changes from.
    live: Vec<(String, LiveSettings, PendingSettings)>,
}

impl Pipelines {
    /// Starts the threads of every configured camera. `analytics` receives
    /// events, line counts and snapshots; `None` discards them.
    pub fn start(
        config: &AgentConfig,
        tx: mpsc::Sender<Detection>,
        analytics: Option<mpsc::Sender<Analytics>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut health = Vec::new();
        let mut live = Vec::new();
        let run_id = new_run_id();
        for camera in &config.cameras {
            let pending: PendingSettings = Arc::new(Mutex::new(None));
            live.push((camera.id.clone(), LiveSettings::of(camera), pending.clone()));
            let h = Arc::new(Mutex::new(CameraHealth::new(&camera.id, state::CONNECTING)));
            let mailbox = Arc::new(LatestFrame::new());
            let capture = Capture {
                camera: camera.clone(),
                stop: stop.clone(),
                health: h.clone(),
                mailbox: mailbox.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cap-{}", camera.id))
                    .spawn(move || capture.run())?,
            );
            let analysis = AnalysisWorker {
                analyzer: Analyzer::new(config, camera, detect::for_camera(config), &run_id),
                tx: tx.clone(),
                analytics: analytics.clone(),
                stop: stop.clone(),
                health: h.clone(),
                mailbox,
                pending,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cam-{}", camera.id))
                    .spawn(move || analysis.run())?,
            );
            health.push(h);
        }
        Ok(Self {
            stop,
            threads,
            health,
            live,
        })
    }

    /// Hands each camera its new live settings; cameras whose settings did
    /// not change are left alone. Returns the ids of the cameras changed.
    /// Analysis threads pick the change up before their next frame.
    pub fn reconfigure(&mut self, settings: &[(String, LiveSettings)]) -> Vec<String> {
        let mut changed = Vec::new();
        for (id, current, pending) in self.live.iter_mut() {
            let Some((_, new)) = settings.iter().find(|(c, _)| c.as_str() == id.as_str()) else {
                continue;
            };
            if *new != *current {
                *current = new.clone();
                *lock(&**pending) = Some(new.clone());
                changed.push(id.clone());
            }
        }
        changed
    }

    /// Health of every camera, in config order.
    pub fn health(&self) -> Vec<CameraHealth> {
        self.health.iter().map(|h| lock(h).clone()).collect()
    }

    /// Decoded frames per second over all cameras.
    pub fn fps(&self) -> f32 {
        self.health.iter().map(|h| lock(h).fps).sum()
    }

    /// Asks every camera thread to stop; they notice within ~100 ms.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the camera threads (after [`Pipelines::request_stop`]).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a camera thread panicked");
            }
        }
    }
}

/// The capture half of a camera: see the module doc.
struct Capture {
    camera: CameraConfig,
    stop: Arc<AtomicBool>,
    health: SharedHealth,
    mailbox: Arc<LatestFrame>,
}

/// Why a capture session ended.
enum Exit {
    Stop,
    Ended,
    /// Failed before the first frame.
    OpenFailed(String),
    Stalled(String),
    Failed(String),
}

impl Capture {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when asked to stop.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut h = lock(&self.health);
        h.state = state.to_owned();
        if error.is_some() {
            h.last_error = error;
        }
        if state != state::STREAMING {
            h.fps = 0.0;
        }
    }

    fn run(self) {
        let id = self.camera.id.clone();
        let what = self.camera.source.display();
        tracing::info!(camera = %id, source = %what, "camera starting");
        let opts = OpenOptions {
            stall_timeout: self.camera.stall_timeout,
            offline: false,
            stop: Some(self.stop.clone()),
            limits: self.camera.frame_limits,
        };
        let mut retry = RETRY_MIN;
        let mut ever_streamed = false;
        loop {
            if self.stopping() {
                break;
            }
            let exit = match source::open(&self.camera.source, &id, &opts) {
                Ok(mut src) => self.stream(src.as_mut(), &mut retry, &mut ever_streamed),
                Err(e) => Exit::OpenFailed(e.to_string()),
            };
            match exit {
                Exit::Stop => break,
                Exit::Ended => {
                    tracing::info!(camera = %id, "source ended");
                    self.set_state(state::ENDED, None);
                    break;
                }
                Exit::OpenFailed(e) => {
                    tracing::warn!(camera = %id, error = %e, retry_in = ?retry, "cannot open the camera; retrying");
                    let st = if ever_streamed {
                        state::RECONNECTING
                    } else {
                        state::FAILED
                    };
                    self.set_state(st, Some(e));
                }
                Exit::Stalled(e) => {
                    tracing::warn!(camera = %id, error = %e, retry_in = ?retry, "camera stalled; reconnecting");
                    self.set_state(state::STALLED, Some(e));
                }
                Exit::Failed(e) => {
                    tracing::warn!(camera = %id, error = %e, retry_in = ?retry, "camera stream failed; reconnecting");
                    self.set_state(state::RECONNECTING, Some(e));
                }
            }
            self.sleep(retry);
            retry = (retry * 2).min(RETRY_MAX);
            if self.stopping() {
                break;
            }
            lock(&self.health).reconnects += 1;
            if ever_streamed {
                self.set_state(state::RECONNECTING, None);
            }
        }
        self.mailbox.close();
    }

    /// What every source must hold to: the camera's frame limits, and
    /// exactly width x height RGB pixels (the detector indexes by them).
    fn checked(&self, frame: Option<Frame>) -> Result<Option<Frame>, SourceError> {
        let Some(f) = frame else { return Ok(None) };
        let bad = |reason: String| SourceError::Decode {
            what: self.camera.source.display(),
            reason,
        };
        self.camera
            .frame_limits
            .check(f.width, f.height)
            .map_err(bad)?;
        let want = f.width as usize * f.height as usize * 3;
        if f.rgb.len() != want {
            return Err(bad(format!(
                "{} bytes of pixels for a {}x{} RGB frame (needs {want})",
                f.rgb.len(),
                f.width,
                f.height
            )));
        }
        Ok(Some(f))
    }

    fn stream(
        &self,
        src: &mut dyn source::FrameSource,
        retry: &mut Duration,
        ever_streamed: &mut bool,
    ) -> Exit {
        // Sources that do not pace themselves are paced to the camera's fps
        // and wait for analysis instead of losing frames.
        let paced = !src.is_realtime();
        let interval = Duration::from_secs_f64(1.0 / self.camera.fps);
        let mut next_due = Instant::now();
        let mut window_start = Instant::now();
        let mut window_frames = 0u32;
        let mut got_frame = false;
        loop {
            if self.stopping() {
                return Exit::Stop;
            }
            if paced {
                let now = Instant::now();
                if next_due > now {
                    self.sleep(next_due - now);
                    if self.stopping() {
                        return Exit::Stop;
                    }
                }
                next_due = (next_due + interval).max(Instant::now());
            }
            let frame = match src.next_frame().and_then(|f| self.checked(f)) {
                Ok(Some(f)) => f,
                Ok(None) if self.stopping() => return Exit::Stop,
                Ok(None) => return Exit::Ended,
                Err(SourceError::Decode { what, reason }) => {
                    let mut h = lock(&self.health);
                    h.decode_errors += 1;
                    let n = h.decode_errors;
                    h.last_error = Some(format!("{what}: bad frame: {reason}"));
                    drop(h);
                    // Every bad frame is counted; the log gets the first ten
                    // and then every hundredth, so a garbage stream cannot
                    // flood the journal.
                    if n <= 10 || n.is_multiple_of(100) {
                        tracing::warn!(camera = %self.camera.id, source = %what, %reason,
                            decode_errors = n, "skipped a frame that does not decode");
                    }
                    continue;
                }
                Err(e @ SourceError::Stalled { .. }) => return Exit::Stalled(e.to_string()),
                Err(
                    e @ (SourceError::Open { .. }
                    | SourceError::ImageDir { .. }
                    | SourceError::Unsupported(_)),
                ) if !got_frame => return Exit::OpenFailed(e.to_string()),
                Err(e) => return Exit::Failed(e.to_string()),
            };
            if !got_frame {
                got_frame = true;
                if *ever_streamed {
                    tracing::info!(camera = %self.camera.id, "camera is back");
                }
                *ever_streamed = true;
            }
            *retry = RETRY_MIN;
            window_frames += 1;
            {
                let mut h = lock(&self.health);
                h.frames_total += 1;
                h.last_frame_at = Some(frame.ts);
                h.state = state::STREAMING.into();
                let elapsed = window_start.elapsed();
                if elapsed >= FPS_WINDOW {
                    h.fps = window_frames as f32 / elapsed.as_secs_f32();
                    window_frames = 0;
                    window_start = Instant::now();
                }
            }
            if paced {
                self.mailbox.put_wait(frame, Duration::from_secs(3600));
            } else {
                self.mailbox.put(frame);
            }
        }
    }
}

/// The analysis half of a camera: see the module doc.
struct AnalysisWorker {
    analyzer: Analyzer,
    tx: mpsc::Sender<Detection>,
    analytics: Option<mpsc::Sender<Analytics>>,
    stop: Arc<AtomicBool>,
    health: SharedHealth,
    mailbox: Arc<LatestFrame>,
    pending: PendingSettings,
}

impl AnalysisWorker {
    fn run(mut self) {
        let started = Instant::now();
        let mut window_start = Instant::now();
        let (mut window_infers, mut window_time) = (0u32, Duration::ZERO);
        let mut last_ts = Utc::now();
        loop {
            let frame = match self.mailbox.take(TAKE_WAIT) {
                Taken::Frame(f) => f,
                Taken::Empty if self.stop.load(Ordering::SeqCst) => break,
                Taken::Empty => continue,
                Taken::Closed => break,
            };
            last_ts = frame.ts;
            let update = lock(&self.pending).take();
            if let Some(settings) = update {
                tracing::info!(camera = %frame.camera_id, zones = settings.zones.len(),
                    lines = settings.lines.len(), detect_fps = ?settings.detect_fps,
                    "camera settings changed; tracks carry on");
                let events = self.analyzer.reconfigure(settings, frame.ts);
                if !self.send(Analysis {
                    events,
                    ..Analysis::default()
                }) {
                    return;
                }
            }
            let result = match self.analyzer.analyze(&frame, started.elapsed()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(camera = %frame.camera_id, error = %e, "detector refused a frame");
                    lock(&self.health).last_error = Some(e.to_string());
                    continue;
                }
            };
            {
                let mut h = lock(&self.health);
                h.frames_dropped = self.mailbox.dropped();
                if result.inferred {
                    h.frames_inferred += 1;
                    window_infers += 1;
                    window_time += result.infer_time;
                }
                if result.gated {
                    h.frames_gated += 1;
                }
                if window_start.elapsed() >= FPS_WINDOW && window_infers > 0 {
                    h.infer_ms = window_time.as_secs_f32() * 1000.0 / window_infers as f32;
                    window_infers = 0;
                    window_time = Duration::ZERO;
                    window_start = Instant::now();
                }
            }
            if !self.send(result) {
                return;
            }
        }
        let last = self.analyzer.finish(last_ts);
        self.send(last);
    }

    /// Sends what one frame produced; false when the detections receiver is gone.
    fn send(&mut self, result: Analysis) -> bool {
        for d in result.detections {
            if self.tx.blocking_send(d).is_err() {
                return false;
            }
        }
        let Some(analytics) = &self.analytics else {
            return true;
        };
        let counts = self.analyzer.take_line_counts();
        let items = result
            .events
            .into_iter()
            .map(Analytics::Event)
            .chain(
                result
                    .snapshots
                    .into_iter()
                    .map(|s| Analytics::Snapshot(Box::new(s))),
            )
            .chain((!counts.is_empty()).then_some(Analytics::LineCounts(counts)));
        for item in items {
            if let Err(e) = analytics.try_send(item) {
                tracing::warn!(camera = %self.analyzer.camera_id, error = %e, "analytics channel full; dropping an event");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(sources: &[&str]) -> AgentConfig {
        AgentConfig::load(
            None,
            &Overrides {
                node_id: Some("t".into()),
                sources: sources.iter().map(|s| (*s).to_owned()).collect(),
                ..Overrides::default()
            },
        )
        .expect("config")
    }

    /// Always sees the same parked car: the scene never changes.
    struct ParkedCar;

    impl Detector for ParkedCar {
        fn name(&self) -> &str {
            "parked-car"
        }
        fn detect(&mut self, _: &Frame) -> Result<Vec<crate::detect::ObjectBox>, DetectError> {
            Ok(vec![crate::detect::ObjectBox {
                class_id: Some(2),
                label: "car".into(),
                score: 0.9,
                bbox: [100.0, 100.0, 200.0, 160.0],
            }])
        }
    }

    #[test]
    fn an_object_standing_still_from_the_start_is_confirmed_by_gate_refreshes() {
        let config = config(&["still=synthetic://"]);
        let mut a = Analyzer::new(&config, &config.cameras[0], Box::new(ParkedCar), "run");
        let start = Utc::now();
        let (mut inferred, mut tracked, mut appeared) = (0, 0, 0);
        // 3 s of one unchanging picture at 10 fps.
        for i in 0..30u64 {
            let t = Duration::from_millis(i * 100);
            let frame = Frame {
                camera_id: "still".into(),
                ts: start + chrono::Duration::from_std(t).expect("small"),
                seq: i,
                width: 320,
                height: 240,
                rgb: vec![90; 320 * 240 * 3],
            };
            let r = a.analyze(&frame, t).expect("analyze");
            inferred += usize::from(r.inferred);
            tracked += r.detections.iter().filter(|d| d.track_id.is_some()).count();
            appeared += r
                .events
                .iter()
                .filter(|e| e.kind == track_event::APPEARED)
                .count();
        }
        // The first frame, then a refresh per second: the tentative track
        // gets its second sighting and is reported, with nothing moving.
        assert!((3..=4).contains(&inferred), "{inferred} inferred");
        assert_eq!(appeared, 1);
        assert!(tracked >= 2, "{tracked}");
    }

    #[test]
    fn synthetic_camera_yields_tracked_motion_detections_and_ends() {
        let config = config(&["gate=synthetic://?objects=2&frames=30&fps=60"]);
        let (tx, mut rx) = mpsc::channel(1000);
        let (atx, mut arx) = mpsc::channel(1000);
        let p = Pipelines::start(&config, tx, Some(atx)).expect("start");
        let mut got = Vec::new();
        while let Some(d) = rx.blocking_recv() {
            got.push(d);
        }
        let health = p.health();
        p.join();
        assert!(!got.is_empty());
        assert!(got
            .iter()
            .all(|d| d.camera_id == "gate" && d.label == "motion"));
        for d in &got {
            let [x1, y1, x2, y2] = d.bbox;
            assert!(x1 <= x2 && y1 <= y2 && x2 <= 320.0 && y2 <= 240.0, "{d:?}");
        }
        assert!(
            got.iter().any(|d| d.track_id.is_some()),
            "moving objects get tracks"
        );
        assert_eq!(health[0].frames_total, 30);
        assert_eq!(health[0].frames_dropped, 0, "a paced source loses nothing");
        assert_eq!(health[0].state, state::ENDED);
        let mut kinds = Vec::new();
        while let Ok(a) = arx.try_recv() {
            if let Analytics::Event(e) = a {
                kinds.push(e.kind);
            }
        }
        assert!(
            kinds.iter().any(|k| k == track_event::APPEARED),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|k| k == track_event::LEFT),
            "tracks end with the stream: {kinds:?}"
        );
    }

    #[test]
    fn a_camera_that_cannot_open_is_failed_and_retried_while_others_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("nothing.mp4");
        let bad_uri = format!("broken=file://{}", bad.display());
        let config = config(&[&bad_uri, "ok=synthetic://?objects=1&frames=10&fps=50"]);
        let (tx, mut rx) = mpsc::channel(1000);
        let p = Pipelines::start(&config, tx, None).expect("start");
        let mut from_ok = 0;
        // The first GStreamer start scans its plugins, which can take seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && (p.health()[1].state != state::ENDED || p.health()[0].state != state::FAILED)
        {
            while let Ok(d) = rx.try_recv() {
                assert_eq!(d.camera_id, "ok");
                from_ok += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let h = p.health();
        assert_eq!(h[1].state, state::ENDED);
        assert!(from_ok > 0 || h[1].frames_inferred > 0);
        assert_eq!(h[0].state, state::FAILED, "{:?}", h[0]);
        let err = h[0].last_error.clone().unwrap_or_default();
        assert!(err.contains("does not exist"), "{err}");
        p.request_stop();
        // Keep the channel drained so the threads can exit.
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        p.join();
        drain.join().expect("drain");
    }

    #[test]
    fn bad_and_oversized_frames_are_counted_and_skipped_while_others_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let frame = |v: u8| image::RgbImage::from_pixel(64, 48, image::Rgb([v, v, v]));
        frame(10).save(d.join("a.png")).expect("png");
        image::RgbImage::from_pixel(300, 20, image::Rgb([1, 1, 1]))
            .save(d.join("b-wide.png"))
            .expect("png");
        std::fs::write(d.join("c-junk.jpg"), b"\xff\xd8\xff garbage").expect("write");
        std::fs::write(d.join("d-empty.png"), b"").expect("write");
        frame(200).save(d.join("e.png")).expect("png");
        let images = format!("imgs=images://{}?loop=false&fps=50", d.display());
        let mut config = config(&[&images, "ok=synthetic://?objects=1&frames=20&fps=50"]);
        config.cameras[0].frame_limits = crate::source::FrameLimits {
            max_width: 256,
            max_height: 256,
            max_pixels: 256 * 256,
        };
        let (tx, mut rx) = mpsc::channel(1000);
        let p = Pipelines::start(&config, tx, None).expect("start");
        let mut ok_detections = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && p.health().iter().any(|h| h.state != state::ENDED) {
            while let Ok(d) = rx.try_recv() {
                ok_detections += usize::from(d.camera_id == "ok");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let h = p.health();
        p.request_stop();
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        p.join();
        drain.join().expect("drain");
        assert_eq!(h[0].state, state::ENDED, "{:?}", h[0]);
        assert_eq!(h[0].frames_total, 2, "{:?}", h[0]);
        assert_eq!(h[0].decode_errors, 3, "{:?}", h[0]);
        let err = h[0].last_error.clone().unwrap_or_default();
        assert!(err.contains("d-empty.png: empty file"), "{err}");
        assert_eq!(h[1].state, state::ENDED, "{:?}", h[1]);
        assert_eq!(h[1].frames_total, 20, "{:?}", h[1]);
        assert_eq!(h[1].decode_errors, 0);
        assert!(ok_detections > 0 || h[1].frames_inferred > 0);
    }

    #[test]
    fn every_source_is_held_to_the_frame_limits() {
        // synthetic:// has no header to check: the pipeline's own check
        // refuses its frames, counted, and the camera still ends normally.
        let mut config =
            config(&["big=synthetic://?objects=1&frames=5&fps=50&width=320&height=240"]);
        config.cameras[0].frame_limits = crate::source::FrameLimits {
            max_width: 200,
            max_height: 200,
            max_pixels: 200 * 200,
        };
        let (tx, mut rx) = mpsc::channel(1000);
        let p = Pipelines::start(&config, tx, None).expect("start");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && p.health()[0].state != state::ENDED {
            while rx.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(20));
        }
        let h = p.health();
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        p.join();
        drain.join().expect("drain");
        assert_eq!(h[0].state, state::ENDED, "{:?}", h[0]);
        assert_eq!(
            (h[0].frames_total, h[0].decode_errors),
            (0, 5),
            "{:?}",
            h[0]
        );
        let err = h[0].last_error.clone().unwrap_or_default();
        assert!(
            err.contains("320x240") && err.contains("max_frame_width"),
            "{err}"
        );
    }
}
