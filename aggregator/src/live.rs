//! The live bus: everything stored or observed, fanned out to WebSocket
//! clients. A bounded broadcast channel, so a slow client lags (and is told)
//! instead of slowing ingest.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::store::StoredDetection;

/// One typed frame of the live feed: `{"type": …, "data": {…}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LiveEvent {
    Detection(StoredDetection),
    Heartbeat(serde_json::Value),
    NodeStatus(NodeStatusEvent),
    /// An incident was created, joined by a report, or changed.
    Incident(serde_json::Value),
    /// A node's tracker events and line counts (an `EventBatch`).
    TrackEvents(serde_json::Value),
    /// An alert rule fired (see docs/PROTOCOL.md); carries its `tenant_id`.
    Alert(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatusEvent {
    pub node_id: String,
    pub online: bool,
    /// `status` (the node said so, or its last will), `heartbeat` (one
    /// arrived), or `timeout` (three intervals without one).
    pub cause: String,
}

impl LiveEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            LiveEvent::Detection(_) => "detection",
            LiveEvent::Heartbeat(_) => "heartbeat",
            LiveEvent::NodeStatus(_) => "node_status",
            LiveEvent::Incident(_) => "incident",
            LiveEvent::TrackEvents(_) => "track_events",
            LiveEvent::Alert(_) => "alert",
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        match self {
            LiveEvent::Detection(d) => Some(&d.node_id),
            LiveEvent::Heartbeat(h) => h.get("node_id").and_then(|v| v.as_str()),
            LiveEvent::NodeStatus(s) => Some(&s.node_id),
            LiveEvent::Incident(_) => None,
            LiveEvent::TrackEvents(v) | LiveEvent::Alert(v) => {
                v.get("node_id").and_then(|n| n.as_str())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LiveBus {
    tx: broadcast::Sender<LiveEvent>,
}

impl LiveBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
        }
    }

    /// Publishes to whoever listens; no listener is fine.
    pub fn send(&self, event: LiveEvent) {
        let _ = self.tx.send(event);
    }

    /// Whether anyone listens (so busy producers can skip building events).
    pub fn is_watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }
}
