//! The embedded MQTT broker (rumqttd), so a single `edgeqi-aggregator`
//! process is a complete installation.
//!
//! rumqttd listens on loopback only; nodes reach it through the
//! [`gateway`], which authenticates them and enforces the topic [`acl`]
//! (rumqttd 0.20 can check CONNECT credentials but has no hook to authorize
//! a publish or subscribe). rumqttd itself accepts exactly one password, a
//! random per-process internal token known only to the gateway and the
//! ingest client, so going around the gateway to the loopback port gets a
//! local process nowhere.
//!
//! rumqttd's `Broker::start` blocks forever and only logs a bind failure on
//! its own thread, so we pick the port ourselves first, run the broker on a
//! dedicated OS thread, and wait until it accepts connections.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

pub mod acl;
pub mod gateway;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source} (is another broker running? choose another --mqtt-listen, or use --mqtt-url for an external broker)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded MQTT broker did not accept connections on {0} within 10 s")]
    NotListening(SocketAddr),
    #[error("cannot start the embedded MQTT broker thread: {0}")]
    Thread(std::io::Error),
    #[error("MQTT TLS: {0}")]
    Tls(String),
}

/// The running broker: where the gateway and ingest connect, and the only
/// password it accepts.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// rumqttd's loopback listener.
    pub internal: SocketAddr,
    /// The internal token (random per process, never stored or logged).
    pub token: Arc<str>,
}

/// Constant-time, so the token cannot be guessed byte by byte from timings.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_token() -> Arc<str> {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Connections rumqttd takes besides the gateway's clients: ingest, and
/// `process` runs or tests logging in with the token.
const INTERNAL_CONNECTIONS: usize = 16;

fn broker_config(
    listen: SocketAddr,
    max_packet_size: usize,
    max_clients: usize,
    token: Arc<str>,
) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_size,
        // Outstanding QoS1 publishes per connection; agents keep ≤ 32 batches in flight.
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    // Nodes' real credentials are checked by the gateway, which then logs in
    // with the token; so does ingest. Nothing else gets in.
    connections.set_auth_handler(move |_client_id, _user, password: String| {
        let ok = same_secret(password.as_bytes(), token.as_bytes());
        async move { ok }
    });
    let server = ServerSettings {
        name: "edgeqi-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            // Every client the gateway lets in (its cap) has a slot.
            max_connections: max_clients + INTERNAL_CONNECTIONS,
            max_outgoing_packet_count: 200,
            // A segment must hold at least one full packet.
            max_segment_size: (max_packet_size * 4).max(16 << 20),
            // Room for a burst while ingest waits on the database: rumqttd drops
            // the oldest segment (and its unread publishes) beyond this count.
            max_segment_count: 32,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    }
}

/// Starts rumqttd on a loopback port on its own thread and returns once it
/// accepts connections.
/// `max_clients` is the gateway's connection cap (`mqtt.max_connections`).
pub fn start_embedded(
    max_packet_size: usize,
    max_clients: usize,
) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds by itself and would only log a failure on its thread:
    // take a free loopback port first.
    let any = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let probe = TcpListener::bind(any).map_err(|source| BrokerError::Bind { addr: any, source })?;
    let internal = probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr: any, source })?;
    drop(probe);
    let token = new_token();
    let mut broker = Broker::new(broker_config(
        internal,
        max_packet_size,
        max_clients,
        token.clone(),
    ));
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&internal, Duration::from_millis(200)).is_ok() {
            tracing::debug!(%internal, max_packet_size, "embedded MQTT broker listening on loopback");
            return Ok(EmbeddedBroker { internal, token });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(internal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_hold_a_full_packet_and_every_client_has_a_slot() {
        let c = broker_config(
            "127.0.0.1:1883".parse().expect("addr"),
            64 << 20,
            50_000,
            "t".into(),
        );
        assert!(c.router.max_segment_size >= 64 << 20);
        assert_eq!(c.router.max_connections, 50_000 + INTERNAL_CONNECTIONS);
    }

    #[test]
    fn tokens_are_random_and_compared_exactly() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(same_secret(a.as_bytes(), a.as_bytes()));
        assert!(!same_secret(a.as_bytes(), b.as_bytes()));
        assert!(!same_secret(a.as_bytes(), &a.as_bytes()[..63]));
    }
}
