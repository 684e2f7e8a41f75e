//! Per-camera pipelines: source → detector → detections channel.
//!
//! Each camera runs on its own OS thread, because sources and detectors
//! block. A thread paces its source to the camera's fps, turns boxes into
//! [`Detection`]s and sends them on a bounded channel (a slow uplink slows
//! the camera down instead of growing memory). A failing source is re-opened
//! with backoff and reported in [`CameraHealth`]; it never stops the agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgeqi_shared::{CameraHealth, Detection};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, CameraConfig};
use crate::detect::{self, Detector};
use crate::frame::Frame;
use crate::source;

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the fps figure is recomputed.
const FPS_WINDOW: Duration = Duration::from_secs(2);

/// Camera states as reported in heartbeats.
pub mod state {
    pub const STARTING: &str = "starting";
    pub const OK: &str = "ok";
    pub const RECONNECTING: &str = "reconnecting";
    pub const FAILED: &str = "failed";
    /// The source ended on its own (a finite `synthetic://?frames=N`, or
    /// `images://…?loop=false`).
    pub const ENDED: &str = "ended";
}

type SharedHealth = Arc<Mutex<CameraHealth>>;

fn lock(h: &SharedHealth) -> MutexGuard<'_, CameraHealth> {
    // A panic elsewhere must not take health reporting down with it.
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running camera threads.
#[derive(Debug)]
pub struct Pipelines {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    health: Vec<SharedHealth>,
}

impl Pipelines {
    /// Starts one thread per configured camera.
    pub fn start(config: &AgentConfig, tx: mpsc::Sender<Detection>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut health = Vec::new();
        for camera in &config.cameras {
            let h = Arc::new(Mutex::new(CameraHealth {
                camera_id: camera.id.clone(),
                state: state::STARTING.into(),
                fps: 0.0,
                frames_total: 0,
                last_error: None,
            }));
            let worker = CameraWorker {
                camera: camera.clone(),
                detector: detect::for_camera(config),
                tx: tx.clone(),
                stop: stop.clone(),
                health: h.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("cam-{}", camera.id))
                .spawn(move || worker.run())?;
            threads.push(thread);
            health.push(h);
        }
        Ok(Self {
            stop,
            threads,
            health,
        })
    }

    /// Health of every camera, in config order.
    pub fn health(&self) -> Vec<CameraHealth> {
        self.health.iter().map(|h| lock(h).clone()).collect()
    }

    /// Frames per second over all cameras.
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

struct CameraWorker {
    camera: CameraConfig,
    detector: Box<dyn Detector>,
    tx: mpsc::Sender<Detection>,
    stop: Arc<AtomicBool>,
    health: SharedHealth,
}

/// Why a camera loop ended.
enum Exit {
    Stop,
    Ended,
    SourceFailed(String),
}

impl CameraWorker {
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
        if state != state::OK {
            h.fps = 0.0;
        }
    }

    fn run(mut self) {
        let id = self.camera.id.clone();
        tracing::info!(camera = %id, uri = %self.camera.uri, fps = self.camera.fps, "camera starting");
        let mut retry = RETRY_MIN;
        loop {
            if self.stopping() {
                return;
            }
            match source::open(&self.camera.source, &id) {
                Ok(mut src) => match self.stream(src.as_mut(), &mut retry) {
                    Exit::Stop => return,
                    Exit::Ended => {
                        tracing::info!(camera = %id, "source ended");
                        self.set_state(state::ENDED, None);
                        return;
                    }
                    Exit::SourceFailed(e) => {
                        tracing::warn!(camera = %id, error = %e, retry_in = ?retry, "source failed; re-opening it");
                        self.set_state(state::RECONNECTING, Some(e));
                    }
                },
                Err(e) => {
                    tracing::warn!(camera = %id, error = %e, retry_in = ?retry, "cannot open source; retrying");
                    self.set_state(state::FAILED, Some(e.to_string()));
                }
            }
            self.sleep(retry);
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    fn stream(&mut self, src: &mut dyn source::FrameSource, retry: &mut Duration) -> Exit {
        let interval = Duration::from_secs_f64(1.0 / self.camera.fps);
        let mut next_due = Instant::now();
        let mut window_start = Instant::now();
        let mut window_frames = 0u32;
        loop {
            if self.stopping() {
                return Exit::Stop;
            }
            let now = Instant::now();
            if next_due > now {
                self.sleep(next_due - now);
                if self.stopping() {
                    return Exit::Stop;
                }
            }
            // Falling behind (slow detector): skip ahead rather than burst.
            next_due = (next_due + interval).max(Instant::now());
            let frame = match src.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Exit::Ended,
                Err(e) => return Exit::SourceFailed(e.to_string()),
            };
            *retry = RETRY_MIN;
            window_frames += 1;
            {
                let mut h = lock(&self.health);
                h.frames_total += 1;
                h.state = state::OK.into();
                let elapsed = window_start.elapsed();
                if elapsed >= FPS_WINDOW {
                    h.fps = window_frames as f32 / elapsed.as_secs_f32();
                    window_frames = 0;
                    window_start = Instant::now();
                }
            }
            if !self.detect_and_send(&frame) {
                return Exit::Stop;
            }
        }
    }

    /// Runs the detector; false when the receiving side is gone.
    fn detect_and_send(&mut self, frame: &Frame) -> bool {
        let boxes = match self.detector.detect(frame) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(camera = %self.camera.id, error = %e, "detector refused a frame");
                lock(&self.health).last_error = Some(e.to_string());
                return true;
            }
        };
        for b in boxes {
            let d = Detection {
                ts: frame.ts,
                camera_id: frame.camera_id.clone(),
                class_id: b.class_id,
                label: b.label,
                score: b.score,
                bbox: b.bbox,
                track_id: None,
                zone: None,
            };
            if self.tx.blocking_send(d).is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn synthetic_camera_yields_motion_detections_and_ends() {
        let config = AgentConfig::load(
            None,
            &Overrides {
                node_id: Some("t".into()),
                sources: vec!["gate=synthetic://?objects=2&frames=5&fps=60".into()],
                ..Overrides::default()
            },
        )
        .expect("config");
        let (tx, mut rx) = mpsc::channel(1000);
        let p = Pipelines::start(&config, tx).expect("start");
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
        assert_eq!(health[0].frames_total, 5);
        assert_eq!(health[0].state, state::ENDED);
    }
}
