//! EdgeQI aggregator: the central side of the system.
//!
//! - [`broker`]: the embedded rumqttd MQTT broker behind its gateway (node logins, topic ACL, TLS)
//! - [`ingest`]: MQTT client that validates, stores and acknowledges
//! - [`store`]: the `Store` trait and its SQLite backend (ledger, detections, registry, dead letters)
//! - [`events`]: tracker events, line counts and snapshots from agents
//! - [`incidents`]: incidents, SLAs, citizen reports, area scores
//! - [`live`]: the broadcast bus behind the WebSocket feed
//! - [`reviews`]: human review of detections and reports, YOLO dataset export
//! - [`alerts`]: alert rules and watchlists, their evaluator and webhooks
//! - [`accounts`]: users, roles, tenants, API keys, audit log, per-node MQTT credentials
//! - [`registry`]: cameras per node and the versioned remote config pushed to agents
//! - [`api`]: REST and WebSocket (axum)
//! - [`config`]: file, environment and flag handling
//! - [`fd_budget`]: the descriptor limit, raised and checked against the connection caps

pub mod accounts;
pub mod alerts;
pub mod api;
pub mod broker;
pub mod config;
pub mod events;
pub mod fd_budget;
pub mod http_server;
pub mod incidents;
pub mod ingest;
pub mod live;
pub mod registry;
pub mod reviews;
pub mod store;
