//! The agent's configuration: every key, its default, and validation.
//!
//! Values come from, highest precedence first: command-line flags, their
//! `EDGEQI_…` environment variables (clap merges those two), the TOML file,
//! then the defaults below. [`AgentConfig::load`] reads all of them and reports
//! every problem in one [`ConfigErrors`], flags included, so a user fixes a
//! file in one pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeqi_shared::camera;
use edgeqi_shared::config::{ByteSize, ConfigDoc, ConfigErrors, HumanDuration};
use edgeqi_shared::protocol::MAX_DETECTIONS_PER_BATCH;
use edgeqi_shared::topic::is_valid_node_id;

use crate::motion_gate::MotionGateConfig;
use crate::snapshot::SnapshotConfig;
use crate::source::{redact_uri, FrameLimits, RtspTransport, SourceSpec};
use crate::tracker::TrackerConfig;
use crate::zones::{Line, Point, Zone};

/// Where the agent keeps its outbox when nothing else is said.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("./data/agent")
}
pub fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".to_owned()
}
pub const fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
}
pub const fn default_log_format() -> LogFormat {
    LogFormat::Text
}
pub const fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}
pub const fn default_max_packet_size() -> u64 {
    1024 * 1024
}
pub const fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
pub const fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
pub const fn default_outbox_max_bytes() -> u64 {
    64 * 1024 * 1024
}
pub const fn default_batch_max_detections() -> usize {
    500
}
pub const fn default_batch_max_age() -> Duration {
    Duration::from_secs(1)
}
pub const fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}
pub const fn default_max_inflight() -> usize {
    32
}
pub const fn default_motion_threshold() -> u8 {
    25
}
pub const fn default_motion_min_area() -> u32 {
    48
}
pub const fn default_motion_analysis_width() -> u32 {
    320
}
pub const fn default_camera_fps() -> f64 {
    10.0
}
/// `max_frame_width` / `max_frame_height` of a camera, in pixels.
const MAX_FRAME_SIDE_RANGE: std::ops::RangeInclusive<i64> = 16..=65_535;
/// `max_frame_pixels` of a camera: 16x16 up to 16384x16384.
const MAX_FRAME_PIXELS_RANGE: std::ops::RangeInclusive<i64> = 256..=268_435_456;
/// No frame for this long marks a camera stalled and reconnects it.
pub const fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Upper bound for a camera's `fps` and `detect_fps`: the agent samples, it
/// does not record.
pub const MAX_CAMERA_FPS: f64 = camera::MAX_DETECT_FPS;
/// Largest JSON size of one detection we expect (long ids, every field set);
/// used to check that a full batch fits `mqtt.max_packet_size`.
const MAX_DETECTION_JSON_BYTES: u64 = 400;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{other:?} is not a log format (use \"text\" or \"json\")"
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Whether the broker connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttScheme {
    Mqtt,
    Mqtts,
}

/// A parsed `mqtt://[USER[:PASSWORD]@]host:port` or `mqtts://…` URL.
/// `Display` leaves the credentials out: the URL is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: MqttScheme,
    pub host: String,
    pub port: u16,
    pub credentials: Option<edgeqi_shared::endpoint::UrlCredentials>,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let hint = "expected mqtt://[USER:PASSWORD@]HOST:PORT or mqtts://…";
        let shown = edgeqi_shared::endpoint::redact_userinfo(url);
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (MqttScheme::Mqtt, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (MqttScheme::Mqtts, rest)
        } else {
            return Err(format!("{shown:?}: unsupported scheme, {hint}"));
        };
        let (credentials, rest) =
            edgeqi_shared::endpoint::split_userinfo(rest.trim_end_matches('/'), url)?;
        let url = shown;
        if rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "{url:?}: only credentials, host and port are allowed, {hint}"
            ));
        }
        let default_port = match scheme {
            MqttScheme::Mqtt => 1883,
            MqttScheme::Mqtts => 8883,
        };
        // `[::1]:1883` for IPv6 literals.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '[' in IPv6 host, {hint}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: missing host, {hint}"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("{url:?}: port {p:?} is not a number in 1..=65535")),
            },
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            credentials,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            MqttScheme::Mqtt => "mqtt",
            MqttScheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A secret that never shows up in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[mqtt]`: how to reach the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub url: BrokerUrl,
    /// Whether the URL was given (file, flag or environment) rather than
    /// defaulted: `edgeqi-agent process` sends its results only then.
    pub url_given: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM CA certificates trusted for mqtts:// instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub max_packet_size: u64,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// `[outbox]`: the on-disk ledger and how batches leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    pub max_bytes: u64,
    pub batch_max_detections: usize,
    pub batch_max_age: Duration,
    pub ack_timeout: Duration,
    pub max_inflight: usize,
}

/// `[motion]`: the motion-blob detector.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionConfig {
    pub threshold: u8,
    pub min_area: u32,
    pub analysis_width: u32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            threshold: default_motion_threshold(),
            min_area: default_motion_min_area(),
            analysis_width: default_motion_analysis_width(),
        }
    }
}

/// One `[[cameras]]` entry (or one `--source`).
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    pub id: String,
    /// The URI as the user wrote it, for messages and `check-config`; may
    /// hold credentials, so print it through [`redact_uri`].
    pub uri: String,
    pub source: SourceSpec,
    /// Pace of sources that do not pace themselves (synthetic://, images://).
    pub fps: f64,
    /// Inferences per second at most; `None` infers every frame the
    /// detector can keep up with.
    pub detect_fps: Option<f64>,
    pub stall_timeout: Duration,
    /// The largest frame accepted from this camera.
    pub frame_limits: FrameLimits,
    pub zones: Vec<Zone>,
    pub lines: Vec<Line>,
    /// Areas the motion gate ignores.
    pub masks: Vec<Vec<Point>>,
}

/// Everything the agent needs to run, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub model: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub log_format: LogFormat,
    pub mqtt: MqttConfig,
    pub outbox: OutboxConfig,
    pub motion: MotionConfig,
    pub motion_gate: MotionGateConfig,
    pub tracker: TrackerConfig,
    pub snapshots: SnapshotConfig,
    pub cameras: Vec<CameraConfig>,
}

/// Values given on the command line or in `EDGEQI_…` variables; each wins
/// over the file's key of the same meaning.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub mqtt_url: Option<String>,
    pub sources: Vec<String>,
    pub model: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub heartbeat_interval: Option<String>,
    pub log_format: Option<String>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_ca_file: Option<PathBuf>,
}

/// The node id used when none is configured: this host's name, cut down to
/// the characters a topic segment allows.
pub fn default_node_id() -> String {
    let host = sysinfo::System::host_name().unwrap_or_default();
    sanitize_node_id(&host)
}

fn sanitize_node_id(raw: &str) -> String {
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "edgeqi-agent".to_owned()
    } else {
        id
    }
}

fn check_range<T: PartialOrd + fmt::Display + Copy>(
    lo: T,
    hi: T,
    unit: &'static str,
) -> impl FnOnce(&T) -> Result<(), String> {
    move |v| {
        if *v >= lo && *v <= hi {
            Ok(())
        } else {
            Err(format!("{v} is outside {lo}..={hi}{unit}"))
        }
    }
}

fn positive_duration(v: &HumanDuration) -> Result<(), String> {
    if v.0.is_zero() {
        Err("must be longer than 0s".into())
    } else {
        Ok(())
    }
}

const FLAG_NODE_ID: &str = "--node-id / EDGEQI_NODE_ID";
const FLAG_MQTT_URL: &str = "--mqtt-url / EDGEQI_MQTT_URL";
const FLAG_MQTT_PASSWORD: &str = "--mqtt-password / EDGEQI_MQTT_PASSWORD";
const FLAG_SOURCE: &str = "--source / EDGEQI_SOURCE";
const FLAG_MODEL: &str = "--model / EDGEQI_MODEL";
const FLAG_HEARTBEAT: &str = "--heartbeat-interval / EDGEQI_HEARTBEAT_INTERVAL";
const FLAG_LOG_FORMAT: &str = "--log-format / EDGEQI_LOG_FORMAT";

impl AgentConfig {
    /// Reads the file (if any), applies the overrides and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigErrors> {
        let doc = match file {
            Some(path) => ConfigDoc::load(path)?,
            None => ConfigDoc::empty("configuration (no --config file)"),
        };
        Self::from_doc(doc, overrides)
    }

    /// Reads every key of `doc`; problems with the file and the overrides end
    /// up in one list.
    pub fn from_doc(mut doc: ConfigDoc, o: &Overrides) -> Result<Self, ConfigErrors> {
        // Read every file key first, even the overridden ones, so a typo in the
        // file is still reported.
        let file_node_id = doc.get_checked::<String>("node_id", check_node_id);
        let node_id = match &o.node_id {
            Some(id) => {
                if let Err(e) = check_node_id(id) {
                    doc.problem(FLAG_NODE_ID, e);
                }
                id.clone()
            }
            None => file_node_id.unwrap_or_else(default_node_id),
        };

        let file_data_dir = doc.get::<PathBuf>("data_dir");
        let data_dir = o
            .data_dir
            .clone()
            .or(file_data_dir)
            .unwrap_or_else(default_data_dir);

        let file_model = doc.get::<PathBuf>("model");
        let model = match (&o.model, file_model) {
            (Some(m), _) => check_model(&mut doc, FLAG_MODEL, m),
            (None, Some(m)) => check_model(&mut doc, "model", &m),
            (None, None) => None,
        };

        let file_hb = doc.get_checked::<HumanDuration>("heartbeat_interval", positive_duration);
        let heartbeat_interval = match &o.heartbeat_interval {
            Some(s) => match s.parse::<HumanDuration>().and_then(|d| {
                positive_duration(&d)?;
                Ok(d)
            }) {
                Ok(d) => d.0,
                Err(e) => {
                    doc.problem(FLAG_HEARTBEAT, e);
                    default_heartbeat_interval()
                }
            },
            None => file_hb.map_or_else(default_heartbeat_interval, |d| d.0),
        };
        // The heartbeat carries the interval in whole seconds, and the
        // aggregator refuses heartbeats announcing more than a day.
        let key = if o.heartbeat_interval.is_some() {
            FLAG_HEARTBEAT
        } else {
            "heartbeat_interval"
        };
        let most = u64::from(edgeqi_shared::protocol::MAX_HEARTBEAT_INTERVAL_S);
        if heartbeat_interval < Duration::from_secs(1) {
            doc.problem(key, "must be at least 1s");
        } else if heartbeat_interval > Duration::from_secs(most) {
            doc.problem(key, format!("must be at most {most}s (a day)"));
        }

        let file_log = doc.get::<String>("log_format").and_then(|s| {
            LogFormat::parse(&s)
                .map_err(|e| doc.problem("log_format", e))
                .ok()
        });
        let log_format = match &o.log_format {
            Some(s) => LogFormat::parse(s).unwrap_or_else(|e| {
                doc.problem(FLAG_LOG_FORMAT, e);
                default_log_format()
            }),
            None => file_log.unwrap_or_else(default_log_format),
        };

        let mqtt = read_mqtt(&mut doc, o);
        let outbox = read_outbox(&mut doc);
        let motion = read_motion(&mut doc);
        let motion_gate = read_motion_gate(&mut doc);
        let tracker = read_tracker(&mut doc);
        let snapshots = read_snapshots(&mut doc);
        let cameras = read_cameras(&mut doc, o);

        let batch_bytes = outbox.batch_max_detections as u64 * MAX_DETECTION_JSON_BYTES + 4096;
        if mqtt.max_packet_size < batch_bytes {
            doc.problem(
                "mqtt.max_packet_size",
                format!(
                    "{} bytes cannot carry a full batch of {} detections (needs about {batch_bytes}); \
                     raise it or lower outbox.batch_max_detections",
                    mqtt.max_packet_size, outbox.batch_max_detections
                ),
            );
        }
        if mqtt.reconnect_min > mqtt.reconnect_max {
            doc.problem(
                "mqtt.reconnect_min",
                "must not be longer than mqtt.reconnect_max",
            );
        }

        doc.finish()?;
        Ok(Self {
            node_id,
            data_dir,
            model,
            heartbeat_interval,
            log_format,
            mqtt,
            outbox,
            motion,
            motion_gate,
            tracker,
            snapshots,
            cameras,
        })
    }

    /// Where the outbox database lives.
    pub fn outbox_path(&self) -> PathBuf {
        self.data_dir.join("outbox.db")
    }

    /// The effective configuration in the config file's own shape; the
    /// password is redacted.
    pub fn to_toml_table(&self) -> toml::Table {
        use toml::Value;
        let dur = |d: Duration| Value::String(format_duration(d));
        let mut root = toml::Table::new();
        root.insert("node_id".into(), Value::String(self.node_id.clone()));
        root.insert(
            "data_dir".into(),
            Value::String(self.data_dir.display().to_string()),
        );
        if let Some(m) = &self.model {
            root.insert("model".into(), Value::String(m.display().to_string()));
        }
        root.insert("heartbeat_interval".into(), dur(self.heartbeat_interval));
        root.insert(
            "log_format".into(),
            Value::String(self.log_format.as_str().into()),
        );

        let mut mqtt = toml::Table::new();
        mqtt.insert("url".into(), Value::String(self.mqtt.url.to_string()));
        if let Some(u) = &self.mqtt.username {
            mqtt.insert("username".into(), Value::String(u.clone()));
        }
        if self.mqtt.password.is_some() {
            mqtt.insert("password".into(), Value::String("<redacted>".into()));
        }
        if let Some(ca) = &self.mqtt.ca_file {
            mqtt.insert("ca_file".into(), Value::String(ca.display().to_string()));
        }
        mqtt.insert("keep_alive".into(), dur(self.mqtt.keep_alive));
        mqtt.insert(
            "max_packet_size".into(),
            Value::Integer(self.mqtt.max_packet_size as i64),
        );
        mqtt.insert("reconnect_min".into(), dur(self.mqtt.reconnect_min));
        mqtt.insert("reconnect_max".into(), dur(self.mqtt.reconnect_max));
        root.insert("mqtt".into(), Value::Table(mqtt));

        let mut outbox = toml::Table::new();
        outbox.insert(
            "max_bytes".into(),
            Value::Integer(self.outbox.max_bytes as i64),
        );
        outbox.insert(
            "batch_max_detections".into(),
            Value::Integer(self.outbox.batch_max_detections as i64),
        );
        outbox.insert("batch_max_age".into(), dur(self.outbox.batch_max_age));
        outbox.insert("ack_timeout".into(), dur(self.outbox.ack_timeout));
        outbox.insert(
            "max_inflight".into(),
            Value::Integer(self.outbox.max_inflight as i64),
        );
        root.insert("outbox".into(), Value::Table(outbox));

        let mut motion = toml::Table::new();
        motion.insert(
            "threshold".into(),
            Value::Integer(i64::from(self.motion.threshold)),
        );
        motion.insert(
            "min_area".into(),
            Value::Integer(i64::from(self.motion.min_area)),
        );
        motion.insert(
            "analysis_width".into(),
            Value::Integer(i64::from(self.motion.analysis_width)),
        );
        root.insert("motion".into(), Value::Table(motion));

        let g = &self.motion_gate;
        let mut gate = toml::Table::new();
        gate.insert("enabled".into(), Value::Boolean(g.enabled));
        gate.insert(
            "analysis_width".into(),
            Value::Integer(i64::from(g.analysis_width)),
        );
        gate.insert(
            "pixel_threshold".into(),
            Value::Integer(i64::from(g.pixel_threshold)),
        );
        gate.insert(
            "min_changed_fraction".into(),
            Value::Float(f64::from(g.min_changed_fraction)),
        );
        gate.insert(
            "background_rate".into(),
            Value::Float(f64::from(g.background_rate)),
        );
        gate.insert("refresh_interval".into(), dur(g.refresh_interval));
        gate.insert("camera_motion".into(), Value::Boolean(g.camera_motion));
        gate.insert(
            "pan_new_area".into(),
            Value::Float(f64::from(g.pan_new_area)),
        );
        root.insert("motion_gate".into(), Value::Table(gate));

        let t = &self.tracker;
        let mut tracker = toml::Table::new();
        tracker.insert(
            "iou_threshold".into(),
            Value::Float(f64::from(t.iou_threshold)),
        );
        tracker.insert("high_score".into(), Value::Float(f64::from(t.high_score)));
        tracker.insert("low_score".into(), Value::Float(f64::from(t.low_score)));
        tracker.insert("min_hits".into(), Value::Integer(i64::from(t.min_hits)));
        tracker.insert("max_age".into(), dur(t.max_age));
        root.insert("tracker".into(), Value::Table(tracker));

        let sn = &self.snapshots;
        let mut snapshots = toml::Table::new();
        snapshots.insert("enabled".into(), Value::Boolean(sn.enabled));
        snapshots.insert("full_frame".into(), Value::Boolean(sn.full_frame));
        snapshots.insert(
            "jpeg_quality".into(),
            Value::Integer(i64::from(sn.jpeg_quality)),
        );
        snapshots.insert("max_side".into(), Value::Integer(i64::from(sn.max_side)));
        root.insert("snapshots".into(), Value::Table(snapshots));

        let point = |p: &Point| {
            Value::Array(vec![
                Value::Float(f64::from(p[0])),
                Value::Float(f64::from(p[1])),
            ])
        };
        let cameras = self
            .cameras
            .iter()
            .map(|c| {
                let mut t = toml::Table::new();
                t.insert("id".into(), Value::String(c.id.clone()));
                t.insert("uri".into(), Value::String(redact_uri(&c.uri)));
                t.insert("fps".into(), Value::Float(c.fps));
                if let Some(d) = c.detect_fps {
                    t.insert("detect_fps".into(), Value::Float(d));
                }
                t.insert("stall_timeout".into(), dur(c.stall_timeout));
                t.insert(
                    "max_frame_width".into(),
                    Value::Integer(c.frame_limits.max_width.into()),
                );
                t.insert(
                    "max_frame_height".into(),
                    Value::Integer(c.frame_limits.max_height.into()),
                );
                t.insert(
                    "max_frame_pixels".into(),
                    Value::Integer(c.frame_limits.max_pixels as i64),
                );
                if let SourceSpec::Rtsp {
                    username,
                    password,
                    transport,
                    ..
                } = &c.source
                {
                    if let Some(u) = username {
                        t.insert("username".into(), Value::String(u.clone()));
                    }
                    if password.is_some() {
                        t.insert("password".into(), Value::String("<redacted>".into()));
                    }
                    t.insert("transport".into(), Value::String(transport.as_str().into()));
                }
                let zones: Vec<Value> = c
                    .zones
                    .iter()
                    .map(|z| {
                        let mut zt = toml::Table::new();
                        zt.insert("id".into(), Value::String(z.id.clone()));
                        zt.insert(
                            "polygon".into(),
                            Value::Array(z.polygon.iter().map(point).collect()),
                        );
                        Value::Table(zt)
                    })
                    .collect();
                if !zones.is_empty() {
                    t.insert("zones".into(), Value::Array(zones));
                }
                let lines: Vec<Value> = c
                    .lines
                    .iter()
                    .map(|l| {
                        let mut lt = toml::Table::new();
                        lt.insert("id".into(), Value::String(l.id.clone()));
                        lt.insert("from".into(), point(&l.from));
                        lt.insert("to".into(), point(&l.to));
                        Value::Table(lt)
                    })
                    .collect();
                if !lines.is_empty() {
                    t.insert("lines".into(), Value::Array(lines));
                }
                if !c.masks.is_empty() {
                    t.insert(
                        "masks".into(),
                        Value::Array(
                            c.masks
                                .iter()
                                .map(|m| Value::Array(m.iter().map(point).collect()))
                                .collect(),
                        ),
                    );
                }
                Value::Table(t)
            })
            .collect();
        root.insert("cameras".into(), Value::Array(cameras));
        root
    }
}

/// `10s`, `500ms`: the shortest exact form the config reader accepts back.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn check_node_id(id: &String) -> Result<(), String> {
    if is_valid_node_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid node id: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    }
}

fn check_model(doc: &mut ConfigDoc, key: &str, path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        Some(path.to_owned())
    } else {
        doc.problem(
            key,
            format!(
                "model file {} does not exist (see models/README.md, or leave it out to use the motion detector)",
                path.display()
            ),
        );
        None
    }
}

fn read_mqtt(doc: &mut ConfigDoc, o: &Overrides) -> MqttConfig {
    let file_url = doc.get::<String>("mqtt.url").and_then(|u| {
        BrokerUrl::parse(&u)
            .map_err(|e| doc.problem("mqtt.url", e))
            .ok()
    });
    let url_given = o.mqtt_url.is_some() || file_url.is_some();
    let url = match &o.mqtt_url {
        Some(u) => BrokerUrl::parse(u).unwrap_or_else(|e| {
            doc.problem(FLAG_MQTT_URL, e);
            fallback_url()
        }),
        None => file_url.unwrap_or_else(fallback_url),
    };
    // Flags win over credentials in the URL, which win over the file's keys.
    let file_username = doc.get::<String>("mqtt.username");
    let file_password = doc.get::<String>("mqtt.password").map(Secret);
    if file_password.is_some() && file_username.is_none() {
        doc.problem("mqtt.password", "is set but mqtt.username is not");
    }
    let (mut username, mut password) = match &url.credentials {
        Some(c) => (Some(c.username.clone()), c.password.clone().map(Secret)),
        None => (file_username, file_password),
    };
    if let Some(u) = &o.mqtt_username {
        username = Some(u.clone());
    }
    if let Some(p) = &o.mqtt_password {
        password = Some(Secret(p.clone()));
    }
    if password.is_some() && username.is_none() {
        doc.problem(
            FLAG_MQTT_PASSWORD,
            "is set but no user name is (--mqtt-username)",
        );
    }
    let file_ca = doc.get::<String>("mqtt.ca_file").map(PathBuf::from);
    let ca_file = o.mqtt_ca_file.clone().or(file_ca);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            doc.problem("mqtt.ca_file", format!("{} does not exist", ca.display()));
        } else if url.scheme == MqttScheme::Mqtt {
            doc.problem(
                "mqtt.ca_file",
                "is only used with an mqtts:// url; the url is mqtt://",
            );
        }
    }
    let keep_alive = doc
        .get_checked::<HumanDuration>("mqtt.keep_alive", |d| {
            if d.0 >= Duration::from_secs(5) && d.0 <= Duration::from_secs(65535) {
                Ok(())
            } else {
                Err("must be between 5s and 65535s".into())
            }
        })
        .map_or_else(default_keep_alive, |d| d.0);
    let max_packet_size = doc
        .get_checked::<ByteSize>("mqtt.max_packet_size", |b| {
            check_range(1024, 256 * 1024 * 1024, " bytes")(&b.0)
        })
        .map_or(default_max_packet_size(), |b| b.0);
    let reconnect_min = doc
        .get_checked::<HumanDuration>("mqtt.reconnect_min", positive_duration)
        .map_or_else(default_reconnect_min, |d| d.0);
    let reconnect_max = doc
        .get_checked::<HumanDuration>("mqtt.reconnect_max", positive_duration)
        .map_or_else(default_reconnect_max, |d| d.0);
    MqttConfig {
        url,
        url_given,
        username,
        password,
        ca_file,
        keep_alive,
        max_packet_size,
        reconnect_min,
        reconnect_max,
    }
}

fn fallback_url() -> BrokerUrl {
    // The default is a constant we control; parsing it cannot fail, but stay
    // panic-free anyway.
    BrokerUrl::parse(&default_mqtt_url()).unwrap_or(BrokerUrl {
        scheme: MqttScheme::Mqtt,
        host: "127.0.0.1".into(),
        port: 1883,
        credentials: None,
    })
}

fn read_outbox(doc: &mut ConfigDoc) -> OutboxConfig {
    let max_bytes = doc
        .get_checked::<ByteSize>("outbox.max_bytes", |b| {
            check_range(64 * 1024, u64::MAX, " bytes")(&b.0)
        })
        .map_or(default_outbox_max_bytes(), |b| b.0);
    let batch_max_detections = doc
        .get_checked::<usize>(
            "outbox.batch_max_detections",
            check_range(1, MAX_DETECTIONS_PER_BATCH, " (protocol limit)"),
        )
        .unwrap_or(default_batch_max_detections());
    let batch_max_age = doc
        .get_checked::<HumanDuration>("outbox.batch_max_age", positive_duration)
        .map_or_else(default_batch_max_age, |d| d.0);
    let ack_timeout = doc
        .get_checked::<HumanDuration>("outbox.ack_timeout", positive_duration)
        .map_or_else(default_ack_timeout, |d| d.0);
    // rumqttc's own in-flight window is a u16; keep well inside it.
    let max_inflight = doc
        .get_checked::<usize>("outbox.max_inflight", check_range(1, 1000, ""))
        .unwrap_or(default_max_inflight());
    OutboxConfig {
        max_bytes,
        batch_max_detections,
        batch_max_age,
        ack_timeout,
        max_inflight,
    }
}

fn read_motion(doc: &mut ConfigDoc) -> MotionConfig {
    let threshold = doc
        .get_checked::<u8>("motion.threshold", check_range(1, 255, ""))
        .unwrap_or(default_motion_threshold());
    let min_area = doc
        .get_checked::<u32>("motion.min_area", check_range(1, 1_000_000, " pixels"))
        .unwrap_or(default_motion_min_area());
    let analysis_width = doc
        .get_checked::<u32>("motion.analysis_width", check_range(16, 4096, " pixels"))
        .unwrap_or(default_motion_analysis_width());
    MotionConfig {
        threshold,
        min_area,
        analysis_width,
    }
}

fn read_motion_gate(doc: &mut ConfigDoc) -> MotionGateConfig {
    let d = MotionGateConfig::default();
    MotionGateConfig {
        enabled: doc.get::<bool>("motion_gate.enabled").unwrap_or(d.enabled),
        analysis_width: doc
            .get_checked::<u32>(
                "motion_gate.analysis_width",
                check_range(16, 1920, " pixels"),
            )
            .unwrap_or(d.analysis_width),
        pixel_threshold: doc
            .get_checked::<u8>("motion_gate.pixel_threshold", check_range(1, 255, ""))
            .unwrap_or(d.pixel_threshold),
        min_changed_fraction: doc
            .get_checked::<f32>(
                "motion_gate.min_changed_fraction",
                check_range(0.0, 1.0, ""),
            )
            .unwrap_or(d.min_changed_fraction),
        background_rate: doc
            .get_checked::<f32>("motion_gate.background_rate", check_range(0.001, 1.0, ""))
            .unwrap_or(d.background_rate),
        refresh_interval: doc
            .get_checked::<HumanDuration>("motion_gate.refresh_interval", positive_duration)
            .map_or(d.refresh_interval, |v| v.0),
        camera_motion: doc
            .get::<bool>("motion_gate.camera_motion")
            .unwrap_or(d.camera_motion),
        pan_new_area: doc
            .get_checked::<f32>("motion_gate.pan_new_area", check_range(0.0, 1.0, ""))
            .unwrap_or(d.pan_new_area),
    }
}

fn read_tracker(doc: &mut ConfigDoc) -> TrackerConfig {
    let d = TrackerConfig::default();
    let t = TrackerConfig {
        iou_threshold: doc
            .get_checked::<f32>("tracker.iou_threshold", check_range(0.01, 1.0, ""))
            .unwrap_or(d.iou_threshold),
        high_score: doc
            .get_checked::<f32>("tracker.high_score", check_range(0.0, 1.0, ""))
            .unwrap_or(d.high_score),
        low_score: doc
            .get_checked::<f32>("tracker.low_score", check_range(0.0, 1.0, ""))
            .unwrap_or(d.low_score),
        min_hits: doc
            .get_checked::<u32>("tracker.min_hits", check_range(1, 100, " frames"))
            .unwrap_or(d.min_hits),
        max_age: doc
            .get_checked::<HumanDuration>("tracker.max_age", positive_duration)
            .map_or(d.max_age, |v| v.0),
    };
    if t.low_score > t.high_score {
        doc.problem("tracker.low_score", "must not be above tracker.high_score");
    }
    t
}

fn read_snapshots(doc: &mut ConfigDoc) -> SnapshotConfig {
    let d = SnapshotConfig::default();
    SnapshotConfig {
        enabled: doc.get::<bool>("snapshots.enabled").unwrap_or(d.enabled),
        full_frame: doc
            .get::<bool>("snapshots.full_frame")
            .unwrap_or(d.full_frame),
        jpeg_quality: doc
            .get_checked::<u8>("snapshots.jpeg_quality", check_range(1, 100, ""))
            .unwrap_or(d.jpeg_quality),
        max_side: doc
            .get_checked::<u32>("snapshots.max_side", check_range(16, 4096, " pixels"))
            .unwrap_or(d.max_side),
    }
}

/// Camera keys beyond id, uri and fps, read from one `[[cameras]]` table.
#[derive(Debug, Default)]
struct CameraExtras {
    detect_fps: Option<f64>,
    stall_timeout: Option<Duration>,
    frame_limits: FrameLimits,
    username: Option<String>,
    password: Option<Secret>,
    transport: Option<RtspTransport>,
    zones: Vec<Zone>,
    lines: Vec<Line>,
    masks: Vec<Vec<Point>>,
}

/// A zone as the file writes it; unknown keys are typos, so refused. The
/// checks are the shared ones ([`edgeqi_shared::camera`]) that the
/// aggregator's registry runs too.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneToml {
    id: String,
    polygon: Vec<camera::Point>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LineToml {
    id: String,
    from: camera::Point,
    to: camera::Point,
}

fn normalised(p: &Point) -> bool {
    p.iter().all(|c| (0.0..=1.0).contains(c))
}

fn read_camera_extras(
    doc: &mut ConfigDoc,
    table: &toml::Table,
    key: &dyn Fn(&str) -> String,
) -> CameraExtras {
    let mut x = CameraExtras::default();
    let number = |v: &toml::Value| match v {
        toml::Value::Integer(n) => Some(*n as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    if let Some(v) = table.get("detect_fps") {
        match number(v) {
            Some(f) if camera::check_detect_fps("detect_fps", f).is_none() => {
                x.detect_fps = Some(f)
            }
            _ => doc.problem(
                &key("detect_fps"),
                format!("must be a number in (0, {MAX_CAMERA_FPS}]"),
            ),
        }
    }
    if let Some(v) = table.get("stall_timeout") {
        match v.as_str().map(str::parse::<HumanDuration>) {
            Some(Ok(d)) if d.0 >= Duration::from_secs(1) => x.stall_timeout = Some(d.0),
            _ => doc.problem(
                &key("stall_timeout"),
                "must be a duration of at least 1s, e.g. \"10s\"",
            ),
        }
    }
    let mut limit = |name: &str, range: std::ops::RangeInclusive<i64>, unit: &str| {
        let v = table.get(name)?;
        match v.as_integer().filter(|n| range.contains(n)) {
            Some(n) => Some(n),
            None => {
                doc.problem(
                    &key(name),
                    format!(
                        "must be a whole number of {unit} in {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    };
    let d = FrameLimits::default();
    x.frame_limits = FrameLimits {
        max_width: limit("max_frame_width", MAX_FRAME_SIDE_RANGE, "pixels")
            .map_or(d.max_width, |n| n as u32),
        max_height: limit("max_frame_height", MAX_FRAME_SIDE_RANGE, "pixels")
            .map_or(d.max_height, |n| n as u32),
        max_pixels: limit("max_frame_pixels", MAX_FRAME_PIXELS_RANGE, "pixels")
            .map_or(d.max_pixels, |n| n as u64),
    };
    if let Some(v) = table.get("username") {
        match v.as_str() {
            Some(u) => x.username = Some(u.to_owned()),
            None => doc.problem(&key("username"), "expected a string"),
        }
    }
    if let Some(v) = table.get("password") {
        match v.as_str() {
            Some(p) => x.password = Some(Secret(p.to_owned())),
            None => doc.problem(&key("password"), "expected a string"),
        }
    }
    if let Some(v) = table.get("transport") {
        match v.as_str().map(RtspTransport::parse) {
            Some(Ok(t)) => x.transport = Some(t),
            Some(Err(e)) => doc.problem(&key("transport"), e),
            None => doc.problem(&key("transport"), "expected \"tcp\", \"udp\" or \"auto\""),
        }
    }
    if let Some(v) = table.get("zones") {
        match v.clone().try_into::<Vec<ZoneToml>>() {
            Ok(zones) => {
                let specs: Vec<camera::ZoneSpec> = zones
                    .into_iter()
                    .map(|z| camera::ZoneSpec {
                        id: z.id,
                        polygon: z.polygon,
                    })
                    .collect();
                let problems = camera::check_zones(&key(""), &specs);
                if problems.is_empty() {
                    x.zones = specs.iter().map(Zone::from).collect();
                }
                for p in problems {
                    doc.problem(&p.field, p.message);
                }
            }
            Err(e) => doc.problem(
                &key("zones"),
                format!(
                    "expected [{{ id = \"…\", polygon = [[x, y], …] }}]: {}",
                    e.message()
                ),
            ),
        }
    }
    if let Some(v) = table.get("lines") {
        match v.clone().try_into::<Vec<LineToml>>() {
            Ok(lines) => {
                let specs: Vec<camera::LineSpec> = lines
                    .into_iter()
                    .map(|l| camera::LineSpec {
                        id: l.id,
                        from: l.from,
                        to: l.to,
                    })
                    .collect();
                let problems = camera::check_lines(&key(""), &specs);
                if problems.is_empty() {
                    x.lines = specs.iter().map(Line::from).collect();
                }
                for p in problems {
                    doc.problem(&p.field, p.message);
                }
            }
            Err(e) => doc.problem(
                &key("lines"),
                format!(
                    "expected [{{ id = \"…\", from = [x, y], to = [x, y] }}]: {}",
                    e.message()
                ),
            ),
        }
    }
    if let Some(v) = table.get("masks") {
        match v.clone().try_into::<Vec<Vec<Point>>>() {
            Ok(masks)
                if masks
                    .iter()
                    .all(|m| m.len() >= 3 && m.iter().all(normalised)) =>
            {
                x.masks = masks
            }
            _ => doc.problem(
                &key("masks"),
                "expected polygons [[[x, y], [x, y], [x, y]], …] with coordinates in 0..=1",
            ),
        }
    }
    x
}

/// Camera keys a `[[cameras]]` table may hold.
const CAMERA_KEYS: &[&str] = &[
    "id",
    "uri",
    "fps",
    "detect_fps",
    "stall_timeout",
    "max_frame_width",
    "max_frame_height",
    "max_frame_pixels",
    "username",
    "password",
    "transport",
    "zones",
    "lines",
    "masks",
];

/// `[[cameras]]` from the file, replaced by `--source` when given.
fn read_cameras(doc: &mut ConfigDoc, o: &Overrides) -> Vec<CameraConfig> {
    let raw = doc.get::<Vec<toml::Table>>("cameras").unwrap_or_default();
    let mut from_file = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let key = |k: &str| format!("cameras[{i}].{k}");
        for k in table.keys() {
            if !CAMERA_KEYS.contains(&k.as_str()) {
                doc.problem(
                    &key(k),
                    format!("unknown key (known here: {})", CAMERA_KEYS.join(", ")),
                );
            }
        }
        let id = match table.get("id") {
            None => format!("cam{i}"),
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                doc.problem(&key("id"), "expected a string");
                continue;
            }
        };
        let uri = match table.get("uri") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                doc.problem(&key("uri"), "expected a string such as \"synthetic://\"");
                continue;
            }
            None => {
                doc.problem(&key("uri"), "missing: every camera needs a uri");
                continue;
            }
        };
        let fps = match table.get("fps") {
            None => None,
            Some(toml::Value::Integer(n)) => Some(*n as f64),
            Some(toml::Value::Float(f)) => Some(*f),
            Some(_) => {
                doc.problem(&key("fps"), "expected a number of frames per second");
                None
            }
        };
        let extras = read_camera_extras(doc, table, &key);
        from_file.push((Some(format!("cameras[{i}]")), id, uri, fps, extras));
    }

    let entries = if o.sources.is_empty() {
        from_file
    } else {
        o.sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // `ID=URI`; a bare URI (whose scheme has no '=' before "://") gets camN.
                let (id, uri) = match s.split_once('=') {
                    Some((id, uri)) if !id.contains("://") => (id.to_owned(), uri.to_owned()),
                    _ => (format!("cam{i}"), s.clone()),
                };
                (None, id, uri, None, CameraExtras::default())
            })
            .collect()
    };

    let mut cameras: Vec<CameraConfig> = Vec::new();
    let mut seen_ids: Vec<String> = Vec::new();
    for (prefix, id, uri, fps, extras) in entries {
        // File problems name the key; flag problems name the flag.
        let key = |k: &str| match &prefix {
            Some(p) => format!("{p}.{k}"),
            None => FLAG_SOURCE.to_owned(),
        };
        if !is_valid_node_id(&id) {
            doc.problem(
                &key("id"),
                format!("camera id {id:?} is not valid: use 1 to 64 of A-Z a-z 0-9 _ -"),
            );
            continue;
        }
        if seen_ids.contains(&id) {
            doc.problem(
                &key("id"),
                format!("camera id {id:?} is used twice; give each camera its own id"),
            );
            continue;
        }
        seen_ids.push(id.clone());
        let (mut source, uri_fps) = match SourceSpec::parse(&uri) {
            Ok(v) => v,
            Err(e) => {
                doc.problem(&key("uri"), format!("camera {id:?}: {e}"));
                continue;
            }
        };
        // Credentials and transport from the config win over the URI's.
        match &mut source {
            SourceSpec::Rtsp {
                username,
                password,
                transport,
                ..
            } => {
                if extras.username.is_some() {
                    username.clone_from(&extras.username);
                }
                if extras.password.is_some() {
                    password.clone_from(&extras.password);
                }
                if let Some(t) = extras.transport {
                    *transport = t;
                }
            }
            _ => {
                if extras.username.is_some()
                    || extras.password.is_some()
                    || extras.transport.is_some()
                {
                    doc.problem(
                        &key("username"),
                        format!(
                            "camera {id:?}: username, password and transport apply to rtsp:// only"
                        ),
                    );
                }
            }
        }
        let fps = fps.or(uri_fps).unwrap_or(default_camera_fps());
        if !(fps > 0.0 && fps <= MAX_CAMERA_FPS) {
            doc.problem(
                &key("fps"),
                format!("camera {id:?}: fps {fps} is outside (0, {MAX_CAMERA_FPS}]"),
            );
            continue;
        }
        cameras.push(CameraConfig {
            id,
            uri,
            source,
            fps,
            detect_fps: extras.detect_fps,
            stall_timeout: extras.stall_timeout.unwrap_or(default_stall_timeout()),
            frame_limits: extras.frame_limits,
            zones: extras.zones,
            lines: extras.lines,
            masks: extras.masks,
        });
    }
    cameras
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, o: &Overrides) -> Result<AgentConfig, ConfigErrors> {
        let doc = ConfigDoc::parse(text, "agent.toml").expect("valid toml");
        AgentConfig::from_doc(doc, o)
    }

    /// The effective config read back as a file: equal to the original,
    /// except that its broker URL is now written down (`url_given`).
    fn read_back(mut back: AgentConfig, original: &AgentConfig) -> AgentConfig {
        assert!(back.mqtt.url_given, "the printed config names its broker");
        back.mqtt.url_given = original.mqtt.url_given;
        back
    }

    fn keys(err: &ConfigErrors) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn defaults_when_empty() {
        let c = parse("", &Overrides::default()).expect("defaults are valid");
        assert!(is_valid_node_id(&c.node_id), "{}", c.node_id);
        assert_eq!(c.data_dir, PathBuf::from("./data/agent"));
        assert_eq!(c.mqtt.url.to_string(), "mqtt://127.0.0.1:1883");
        assert!(!c.mqtt.url_given, "the default is not a configured broker");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(15));
        assert_eq!(c.mqtt.max_packet_size, 1 << 20);
        assert_eq!(c.outbox.max_bytes, 64 << 20);
        assert_eq!(c.outbox.batch_max_detections, 500);
        assert_eq!(c.outbox.max_inflight, 32);
        assert_eq!(c.motion, MotionConfig::default());
        assert!(c.cameras.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            r#"
node_id = "bad id"
heartbeat_interval = "soon"
[mqtt]
url = "http://x"
[outbox]
batch_max_detections = 5000
[motion]
threshold = 0
[[cameras]]
id = "a"
uri = "rtsp://cam/stream?transport=quic"
[[cameras]]
id = "b"
uri = "synthetic://"
fps = 0
[[cameras]]
id = "b"
uri = "synthetic://"
colour = "red"
"#,
            &Overrides {
                mqtt_url: Some("ftp://nope".into()),
                ..Overrides::default()
            },
        )
        .expect_err("many problems");
        let k = keys(&err);
        for want in [
            "node_id",
            "heartbeat_interval",
            "mqtt.url",
            FLAG_MQTT_URL,
            "outbox.batch_max_detections",
            "motion.threshold",
            "cameras[0].uri",
            "cameras[1].fps",
            "cameras[2].colour",
            "cameras[2].id",
        ] {
            assert!(k.contains(&want), "missing {want} in {k:?}\n{err}");
        }
        let text = err.to_string();
        assert!(text.contains("transport"), "{text}");
        assert!(text.contains("used twice"), "{text}");
    }

    #[test]
    fn flags_override_file_and_replace_cameras() {
        let c = parse(
            r#"
node_id = "from-file"
[mqtt]
url = "mqtt://file:1883"
[[cameras]]
id = "filecam"
uri = "synthetic://"
"#,
            &Overrides {
                node_id: Some("from-flag".into()),
                mqtt_url: Some("mqtts://broker.example:8883".into()),
                sources: vec![
                    "synthetic://?objects=2".into(),
                    "gate=synthetic://?seed=3&fps=5".into(),
                ],
                heartbeat_interval: Some("2s".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(c.mqtt.url.scheme, MqttScheme::Mqtts);
        assert_eq!(c.mqtt.url.host, "broker.example");
        assert!(c.mqtt.url_given);
        let from_file = parse(
            "[mqtt]\nurl = \"mqtt://file:1883\"\n",
            &Overrides::default(),
        )
        .expect("valid");
        assert!(from_file.mqtt.url_given, "a URL in the file counts too");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        let ids: Vec<&str> = c.cameras.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["cam0", "gate"]);
        assert_eq!(c.cameras[1].fps, 5.0);
    }

    #[test]
    fn a_heartbeat_interval_the_aggregator_would_refuse_is_a_problem() {
        for (file, flag) in [("\"2d\"", None), ("\"10s\"", Some("86401s"))] {
            let err = parse(
                &format!("heartbeat_interval = {file}\n"),
                &Overrides {
                    heartbeat_interval: flag.map(Into::into),
                    ..Overrides::default()
                },
            )
            .expect_err("more than a day");
            assert!(err.to_string().contains("must be at most 86400s"), "{err}");
        }
        let c = parse("heartbeat_interval = \"1d\"\n", &Overrides::default()).expect("a day");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(86_400));
    }

    #[test]
    fn flag_problems_join_file_problems() {
        let err = parse(
            "[outbox]\nmax_inflight = 0\n",
            &Overrides {
                node_id: Some("no/slash".into()),
                model: Some("/nonexistent/model.safetensors".into()),
                sources: vec!["file:///tmp/x.mp4?loop=maybe".into()],
                log_format: Some("xml".into()),
                ..Overrides::default()
            },
        )
        .expect_err("bad");
        assert_eq!(
            keys(&err),
            [
                FLAG_NODE_ID,
                FLAG_MODEL,
                FLAG_LOG_FORMAT,
                "outbox.max_inflight",
                FLAG_SOURCE
            ]
        );
    }

    #[test]
    fn camera_analytics_keys_and_rtsp_credentials() {
        let c = parse(
            r#"
[motion_gate]
refresh_interval = "2s"
[tracker]
max_age = "4s"
[snapshots]
full_frame = true
[[cameras]]
id = "north"
uri = "rtsp://192.0.2.7/live"
username = "viewer"
password = "hunter2"
transport = "udp"
detect_fps = 5
stall_timeout = "4s"
max_frame_width = 3840
max_frame_height = 2160
max_frame_pixels = 8294400
zones = [{ id = "crossing", polygon = [[0.1, 0.5], [0.9, 0.5], [0.9, 0.9], [0.1, 0.9]] }]
lines = [{ id = "stop-line", from = [0.0, 0.6], to = [1.0, 0.6] }]
masks = [[[0.0, 0.0], [1.0, 0.0], [1.0, 0.1]]]
"#,
            &Overrides::default(),
        )
        .expect("valid");
        let cam = &c.cameras[0];
        assert_eq!(cam.detect_fps, Some(5.0));
        assert_eq!(cam.stall_timeout, Duration::from_secs(4));
        assert_eq!(
            cam.frame_limits,
            FrameLimits {
                max_width: 3840,
                max_height: 2160,
                max_pixels: 8_294_400
            }
        );
        assert_eq!(cam.zones[0].id, "crossing");
        assert_eq!(cam.lines[0].to, [1.0, 0.6]);
        assert_eq!(cam.masks.len(), 1);
        assert_eq!(c.motion_gate.refresh_interval, Duration::from_secs(2));
        assert_eq!(c.tracker.max_age, Duration::from_secs(4));
        assert!(c.snapshots.full_frame);
        let SourceSpec::Rtsp {
            username,
            password,
            transport,
            ..
        } = &cam.source
        else {
            panic!("rtsp")
        };
        assert_eq!(username.as_deref(), Some("viewer"));
        assert_eq!(password.as_ref().map(|p| p.0.as_str()), Some("hunter2"));
        assert_eq!(*transport, RtspTransport::Udp);
        let printed = toml::to_string(&c.to_toml_table()).expect("toml");
        assert!(!printed.contains("hunter2") && !format!("{c:?}").contains("hunter2"));
        let back = parse(
            &printed.replace("<redacted>", "hunter2"),
            &Overrides::default(),
        )
        .expect("reads back");
        assert_eq!(read_back(back, &c), c);

        let err = parse(
            r#"
[[cameras]]
uri = "synthetic://"
username = "x"
detect_fps = 0
max_frame_width = 8
max_frame_height = "big"
max_frame_pixels = 1e12
zones = [{ id = "z", polygon = [[0.1, 0.1], [2.0, 0.1]] }]
lines = [{ id = "l", from = [0.5, 0.5], to = [0.5, 0.5] }]
"#,
            &Overrides::default(),
        )
        .expect_err("bad");
        let k = keys(&err);
        for want in [
            "cameras[0].detect_fps",
            "cameras[0].zones[0].polygon",
            "cameras[0].lines[0]",
            "cameras[0].username",
            "cameras[0].max_frame_width",
            "cameras[0].max_frame_height",
            "cameras[0].max_frame_pixels",
        ] {
            assert!(k.contains(&want), "missing {want} in {k:?}");
        }
    }

    #[test]
    fn broker_urls() {
        let u = BrokerUrl::parse("mqtt://localhost").expect("default port");
        assert_eq!((u.host.as_str(), u.port), ("localhost", 1883));
        let u = BrokerUrl::parse("mqtts://[::1]:9000").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.to_string(), "mqtts://[::1]:9000");
        for bad in [
            "tcp://x:1",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://@h:1",
            "mqtt://h:1/path",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_from_flags_url_and_file_never_shown() {
        let file = "[mqtt]\nurl = \"mqtt://node-a:url%2Fpass@h:1\"\nusername = \"file-user\"\npassword = \"file-pass\"\n";
        let c = parse(file, &Overrides::default()).expect("valid");
        assert_eq!(c.mqtt.username.as_deref(), Some("node-a"));
        assert_eq!(
            c.mqtt.password.as_ref().map(|p| p.0.as_str()),
            Some("url/pass")
        );
        assert_eq!(c.mqtt.url.to_string(), "mqtt://h:1");
        let shown = format!("{c:?}{}", c.to_toml_table());
        assert!(
            !shown.contains("url/pass") && !shown.contains("url%2Fpass"),
            "{shown}"
        );

        let c = parse(
            file,
            &Overrides {
                mqtt_username: Some("flag-user".into()),
                mqtt_password: Some("flag-pass".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.mqtt.username.as_deref(), Some("flag-user"));
        assert_eq!(
            c.mqtt.password.as_ref().map(|p| p.0.as_str()),
            Some("flag-pass")
        );

        let err = parse(
            "[mqtt]\nca_file = \"/nonexistent/ca.pem\"\n",
            &Overrides::default(),
        )
        .expect_err("missing CA file");
        assert!(err.to_string().contains("mqtt.ca_file"), "{err}");
    }

    #[test]
    fn password_is_redacted() {
        let c = parse(
            "[mqtt]\nusername = \"u\"\npassword = \"hunter2\"\n",
            &Overrides::default(),
        )
        .expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!toml::to_string(&c.to_toml_table())
            .expect("toml")
            .contains("hunter2"));
    }

    #[test]
    fn effective_config_reads_back() {
        let c = parse(
            "[outbox]\nbatch_max_age = \"250ms\"\n[[cameras]]\nuri = \"synthetic://\"\n",
            &Overrides::default(),
        )
        .expect("valid");
        let text = toml::to_string(&c.to_toml_table()).expect("toml");
        let back = parse(&text, &Overrides::default()).expect("effective config is valid input");
        assert_eq!(read_back(back, &c), c);
    }

    #[test]
    fn hostnames_become_node_ids() {
        assert_eq!(sanitize_node_id("edge.box.local"), "edge-box-local");
        assert_eq!(sanitize_node_id(""), "edgeqi-agent");
        assert_eq!(sanitize_node_id(&"x".repeat(80)).len(), 64);
    }
}
