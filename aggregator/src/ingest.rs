//! Ingest: the aggregator's MQTT client. It receives every node publish,
//! validates it, stores it, and only then acknowledges it — to the broker
//! (manual PUBACK) and end to end to the agent (`…/ack` with the highest
//! contiguous stored seq). Anything refused goes to the dead-letter table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeqi_shared::protocol::{decode_within, encode, TimeWindow};
use edgeqi_shared::topic::is_valid_node_id;
use edgeqi_shared::{
    Ack, DetectionBatch, Heartbeat, MqttEndpoint, NodeStatus, RejectReason, Topic, TopicKind,
};
use futures_util::future::BoxFuture;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};

use crate::live::{LiveBus, LiveEvent, NodeStatusEvent};
use crate::store::{IngestOutcome, Store, StoreError, StoredDetection};

/// How the ingest client reaches the broker.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub endpoint: MqttEndpoint,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub max_packet_size: usize,
    /// Group commit: the most detections stored in one transaction.
    pub group_max_detections: usize,
    /// Timestamps older than this (by the aggregator's clock) are refused.
    pub max_age: Duration,
    /// Timestamps further than this ahead of the aggregator's clock are refused.
    pub max_clock_skew: Duration,
    /// Where tracker events and snapshots go (`None`: they are dead-lettered).
    pub events: Option<crate::events::EventStore>,
    /// Where committed detections and events go for alert rules (`None`: no alerting).
    pub alerts: Option<crate::alerts::AlertFeed>,
    /// Remote configs go out through this client: published on every
    /// connect, and by the registry on every change.
    pub registry: Option<crate::registry::Registry>,
}

/// Shared with the HTTP layer: is ingest connected to the broker?
#[derive(Debug, Default)]
pub struct IngestHealth {
    pub connected: AtomicBool,
    /// The last storage attempt failed: ingest is holding acks back.
    pub store_failing: AtomicBool,
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
        // Outgoing QoS1 acks to thousands of agents must not queue behind a
        // small window.
        .set_inflight(u16::MAX / 2);
    if let Some(u) = &s.username {
        o.set_credentials(u, s.password.as_deref().unwrap_or_default());
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
    let (client, eventloop) = AsyncClient::new(mqtt_options(&settings), 65_536);
    // The event loop must keep being polled while a batch is being stored
    // (keep-alives, outgoing acks), so polling and processing are separate
    // tasks joined by a channel. The channel is unbounded on purpose: with
    // manual acks the broker never has more than its inflight window of
    // unacknowledged QoS1 publishes outstanding towards us.
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(registry) = &settings.registry {
        registry.attach(client.clone());
    }
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        tx,
        health.clone(),
        settings.registry.clone(),
    ));
    let worker = Worker {
        client: client.clone(),
        store,
        live,
        max_payload: settings.max_packet_size,
        group_max_detections: settings.group_max_detections.max(1),
        max_age: settings.max_age,
        max_clock_skew: settings.max_clock_skew,
        health: health.clone(),
        events: settings.events.clone(),
        alerts: settings.alerts.clone(),
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
    registry: Option<crate::registry::Registry>,
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
                // Retained configs again after every connect: a broker that
                // restarted (the embedded one keeps them in memory) has lost them.
                if let Some(registry) = registry.clone() {
                    tokio::spawn(async move {
                        match registry.publish_all().await {
                            Ok(n) => tracing::info!(configs = n, "remote configs published"),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read remote configs to publish; agents keep the ones they have")
                            }
                        }
                    });
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
    group_max_detections: usize,
    max_age: Duration,
    max_clock_skew: Duration,
    health: Arc<IngestHealth>,
    events: Option<crate::events::EventStore>,
    alerts: Option<crate::alerts::AlertFeed>,
}

/// The most publishes taken from the queue for one group commit.
const GROUP_MAX_PUBLISHES: usize = 4096;

/// What one publish asks of storage.
enum Item {
    Batch(DetectionBatch),
    Heartbeat(Heartbeat),
    Status(NodeStatus),
    Events(edgeqi_shared::protocol::EventBatch),
    Snapshot(Box<edgeqi_shared::protocol::Snapshot>),
    Reject {
        node_id: Option<String>,
        reason: RejectReason,
    },
    Ignore,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Publish>) {
        let mut group: Vec<Publish> = Vec::new();
        while let Some(p) = rx.recv().await {
            // Group commit: everything queued while the last group was being
            // stored goes into the next transaction, so the commit cost is
            // shared and throughput grows with load instead of latency.
            group.push(p);
            while group.len() < GROUP_MAX_PUBLISHES {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            metrics::histogram!("edgeqi_ingest_group_publishes").record(group.len() as f64);
            self.handle_group(&group).await;
            // Everything in the group is committed: now release the broker's copies.
            for p in group.drain(..) {
                if let Err(e) = self.client.ack(&p).await {
                    tracing::warn!(error = %e, "cannot queue PUBACK");
                }
            }
        }
    }

    /// Runs a storage call until it succeeds or the database refuses the
    /// data. Errors of the database itself (connection, disk full, timeout)
    /// are retried with backoff and never drop data: nothing is acknowledged
    /// meanwhile, so agents keep their outbox and the broker keeps its copy.
    /// A refusal (the data, not the database) comes back at once, for the
    /// caller to dead-letter that payload alone.
    async fn store<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match f().await {
                Ok(v) => {
                    if self.health.store_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("storage is back; acknowledging again");
                    }
                    return Ok(v);
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    self.health.store_failing.store(true, Ordering::Relaxed);
                    metrics::counter!("edgeqi_ingest_store_errors_total").increment(1);
                    tracing::error!(error = %e, what, retry_in_ms = backoff.as_millis() as u64, "cannot store; not acknowledging until it works");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stores `items` in as few calls of `f` as possible. When the database
    /// refuses a call, the items are halved until each refused one is alone,
    /// so one hostile payload costs a few extra transactions and never holds
    /// back the rest of the group. Returns, in item order, each stored range
    /// with its result and each refused item (a range of one) with the refusal.
    async fn store_isolating<T, R>(
        &self,
        what: &str,
        items: &[T],
        f: impl for<'a> Fn(&'a [T]) -> BoxFuture<'a, Result<R, StoreError>>,
    ) -> Vec<(std::ops::Range<usize>, Result<R, StoreError>)> {
        let mut done = Vec::new();
        let mut todo = Vec::new();
        todo.push(0..items.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            match self.store(what, || f(&items[range.clone()])).await {
                Err(e) if range.len() > 1 => {
                    tracing::debug!(error = %e, what, items = range.len(), "group refused; isolating the payload");
                    let mid = range.start + range.len() / 2;
                    // Pushed last, popped first: results stay in item order.
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                result => done.push((range, result)),
            }
        }
        done
    }

    /// Keeps a refused payload in the dead-letter table with its reason.
    async fn reject(&self, p: &Publish, node_id: Option<&str>, reason: &RejectReason) {
        tracing::warn!(topic = %p.topic, node_id, reason = reason.code(), detail = %reason, bytes = p.payload.len(), "payload rejected");
        metrics::counter!("edgeqi_ingest_rejected_total", "reason" => reason.code()).increment(1);
        let detail = reason.to_string();
        let stored = self
            .store("dead letter", || {
                self.store
                    .dead_letter(&p.topic, node_id, reason.code(), &detail, &p.payload)
            })
            .await;
        if let Err(e) = stored {
            // Even the dead-letter row was refused (text the database cannot
            // hold): the log line above is all that is left of it.
            metrics::counter!("edgeqi_ingest_dead_letters_refused_total").increment(1);
            tracing::error!(topic = %p.topic.escape_debug(), error = %e, "cannot keep the rejected payload as a dead letter; dropped");
        }
    }

    async fn handle_group(&self, group: &[Publish]) {
        let window = TimeWindow::around(chrono::Utc::now(), self.max_age, self.max_clock_skew);
        let mut batches = Vec::new();
        let mut batch_sources = Vec::new();
        let mut heartbeats = Vec::new();
        let mut heartbeat_sources = Vec::new();
        for p in group {
            match self.classify(p, &window) {
                Item::Batch(b) => {
                    batches.push(b);
                    batch_sources.push(p);
                }
                Item::Heartbeat(hb) => {
                    heartbeats.push(hb);
                    heartbeat_sources.push(p);
                }
                Item::Status(st) => {
                    if let Err(e) = self
                        .store("node status", || self.store.record_status(&st))
                        .await
                    {
                        let reason = RejectReason::StoreRefused(e.to_string());
                        self.reject(p, Some(&st.node_id), &reason).await;
                        continue;
                    }
                    tracing::info!(node_id = %st.node_id, online = st.online, "node status");
                    self.live.send(LiveEvent::NodeStatus(NodeStatusEvent {
                        node_id: st.node_id,
                        online: st.online,
                        cause: "status".into(),
                    }));
                }
                Item::Reject { node_id, reason } => {
                    self.reject(p, node_id.as_deref(), &reason).await;
                }
                Item::Events(batch) => {
                    if let Some(events) = &self.events {
                        let n = batch.events.len() as u64;
                        if let Err(e) = self
                            .store("track events", || events.record_events(batch.clone()))
                            .await
                        {
                            let reason = RejectReason::StoreRefused(e.to_string());
                            self.reject(p, Some(&batch.node_id), &reason).await;
                            continue;
                        }
                        metrics::counter!("edgeqi_ingest_track_events_total").increment(n);
                        // Stored: now alert rules may see them.
                        if let Some(feed) = self.alerts.as_ref().filter(|f| f.wants()) {
                            feed.offer(crate::alerts::Observation::from_events(&batch));
                        }
                        if let Ok(v) = serde_json::to_value(&batch) {
                            self.live.send(LiveEvent::TrackEvents(v));
                        }
                    }
                }
                Item::Snapshot(snap) => {
                    if let Some(events) = &self.events {
                        let node_id = snap.node_id.clone();
                        if let Err(e) = self
                            .store("snapshot", || events.record_snapshot(&snap))
                            .await
                        {
                            let reason = RejectReason::StoreRefused(e.to_string());
                            self.reject(p, Some(&node_id), &reason).await;
                        }
                    }
                }
                Item::Ignore => {}
            }
        }
        if !heartbeats.is_empty() {
            let store = &self.store;
            let stored = self
                .store_isolating("heartbeats", &heartbeats, |hbs| {
                    let store = store.clone();
                    Box::pin(async move { store.record_heartbeats(hbs).await })
                })
                .await;
            for (range, result) in stored {
                let hbs = &heartbeats[range.clone()];
                if let Err(e) = result {
                    let reason = RejectReason::StoreRefused(e.to_string());
                    self.reject(
                        heartbeat_sources[range.start],
                        Some(&hbs[0].node_id),
                        &reason,
                    )
                    .await;
                    continue;
                }
                metrics::counter!("edgeqi_ingest_heartbeats_total").increment(hbs.len() as u64);
                if self.live.is_watched() {
                    for hb in hbs {
                        if let Ok(v) = serde_json::to_value(hb) {
                            self.live.send(LiveEvent::Heartbeat(v));
                        }
                    }
                }
            }
        }
        // Split into transactions of bounded size so one commit never holds
        // acks back for long.
        let mut start = 0;
        while start < batches.len() {
            let mut end = start;
            let mut rows = 0;
            while end < batches.len()
                && (end == start
                    || rows + batches[end].detections.len() <= self.group_max_detections)
            {
                rows += batches[end].detections.len();
                end += 1;
            }
            let chunk = &batches[start..end];
            let store = &self.store;
            let stored = self
                .store_isolating("detection batches", chunk, |part| {
                    let store = store.clone();
                    Box::pin(async move { store.ingest_batches(part).await })
                })
                .await;
            for (range, result) in stored {
                match result {
                    Ok(outcomes) => self.acknowledge(&chunk[range], outcomes).await,
                    Err(e) => {
                        // Not acknowledged end to end: the ledger shows the
                        // hole, the dead letter says why.
                        let reason = RejectReason::StoreRefused(e.to_string());
                        let batch = &chunk[range.start];
                        self.reject(
                            batch_sources[start + range.start],
                            Some(&batch.node_id),
                            &reason,
                        )
                        .await;
                    }
                }
            }
            start = end;
        }
    }

    fn classify(&self, p: &Publish, window: &TimeWindow) -> Item {
        if let Some((node_id, kind)) = edgeqi_shared::topic::AnalyticsKind::parse_topic(&p.topic) {
            return self.classify_analytics(p, node_id, kind, window);
        }
        let Some((node_id, kind)) = Topic::parse_lenient(&p.topic) else {
            // Outside our tree (the # filter only matches our prefix, so this
            // is a kind we do not know): keep it for inspection.
            return Item::Reject {
                node_id: None,
                reason: RejectReason::BadTopic(p.topic.clone()),
            };
        };
        match kind {
            // Our own outgoing traffic, echoed back by the wildcard.
            TopicKind::Ack | TopicKind::Config => return Item::Ignore,
            _ => {}
        }
        if !is_valid_node_id(&node_id) {
            return Item::Reject {
                node_id: None,
                reason: RejectReason::BadTopic(p.topic.clone()),
            };
        }
        let reject = |reason| Item::Reject {
            node_id: Some(node_id.clone()),
            reason,
        };
        match kind {
            TopicKind::Detections => {
                match decode_within::<DetectionBatch>(
                    &node_id,
                    &p.payload,
                    self.max_payload,
                    window,
                ) {
                    Ok(b) => Item::Batch(b),
                    Err(r) => reject(r),
                }
            }
            TopicKind::Heartbeat => {
                match decode_within::<Heartbeat>(&node_id, &p.payload, self.max_payload, window) {
                    Ok(hb) => Item::Heartbeat(hb),
                    Err(r) => reject(r),
                }
            }
            // An empty retained payload clears the retained status: not an error.
            TopicKind::Status if p.payload.is_empty() => Item::Ignore,
            TopicKind::Status => {
                match decode_within::<NodeStatus>(&node_id, &p.payload, self.max_payload, window) {
                    Ok(st) => Item::Status(st),
                    Err(r) => reject(r),
                }
            }
            TopicKind::Ack | TopicKind::Config => Item::Ignore,
        }
    }

    /// Tracker events and snapshots (best effort, outside the ledger).
    fn classify_analytics(
        &self,
        p: &Publish,
        node_id: String,
        kind: edgeqi_shared::topic::AnalyticsKind,
        window: &TimeWindow,
    ) -> Item {
        use edgeqi_shared::protocol::{EventBatch, Snapshot};
        use edgeqi_shared::topic::AnalyticsKind;
        let reject = |reason| Item::Reject {
            node_id: Some(node_id.clone()),
            reason,
        };
        if self.events.is_none() {
            return reject(RejectReason::BadTopic(p.topic.clone()));
        }
        match kind {
            AnalyticsKind::Events => {
                match decode_within::<EventBatch>(&node_id, &p.payload, self.max_payload, window) {
                    Ok(b) => Item::Events(b),
                    Err(r) => reject(r),
                }
            }
            AnalyticsKind::Snapshots => {
                match decode_within::<Snapshot>(&node_id, &p.payload, self.max_payload, window) {
                    Ok(s) => Item::Snapshot(Box::new(s)),
                    Err(r) => reject(r),
                }
            }
        }
    }

    /// The batches are committed: now, and only now, acknowledge them end to
    /// end. One ack per (node, epoch) carries the highest contiguous seq,
    /// which covers every batch of that epoch in the group.
    async fn acknowledge(&self, batches: &[DetectionBatch], outcomes: Vec<IngestOutcome>) {
        let mut acks: Vec<(&str, &str, u64)> = Vec::new();
        let watched = self.live.is_watched();
        // Committed detections for alert rules, handed over once per chunk.
        let alerting = self.alerts.as_ref().filter(|f| f.wants());
        let mut observations = Vec::new();
        for (batch, outcome) in batches.iter().zip(outcomes) {
            if alerting.is_some() && !outcome.duplicate {
                crate::alerts::Observation::from_detections(
                    batch,
                    &outcome.detection_ids,
                    &mut observations,
                );
            }
            if outcome.duplicate {
                metrics::counter!("edgeqi_ingest_duplicates_total").increment(1);
                tracing::debug!(node_id = %batch.node_id, seq = batch.seq, "duplicate batch, re-acking");
            } else {
                metrics::counter!("edgeqi_ingest_batches_total").increment(1);
                metrics::counter!("edgeqi_ingest_detections_total")
                    .increment(batch.detections.len() as u64);
            }
            match acks
                .iter_mut()
                .find(|(n, e, _)| *n == batch.node_id && *e == batch.epoch)
            {
                Some(a) => a.2 = a.2.max(outcome.acked_seq),
                None => acks.push((&batch.node_id, &batch.epoch, outcome.acked_seq)),
            }
            if watched {
                for (d, id) in batch.detections.iter().zip(outcome.detection_ids) {
                    self.live.send(LiveEvent::Detection(StoredDetection {
                        id,
                        node_id: batch.node_id.clone(),
                        ts: d.ts,
                        camera_id: d.camera_id.clone(),
                        class_id: d.class_id,
                        label: d.label.clone(),
                        score: d.score,
                        bbox: d.bbox,
                        track_id: d.track_id,
                        zone: d.zone.clone(),
                    }));
                }
            }
        }
        if let Some(feed) = alerting {
            feed.offer(observations);
        }
        for (node_id, epoch, acked_seq) in acks {
            let ack = Ack {
                v: edgeqi_shared::PROTOCOL_VERSION,
                node_id: node_id.to_owned(),
                epoch: epoch.to_owned(),
                acked_seq,
            };
            let topic = Topic::new(node_id, TopicKind::Ack).to_string();
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, encode(&ack))
                .await
            {
                // The agent resends after its ack timeout and gets a fresh ack.
                tracing::warn!(error = %e, "cannot queue ack");
            }
        }
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

#[cfg(test)]
#[path = "ingest_tests.rs"]
mod tests;
