//! The embedded broker's front door: every connection from outside comes in
//! here, over plain TCP or TLS, before it reaches rumqttd on loopback.
//!
//! rumqttd 0.20 can check CONNECT credentials (`external_auth`) but has no
//! hook to authorize a PUBLISH or SUBSCRIBE by topic; its only topic limit is
//! a tenant prefix taken from TLS client certificates. So the gateway reads
//! the fixed header of every client → broker packet and
//! - CONNECT: checks the node's password against [`NodeCredentials`],
//!   requires client id = user name = node id, keeps the ingest client's id
//!   for the aggregator, checks the will topic, answers a refusal with a
//!   proper CONNACK code, and otherwise logs in to rumqttd with the internal
//!   token in place of the node's password;
//! - PUBLISH: checks the topic with [`acl::may_publish`];
//! - SUBSCRIBE: checks every filter with [`acl::may_subscribe`];
//!
//! and closes the connection on a violation (MQTT 3.1.1 has no way to refuse
//! a single publish; closing before forwarding means the broker never sees
//! it). Broker → client bytes are copied untouched. Anonymous clients (only
//! with `mqtt.allow_anonymous`) are forwarded without topic checks.
//!
//! TLS is terminated here too, with the handshake in the connection's own
//! task: rumqttd's TLS listener handshakes inside its accept loop, so one
//! silent client would stall every other TLS connect.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use edgeqi_shared::topic::is_valid_node_id;
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{Login, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Semaphore};

use super::{acl, BrokerError, EmbeddedBroker};
use crate::accounts::node_credentials::NodeCredentials;

/// A client must finish its TLS handshake, and then send CONNECT, this quickly.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection buffers start this small (tens of thousands of mostly idle
/// nodes), grow by doubling for a large publish, and shrink back after it.
const SMALL_BUFFER: usize = 2048;

// CONNACK return codes of MQTT 3.1.1.
const UNACCEPTABLE_PROTOCOL: u8 = 1;
const IDENTIFIER_REJECTED: u8 = 2;
const SERVER_UNAVAILABLE: u8 = 3;
const BAD_CREDENTIALS: u8 = 4;
const NOT_AUTHORIZED: u8 = 5;

// Packet types (upper nibble of the first byte).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;

/// Who may connect, and with what.
#[derive(Debug, Clone)]
pub struct Policy {
    pub credentials: NodeCredentials,
    /// Clients without a user name get in unchecked and without topic limits.
    pub allow_anonymous: bool,
    /// The ingest client's id: no outside client may take its session over.
    pub reserved_client_id: String,
    /// Largest packet accepted (the broker's own limit).
    pub max_packet_size: usize,
    /// Client connections open at once (`mqtt.max_connections`). Each costs
    /// three descriptors (the client's socket, ours to rumqttd, rumqttd's).
    pub max_connections: usize,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("no CONNECT within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("not MQTT 3.1.1: {0}")]
    Malformed(String),
    #[error("CONNECT refused for client id {client_id:?}: {why}")]
    Refused {
        client_id: String,
        why: &'static str,
    },
    #[error("node {node_id} may not {what} {topic:?}")]
    Denied {
        node_id: String,
        what: &'static str,
        topic: String,
    },
    #[error("node {0} got new credentials: its connection is closed")]
    Rotated(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Closed {
    fn metric_reason(&self) -> &'static str {
        match self {
            Closed::Tls(_) => "tls",
            Closed::Timeout => "timeout",
            Closed::Malformed(_) => "malformed",
            Closed::Refused { .. } => "refused",
            Closed::Denied { .. } => "denied",
            Closed::Rotated(_) => "rotated",
            Closed::Io(_) => "io",
        }
    }
}

/// Loads the PEM certificate chain and private key of the TLS listener.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| BrokerError::Tls(format!("cannot read {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        BrokerError::Tls(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BrokerError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds a listener, with an error that says what to do about a busy port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })
}

/// Authenticates and polices connections on their way to the broker.
#[derive(Debug)]
pub struct Gateway {
    policy: Policy,
    broker: EmbeddedBroker,
    /// One per open client connection, shared by every listener.
    slots: Arc<Semaphore>,
}

impl Gateway {
    pub fn new(policy: Policy, broker: EmbeddedBroker) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(policy.max_connections.max(1)));
        Arc::new(Self {
            policy,
            broker,
            slots,
        })
    }

    /// Accepts connections on `listener` until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, tls = tls.is_some(), anonymous = self.policy.allow_anonymous, "MQTT listening");
        }
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        // At the cap, stop accepting: new clients wait in the kernel's
        // backlog (and retry with backoff) instead of taking descriptors
        // the process needs — out of descriptors, rumqttd's own accept loop
        // on loopback would spin.
        let slots = self.slots.clone();
        let mut at_cap = false;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if !at_cap {
                        tracing::warn!(
                            max_connections = self.policy.max_connections,
                            "MQTT connection cap reached; new clients wait until others close (mqtt.max_connections)"
                        );
                        metrics::counter!("edgeqi_mqtt_connection_cap_reached_total").increment(1);
                        at_cap = true;
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return,
                        },
                        () = &mut stop => return,
                    }
                }
            };
            if slots.available_permits() > 0 {
                at_cap = false;
            }
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = &mut stop => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "cannot accept an MQTT connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let outcome = match tls {
                    None => gateway.connection(stream).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(s)) => gateway.connection(s).await,
                            Ok(Err(e)) => Err(Closed::Tls(e.to_string())),
                            Err(_) => Err(Closed::Tls("handshake timed out".into())),
                        }
                    }
                };
                match outcome {
                    Ok(()) => {}
                    Err(Closed::Io(e)) => {
                        tracing::debug!(%peer, error = %e, "MQTT connection ended")
                    }
                    Err(e) => {
                        metrics::counter!("edgeqi_mqtt_closed_total", "reason" => e.metric_reason())
                            .increment(1);
                        match &e {
                            Closed::Refused { .. } | Closed::Denied { .. } => {
                                tracing::warn!(%peer, "{e}")
                            }
                            _ => tracing::info!(%peer, "{e}"),
                        }
                    }
                }
            });
        }
    }

    /// One client connection, from CONNECT to close.
    async fn connection<S>(&self, mut client: S) -> Result<(), Closed>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // Subscribe before checking the password, so a rotation that lands
        // in between still closes this connection.
        let mut rotations = self.policy.credentials.rotations();
        let max = self.policy.max_packet_size;
        let mut buf = BytesMut::with_capacity(SMALL_BUFFER);
        let len =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, next_frame(&mut client, &mut buf, max))
                .await
            {
                Err(_) => return Err(Closed::Timeout),
                Ok(r) => r?.ok_or_else(|| Closed::Malformed("closed before CONNECT".into()))?,
            };
        let mut first = buf.split_to(len);
        let (connect, will, login) = match V4.read_mut(&mut first, max) {
            Ok(Packet::Connect(connect, _, will, _, login)) => (connect, will, login),
            Ok(_) => return Err(Closed::Malformed("the first packet is not CONNECT".into())),
            Err(
                e @ (rumqttd::protocol::Error::InvalidProtocol
                | rumqttd::protocol::Error::InvalidProtocolLevel(_)),
            ) => {
                refuse(&mut client, UNACCEPTABLE_PROTOCOL).await;
                return Err(Closed::Malformed(e.to_string()));
            }
            Err(e) => return Err(Closed::Malformed(e.to_string())),
        };
        let node = match self.authorize(&connect.client_id, login.as_ref()).await {
            Ok(node) => node,
            Err((code, why)) => {
                metrics::counter!("edgeqi_mqtt_refused_total", "code" => code.to_string())
                    .increment(1);
                refuse(&mut client, code).await;
                return Err(Closed::Refused {
                    client_id: connect.client_id,
                    why,
                });
            }
        };
        if let (Some(node), Some(will)) = (&node, &will) {
            let topic = String::from_utf8_lossy(&will.topic);
            if !acl::may_publish(node, &topic) {
                refuse(&mut client, NOT_AUTHORIZED).await;
                return Err(Closed::Denied {
                    node_id: node.clone(),
                    what: "leave a will on",
                    topic: topic.into_owned(),
                });
            }
        }
        // The node's password stays here; rumqttd only ever sees the token.
        let login = Some(Login {
            username: connect.client_id.clone(),
            password: self.broker.token.to_string(),
        });
        let mut out = BytesMut::new();
        V4.write(Packet::Connect(connect, None, will, None, login), &mut out)
            .map_err(|e| Closed::Malformed(e.to_string()))?;
        let mut upstream = TcpStream::connect(self.broker.internal).await?;
        upstream.set_nodelay(true)?;
        upstream.write_all(&out).await?;

        let (from_broker, to_broker) = upstream.into_split();
        let mut from_broker = tokio::io::BufReader::with_capacity(SMALL_BUFFER, from_broker);
        let (from_client, mut to_client) = tokio::io::split(client);
        let rotated = async {
            let Some(node) = &node else {
                return std::future::pending().await;
            };
            loop {
                match rotations.recv().await {
                    Ok(n) if &n == node => return node.clone(),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            r = tokio::io::copy_buf(&mut from_broker, &mut to_client) => r.map(|_| ()).map_err(Closed::Io),
            r = forward(from_client, to_broker, buf, node.as_deref(), max) => r,
            node = rotated => Err(Closed::Rotated(node)),
        }
    }

    /// The node this CONNECT authenticates (`None`: anonymous), or the
    /// CONNACK code and reason to refuse it with.
    async fn authorize(
        &self,
        client_id: &str,
        login: Option<&Login>,
    ) -> Result<Option<String>, (u8, &'static str)> {
        if client_id == self.policy.reserved_client_id {
            return Err((
                IDENTIFIER_REJECTED,
                "this client id is the aggregator's own",
            ));
        }
        let Some(login) = login.filter(|l| !l.username.is_empty()) else {
            return if self.policy.allow_anonymous {
                Ok(None)
            } else {
                Err((NOT_AUTHORIZED, "no user name, and anonymous access is off"))
            };
        };
        if !is_valid_node_id(&login.username) {
            return Err((BAD_CREDENTIALS, "the user name is not a node id"));
        }
        if client_id != login.username {
            return Err((
                IDENTIFIER_REJECTED,
                "the client id must equal the user name (the node id)",
            ));
        }
        match self
            .policy
            .credentials
            .verify(&login.username, &login.password)
            .await
        {
            Ok(true) => Ok(Some(login.username.clone())),
            Ok(false) => Err((BAD_CREDENTIALS, "wrong password or unprovisioned node")),
            Err(e) => {
                tracing::error!(error = %e, "cannot check MQTT credentials");
                Err((SERVER_UNAVAILABLE, "the credential store is unavailable"))
            }
        }
    }
}

/// Answers CONNECT with a refusal; the caller then drops the connection.
async fn refuse<S: AsyncWrite + Unpin>(client: &mut S, code: u8) {
    let _ = client.write_all(&[0x20, 0x02, 0x00, code]).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// The length of the packet at the start of `buf`, `None` if it is not all
/// there yet.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, Closed> {
    match v4::check(buf.iter(), max) {
        Ok(header) => Ok(Some(header.frame_length())),
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(Closed::Malformed(e.to_string())),
    }
}

/// Room for the next read: doubles, so a large publish takes few reads.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < SMALL_BUFFER / 2 {
        buf.reserve(buf.capacity().clamp(SMALL_BUFFER, 1 << 20));
    }
}

/// Reads until `buf` starts with a whole packet; its length, `None` at EOF.
async fn next_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<usize>, Closed> {
    loop {
        if let Some(n) = frame_len(buf, max)? {
            return Ok(Some(n));
        }
        make_room(buf);
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Client → broker: whole packets only, each checked against the node's
/// ACL before any byte of it is forwarded.
async fn forward<R, W>(
    mut from: R,
    mut to: W,
    mut buf: BytesMut,
    node: Option<&str>,
    max: usize,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut ready = 0;
        while let Some(n) = frame_len(&buf[ready..], max)? {
            if let Some(node) = node {
                check_packet(node, &buf[ready..ready + n], max)?;
            }
            ready += n;
        }
        if ready > 0 {
            to.write_all(&buf.split_to(ready)).await?;
            // The emptied buffer still pins the allocation a large publish
            // grew: let it go.
            if buf.is_empty() && ready > 8 * SMALL_BUFFER {
                buf = BytesMut::with_capacity(SMALL_BUFFER);
            }
        }
        make_room(&mut buf);
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Checks one whole client packet against what `node` may do.
fn check_packet(node: &str, frame: &[u8], max: usize) -> Result<(), Closed> {
    let denied = |what, topic: &str| Closed::Denied {
        node_id: node.to_owned(),
        what,
        topic: topic.to_owned(),
    };
    match frame[0] >> 4 {
        PUBLISH => {
            let topic = publish_topic(frame)?;
            if !acl::may_publish(node, topic) {
                metrics::counter!("edgeqi_mqtt_denied_total", "what" => "publish").increment(1);
                return Err(denied("publish on", topic));
            }
        }
        SUBSCRIBE => match V4.read_mut(&mut BytesMut::from(frame), max) {
            Ok(Packet::Subscribe(sub, _)) => {
                if let Some(f) = sub
                    .filters
                    .iter()
                    .find(|f| !acl::may_subscribe(node, &f.path))
                {
                    metrics::counter!("edgeqi_mqtt_denied_total", "what" => "subscribe")
                        .increment(1);
                    return Err(denied("subscribe to", &f.path));
                }
            }
            Ok(_) => return Err(Closed::Malformed("bad SUBSCRIBE".into())),
            Err(e) => return Err(Closed::Malformed(e.to_string())),
        },
        CONNECT => return Err(Closed::Malformed("a second CONNECT".into())),
        _ => {}
    }
    Ok(())
}

/// The topic name of a whole PUBLISH packet.
fn publish_topic(frame: &[u8]) -> Result<&str, Closed> {
    let header =
        v4::check(frame.iter(), usize::MAX).map_err(|e| Closed::Malformed(e.to_string()))?;
    let body = &frame[header.fixed_header_len..];
    let bad = || Closed::Malformed("PUBLISH without a topic".into());
    let len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]));
    let topic = body.get(2..2 + len).ok_or_else(bad)?;
    std::str::from_utf8(topic).map_err(|_| Closed::Malformed("topic is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Filter, Publish, QoS, RetainForwardRule, Subscribe};

    fn encode(p: Packet) -> BytesMut {
        let mut out = BytesMut::new();
        V4.write(p, &mut out).expect("encode");
        out
    }

    fn publish(topic: &str) -> BytesMut {
        encode(Packet::Publish(
            Publish::new(topic.to_owned(), "payload".to_owned(), false),
            None,
        ))
    }

    fn subscribe(filters: &[&str]) -> BytesMut {
        let filters = filters
            .iter()
            .map(|f| Filter {
                path: (*f).to_owned(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        encode(Packet::Subscribe(Subscribe { pkid: 1, filters }, None))
    }

    fn connect(node: &str, password: &str) -> BytesMut {
        encode(Packet::Connect(
            rumqttd::protocol::Connect {
                keep_alive: 30,
                client_id: node.to_owned(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(Login {
                username: node.to_owned(),
                password: password.to_owned(),
            }),
        ))
    }

    /// Connects a raw client and sends CONNECT; returns the first byte of
    /// the answer if one comes within `wait`.
    async fn connack(stream: &mut TcpStream, wait: Duration) -> Option<u8> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(wait, stream.read_exact(&mut first)).await {
            Ok(Ok(_)) => Some(first[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn at_the_connection_cap_a_new_client_waits_and_is_served_when_one_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("creds.db").display());
        let credentials = NodeCredentials::open(&url).expect("credentials");
        let broker = super::super::start_embedded(1 << 20, 64).expect("broker");
        let gateway = Gateway::new(
            Policy {
                credentials: credentials.clone(),
                allow_anonymous: false,
                reserved_client_id: "edgeqi-aggregator".into(),
                max_packet_size: 1 << 20,
                max_connections: 2,
            },
            broker,
        );
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(gateway.serve(listener, None, stop_rx));
        let mut clients = Vec::new();
        for node in ["n1", "n2", "n3"] {
            let password = credentials.issue(node).await.expect("issue");
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(&connect(node, &password))
                .await
                .expect("send CONNECT");
            clients.push(stream);
        }
        let second = Duration::from_secs(1);
        // CONNACK is packet type 2: 0x20.
        assert_eq!(connack(&mut clients[0], second * 5).await, Some(0x20));
        assert_eq!(connack(&mut clients[1], second * 5).await, Some(0x20));
        // The third is in the kernel's backlog: connected, not answered.
        assert_eq!(connack(&mut clients[2], second).await, None);
        drop(clients.remove(0));
        assert_eq!(
            connack(&mut clients[1], second * 5).await,
            Some(0x20),
            "the waiting client is served once a slot is free"
        );
    }

    #[test]
    fn frames_and_topics_are_read_from_raw_bytes() {
        let p = publish("edgeqi/v1/nodes/a/detections");
        assert_eq!(frame_len(&p, 1 << 20).expect("ok"), Some(p.len()));
        assert_eq!(frame_len(&p[..p.len() - 1], 1 << 20).expect("ok"), None);
        assert_eq!(frame_len(&p[..1], 1 << 20).expect("ok"), None);
        assert!(frame_len(&p, 4).is_err(), "over the size limit");
        assert_eq!(
            publish_topic(&p).expect("topic"),
            "edgeqi/v1/nodes/a/detections"
        );
        assert!(publish_topic(&[0x30, 0x01, 0x00]).is_err());
    }

    #[test]
    fn packets_are_checked_against_the_acl() {
        let max = 1 << 20;
        assert!(check_packet("a", &publish("edgeqi/v1/nodes/a/detections"), max).is_ok());
        let err = check_packet("a", &publish("edgeqi/v1/nodes/b/detections"), max)
            .expect_err("other node");
        assert!(matches!(err, Closed::Denied { .. }), "{err}");
        assert!(check_packet("a", &subscribe(&["edgeqi/v1/nodes/a/ack"]), max).is_ok());
        assert!(check_packet(
            "a",
            &subscribe(&["edgeqi/v1/nodes/a/ack", "edgeqi/v1/nodes/+/ack"]),
            max
        )
        .is_err());
        // PINGREQ and PUBACK pass untouched.
        assert!(check_packet("a", &[0xC0, 0x00], max).is_ok());
        assert!(check_packet("a", &[0x40, 0x02, 0x00, 0x07], max).is_ok());
    }
}
