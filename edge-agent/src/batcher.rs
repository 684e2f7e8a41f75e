//! Groups detections into batches before they go into the outbox.
//!
//! A batch is sealed when it holds `batch_max_detections` or when its first
//! detection is `batch_max_age` old, whichever comes first: full batches
//! under load, bounded latency when it is quiet.

use std::time::{Duration, Instant};

use edgeqi_shared::Detection;

/// See the module doc.
#[derive(Debug)]
pub struct Batcher {
    max_detections: usize,
    max_age: Duration,
    open: Vec<Detection>,
    /// When the open batch got its first detection.
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(max_detections: usize, max_age: Duration) -> Self {
        Self {
            max_detections: max_detections.max(1),
            max_age,
            open: Vec::new(),
            opened_at: None,
        }
    }

    /// Adds one detection; returns the sealed batch if this filled it.
    pub fn push(&mut self, detection: Detection, now: Instant) -> Option<Vec<Detection>> {
        if self.open.is_empty() {
            self.opened_at = Some(now);
        }
        self.open.push(detection);
        (self.open.len() >= self.max_detections).then(|| self.seal())
    }

    /// When the open batch must be sealed by age; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.max_age)
    }

    /// Seals the open batch now (age reached, or shutting down).
    pub fn seal(&mut self) -> Vec<Detection> {
        self.opened_at = None;
        std::mem::take(&mut self.open)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detection {
        Detection {
            ts: chrono::Utc::now(),
            camera_id: "c".into(),
            class_id: None,
            label: "motion".into(),
            score: 1.0,
            bbox: [0.0, 0.0, 1.0, 1.0],
            track_id: None,
            zone: None,
        }
    }

    #[test]
    fn seals_when_full() {
        let mut b = Batcher::new(3, Duration::from_secs(60));
        let t = Instant::now();
        assert!(b.push(det(), t).is_none());
        assert!(b.push(det(), t).is_none());
        assert_eq!(b.push(det(), t).map(|v| v.len()), Some(3));
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[test]
    fn deadline_counts_from_the_first_detection() {
        let mut b = Batcher::new(100, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(b.deadline(), None);
        b.push(det(), t0);
        b.push(det(), t0 + Duration::from_millis(900));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(b.seal().len(), 2);
        assert_eq!(b.deadline(), None);
    }
}
