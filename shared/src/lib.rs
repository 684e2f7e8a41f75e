//! Everything the EdgeQI agent and aggregator must agree on: the protocol v1
//! wire types ([`protocol`]), the MQTT topic tree ([`topic`]), and the config
//! file reader that reports every bad key in one pass ([`config`]).

pub mod config;
#[cfg(feature = "detector")]
pub mod detector;
pub mod endpoint;
pub mod geometry;
pub mod protocol;
pub mod topic;

pub use endpoint::MqttEndpoint;
pub use protocol::{
    Ack, CameraHealth, Detection, DetectionBatch, DetectionCount, Heartbeat, NodeStatus,
    OutboxHealth, RejectReason, RemoteConfig, PROTOCOL_VERSION,
};
pub use topic::{Topic, TopicKind};
