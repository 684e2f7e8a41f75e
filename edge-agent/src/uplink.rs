//! The MQTT connection to the broker (rumqttc).
//!
//! [`Uplink::connect`] builds the client and spawns a task that polls the
//! event loop, reconnecting with exponential backoff plus jitter, and turns
//! what matters into [`UplinkEvent`]s. Publishing never waits: a full request
//! queue is reported back and the outbox makes sure the batch is sent later.
//! rumqttc's own replay of unacked publishes is switched off (its queue is
//! cleared on every ConnAck) because the outbox resends from the lowest
//! unacked seq anyway, and it is the only queue that survives a restart.

use std::time::Duration;

use chrono::Utc;
use edgeqi_shared::protocol::encode;
use edgeqi_shared::protocol::{EventBatch, Snapshot};
use edgeqi_shared::topic::AnalyticsKind;
use edgeqi_shared::{DetectionBatch, Heartbeat, NodeStatus, Topic, TopicKind, PROTOCOL_VERSION};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, MqttConfig, MqttScheme};
use crate::delivery::BatchSink;

/// What the event loop task reports.
#[derive(Debug)]
pub enum UplinkEvent {
    /// ConnAck received: subscribe, announce, resend.
    Connected,
    /// The connection dropped (the task logged why and is backing off).
    Disconnected,
    /// A publish on a topic we subscribed to.
    Message { topic: String, payload: Vec<u8> },
    /// The broker sent a packet above `mqtt.max_packet_size`; rumqttc drops
    /// the connection for it without reading it. The only big message the
    /// agent can be sent is the retained remote config, so the next
    /// connection starts a clean session (the broker forgets its queued
    /// copy) and the agent holds the config subscription back for a while.
    /// Sent before the [`UplinkEvent::Disconnected`] of that connection.
    Oversized { bytes: usize, limit: usize },
}

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(
        "mqtts: no usable CA certificates found on this system ({0}); install ca-certificates"
    )]
    NoRootCerts(String),
    #[error("mqtt.ca_file {0}")]
    CaFile(String),
}

/// The node's topics.
#[derive(Debug, Clone)]
pub struct Topics {
    pub detections: String,
    pub heartbeat: String,
    pub status: String,
    pub ack: String,
    pub config: String,
    pub events: String,
    pub snapshots: String,
}

impl Topics {
    pub fn new(node_id: &str) -> Self {
        let t = |k| Topic::new(node_id, k).to_string();
        Self {
            detections: t(TopicKind::Detections),
            heartbeat: t(TopicKind::Heartbeat),
            status: t(TopicKind::Status),
            ack: t(TopicKind::Ack),
            config: t(TopicKind::Config),
            events: AnalyticsKind::Events.topic(node_id),
            snapshots: AnalyticsKind::Snapshots.topic(node_id),
        }
    }
}

/// Who connects: the daemon, or a one-off `edgeqi-agent process` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// The daemon: client id = node id, a persistent session, the node's
    /// online status and a last will.
    Daemon,
    /// `process` sending a recording's results: a client id of its own (a
    /// broker keeps one connection per client id, and the daemon may be
    /// connected right now), a clean session, and no status or last will,
    /// so the node's online state stays the daemon's to report.
    Recording,
}

impl Session {
    fn client_id(self, node_id: &str) -> String {
        match self {
            Self::Daemon => node_id.to_owned(),
            Self::Recording => format!("{node_id}-process-{}", std::process::id()),
        }
    }
}

/// A handle for publishing; cheap to clone.
#[derive(Debug, Clone)]
pub struct Uplink {
    client: AsyncClient,
    node_id: String,
    topics: Topics,
    max_packet_size: usize,
    session: Session,
}

fn status_payload(node_id: &str, online: bool) -> Vec<u8> {
    encode(&NodeStatus {
        v: PROTOCOL_VERSION,
        node_id: node_id.to_owned(),
        online,
        ts: Utc::now(),
    })
}

/// Installs the ring crypto provider for rustls, once per process.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA certificates in a PEM file (a private CA, or a self-signed broker).
fn roots_from_file(path: &std::path::Path) -> Result<rustls::RootCertStore, UplinkError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| UplinkError::CaFile(format!("{}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UplinkError::CaFile(format!(
            "{} holds no usable PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn tls_transport(ca_file: Option<&std::path::Path>) -> Result<Transport, UplinkError> {
    if let Some(path) = ca_file {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots_from_file(path)?)
            .with_no_client_auth();
        return Ok(Transport::tls_with_config(config.into()));
    }
    // rumqttc's `tls_with_default_config` panics on an unreadable system
    // certificate; load them ourselves and skip the bad ones instead.
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "skipping unreadable system CA certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "skipped system CA certificates rustls cannot parse"
        );
    }
    if added == 0 {
        return Err(UplinkError::NoRootCerts(format!(
            "{} load errors",
            loaded.errors.len()
        )));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::tls_with_config(config.into()))
}

fn options(
    node_id: &str,
    mqtt: &MqttConfig,
    max_inflight: usize,
    session: Session,
) -> Result<MqttOptions, UplinkError> {
    let mut o = MqttOptions::new(
        session.client_id(node_id),
        mqtt.url.host.clone(),
        mqtt.url.port,
    );
    o.set_keep_alive(mqtt.keep_alive);
    // A one-off run leaves no session behind on the broker.
    o.set_clean_session(session == Session::Recording);
    let max = mqtt.max_packet_size as usize;
    o.set_max_packet_size(max, max);
    // Room for our batch window plus status publishes.
    o.set_inflight((max_inflight + 8).min(u16::MAX as usize) as u16);
    if let Some(user) = &mqtt.username {
        let password = mqtt
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        o.set_credentials(user.clone(), password);
    }
    if session == Session::Daemon {
        o.set_last_will(LastWill::new(
            Topic::new(node_id, TopicKind::Status).to_string(),
            status_payload(node_id, false),
            QoS::AtLeastOnce,
            true,
        ));
    }
    if mqtt.url.scheme == MqttScheme::Mqtts {
        o.set_transport(tls_transport(mqtt.ca_file.as_deref())?);
    }
    Ok(o)
}

impl Uplink {
    /// Creates the client and starts the event loop task. Connecting happens
    /// in the background; [`UplinkEvent::Connected`] says when it is up.
    pub fn connect(
        config: &AgentConfig,
        session: Session,
        events: mpsc::Sender<UplinkEvent>,
    ) -> Result<(Self, JoinHandle<()>), UplinkError> {
        let opts = options(
            &config.node_id,
            &config.mqtt,
            config.outbox.max_inflight,
            session,
        )?;
        // Enough queue for a full window of batches plus heartbeats and status.
        let (client, eventloop) = AsyncClient::new(opts, config.outbox.max_inflight * 2 + 16);
        let task = tokio::spawn(drive(
            eventloop,
            events,
            config.mqtt.reconnect_min,
            config.mqtt.reconnect_max,
            config.mqtt.url.to_string(),
        ));
        Ok((
            Self {
                client,
                node_id: config.node_id.clone(),
                topics: Topics::new(&config.node_id),
                max_packet_size: config.mqtt.max_packet_size as usize,
                session,
            },
            task,
        ))
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// After each ConnAck: listen for acks and, in the daemon, for the
    /// remote config (unless `with_config` is false: see
    /// [`UplinkEvent::Oversized`]), and say we are online.
    pub fn announce(&self, with_config: bool) {
        if let Err(e) = self
            .client
            .try_subscribe(self.topics.ack.clone(), QoS::AtLeastOnce)
        {
            tracing::warn!(error = %e, "could not queue the ack subscription");
        }
        if self.session == Session::Daemon {
            if with_config {
                self.subscribe_config();
            }
            self.publish_status(true);
        }
    }

    /// (Re)subscribes to the remote config. Unsubscribing first makes the
    /// broker send the retained config on every connect: rumqttd does not
    /// re-send retained messages for a subscription it restored from a
    /// persistent session (MQTT 3.1.1 §3.8.4 says it should), and the saved
    /// copy may be gone.
    pub fn subscribe_config(&self) {
        if let Err(e) = self
            .client
            .try_unsubscribe(self.topics.config.clone())
            .and_then(|()| {
                self.client
                    .try_subscribe(self.topics.config.clone(), QoS::AtLeastOnce)
            })
        {
            tracing::warn!(error = %e, "could not queue the config subscription");
        }
    }

    pub fn publish_status(&self, online: bool) {
        let payload = status_payload(&self.node_id, online);
        if let Err(e) =
            self.client
                .try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, payload)
        {
            tracing::warn!(error = %e, online, "could not queue the status message");
        }
    }

    /// Heartbeats are QoS 0: a lost one is replaced by the next.
    pub fn publish_heartbeat(&self, hb: &Heartbeat) {
        if let Err(e) = self.client.try_publish(
            self.topics.heartbeat.clone(),
            QoS::AtMostOnce,
            false,
            encode(hb),
        ) {
            tracing::debug!(error = %e, "heartbeat not queued");
        }
    }

    /// Track events and line counts: QoS 1 but outside the outbox ledger,
    /// so best effort across reconnects.
    pub fn publish_events(&self, batch: &EventBatch) {
        self.publish_analytics(&self.topics.events, encode(batch), "events");
    }

    /// One track's best crop: QoS 1, best effort like events.
    pub fn publish_snapshot(&self, snapshot: &Snapshot) {
        self.publish_analytics(&self.topics.snapshots, encode(snapshot), "snapshot");
    }

    fn publish_analytics(&self, topic: &str, payload: Vec<u8>, what: &str) {
        if payload.len() > self.max_packet_size {
            tracing::warn!(what, bytes = payload.len(), limit = self.max_packet_size,
                "payload exceeds mqtt.max_packet_size; not sent (lower snapshots.max_side or raise the limit)");
            return;
        }
        if let Err(e) = self
            .client
            .try_publish(topic.to_owned(), QoS::AtLeastOnce, false, payload)
        {
            tracing::warn!(what, error = %e, "could not queue an analytics publish; dropped");
        }
    }

    pub fn disconnect(&self) {
        if let Err(e) = self.client.try_disconnect() {
            tracing::debug!(error = %e, "disconnect not queued");
        }
    }
}

impl BatchSink for Uplink {
    fn send(&mut self, batch: &DetectionBatch) -> Result<(), String> {
        let payload = encode(batch);
        if payload.len() > self.max_packet_size {
            tracing::error!(
                seq = batch.seq,
                bytes = payload.len(),
                limit = self.max_packet_size,
                "batch exceeds mqtt.max_packet_size; raise it (the broker's limit too)"
            );
            return Err("over mqtt.max_packet_size".into());
        }
        self.client
            .try_publish(
                self.topics.detections.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .map_err(|e| e.to_string())
    }
}

/// The size of an incoming packet rumqttc refused for being above the
/// maximum packet size, if that is what `e` is.
fn oversized(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// Polls the event loop until the client disconnects or goes away.
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<UplinkEvent>,
    reconnect_min: Duration,
    reconnect_max: Duration,
    url: String,
) {
    let mut backoff = reconnect_min;
    let mut connected = false;
    let clean_session = eventloop.mqtt_options.clean_session();
    let limit = eventloop.mqtt_options.max_packet_size();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(broker = %url, session_present = ack.session_present, "connected to the MQTT broker");
                // Back to the configured session kind for later reconnects.
                eventloop.mqtt_options.set_clean_session(clean_session);
                // The outbox resends from the lowest unacked seq; replaying
                // rumqttc's copy as well would only send everything twice.
                eventloop.pending.clear();
                connected = true;
                backoff = reconnect_min;
                if events.send(UplinkEvent::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = UplinkEvent::Message {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                };
                if events.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from the MQTT broker");
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                if let Some(bytes) = oversized(&e) {
                    tracing::error!(broker = %url, bytes, limit,
                        "the broker sent a message larger than mqtt.max_packet_size (most likely \
                         the retained remote config); reconnecting with a clean session and \
                         without the config subscription for a while");
                    // A persistent session would hand the same message over
                    // again right after the next ConnAck.
                    eventloop.mqtt_options.set_clean_session(true);
                    if events
                        .send(UplinkEvent::Oversized { bytes, limit })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if connected {
                    connected = false;
                    tracing::warn!(broker = %url, error = %e, "lost the MQTT connection");
                    if events.send(UplinkEvent::Disconnected).await.is_err() {
                        return;
                    }
                }
                // Jitter spreads reconnects of many nodes after a broker restart.
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                let delay = backoff + jitter;
                if let rumqttc::ConnectionError::ConnectionRefused(code) = &e {
                    tracing::error!(broker = %url, ?code, retry_in = ?delay,
                        "the MQTT broker refused the login; check mqtt.username (the node id) and mqtt.password (from POST /api/v1/nodes)");
                } else {
                    tracing::warn!(broker = %url, error = %e, retry_in = ?delay,
                        "cannot reach the MQTT broker; is it running and is mqtt.url right?");
                }
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(reconnect_max);
            }
        }
    }
}
