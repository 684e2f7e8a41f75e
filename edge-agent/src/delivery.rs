//! Delivery: which outbox batches to (re)send, and when.
//!
//! Keeps a window of at most `max_inflight` batches sent but not yet
//! acknowledged, starting at the lowest unacked seq. It (re)starts from the
//! lowest unacked seq on every connect and when no ack made progress for
//! `ack_timeout`; the aggregator's ingest is idempotent on (node, epoch, seq),
//! so a resend never duplicates. Publishing is behind [`BatchSink`] so this
//! logic is tested without a broker.

use std::time::{Duration, Instant};

use chrono::Utc;
use edgeqi_shared::{Ack, DetectionBatch};

use crate::outbox::{Outbox, OutboxError};

/// Where batches go. `Err` means "not now" (queue full, disconnected): the
/// batch is tried again later.
pub trait BatchSink {
    fn send(&mut self, batch: &DetectionBatch) -> Result<(), String>;
}

/// What happened to an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckResult {
    /// Rows up to `acked_seq` were deleted.
    Advanced { acked_seq: u64, deleted: u64 },
    /// Nothing new (a repeat or an older ack).
    Stale,
    /// The ack is for another outbox epoch (an old database, a re-flashed box).
    OtherEpoch,
}

/// See the module doc.
#[derive(Debug)]
pub struct Delivery {
    node_id: String,
    epoch: String,
    max_inflight: u64,
    ack_timeout: Duration,
    connected: bool,
    /// The next seq to publish; everything in `acked+1 .. next_send` is in flight.
    next_send: u64,
    acked: u64,
    /// Last time an ack made progress, or the window went from empty to busy.
    last_progress: Instant,
}

impl Delivery {
    pub fn new(
        node_id: &str,
        outbox: &Outbox,
        max_inflight: usize,
        ack_timeout: Duration,
    ) -> Result<Self, OutboxError> {
        let acked = outbox.acked_seq()?;
        Ok(Self {
            node_id: node_id.to_owned(),
            epoch: outbox.epoch().to_owned(),
            max_inflight: max_inflight.max(1) as u64,
            ack_timeout,
            connected: false,
            next_send: acked + 1,
            acked,
            last_progress: Instant::now(),
        })
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_send.saturating_sub(self.acked + 1)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Connected (or reconnected): resend everything unacked, from the lowest seq.
    pub fn on_connected(
        &mut self,
        outbox: &Outbox,
        sink: &mut dyn BatchSink,
        now: Instant,
    ) -> Result<(), OutboxError> {
        self.connected = true;
        self.rewind(outbox)?;
        self.last_progress = now;
        self.pump(outbox, sink, now)
    }

    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// A batch was appended to the outbox: send it if the window allows.
    pub fn on_appended(
        &mut self,
        outbox: &Outbox,
        sink: &mut dyn BatchSink,
        now: Instant,
    ) -> Result<(), OutboxError> {
        self.pump(outbox, sink, now)
    }

    /// An ack arrived on our topic (already decoded and node-checked).
    pub fn on_ack(
        &mut self,
        ack: &Ack,
        outbox: &mut Outbox,
        sink: &mut dyn BatchSink,
        now: Instant,
    ) -> Result<AckResult, OutboxError> {
        if ack.epoch != self.epoch {
            tracing::info!(ack_epoch = %ack.epoch, our_epoch = %self.epoch, acked_seq = ack.acked_seq,
                "ignoring an ack for another outbox epoch");
            return Ok(AckResult::OtherEpoch);
        }
        let outcome = outbox.ack(ack.acked_seq)?;
        if outcome.beyond_last_seq {
            tracing::warn!(
                acked_seq = ack.acked_seq,
                "ack names a seq this outbox never assigned; clamped to the last seq"
            );
        }
        if outcome.acked_seq <= self.acked {
            return Ok(AckResult::Stale);
        }
        self.acked = outcome.acked_seq;
        self.next_send = self.next_send.max(self.acked + 1);
        self.last_progress = now;
        self.pump(outbox, sink, now)?;
        Ok(AckResult::Advanced {
            acked_seq: outcome.acked_seq,
            deleted: outcome.deleted,
        })
    }

    /// Called periodically: resends when acks stopped coming.
    pub fn on_tick(
        &mut self,
        outbox: &Outbox,
        sink: &mut dyn BatchSink,
        now: Instant,
    ) -> Result<(), OutboxError> {
        if !self.connected {
            return Ok(());
        }
        if self.in_flight() > 0 && now.duration_since(self.last_progress) >= self.ack_timeout {
            tracing::warn!(
                in_flight = self.in_flight(),
                from_seq = self.acked + 1,
                timeout = ?self.ack_timeout,
                "no ack progress; resending unacknowledged batches"
            );
            self.rewind(outbox)?;
            self.last_progress = now;
        }
        // Also retries sends a full queue refused earlier.
        self.pump(outbox, sink, now)
    }

    fn rewind(&mut self, outbox: &Outbox) -> Result<(), OutboxError> {
        self.acked = outbox.acked_seq()?;
        self.next_send = outbox.lowest_pending()?.unwrap_or(self.acked + 1);
        Ok(())
    }

    /// Sends as much as the window allows.
    fn pump(
        &mut self,
        outbox: &Outbox,
        sink: &mut dyn BatchSink,
        now: Instant,
    ) -> Result<(), OutboxError> {
        if !self.connected {
            return Ok(());
        }
        let was_idle = self.in_flight() == 0;
        let window_end = self.acked + self.max_inflight;
        while self.next_send <= window_end {
            let want = (window_end - self.next_send + 1) as usize;
            let batches = outbox.pending(self.next_send, want)?;
            if batches.is_empty() {
                break;
            }
            for b in &batches {
                let msg = b.to_message(&self.node_id, &self.epoch, Utc::now());
                if let Err(why) = sink.send(&msg) {
                    tracing::debug!(seq = b.seq, %why, "send deferred");
                    return Ok(());
                }
                self.next_send = b.seq + 1;
                if was_idle {
                    self.last_progress = now;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeqi_shared::Detection;

    #[derive(Default)]
    struct FakeSink {
        sent: Vec<u64>,
        refuse: bool,
    }

    impl BatchSink for FakeSink {
        fn send(&mut self, b: &DetectionBatch) -> Result<(), String> {
            if self.refuse {
                return Err("full".into());
            }
            assert_eq!(b.node_id, "n1");
            self.sent.push(b.seq);
            Ok(())
        }
    }

    fn det() -> Detection {
        Detection {
            ts: Utc::now(),
            camera_id: "c".into(),
            class_id: None,
            label: "motion".into(),
            score: 1.0,
            bbox: [0.0, 0.0, 1.0, 1.0],
            track_id: None,
            zone: None,
        }
    }

    fn setup(batches: usize) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(&dir.path().join("outbox.db"), 1 << 20).expect("open");
        for _ in 0..batches {
            o.append(vec![det()]).expect("append");
        }
        (dir, o)
    }

    fn ack(o: &Outbox, seq: u64) -> Ack {
        Ack {
            v: 1,
            node_id: "n1".into(),
            epoch: o.epoch().to_owned(),
            acked_seq: seq,
        }
    }

    #[test]
    fn window_fills_on_connect_and_advances_on_ack() {
        let (_d, mut o) = setup(10);
        let mut d = Delivery::new("n1", &o, 4, Duration::from_secs(10)).expect("new");
        let mut sink = FakeSink::default();
        let t = Instant::now();
        d.on_appended(&o, &mut sink, t).expect("offline");
        assert!(sink.sent.is_empty(), "nothing is sent while disconnected");
        d.on_connected(&o, &mut sink, t).expect("connect");
        assert_eq!(sink.sent, [1, 2, 3, 4]);
        let r = d.on_ack(&ack(&o, 2), &mut o, &mut sink, t).expect("ack");
        assert_eq!(
            r,
            AckResult::Advanced {
                acked_seq: 2,
                deleted: 2
            }
        );
        assert_eq!(sink.sent, [1, 2, 3, 4, 5, 6]);
        assert_eq!(d.in_flight(), 4);
        assert_eq!(
            d.on_ack(&ack(&o, 1), &mut o, &mut sink, t).expect("old"),
            AckResult::Stale
        );
    }

    #[test]
    fn other_epochs_are_ignored() {
        let (_d, mut o) = setup(3);
        let mut d = Delivery::new("n1", &o, 4, Duration::from_secs(10)).expect("new");
        let mut sink = FakeSink::default();
        d.on_connected(&o, &mut sink, Instant::now())
            .expect("connect");
        let mut foreign = ack(&o, 3);
        foreign.epoch = "0000000000000000".into();
        let r = d
            .on_ack(&foreign, &mut o, &mut sink, Instant::now())
            .expect("ack");
        assert_eq!(r, AckResult::OtherEpoch);
        assert_eq!(o.backlog().expect("backlog"), 3);
    }

    #[test]
    fn reconnect_and_timeout_resend_from_lowest_unacked() {
        let (_d, mut o) = setup(3);
        let mut d = Delivery::new("n1", &o, 8, Duration::from_secs(10)).expect("new");
        let mut sink = FakeSink::default();
        let t0 = Instant::now();
        d.on_connected(&o, &mut sink, t0).expect("connect");
        d.on_ack(&ack(&o, 1), &mut o, &mut sink, t0).expect("ack");
        d.on_disconnected();
        d.on_connected(&o, &mut sink, t0).expect("reconnect");
        assert_eq!(sink.sent, [1, 2, 3, 2, 3]);
        d.on_tick(&o, &mut sink, t0 + Duration::from_secs(5))
            .expect("tick");
        assert_eq!(sink.sent.len(), 5, "no resend before the timeout");
        d.on_tick(&o, &mut sink, t0 + Duration::from_secs(11))
            .expect("tick");
        assert_eq!(sink.sent, [1, 2, 3, 2, 3, 2, 3]);
    }

    #[test]
    fn a_refused_send_is_retried_later() {
        let (_d, mut o) = setup(2);
        let mut d = Delivery::new("n1", &o, 8, Duration::from_secs(10)).expect("new");
        let mut sink = FakeSink {
            refuse: true,
            ..FakeSink::default()
        };
        let t = Instant::now();
        d.on_connected(&o, &mut sink, t).expect("connect");
        assert_eq!(d.in_flight(), 0);
        sink.refuse = false;
        d.on_tick(&o, &mut sink, t).expect("tick");
        assert_eq!(sink.sent, [1, 2]);
        o.append(vec![det()]).expect("append");
        d.on_appended(&o, &mut sink, t).expect("appended");
        assert_eq!(sink.sent, [1, 2, 3]);
    }
}
