//! Between capture and inference: a one-frame mailbox and a rate limiter.
//!
//! The capture thread decodes at the source's rate and [`LatestFrame::put`]s
//! every frame; the analysis thread [`LatestFrame::take`]s the newest one
//! when it is ready for more. A frame that is replaced before anyone took it
//! is dropped and counted, so a busy detector costs frames, never memory,
//! and never adds latency. Sources that are not real time (synthetic,
//! image directories) are instead paced by the consumer with
//! [`LatestFrame::put_wait`], so none of their frames are lost.
//!
//! [`DetectPacer`] then decides which of the taken frames are inferred, at
//! most `detect_fps` per second of stream time.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::frame::Frame;

#[derive(Debug, Default)]
struct Slot {
    frame: Option<Frame>,
    closed: bool,
    dropped: u64,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct LatestFrame {
    slot: Mutex<Slot>,
    changed: Condvar,
}

/// What [`LatestFrame::take`] found.
#[derive(Debug)]
pub enum Taken {
    Frame(Frame),
    /// Nothing new within the timeout.
    Empty,
    /// The producer is gone and the slot is empty.
    Closed,
}

impl LatestFrame {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `frame`, replacing (and counting) any frame not taken yet.
    pub fn put(&self, frame: Frame) {
        let mut slot = self.lock();
        if slot.frame.replace(frame).is_some() {
            slot.dropped += 1;
        }
        self.changed.notify_all();
    }

    /// Stores `frame` once the previous one was taken (or `timeout` passes,
    /// then it replaces it). For sources that wait for the consumer.
    pub fn put_wait(&self, frame: Frame, timeout: Duration) {
        let slot = self.lock();
        let (mut slot, _) = self
            .changed
            .wait_timeout_while(slot, timeout, |s| s.frame.is_some() && !s.closed)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.frame.replace(frame).is_some() {
            slot.dropped += 1;
        }
        self.changed.notify_all();
    }

    /// The newest frame, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Taken {
        let slot = self.lock();
        let (mut slot, _) = self
            .changed
            .wait_timeout_while(slot, timeout, |s| s.frame.is_none() && !s.closed)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = match slot.frame.take() {
            Some(f) => Taken::Frame(f),
            None if slot.closed => Taken::Closed,
            None => Taken::Empty,
        };
        self.changed.notify_all();
        taken
    }

    /// No more frames will come; `take` drains what is left, then says `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Frames replaced before they were taken.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// Lets through at most `fps` frames per second of stream time; `None`
/// lets every frame through.
#[derive(Debug)]
pub struct DetectPacer {
    interval: Option<Duration>,
    next_due: Option<Duration>,
}

impl DetectPacer {
    pub fn new(fps: Option<f64>) -> Self {
        Self {
            interval: fps
                .filter(|f| *f > 0.0)
                .map(|f| Duration::from_secs_f64(1.0 / f)),
            next_due: None,
        }
    }

    /// Whether the frame at stream time `t` is due for inference.
    pub fn due(&mut self, t: Duration) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        match self.next_due {
            Some(due) if t < due => false,
            Some(due) => {
                // Keep the cadence, but after a gap (stall, slow detector)
                // restart from now instead of bursting to catch up.
                let next = due + interval;
                self.next_due = Some(if next <= t { t + interval } else { next });
                true
            }
            None => {
                self.next_due = Some(t + interval);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use chrono::Utc;

    fn frame(seq: u64) -> Frame {
        Frame {
            camera_id: "c".into(),
            ts: Utc::now(),
            seq,
            width: 1,
            height: 1,
            rgb: vec![0; 3],
        }
    }

    #[test]
    fn a_busy_consumer_gets_the_newest_frame_and_memory_stays_bounded() {
        let slot = LatestFrame::new();
        for seq in 0..100 {
            slot.put(frame(seq));
        }
        match slot.take(Duration::ZERO) {
            Taken::Frame(f) => assert_eq!(f.seq, 99),
            other => panic!("{other:?}"),
        }
        assert_eq!(slot.dropped(), 99);
        assert!(matches!(slot.take(Duration::from_millis(10)), Taken::Empty));
        slot.put(frame(100));
        slot.close();
        assert!(
            matches!(slot.take(Duration::ZERO), Taken::Frame(_)),
            "drained after close"
        );
        assert!(matches!(slot.take(Duration::ZERO), Taken::Closed));
    }

    #[test]
    fn put_wait_loses_nothing() {
        let slot = Arc::new(LatestFrame::new());
        let producer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                for seq in 0..50 {
                    slot.put_wait(frame(seq), Duration::from_secs(5));
                }
                slot.close();
            })
        };
        let mut seen = Vec::new();
        loop {
            match slot.take(Duration::from_secs(1)) {
                Taken::Frame(f) => seen.push(f.seq),
                Taken::Empty => {}
                Taken::Closed => break,
            }
        }
        producer.join().expect("producer");
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(slot.dropped(), 0);
    }

    #[test]
    fn pacer_keeps_cadence_without_bursts() {
        let mut p = DetectPacer::new(Some(5.0));
        let due: Vec<u64> = (0..30)
            .map(|i| Duration::from_millis(i * 100))
            .filter(|t| p.due(*t))
            .map(|t| t.as_millis() as u64)
            .collect();
        assert_eq!(
            due,
            [0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2200, 2400, 2600, 2800]
        );
        // After a 5 s gap, one frame, then the normal cadence again.
        assert!(p.due(Duration::from_millis(8000)));
        assert!(!p.due(Duration::from_millis(8100)));
        assert!(p.due(Duration::from_millis(8200)));
        let mut all = DetectPacer::new(None);
        assert!((0..10).all(|i| all.due(Duration::from_millis(i))));
    }
}
