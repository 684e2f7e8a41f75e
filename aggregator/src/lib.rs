//! EdgeQI aggregator: the central side of the system.
//!
//! - [`broker`]: the embedded rumqttd MQTT broker
//! - [`ingest`]: MQTT client that validates, stores and acknowledges
//! - [`store`]: the `Store` trait and its SQLite backend (ledger, detections, registry, dead letters)
//! - [`live`]: the broadcast bus behind the WebSocket feed
//! - [`api`]: REST and WebSocket (axum)
//! - [`config`]: file, environment and flag handling

pub mod api;
pub mod broker;
pub mod config;
pub mod ingest;
pub mod live;
pub mod store;
