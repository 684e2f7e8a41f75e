//! Ingest: the aggregator's MQTT client. It receives every node publish,
//! validates it, stores it, and only then acknowledges it — to the broker
//! (manual PUBACK) and end to end to the agent (`…/ack` with the highest
//! contiguous stored seq). Anything refused goes to the dead-letter table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeqi_shared::protocol::{decode, encode, Payload};
use edgeqi_shared::topic::is_valid_node_id;
use edgeqi_shared::{
    Ack, DetectionBatch, Heartbeat, MqttEndpoint, NodeStatus, RejectReason, Topic, TopicKind,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};

use crate::live::{LiveBus, LiveEvent, NodeStatusEvent};
use crate::store::{Store, StoreError, StoredDetection};

/// How the ingest client reaches the broker.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub endpoint: MqttEndpoint,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub max_packet_size: usize,
}

/// Shared with the HTTP layer: is ingest connected to the broker?
#[derive(Debug, Default)]
pub struct IngestHealth {
    pub connected: AtomicBool,
}

fn mqtt_options(s: &IngestSettings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.endpoint.host, s.endpoint.port);
    o.set_keep_alive(s.keep_alive)
        // A persistent session: publishes that arrive while we restart are
        // kept by the broker (Mosquitto on disk, rumqttd in memory).
        .set_clean_session(false)
        .set_max_packet_size(s.max_packet_size + 1024, s.max_packet_size + 1024)
        // PUBACK only after the batch is committed.
        .set_manual_acks(true)
        .set_inflight(256);
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        o.set_credentials(u, p);
    }
    if s.endpoint.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

/// Runs ingest until `shutdown` turns true.
pub async fn run(
    settings: IngestSettings,
    store: Arc<dyn Store>,
    live: LiveBus,
    health: Arc<IngestHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, eventloop) = AsyncClient::new(mqtt_options(&settings), 1024);
    // The event loop must keep being polled while a batch is being stored
    // (keep-alives, outgoing acks), so polling and processing are separate
    // tasks joined by a channel. The channel is unbounded on purpose: with
    // manual acks the broker never has more than its inflight window of
    // unacknowledged QoS1 publishes outstanding towards us.
    let (tx, rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll(eventloop, client.clone(), tx, health.clone()));
    let worker = Worker {
        client: client.clone(),
        store,
        live,
        max_payload: settings.max_packet_size,
    };
    let processor = tokio::spawn(worker.run(rx));
    let _ = shutdown.wait_for(|s| *s).await;
    let _ = client.disconnect().await;
    // Give the disconnect a moment to go out, then stop polling.
    tokio::time::sleep(Duration::from_millis(100)).await;
    poller.abort();
    processor.abort();
    health.connected.store(false, Ordering::Relaxed);
}

async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<Publish>,
    health: Arc<IngestHealth>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "ingest connected to MQTT broker"
                );
                backoff = Duration::from_millis(200);
                // One wildcard for the whole tree, so publishes with a bad node
                // segment are seen (and dead-lettered) instead of ignored.
                let filter = format!("{}/#", edgeqi_shared::topic::PREFIX);
                if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                    tracing::error!(error = %e, "cannot queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                health.connected.store(true, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                health.connected.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                metrics::counter!("edgeqi_ingest_disconnects_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Worker {
    client: AsyncClient,
    store: Arc<dyn Store>,
    live: LiveBus,
    max_payload: usize,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Publish>) {
        while let Some(p) = rx.recv().await {
            loop {
                match self.handle(&p).await {
                    Ok(()) => break,
                    Err(e) => {
                        // Storage failed: do not ack, retry until the database
                        // is back. The agent keeps the batch meanwhile.
                        metrics::counter!("edgeqi_ingest_store_errors_total").increment(1);
                        tracing::error!(error = %e, topic = %p.topic, "cannot store; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if let Err(e) = self.client.ack(&p).await {
                tracing::warn!(error = %e, "cannot queue PUBACK");
            }
        }
    }

    async fn handle(&self, p: &Publish) -> Result<(), StoreError> {
        let Some((node_id, kind)) = Topic::parse_lenient(&p.topic) else {
            // Outside our tree (the # filter only matches our prefix, so this
            // is a kind we do not know): keep it for inspection.
            return self
                .reject(p, None, RejectReason::BadTopic(p.topic.clone()))
                .await;
        };
        match kind {
            // Our own outgoing traffic, echoed back by the wildcard.
            TopicKind::Ack | TopicKind::Config => return Ok(()),
            _ => {}
        }
        if !is_valid_node_id(&node_id) {
            return self
                .reject(p, None, RejectReason::BadTopic(p.topic.clone()))
                .await;
        }
        match kind {
            TopicKind::Detections => match self.decoded::<DetectionBatch>(p, &node_id).await? {
                Some(batch) => self.ingest_batch(batch).await,
                None => Ok(()),
            },
            TopicKind::Heartbeat => match self.decoded::<Heartbeat>(p, &node_id).await? {
                Some(hb) => {
                    self.store.record_heartbeat(&hb).await?;
                    metrics::counter!("edgeqi_ingest_heartbeats_total").increment(1);
                    if let Ok(v) = serde_json::to_value(&hb) {
                        self.live.send(LiveEvent::Heartbeat(v));
                    }
                    Ok(())
                }
                None => Ok(()),
            },
            TopicKind::Status => {
                // An empty retained payload clears the retained status: not an error.
                if p.payload.is_empty() {
                    return Ok(());
                }
                match self.decoded::<NodeStatus>(p, &node_id).await? {
                    Some(st) => {
                        self.store.record_status(&st).await?;
                        tracing::info!(node_id = %st.node_id, online = st.online, "node status");
                        self.live.send(LiveEvent::NodeStatus(NodeStatusEvent {
                            node_id: st.node_id,
                            online: st.online,
                            cause: "status".into(),
                        }));
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            TopicKind::Ack | TopicKind::Config => Ok(()),
        }
    }

    /// Decodes a payload, dead-lettering it on failure (`Ok(None)`).
    async fn decoded<T: Payload>(
        &self,
        p: &Publish,
        node_id: &str,
    ) -> Result<Option<T>, StoreError> {
        match decode::<T>(node_id, &p.payload, self.max_payload) {
            Ok(v) => Ok(Some(v)),
            Err(reason) => {
                self.reject(p, Some(node_id), reason).await?;
                Ok(None)
            }
        }
    }

    async fn reject(
        &self,
        p: &Publish,
        node_id: Option<&str>,
        reason: RejectReason,
    ) -> Result<(), StoreError> {
        tracing::warn!(topic = %p.topic, reason = reason.code(), detail = %reason, bytes = p.payload.len(), "payload rejected");
        metrics::counter!("edgeqi_ingest_rejected_total", "reason" => reason.code()).increment(1);
        self.store
            .dead_letter(
                &p.topic,
                node_id,
                reason.code(),
                &reason.to_string(),
                &p.payload,
            )
            .await
    }

    async fn ingest_batch(&self, batch: DetectionBatch) -> Result<(), StoreError> {
        let outcome = self.store.ingest_batch(&batch).await?;
        if outcome.duplicate {
            metrics::counter!("edgeqi_ingest_duplicates_total").increment(1);
            tracing::debug!(node_id = %batch.node_id, seq = batch.seq, "duplicate batch, re-acking");
        } else {
            metrics::counter!("edgeqi_ingest_batches_total").increment(1);
            metrics::counter!("edgeqi_ingest_detections_total")
                .increment(batch.detections.len() as u64);
        }
        // The batch is committed: now, and only now, acknowledge it.
        let ack = Ack {
            v: edgeqi_shared::PROTOCOL_VERSION,
            node_id: batch.node_id.clone(),
            epoch: batch.epoch.clone(),
            acked_seq: outcome.acked_seq,
        };
        let topic = Topic::new(&batch.node_id, TopicKind::Ack).to_string();
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, encode(&ack))
            .await
        {
            // The agent resends after its ack timeout and gets a fresh ack.
            tracing::warn!(error = %e, "cannot queue ack");
        }
        for (d, id) in batch.detections.into_iter().zip(outcome.detection_ids) {
            self.live.send(LiveEvent::Detection(StoredDetection {
                id,
                node_id: batch.node_id.clone(),
                ts: d.ts,
                camera_id: d.camera_id,
                class_id: d.class_id,
                label: d.label,
                score: d.score,
                bbox: d.bbox,
                track_id: d.track_id,
                zone: d.zone,
            }));
        }
        Ok(())
    }
}

/// Watches heartbeat freshness and announces nodes going offline (or back)
/// on the live bus.
pub async fn sweep_nodes(
    store: Arc<dyn Store>,
    live: LiveBus,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut known: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Ok(nodes) = store.nodes().await else {
            continue;
        };
        let now = chrono::Utc::now();
        let mut online_count = 0u64;
        for n in nodes {
            let online = n.is_online(now);
            online_count += u64::from(online);
            let before = known.insert(n.node_id.clone(), online);
            if before.is_some_and(|b| b != online) {
                tracing::info!(node_id = %n.node_id, online, "node presence changed");
                live.send(LiveEvent::NodeStatus(NodeStatusEvent {
                    node_id: n.node_id,
                    online,
                    cause: if online { "heartbeat" } else { "timeout" }.into(),
                }));
            }
        }
        metrics::gauge!("edgeqi_nodes_online").set(online_count as f64);
    }
}
