//! Protocol v1 payloads and their validation.
//!
//! Every payload is UTF-8 JSON carrying `"v":1`. Decoding goes through
//! [`decode`], which classifies a bad payload into exactly one
//! [`RejectReason`] so the aggregator can log, count and dead-letter it
//! without ever panicking on hostile bytes.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::camera::{check_cameras, describe, CameraSpec};
use crate::topic::is_valid_node_id;

/// The only protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default limit for one MQTT payload (broker and clients alike): 1 MiB, which
/// fits a batch of [`MAX_DETECTIONS_PER_BATCH`] detections several times over.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// A batch never carries more detections than this.
pub const MAX_DETECTIONS_PER_BATCH: usize = 1000;
/// Ids and labels are short identifiers, not free text.
pub const MAX_ID_LEN: usize = 64;
/// The largest seq, track id or count a node may send: both stores keep them
/// as signed 64-bit integers, so anything above would pass decoding and then
/// fail in the database on every retry.
pub const MAX_STORED_INTEGER: u64 = i64::MAX as u64;
/// The most detections of one class one camera (and zone) can report in one
/// minute: 100 frames a second, 60 seconds, [`MAX_DETECTIONS_PER_BATCH`]
/// objects in every frame. A compacted count above this is not something a
/// camera saw.
pub const MAX_COUNT_PER_MINUTE: u64 = 100 * 60 * MAX_DETECTIONS_PER_BATCH as u64;
/// The most crossings one line can count per second of counting (a busy
/// crossing sees a few); bounds the cumulative `line_counts`.
pub const MAX_LINE_CROSSINGS_PER_SECOND: u64 = 1000;
/// The largest class index: stores keep it as a signed 32-bit integer.
pub const MAX_CLASS_ID: u32 = i32::MAX as u32;
/// The longest heartbeat interval a node may announce: a day (the node is
/// offline after three missed intervals, so more would hide a dead node).
pub const MAX_HEARTBEAT_INTERVAL_S: u32 = 86_400;
/// Cameras one node may report in a heartbeat.
pub const MAX_CAMERAS_PER_NODE: usize = 256;
/// Free text a node sends (a camera's `last_error`, a config rejection).
pub const MAX_TEXT_LEN: usize = 1024;

/// One object seen in one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// When the frame was captured (RFC 3339, UTC).
    pub ts: DateTime<Utc>,
    pub camera_id: String,
    /// Class index of the detector's label set; `null` for the motion fallback.
    #[serde(default)]
    pub class_id: Option<u32>,
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-frame pixels, `x1 <= x2`, `y1 <= y2`.
    pub bbox: [f32; 4],
    #[serde(default)]
    pub track_id: Option<u64>,
    #[serde(default)]
    pub zone: Option<String>,
}

/// Detections the agent's outbox compacted to save space: how many of one
/// class a camera (and zone) saw within one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionCount {
    /// Start of the minute (seconds and below are zero).
    pub minute: DateTime<Utc>,
    pub camera_id: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub class_id: Option<u32>,
    pub label: String,
    pub count: u64,
}

/// What the agent publishes on `…/detections`: one seq-numbered outbox batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionBatch {
    pub v: u32,
    pub node_id: String,
    /// Random id of the agent's outbox; `""` for simple clients.
    #[serde(default)]
    pub epoch: String,
    /// Starts at 1 and increases by one per batch within an epoch.
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
    pub detections: Vec<Detection>,
    /// Compacted detections (present only when the outbox ran full).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<DetectionCount>,
}

/// The agent's outbox, as reported in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxHealth {
    pub epoch: String,
    /// Batches waiting for an ack.
    pub pending_batches: u64,
    pub pending_bytes: u64,
    pub max_bytes: u64,
    /// Highest seq the aggregator acknowledged in this epoch.
    pub acked_seq: u64,
    /// Detections folded into per-minute counts because the outbox was full.
    pub compacted_detections: u64,
    /// Detections dropped because even compaction could not make room.
    pub shed_detections: u64,
}

/// Health of one camera on the agent.
///
/// `frames_total` counts decoded frames, `frames_inferred` the ones the
/// detector ran on: a camera that streams but infers nothing is "no motion",
/// one whose `frames_total` stops growing (`state` `stalled`/`reconnecting`)
/// is blind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraHealth {
    pub camera_id: String,
    /// `connecting`, `streaming`, `stalled`, `reconnecting`, `failed` or
    /// `ended` (a finite source finished).
    pub state: String,
    /// Decoded frames per second.
    pub fps: f32,
    pub frames_total: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Frames the detector ran on.
    #[serde(default)]
    pub frames_inferred: u64,
    /// Frames the motion gate let skip inference.
    #[serde(default)]
    pub frames_gated: u64,
    /// Frames replaced by a newer one while the detector was busy.
    #[serde(default)]
    pub frames_dropped: u64,
    /// Frames that could not be decoded or converted.
    #[serde(default)]
    pub decode_errors: u64,
    /// Mean detector time per inferred frame over the last heartbeat window, ms.
    #[serde(default)]
    pub infer_ms: f32,
    /// Capture time of the newest decoded frame.
    #[serde(default)]
    pub last_frame_at: Option<DateTime<Utc>>,
    /// How often the source was (re)opened after a failure.
    #[serde(default)]
    pub reconnects: u64,
}

impl CameraHealth {
    /// A camera that has not delivered anything yet.
    pub fn new(camera_id: &str, state: &str) -> Self {
        Self {
            camera_id: camera_id.to_owned(),
            state: state.to_owned(),
            fps: 0.0,
            frames_total: 0,
            last_error: None,
            frames_inferred: 0,
            frames_gated: 0,
            frames_dropped: 0,
            decode_errors: 0,
            infer_ms: 0.0,
            last_frame_at: None,
            reconnects: 0,
        }
    }
}

/// Kinds of [`TrackEvent`].
pub mod track_event {
    /// A new object was confirmed (seen in enough frames).
    pub const APPEARED: &str = "appeared";
    /// A tracked object was not seen for the tracker's max age.
    pub const LEFT: &str = "left";
    pub const ZONE_ENTERED: &str = "zone_entered";
    /// Carries `dwell_s`.
    pub const ZONE_LEFT: &str = "zone_left";
    /// Carries `line` and `direction`.
    pub const LINE_CROSSED: &str = "line_crossed";
}

/// Direction of a line crossing, as seen standing on the line's `from`
/// point looking towards its `to` point.
pub mod line_direction {
    pub const LEFT_TO_RIGHT: &str = "left_to_right";
    pub const RIGHT_TO_LEFT: &str = "right_to_left";
}

/// Something that happened to one tracked object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackEvent {
    /// Unique event id (`{run}-{camera_id}-{track_id}-{n}`); the snapshot
    /// endpoint is keyed by it.
    pub id: String,
    pub ts: DateTime<Utc>,
    pub camera_id: String,
    /// Stable within one camera while the agent runs.
    pub track_id: u64,
    /// Unique across agent restarts: `{run}-{camera_id}-{track_id}`. Every
    /// event of one track, and its snapshot, share it.
    pub track_key: String,
    /// One of [`track_event`].
    pub kind: String,
    #[serde(default)]
    pub class_id: Option<u32>,
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-frame pixels at the time of the event.
    pub bbox: [f32; 4],
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub line: Option<String>,
    /// One of [`line_direction`], for `line_crossed`.
    #[serde(default)]
    pub direction: Option<String>,
    /// Seconds spent in `zone` (`zone_left`) or in view (`left`).
    #[serde(default)]
    pub dwell_s: Option<f64>,
}

/// Cumulative crossings of one line by one class in one direction since
/// the agent started (traffic counting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineCount {
    pub camera_id: String,
    pub line: String,
    pub label: String,
    /// One of [`line_direction`].
    pub direction: String,
    pub count: u64,
    /// When the agent started counting (counts restart with the agent).
    pub since: DateTime<Utc>,
}

/// What the agent publishes on `…/events` (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub v: u32,
    pub node_id: String,
    pub sent_at: DateTime<Utc>,
    #[serde(default)]
    pub events: Vec<TrackEvent>,
    /// Current totals of every line that changed since the previous batch.
    #[serde(default)]
    pub line_counts: Vec<LineCount>,
}

/// What the agent publishes on `…/snapshots` (QoS 1) when a track ends: the
/// best-scoring crop of the object over its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub v: u32,
    pub node_id: String,
    pub camera_id: String,
    pub track_id: u64,
    pub track_key: String,
    /// The `left` event of the track; every event with the same
    /// `track_key` shows this snapshot too.
    pub event_id: String,
    /// Capture time of the frame the crop comes from.
    pub ts: DateTime<Utc>,
    #[serde(default)]
    pub class_id: Option<u32>,
    pub label: String,
    pub score: f32,
    /// The object's box in the source frame.
    pub bbox: [f32; 4],
    /// Always `image/jpeg`.
    pub content_type: String,
    /// The crop, JPEG, standard base64.
    pub jpeg_b64: String,
    /// The whole frame, JPEG, base64 (when `snapshots.full_frame` is on).
    #[serde(default)]
    pub frame_jpeg_b64: Option<String>,
}

/// What the agent publishes on `…/heartbeat` every `heartbeat_interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u32,
    pub node_id: String,
    pub ts: DateTime<Utc>,
    pub uptime_s: u64,
    pub cpu_pct: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// Unacknowledged batches in the outbox.
    pub backlog: u64,
    /// Frames per second the pipeline processed, all cameras together.
    pub fps: f32,
    /// Agent version (semver).
    pub version: String,
    /// Seconds until the next heartbeat; the aggregator marks the node
    /// offline after three missed intervals.
    #[serde(default = "default_heartbeat_interval_s")]
    pub interval_s: u32,
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    #[serde(default)]
    pub disk_total_bytes: Option<u64>,
    #[serde(default)]
    pub temperature_c: Option<f32>,
    /// Which detector runs (`motion`, `yolov8n-int8`, …).
    #[serde(default)]
    pub detector: Option<String>,
    #[serde(default)]
    pub outbox: Option<OutboxHealth>,
    #[serde(default)]
    pub cameras: Vec<CameraHealth>,
    /// Version of the remote config ([`RemoteConfig`]) the node runs;
    /// `None` when it runs its config file alone.
    #[serde(default)]
    pub config_version: Option<u64>,
    /// The last remote config the node refused; it keeps running
    /// `config_version`. Cleared when a later version applies.
    #[serde(default)]
    pub config_error: Option<ConfigRejection>,
    /// Cameras of the applied remote config this node does not have (the
    /// registry is ahead of the installer, or a camera id is mistyped).
    #[serde(default)]
    pub config_unknown_cameras: Vec<String>,
}

/// Why a node refused a remote config, as reported in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRejection {
    /// The refused version; `None` when the payload was too broken to tell.
    #[serde(default)]
    pub version: Option<u64>,
    /// A [`RejectReason::code`], e.g. `invalid_field`.
    pub code: String,
    /// Human-readable, naming the offending field.
    pub reason: String,
}

fn default_heartbeat_interval_s() -> u32 {
    10
}

/// Retained on `…/status`; the agent's last will publishes `online:false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub v: u32,
    pub node_id: String,
    pub online: bool,
    pub ts: DateTime<Utc>,
}

/// Published by the aggregator on `…/ack` after a batch is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub v: u32,
    pub node_id: String,
    #[serde(default)]
    pub epoch: String,
    /// Highest seq such that every seq in `1..=acked_seq` of this epoch is stored.
    pub acked_seq: u64,
}

/// Retained on `…/config`: the node's configuration as the aggregator's
/// registry holds it, versioned. The aggregator publishes the whole
/// document after every change; a node applies a version that differs from
/// the one it runs and reports it in heartbeats (`config_version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub v: u32,
    pub node_id: String,
    /// `>= 1`; increases with every registry change of this node.
    pub version: u64,
    /// When the aggregator made this version.
    #[serde(default)]
    pub issued_at: Option<DateTime<Utc>>,
    /// Agent config keys, in the same shape as the agent's TOML file.
    pub config: NodeConfig,
}

/// The agent config keys a remote config may set (v1: `cameras`); unknown
/// keys are ignored so later versions can add some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Cameras listed here take their zones, lines and `detect_fps` from
    /// here instead of the node's config file; cameras not listed keep the
    /// file's. An empty list hands every camera back to the file.
    #[serde(default)]
    pub cameras: Vec<CameraSpec>,
}

/// Why a payload was refused. `code()` is stable and appears in metrics,
/// logs and the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not valid UTF-8 JSON: {0}")]
    InvalidJson(String),
    #[error("unsupported protocol version {0:?} (this aggregator speaks v1)")]
    UnsupportedVersion(String),
    #[error("missing field: {0}")]
    MissingField(String),
    #[error("node_id {payload:?} in payload differs from {topic:?} in topic")]
    NodeIdMismatch { topic: String, payload: String },
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("topic {0:?} is not an EdgeQI v1 topic with a valid node id")]
    BadTopic(String),
    /// Valid by every check above, but the database refused to store it
    /// (it would refuse it again on every retry).
    #[error("the database refused to store it: {0}")]
    StoreRefused(String),
}

impl RejectReason {
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::InvalidJson(_) => "invalid_json",
            RejectReason::UnsupportedVersion(_) => "unsupported_version",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::NodeIdMismatch { .. } => "node_id_mismatch",
            RejectReason::InvalidField(_) => "invalid_field",
            RejectReason::BadTopic(_) => "bad_topic",
            RejectReason::StoreRefused(_) => "store_refused",
        }
    }
}

/// The range of timestamps a payload may carry.
///
/// Ingest checks every timestamp of a payload against a window around the
/// aggregator's clock ([`TimeWindow::around`]): far enough back that an agent
/// that was offline for weeks still delivers what its outbox kept, not so far
/// forward that a node with a wrong clock pins its rows to the top of every
/// "newest first" list. Every window lies inside what RFC 3339 can write
/// (years 0000–9999), so nothing accepted is ever served as an invalid
/// date-time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
    /// What the window was made of, for the messages.
    max_age: Option<std::time::Duration>,
    max_skew: Option<std::time::Duration>,
}

impl TimeWindow {
    /// Every instant RFC 3339 can write (no clock involved): what a decoder
    /// without a clock, such as the agent's, checks.
    pub fn rfc3339() -> Self {
        let earliest = DateTime::<Utc>::from_naive_utc_and_offset(
            chrono::NaiveDate::from_ymd_opt(0, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or_default(),
            Utc,
        );
        let latest = DateTime::<Utc>::from_naive_utc_and_offset(
            chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
                .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999))
                .unwrap_or_default(),
            Utc,
        );
        Self {
            earliest,
            latest,
            max_age: None,
            max_skew: None,
        }
    }

    /// From `max_age` before `now` to `max_skew` after it.
    pub fn around(
        now: DateTime<Utc>,
        max_age: std::time::Duration,
        max_skew: std::time::Duration,
    ) -> Self {
        let full = Self::rfc3339();
        let back = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let ahead = chrono::Duration::from_std(max_skew).unwrap_or(chrono::Duration::MAX);
        Self {
            earliest: now
                .checked_sub_signed(back)
                .map_or(full.earliest, |t| t.max(full.earliest)),
            latest: now
                .checked_add_signed(ahead)
                .map_or(full.latest, |t| t.min(full.latest)),
            max_age: Some(max_age),
            max_skew: Some(max_skew),
        }
    }

    /// The instant of the window nearest to `t`: what a reader serves for a
    /// value stored before the window was enforced.
    pub fn clamp(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.clamp(self.earliest, self.latest)
    }

    /// Whether `t` (named `what` in the message) lies in the window.
    pub fn check(&self, what: &str, t: DateTime<Utc>) -> Result<(), String> {
        let when = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if t > self.latest {
            return Err(match self.max_skew {
                Some(skew) => format!(
                    "{what} {when} is more than {} ahead of the aggregator's clock \
                     (ingest.max_clock_skew): check the node's clock (NTP)",
                    crate::config::HumanDuration(skew)
                ),
                None => format!("{what} {when} is after 9999-12-31T23:59:59.999Z"),
            });
        }
        if t < self.earliest {
            return Err(match self.max_age {
                Some(age) => format!(
                    "{what} {when} is more than {} old (ingest.max_age): check the node's \
                     clock (NTP), or raise ingest.max_age to take older recordings",
                    crate::config::HumanDuration(age)
                ),
                None => format!("{what} {when} is before 0000-01-01T00:00:00Z"),
            });
        }
        Ok(())
    }
}

/// A payload that knows which node sent it and how to check its own fields.
pub trait Payload: DeserializeOwned {
    fn node_id(&self) -> &str;
    /// Field range checks beyond what the types enforce; every timestamp
    /// must lie in `window`.
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        let _ = window;
        Ok(())
    }
}

/// Decodes and validates one payload published on a topic of `topic_node_id`.
///
/// Order of checks: size, JSON syntax, `v`, fields present and typed, node id
/// match, field ranges. The first failure is the reason.
/// Timestamps are checked against [`TimeWindow::rfc3339`] only; ingest uses
/// [`decode_within`] with a window around its clock.
pub fn decode<T: Payload>(
    topic_node_id: &str,
    payload: &[u8],
    max_bytes: usize,
) -> Result<T, RejectReason> {
    decode_within(topic_node_id, payload, max_bytes, &TimeWindow::rfc3339())
}

/// [`decode`], with every timestamp of the payload checked against `window`.
pub fn decode_within<T: Payload>(
    topic_node_id: &str,
    payload: &[u8],
    max_bytes: usize,
    window: &TimeWindow,
) -> Result<T, RejectReason> {
    if payload.len() > max_bytes {
        return Err(RejectReason::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(RejectReason::InvalidJson(
            "top level is not an object".into(),
        ));
    };
    match obj.get("v") {
        None => return Err(RejectReason::MissingField("v".into())),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => return Err(RejectReason::UnsupportedVersion(v.to_string())),
    }
    // No database text type holds U+0000 (PostgreSQL refuses it in text and
    // jsonb), so a string carrying one would fail in the store on every
    // retry: refuse it here, whatever field it is in.
    if let Some(path) = find_nul(&value, &mut String::new()) {
        return Err(RejectReason::InvalidField(format!(
            "{path} contains U+0000, which no field may hold"
        )));
    }
    let parsed: T = serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("missing field `") {
            Some(rest) => RejectReason::MissingField(rest.trim_end_matches('`').to_owned()),
            None => RejectReason::InvalidField(msg),
        }
    })?;
    if parsed.node_id() != topic_node_id {
        return Err(RejectReason::NodeIdMismatch {
            topic: topic_node_id.to_owned(),
            payload: parsed.node_id().to_owned(),
        });
    }
    parsed
        .check_fields(window)
        .map_err(RejectReason::InvalidField)?;
    Ok(parsed)
}

/// The path (`detections[2].label`) of the first string, or object key, that
/// holds U+0000.
fn find_nul(value: &serde_json::Value, path: &mut String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
            "the payload".to_owned()
        } else {
            path.clone()
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_nul(v, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&k.replace('\0', "\\0"));
            let found = if k.contains('\0') {
                Some(path.clone())
            } else {
                find_nul(v, path)
            };
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

fn check_id(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1..={MAX_ID_LEN} bytes without control characters, got {s:?}"
        ));
    }
    Ok(())
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} is {} bytes, the limit is {max}", s.len()));
    }
    Ok(())
}

/// A list of at most `max` items, each checked; a failure names its place
/// (`detections[3]: …`).
fn check_list<T>(
    what: &str,
    items: &[T],
    max: usize,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<(), String> {
    if items.len() > max {
        return Err(format!(
            "{} {what} in one payload, the limit is {max}",
            items.len()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|e| format!("{what}[{i}]: {e}"))?;
    }
    Ok(())
}

/// Integers the store keeps as signed 64-bit (seq, ids, counters).
fn check_stored(what: &str, n: u64) -> Result<(), String> {
    if n > MAX_STORED_INTEGER {
        return Err(format!("{what} {n} is above {MAX_STORED_INTEGER}"));
    }
    Ok(())
}

/// Measurements (fps, percentages, temperatures): finite, `min` or more.
/// JSON cannot carry infinity, but a number like `1e39` overflows an `f32`
/// to it, and would be served back as `null`.
fn check_measure(what: &str, v: f32, min: f32) -> Result<(), String> {
    if !v.is_finite() || v < min {
        return Err(format!("{what} {v} must be finite and >= {min}"));
    }
    Ok(())
}

/// What every payload that reports an object shares (detections, tracker
/// events, snapshots): one check, so no kind is looser than another.
fn check_object(
    camera_id: &str,
    label: &str,
    class_id: Option<u32>,
    score: f32,
    bbox: [f32; 4],
    track_id: Option<u64>,
) -> Result<(), String> {
    check_id("camera_id", camera_id)?;
    check_id("label", label)?;
    check_class(class_id)?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("score {score} is outside [0, 1]"));
    }
    let [x1, y1, x2, y2] = bbox;
    if !bbox.iter().all(|c| c.is_finite()) || x1 > x2 || y1 > y2 {
        return Err(format!(
            "bbox {bbox:?} must be finite [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
        ));
    }
    if let Some(t) = track_id {
        check_stored("track_id", t)?;
    }
    Ok(())
}

fn check_class(class_id: Option<u32>) -> Result<(), String> {
    match class_id {
        Some(c) if c > MAX_CLASS_ID => Err(format!("class_id {c} is above {MAX_CLASS_ID}")),
        _ => Ok(()),
    }
}

impl Detection {
    fn check(&self, window: &TimeWindow) -> Result<(), String> {
        check_object(
            &self.camera_id,
            &self.label,
            self.class_id,
            self.score,
            self.bbox,
            self.track_id,
        )?;
        if let Some(zone) = &self.zone {
            check_id("zone", zone)?;
        }
        window.check("ts", self.ts)
    }
}

impl DetectionCount {
    fn check(&self, window: &TimeWindow) -> Result<(), String> {
        check_id("camera_id", &self.camera_id)?;
        check_id("label", &self.label)?;
        check_class(self.class_id)?;
        if let Some(zone) = &self.zone {
            check_id("zone", zone)?;
        }
        window.check("minute", self.minute)?;
        if self.count == 0 || self.count > MAX_COUNT_PER_MINUTE {
            return Err(format!(
                "count {} must be 1..={MAX_COUNT_PER_MINUTE} (what one camera can see of one class in a minute)",
                self.count
            ));
        }
        Ok(())
    }
}

impl Payload for DetectionBatch {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        if !is_valid_node_id(&self.node_id) {
            return Err(format!(
                "node_id {:?} does not match [A-Za-z0-9_-]{{1,64}}",
                self.node_id
            ));
        }
        if self.epoch.len() > MAX_ID_LEN {
            return Err(format!("epoch is longer than {MAX_ID_LEN} bytes"));
        }
        if self.seq == 0 {
            return Err("seq starts at 1".into());
        }
        check_stored("seq", self.seq)?;
        window.check("sent_at", self.sent_at)?;
        check_list(
            "detections",
            &self.detections,
            MAX_DETECTIONS_PER_BATCH,
            |d| d.check(window),
        )?;
        check_list("counts", &self.counts, MAX_DETECTIONS_PER_BATCH, |c| {
            c.check(window)
        })
    }
}

impl CameraHealth {
    fn check(&self, window: &TimeWindow) -> Result<(), String> {
        check_id("camera_id", &self.camera_id)?;
        check_id("state", &self.state)?;
        check_measure("fps", self.fps, 0.0)?;
        check_measure("infer_ms", self.infer_ms, 0.0)?;
        for (what, n) in [
            ("frames_total", self.frames_total),
            ("frames_inferred", self.frames_inferred),
            ("frames_gated", self.frames_gated),
            ("frames_dropped", self.frames_dropped),
            ("decode_errors", self.decode_errors),
            ("reconnects", self.reconnects),
        ] {
            check_stored(what, n)?;
        }
        if let Some(e) = &self.last_error {
            check_text("last_error", e, MAX_TEXT_LEN)?;
        }
        if let Some(t) = self.last_frame_at {
            window.check("last_frame_at", t)?;
        }
        Ok(())
    }
}

impl Payload for Heartbeat {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        window.check("ts", self.ts)?;
        check_measure("cpu_pct", self.cpu_pct, 0.0)?;
        check_measure("fps", self.fps, 0.0)?;
        if let Some(t) = self.temperature_c {
            // Colder than absolute zero is a broken sensor, not a reading.
            check_measure("temperature_c", t, -273.15)?;
        }
        if !(1..=MAX_HEARTBEAT_INTERVAL_S).contains(&self.interval_s) {
            return Err(format!(
                "interval_s {} must be 1..={MAX_HEARTBEAT_INTERVAL_S}",
                self.interval_s
            ));
        }
        for (what, n) in [
            ("uptime_s", Some(self.uptime_s)),
            ("mem_used_bytes", Some(self.mem_used_bytes)),
            ("mem_total_bytes", Some(self.mem_total_bytes)),
            ("backlog", Some(self.backlog)),
            ("disk_free_bytes", self.disk_free_bytes),
            ("disk_total_bytes", self.disk_total_bytes),
            ("config_version", self.config_version),
        ] {
            if let Some(n) = n {
                check_stored(what, n)?;
            }
        }
        check_id("version", &self.version)?;
        if let Some(d) = &self.detector {
            check_id("detector", d)?;
        }
        if let Some(o) = &self.outbox {
            check_text("outbox.epoch", &o.epoch, MAX_ID_LEN)?;
            for (what, n) in [
                ("pending_batches", o.pending_batches),
                ("pending_bytes", o.pending_bytes),
                ("max_bytes", o.max_bytes),
                ("acked_seq", o.acked_seq),
                ("compacted_detections", o.compacted_detections),
                ("shed_detections", o.shed_detections),
            ] {
                check_stored(&format!("outbox.{what}"), n)?;
            }
        }
        check_list("cameras", &self.cameras, MAX_CAMERAS_PER_NODE, |c| {
            c.check(window)
        })?;
        if let Some(r) = &self.config_error {
            check_id("config_error.code", &r.code)?;
            check_text("config_error.reason", &r.reason, MAX_TEXT_LEN)?;
        }
        check_list(
            "config_unknown_cameras",
            &self.config_unknown_cameras,
            MAX_CAMERAS_PER_NODE,
            |c| check_id("camera id", c),
        )
    }
}

impl TrackEvent {
    fn check(&self, window: &TimeWindow) -> Result<(), String> {
        check_object(
            &self.camera_id,
            &self.label,
            self.class_id,
            self.score,
            self.bbox,
            Some(self.track_id),
        )?;
        check_id("kind", &self.kind)?;
        if self.id.is_empty() || self.id.len() > 256 || self.track_key.len() > 256 {
            return Err("id and track_key must be 1..=256 bytes".into());
        }
        for (what, v) in [
            ("zone", &self.zone),
            ("line", &self.line),
            ("direction", &self.direction),
        ] {
            if let Some(v) = v {
                check_id(what, v)?;
            }
        }
        if let Some(d) = self.dwell_s {
            if !d.is_finite() || d < 0.0 {
                return Err(format!("dwell_s {d} must be finite and >= 0"));
            }
        }
        window.check("ts", self.ts)
    }
}

impl LineCount {
    fn check(&self, sent_at: DateTime<Utc>, window: &TimeWindow) -> Result<(), String> {
        check_id("camera_id", &self.camera_id)?;
        check_id("line", &self.line)?;
        check_id("label", &self.label)?;
        check_id("direction", &self.direction)?;
        window.check("since", self.since)?;
        // A cumulative count grows with the time it has been counting; a
        // minute of slack covers clocks and the first crossings.
        let seconds = u64::try_from((sent_at - self.since).num_seconds()).unwrap_or(0) + 60;
        let most = seconds.saturating_mul(MAX_LINE_CROSSINGS_PER_SECOND);
        if self.count > most {
            return Err(format!(
                "count {} is more than {MAX_LINE_CROSSINGS_PER_SECOND} crossings a second since {}",
                self.count,
                self.since
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        Ok(())
    }
}

impl Payload for EventBatch {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        window.check("sent_at", self.sent_at)?;
        check_list("events", &self.events, MAX_DETECTIONS_PER_BATCH, |e| {
            e.check(window)
        })?;
        check_list(
            "line_counts",
            &self.line_counts,
            MAX_DETECTIONS_PER_BATCH,
            |c| c.check(self.sent_at, window),
        )
    }
}

impl Payload for Snapshot {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        check_object(
            &self.camera_id,
            &self.label,
            self.class_id,
            self.score,
            self.bbox,
            Some(self.track_id),
        )?;
        if self.track_key.is_empty()
            || self.track_key.len() > 256
            || self.event_id.is_empty()
            || self.event_id.len() > 256
        {
            return Err("track_key and event_id must be 1..=256 bytes".into());
        }
        window.check("ts", self.ts)?;
        if self.content_type != "image/jpeg" {
            return Err(format!(
                "content_type {:?} is not image/jpeg",
                self.content_type
            ));
        }
        if self.jpeg_b64.is_empty() {
            return Err("jpeg_b64 is empty".into());
        }
        Ok(())
    }
}

impl Payload for NodeStatus {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        window.check("ts", self.ts)
    }
}

impl Payload for Ack {
    fn node_id(&self) -> &str {
        &self.node_id
    }
}

impl Payload for RemoteConfig {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn check_fields(&self, window: &TimeWindow) -> Result<(), String> {
        if let Some(t) = self.issued_at {
            window.check("issued_at", t)?;
        }
        if self.version == 0 {
            return Err("version starts at 1".into());
        }
        let problems = check_cameras("config.", &self.config.cameras);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(describe(&problems))
        }
    }
}

/// Serializes a payload; our own types never fail to serialize.
pub fn encode<T: Serialize>(payload: &T) -> Vec<u8> {
    serde_json::to_vec(payload).unwrap_or_else(|e| {
        // Unreachable for the types above (no maps with non-string keys).
        format!("{{\"error\":\"serialize: {e}\"}}").into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = DEFAULT_MAX_PAYLOAD_BYTES;

    fn ts(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    fn sample_batch() -> DetectionBatch {
        DetectionBatch {
            v: 1,
            node_id: "gate-01".into(),
            epoch: "7f3a9c01".into(),
            seq: 42,
            sent_at: ts("2026-11-23T10:00:00.123Z"),
            detections: vec![Detection {
                ts: ts("2026-11-23T10:00:00.100Z"),
                camera_id: "north".into(),
                class_id: Some(5),
                label: "bus".into(),
                score: 0.81,
                bbox: [34.0, 233.0, 798.0, 766.0],
                track_id: Some(17),
                zone: Some("lane-1".into()),
            }],
            counts: vec![],
        }
    }

    fn round_trip<T: Payload + Serialize + PartialEq + std::fmt::Debug>(p: &T) {
        let bytes = encode(p);
        let back: T = decode(p.node_id(), &bytes, LIMIT).expect("round trip");
        assert_eq!(&back, p);
    }

    #[test]
    fn design_doc_example_decodes() {
        let raw = br#"{"v":1,"node_id":"gate-01","epoch":"7f3a9c01","seq":42,"sent_at":"2026-11-23T10:00:00.123Z",
 "detections":[{"ts":"2026-11-23T10:00:00.100Z","camera_id":"north","class_id":5,
   "label":"bus","score":0.81,"bbox":[34.0,233.0,798.0,766.0],"track_id":17,"zone":"lane-1"}]}"#;
        let b: DetectionBatch = decode("gate-01", raw, LIMIT).expect("doc example");
        assert_eq!(b, sample_batch());
    }

    #[test]
    fn every_type_round_trips() {
        let mut b = sample_batch();
        round_trip(&b);
        b.counts.push(DetectionCount {
            minute: ts("2026-11-23T10:00:00Z"),
            camera_id: "north".into(),
            zone: None,
            class_id: None,
            label: "motion".into(),
            count: 12,
        });
        round_trip(&b);
        round_trip(&Heartbeat {
            v: 1,
            node_id: "n1".into(),
            ts: ts("2026-11-23T10:00:00Z"),
            uptime_s: 5,
            cpu_pct: 12.5,
            mem_used_bytes: 1,
            mem_total_bytes: 2,
            backlog: 3,
            fps: 9.5,
            version: "0.1.0".into(),
            interval_s: 10,
            disk_free_bytes: Some(10),
            disk_total_bytes: Some(20),
            temperature_c: None,
            detector: Some("motion".into()),
            outbox: Some(OutboxHealth::default()),
            cameras: vec![CameraHealth {
                fps: 10.0,
                frames_total: 100,
                frames_inferred: 40,
                last_frame_at: Some(ts("2026-11-23T09:59:59.900Z")),
                ..CameraHealth::new("c", "streaming")
            }],
            config_version: Some(3),
            config_error: Some(ConfigRejection {
                version: Some(4),
                code: "invalid_field".into(),
                reason: "config.cameras[0].heading: 400 is outside 0..=360 degrees".into(),
            }),
            config_unknown_cameras: vec!["south".into()],
        });
        round_trip(&NodeStatus {
            v: 1,
            node_id: "n1".into(),
            online: false,
            ts: ts("2026-11-23T10:00:00Z"),
        });
        round_trip(&Ack {
            v: 1,
            node_id: "n1".into(),
            epoch: "e".into(),
            acked_seq: 7,
        });
        round_trip(&RemoteConfig {
            v: 1,
            node_id: "n1".into(),
            version: 3,
            issued_at: Some(ts("2026-11-23T10:00:00Z")),
            config: NodeConfig {
                cameras: vec![CameraSpec {
                    id: "north".into(),
                    name: Some("North gate".into()),
                    location: Some(crate::camera::GeoPoint {
                        lat: 52.37,
                        lng: 4.89,
                    }),
                    heading: Some(90.0),
                    detect_fps: None,
                    zones: vec![],
                    lines: vec![crate::camera::LineSpec {
                        id: "stop-line".into(),
                        from: [0.0, 0.6],
                        to: [1.0, 0.6],
                    }],
                }],
            },
        });
    }

    #[test]
    fn analytics_payloads_round_trip_and_old_camera_health_still_decodes() {
        let event = TrackEvent {
            id: "r1-north-17-3".into(),
            ts: ts("2026-11-23T10:00:01Z"),
            camera_id: "north".into(),
            track_id: 17,
            track_key: "r1-north-17".into(),
            kind: track_event::LINE_CROSSED.into(),
            class_id: Some(5),
            label: "bus".into(),
            score: 0.8,
            bbox: [1.0, 2.0, 3.0, 4.0],
            zone: None,
            line: Some("stop-line".into()),
            direction: Some(line_direction::LEFT_TO_RIGHT.into()),
            dwell_s: None,
        };
        round_trip(&EventBatch {
            v: 1,
            node_id: "n1".into(),
            sent_at: ts("2026-11-23T10:00:02Z"),
            events: vec![event],
            line_counts: vec![LineCount {
                camera_id: "north".into(),
                line: "stop-line".into(),
                label: "bus".into(),
                direction: line_direction::LEFT_TO_RIGHT.into(),
                count: 4,
                since: ts("2026-11-23T09:00:00Z"),
            }],
        });
        let snap = Snapshot {
            v: 1,
            node_id: "n1".into(),
            camera_id: "north".into(),
            track_id: 17,
            track_key: "r1-north-17".into(),
            event_id: "r1-north-17-9".into(),
            ts: ts("2026-11-23T10:00:01Z"),
            class_id: None,
            label: "motion".into(),
            score: 0.5,
            bbox: [1.0, 2.0, 3.0, 4.0],
            content_type: "image/jpeg".into(),
            jpeg_b64: "/9j/".into(),
            frame_jpeg_b64: None,
        };
        round_trip(&snap);
        let bad = Snapshot {
            content_type: "image/png".into(),
            ..snap
        };
        assert!(matches!(
            decode::<Snapshot>("n1", &encode(&bad), LIMIT),
            Err(RejectReason::InvalidField(_))
        ));
        // A heartbeat from an agent that predates the new camera fields.
        let raw = br#"{"v":1,"node_id":"a","ts":"2026-11-23T10:00:00Z","uptime_s":1,"cpu_pct":1,
            "mem_used_bytes":1,"mem_total_bytes":2,"backlog":0,"fps":1,"version":"0.1.0",
            "cameras":[{"camera_id":"c","state":"ok","fps":1,"frames_total":5}]}"#;
        let hb: Heartbeat = decode("a", raw, LIMIT).expect("old heartbeat");
        assert_eq!(hb.cameras[0].frames_inferred, 0);
        assert_eq!(hb.cameras[0].last_frame_at, None);
    }

    #[test]
    fn remote_config_documented_example_decodes_and_bad_ones_are_refused() {
        // The example in docs/PROTOCOL.md §5.5.
        let raw = br#"{"v":1,"node_id":"gate-01","version":7,"issued_at":"2026-11-23T10:00:00Z",
          "config":{"cameras":[{"id":"north","name":"North gate","location":{"lat":52.3702,"lng":4.8952},
            "heading":270,"detect_fps":5,
            "zones":[{"id":"crossing","polygon":[[0.1,0.55],[0.9,0.55],[0.9,0.95],[0.1,0.95]]}],
            "lines":[{"id":"stop-line","from":[0.0,0.6],"to":[1.0,0.6]}]}]}}"#;
        let c: RemoteConfig = decode("gate-01", raw, LIMIT).expect("doc example");
        assert_eq!(c.version, 7);
        assert_eq!(c.config.cameras[0].lines[0].to, [1.0, 0.6]);
        assert_eq!(c.config.cameras[0].heading, Some(270.0));
        // Unknown keys are ignored at every level; optional ones may be absent.
        let raw = br#"{"v":1,"node_id":"n","version":1,"config":{"future":true,"cameras":[{"id":"c","x":1}]}}"#;
        let c: RemoteConfig = decode("n", raw, LIMIT).expect("tolerant");
        assert_eq!(c.issued_at, None);
        let reason = |raw: &[u8]| {
            let e = decode::<RemoteConfig>("n", raw, LIMIT).expect_err("must reject");
            (e.code(), e.to_string())
        };
        let (code, why) = reason(br#"{"v":1,"node_id":"n","version":0,"config":{}}"#);
        assert_eq!(code, "invalid_field", "{why}");
        let (code, why) = reason(
            br#"{"v":1,"node_id":"n","version":2,"config":{"cameras":[{"id":"c","lines":[{"id":"l","from":[0.5,0.5],"to":[0.5,0.5]}]}]}}"#,
        );
        assert_eq!(code, "invalid_field");
        assert!(why.contains("config.cameras[0].lines[0]"), "{why}");
        let (code, _) = reason(br#"{"v":1,"node_id":"n","version":2}"#);
        assert_eq!(code, "missing_field");
    }

    #[test]
    fn epoch_may_be_omitted() {
        let raw =
            br#"{"v":1,"node_id":"a","seq":1,"sent_at":"2026-11-23T10:00:00Z","detections":[]}"#;
        let b: DetectionBatch = decode("a", raw, LIMIT).expect("no epoch");
        assert_eq!(b.epoch, "");
    }

    #[test]
    fn four_kinds_of_malformed_payload_are_told_apart() {
        let ok = String::from_utf8(encode(&sample_batch())).expect("utf8");
        let reason = |raw: &[u8], node: &str| {
            decode::<DetectionBatch>(node, raw, LIMIT)
                .expect_err("must reject")
                .code()
        };
        assert_eq!(reason(b"{not json", "gate-01"), "invalid_json");
        assert_eq!(reason(&[0xff, 0xfe], "gate-01"), "invalid_json");
        assert_eq!(
            reason(ok.replace("\"v\":1", "\"v\":2").as_bytes(), "gate-01"),
            "unsupported_version"
        );
        assert_eq!(
            reason(ok.replace("\"seq\":42,", "").as_bytes(), "gate-01"),
            "missing_field"
        );
        assert_eq!(reason(ok.as_bytes(), "gate-02"), "node_id_mismatch");
        let big = vec![b' '; LIMIT + 1];
        assert_eq!(reason(&big, "gate-01"), "too_large");
    }

    #[test]
    fn field_ranges_are_checked() {
        let cases: Vec<(&str, Box<dyn Fn(&mut DetectionBatch)>)> = vec![
            ("score", Box::new(|b| b.detections[0].score = 1.5)),
            (
                "bbox order",
                Box::new(|b| b.detections[0].bbox = [10.0, 0.0, 5.0, 1.0]),
            ),
            ("bbox nan", Box::new(|b| b.detections[0].bbox[0] = f32::NAN)),
            ("seq zero", Box::new(|b| b.seq = 0)),
            (
                "empty camera",
                Box::new(|b| b.detections[0].camera_id.clear()),
            ),
            (
                "long label",
                Box::new(|b| b.detections[0].label = "x".repeat(65)),
            ),
            (
                "too many",
                Box::new(|b| {
                    let d = b.detections[0].clone();
                    b.detections = vec![d; MAX_DETECTIONS_PER_BATCH + 1];
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut b = sample_batch();
            mutate(&mut b);
            // NaN does not survive JSON, so encode by hand for it.
            let raw = encode(&b);
            let err = decode::<DetectionBatch>("gate-01", &raw, LIMIT).expect_err(name);
            assert!(
                matches!(err.code(), "invalid_field" | "invalid_json"),
                "{name}: {err}"
            );
        }
    }

    /// What ingest checks against: a week back, a minute ahead of `now`.
    fn window(now: DateTime<Utc>) -> TimeWindow {
        TimeWindow::around(
            now,
            std::time::Duration::from_secs(7 * 86_400),
            std::time::Duration::from_secs(60),
        )
    }

    fn refused<T: Payload + std::fmt::Debug>(
        raw: &serde_json::Value,
        window: &TimeWindow,
    ) -> String {
        let bytes = serde_json::to_vec(raw).expect("json");
        match decode_within::<T>("gate-01", &bytes, LIMIT, window) {
            Err(RejectReason::InvalidField(why)) => why,
            other => panic!("{raw} must be refused as invalid_field, got {other:?}"),
        }
    }

    fn accepted<T: Payload + std::fmt::Debug>(raw: &serde_json::Value, window: &TimeWindow) {
        let bytes = serde_json::to_vec(raw).expect("json");
        if let Err(e) = decode_within::<T>("gate-01", &bytes, LIMIT, window) {
            panic!("{raw} must be accepted: {e}");
        }
    }

    #[test]
    fn every_integer_the_store_keeps_signed_is_bounded() {
        let now = Utc::now();
        let mut b = sample_batch();
        b.sent_at = now;
        b.detections[0].ts = now;
        let ok = serde_json::to_value(&b).expect("json");
        let w = window(now);
        accepted::<DetectionBatch>(&ok, &w);
        let mut v = ok.clone();
        v["seq"] = (1u64 << 63).into();
        assert!(refused::<DetectionBatch>(&v, &w).contains("seq 9223372036854775808 is above"));
        v["seq"] = MAX_STORED_INTEGER.into();
        accepted::<DetectionBatch>(&v, &w);
        let mut v = ok.clone();
        v["detections"][0]["track_id"] = u64::MAX.into();
        assert!(refused::<DetectionBatch>(&v, &w).contains("track_id"));
        let mut v = ok.clone();
        v["detections"][0]["class_id"] = u32::MAX.into();
        assert!(refused::<DetectionBatch>(&v, &w).contains("class_id 4294967295 is above"));
        // Compacted counts: what a camera can see in a minute, and not zero.
        for count in [u64::MAX, MAX_COUNT_PER_MINUTE + 1, 0] {
            let mut v = ok.clone();
            v["counts"] = serde_json::json!([{"minute": now, "camera_id": "north", "label": "car", "count": count}]);
            assert!(
                refused::<DetectionBatch>(&v, &w).contains("counts[0]: count"),
                "{count}"
            );
        }
        let mut v = ok.clone();
        v["counts"] = serde_json::json!([{"minute": now, "camera_id": "north", "label": "car", "count": MAX_COUNT_PER_MINUTE}]);
        accepted::<DetectionBatch>(&v, &w);
        // Line counts grow with the time they have been counting.
        let events = |count: u64, since: DateTime<Utc>| {
            serde_json::json!({"v": 1, "node_id": "gate-01", "sent_at": now, "line_counts": [{
                "camera_id": "north", "line": "stop", "label": "car", "direction": "left_to_right",
                "count": count, "since": since}]})
        };
        let hour_ago = now - chrono::Duration::hours(1);
        assert!(
            refused::<EventBatch>(&events(u64::MAX, hour_ago), &w).contains("crossings a second")
        );
        accepted::<EventBatch>(&events(3600, hour_ago), &w);
    }

    #[test]
    fn timestamps_outside_the_window_are_refused_and_old_outboxes_still_deliver() {
        let now: DateTime<Utc> = "2026-12-04T12:00:00Z".parse().expect("now");
        let w = window(now);
        let mut b = sample_batch();
        b.sent_at = now;
        let at = |ts: &str| {
            let mut v = serde_json::to_value(&b).expect("json");
            v["detections"][0]["ts"] = ts.into();
            v
        };
        for (ts, want) in [
            ("9999-12-31T23:59:59Z", "ahead of the aggregator's clock"),
            // The offset pushes it past what RFC 3339 can write.
            (
                "9999-12-31T23:59:59-05:00",
                "ahead of the aggregator's clock",
            ),
            ("2026-12-04T12:02:00Z", "more than 1m ahead"),
            ("1970-01-01T00:00:00Z", "more than 7d old (ingest.max_age)"),
            ("0000-01-01T00:00:00+01:00", "old"),
        ] {
            let why = refused::<DetectionBatch>(&at(ts), &w);
            assert!(
                why.contains(want) && why.starts_with("detections[0]: ts"),
                "{ts}: {why}"
            );
        }
        // Six days offline, a few seconds of skew: delivered.
        for ts in ["2026-11-28T12:00:00Z", "2026-12-04T12:00:30Z"] {
            accepted::<DetectionBatch>(&at(ts), &w);
        }
        // Without a clock only what RFC 3339 cannot write is refused.
        let bytes = serde_json::to_vec(&at("9999-12-31T23:59:59-05:00")).expect("json");
        assert_eq!(
            decode::<DetectionBatch>("gate-01", &bytes, LIMIT).map_err(|e| e.code()),
            Err("invalid_field")
        );
        // Every kind's timestamps go through the same window.
        let hb = serde_json::json!({"v":1,"node_id":"gate-01","ts":"9999-01-01T00:00:00Z","uptime_s":1,
            "cpu_pct":1,"mem_used_bytes":1,"mem_total_bytes":2,"backlog":0,"fps":1,"version":"0.1.0"});
        assert!(refused::<Heartbeat>(&hb, &w).starts_with("ts "));
        let st = serde_json::json!({"v":1,"node_id":"gate-01","online":true,"ts":"1971-01-01T00:00:00Z"});
        assert!(refused::<NodeStatus>(&st, &w).starts_with("ts "));
        let mut v = serde_json::to_value(&b).expect("json");
        v["detections"][0]["ts"] = now.to_rfc3339().into();
        v["sent_at"] = "9999-01-01T00:00:00Z".into();
        assert!(refused::<DetectionBatch>(&v, &w).starts_with("sent_at"));
        // The window itself never reaches past what RFC 3339 writes.
        let wide = TimeWindow::around(now, std::time::Duration::MAX, std::time::Duration::MAX);
        let far = TimeWindow::rfc3339().clamp(now) + chrono::Duration::days(365 * 8000);
        assert!(wide.check("t", far).is_err());
        assert_eq!(
            TimeWindow::rfc3339().clamp(far).to_rfc3339(),
            "9999-12-31T23:59:59.999+00:00"
        );
    }

    #[test]
    fn events_and_snapshots_are_checked_like_detections() {
        let now = Utc::now();
        let w = window(now);
        let event = serde_json::json!({"id": "r-n-1-1", "ts": now, "camera_id": "north", "track_id": 1,
            "track_key": "r-n-1", "kind": "appeared", "label": "car", "score": 0.5, "bbox": [1, 2, 3, 4]});
        let batch = |e: serde_json::Value| serde_json::json!({"v": 1, "node_id": "gate-01", "sent_at": now, "events": [e]});
        accepted::<EventBatch>(&batch(event.clone()), &w);
        for (field, value, want) in [
            (
                "score",
                serde_json::json!(1e39),
                "score inf is outside [0, 1]",
            ),
            ("score", serde_json::json!(-0.1), "score -0.1 is outside"),
            ("bbox", serde_json::json!([10, 0, 5, 1]), "x1 <= x2"),
            ("track_id", serde_json::json!(u64::MAX), "track_id"),
            ("ts", serde_json::json!("9999-01-01T00:00:00Z"), "ts "),
            ("dwell_s", serde_json::json!(-1.0), "dwell_s"),
        ] {
            let mut e = event.clone();
            e[field] = value;
            let why = refused::<EventBatch>(&batch(e), &w);
            assert!(
                why.starts_with("events[0]: ") && why.contains(want),
                "{field}: {why}"
            );
        }
        let snap = serde_json::json!({"v": 1, "node_id": "gate-01", "camera_id": "north", "track_id": 1,
            "track_key": "r-n-1", "event_id": "r-n-1-2", "ts": now, "label": "car", "score": 0.5,
            "bbox": [1, 2, 3, 4], "content_type": "image/jpeg", "jpeg_b64": "/9j/"});
        accepted::<Snapshot>(&snap, &w);
        for (field, value) in [
            ("score", serde_json::json!(1e39)),
            ("bbox", serde_json::json!([5, 5, 1, 1])),
            ("ts", serde_json::json!("1970-01-01T00:00:00Z")),
        ] {
            let mut s = snap.clone();
            s[field] = value;
            refused::<Snapshot>(&s, &w);
        }
    }

    #[test]
    fn floats_that_overflow_and_text_that_no_store_holds_are_refused() {
        let now = Utc::now();
        let w = window(now);
        let hb = serde_json::json!({"v":1,"node_id":"gate-01","ts":now,"uptime_s":1,"cpu_pct":1,
            "mem_used_bytes":1,"mem_total_bytes":2,"backlog":0,"fps":1,"version":"0.1.0","interval_s":10,
            "cameras":[{"camera_id":"c","state":"streaming","fps":1,"frames_total":5}]});
        accepted::<Heartbeat>(&hb, &w);
        for (path, value, want) in [
            (
                "/cameras/0/fps",
                serde_json::json!(1e39),
                "cameras[0]: fps inf",
            ),
            (
                "/cameras/0/frames_total",
                serde_json::json!(u64::MAX),
                "cameras[0]: frames_total",
            ),
            ("/fps", serde_json::json!(-1), "fps -1"),
            ("/uptime_s", serde_json::json!(u64::MAX), "uptime_s"),
            (
                "/interval_s",
                serde_json::json!(u32::MAX),
                "interval_s 4294967295 must be 1..=86400",
            ),
            (
                "/version",
                serde_json::json!("v\u{0}1"),
                "version contains U+0000",
            ),
        ] {
            let mut v = hb.clone();
            *v.pointer_mut(path).expect(path) = value;
            let why = refused::<Heartbeat>(&v, &w);
            assert!(why.contains(want), "{path}: {why}");
        }
        let mut v = hb.clone();
        v["temperature_c"] = serde_json::json!(-300);
        assert!(refused::<Heartbeat>(&v, &w).contains("temperature_c"));
        let mut v = hb.clone();
        v["cameras"][0]["last_error"] = "x".repeat(MAX_TEXT_LEN + 1).into();
        assert!(refused::<Heartbeat>(&v, &w).contains("last_error is 1025 bytes"));
        v["cameras"][0]["last_error"] = "a\u{0}b".into();
        assert_eq!(
            refused::<Heartbeat>(&v, &w),
            "cameras[0].last_error contains U+0000, which no field may hold"
        );
    }

    #[test]
    fn a_thousand_detections_fit_the_default_limit() {
        let mut b = sample_batch();
        b.detections = vec![b.detections[0].clone(); MAX_DETECTIONS_PER_BATCH];
        let raw = encode(&b);
        assert!(
            raw.len() < DEFAULT_MAX_PAYLOAD_BYTES / 4,
            "{} bytes",
            raw.len()
        );
        decode::<DetectionBatch>("gate-01", &raw, LIMIT).expect("1000 detections");
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<DetectionBatch>("n", &bytes, LIMIT);
            let _ = decode::<Heartbeat>("n", &bytes, LIMIT);
            let _ = decode::<NodeStatus>("n", &bytes, LIMIT);
            let _ = decode::<Ack>("n", &bytes, LIMIT);
        }

        #[test]
        fn decoder_never_panics_on_mutated_batches(pos in 0usize..400, byte in any::<u8>()) {
            let mut raw = encode(&sample_batch());
            let i = pos % raw.len();
            raw[i] = byte;
            if let Ok(b) = decode::<DetectionBatch>("gate-01", &raw, LIMIT) {
                // Whatever gets through must still satisfy the invariants.
                prop_assert!(b.check_fields(&TimeWindow::rfc3339()).is_ok());
            }
        }
    }
}
