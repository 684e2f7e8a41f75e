//! The embedded MQTT broker (rumqttd), so a single `edgeqi-aggregator`
//! process is a complete installation.
//!
//! rumqttd's `Broker::start` blocks forever and only logs a bind failure on
//! its own thread, so we check the port ourselves first, run the broker on a
//! dedicated OS thread, and wait until it accepts connections.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

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
}

fn broker_config(listen: SocketAddr, max_packet_size: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_size,
        // Outstanding QoS1 publishes per connection; agents keep ≤ 32 batches in flight.
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
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
            max_connections: 10_010,
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

/// Starts rumqttd on its own thread and returns once it accepts connections.
pub fn start_embedded(
    listen: SocketAddr,
    max_packet_size: usize,
) -> Result<SocketAddr, BrokerError> {
    // Bind once ourselves: rumqttd would only log the failure on its thread.
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    drop(probe);
    let mut broker = Broker::new(broker_config(listen, max_packet_size));
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let connect_to = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&connect_to, Duration::from_millis(200)).is_ok() {
            tracing::info!(%listen, max_packet_size, "embedded MQTT broker listening");
            return Ok(connect_to);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = start_embedded(addr, 1 << 20).expect_err("port busy");
        assert!(err.to_string().contains("--mqtt-url"), "{err}");
    }

    #[test]
    fn segments_hold_a_full_packet() {
        let c = broker_config("127.0.0.1:1883".parse().expect("addr"), 64 << 20);
        assert!(c.router.max_segment_size >= 64 << 20);
    }
}
