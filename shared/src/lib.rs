//! Everything the EdgeQI agent and aggregator must agree on: the protocol v1
//! wire types ([`protocol`]), the MQTT topic tree ([`topic`]), camera
//! registry entries and their validation ([`camera`]), and the config
//! file reader that reports every bad key in one pass ([`config`]).

pub mod camera;
pub mod config;
#[cfg(feature = "detector")]
pub mod detector;
pub mod endpoint;
pub mod geometry;
pub mod protocol;
pub mod topic;

pub use endpoint::MqttEndpoint;
pub use protocol::{
    Ack, CameraHealth, ConfigRejection, Detection, DetectionBatch, DetectionCount, Heartbeat,
    NodeConfig, NodeStatus, OutboxHealth, RejectReason, RemoteConfig, PROTOCOL_VERSION,
};
pub use topic::{Topic, TopicKind};
