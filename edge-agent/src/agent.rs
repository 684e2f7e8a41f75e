//! The running agent: wires pipelines, batcher, outbox, delivery and uplink
//! together in one loop, and shuts them down in order.
//!
//! One task owns the outbox and the delivery window, so there are no locks
//! around the ledger. SQLite calls are made inline: they are a few
//! milliseconds at most, about once per batch or ack.
//!
//! Shutdown (SIGTERM/SIGINT): stop the cameras, seal the open batch into
//! the outbox, give the aggregator up to [`DRAIN_TIMEOUT`] to ack what is
//! pending, publish `online:false`, disconnect. What stays unacked stays in
//! the outbox for the next start.

use std::time::{Duration, Instant};

use anyhow::Context;
use edgeqi_shared::protocol::{decode, DEFAULT_MAX_PAYLOAD_BYTES};
use edgeqi_shared::protocol::{EventBatch, LineCount, Snapshot, TrackEvent};
use edgeqi_shared::{Ack, Detection, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{interval, sleep_until, MissedTickBehavior};

use crate::batcher::Batcher;
use crate::config::{AgentConfig, CameraConfig};
use crate::delivery::{AckResult, Delivery};
use crate::heartbeat::{AgentState, SystemProbe};
use crate::outbox::{Appended, Outbox, OutboxError};
use crate::pipeline::{Analytics, Pipelines};
use crate::remote_config::{Received, RemoteConfigState};
use crate::uplink::{Session, Uplink, UplinkEvent};
use crate::{detect, systemd};

/// How long shutdown waits for pending batches to be acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the delivery window checks for ack timeouts and deferred sends.
const DELIVERY_TICK: Duration = Duration::from_millis(250);
/// Detections buffered between the cameras and the batcher.
const DETECTION_CHANNEL: usize = 4096;
/// Events, line counts and snapshots buffered between the cameras and the uplink.
const ANALYTICS_CHANNEL: usize = 1024;
/// Track events are sent at least this often (and when 200 are waiting).
const EVENT_FLUSH: Duration = Duration::from_secs(1);
const EVENT_BATCH_MAX: usize = 200;

/// Track events and line counts waiting to be published together.
#[derive(Debug, Default)]
struct PendingEvents {
    events: Vec<TrackEvent>,
    line_counts: Vec<LineCount>,
}

impl PendingEvents {
    fn add(&mut self, a: Analytics, uplink: &Uplink, node_id: &str) {
        match a {
            Analytics::Event(e) => self.events.push(e),
            Analytics::LineCounts(counts) => {
                for c in counts {
                    // Totals: the newest replaces an older one of the same key.
                    self.line_counts.retain(|o| {
                        (&o.camera_id, &o.line, &o.label, &o.direction)
                            != (&c.camera_id, &c.line, &c.label, &c.direction)
                    });
                    self.line_counts.push(c);
                }
            }
            Analytics::Snapshot(s) => uplink.publish_snapshot(&s),
        }
        if self.events.len() >= EVENT_BATCH_MAX {
            self.flush(uplink, node_id);
        }
    }

    fn flush(&mut self, uplink: &Uplink, node_id: &str) {
        if self.events.is_empty() && self.line_counts.is_empty() {
            return;
        }
        uplink.publish_events(&EventBatch {
            v: PROTOCOL_VERSION,
            node_id: node_id.to_owned(),
            sent_at: chrono::Utc::now(),
            events: std::mem::take(&mut self.events),
            line_counts: std::mem::take(&mut self.line_counts),
        });
    }
}

struct Agent {
    config: AgentConfig,
    outbox: Outbox,
    delivery: Delivery,
    uplink: Uplink,
    batcher: Batcher,
    /// The remote config from the aggregator and the cameras as the config
    /// file has them (what a camera falls back to when the remote config
    /// stops listing it).
    remote: RemoteConfigState,
    local_cameras: Vec<CameraConfig>,
    config_hold: ConfigHold,
}

/// First and longest wait before subscribing to the config topic again
/// after it delivered a message above `mqtt.max_packet_size`.
const CONFIG_HOLD_MIN: Duration = Duration::from_secs(60);
const CONFIG_HOLD_MAX: Duration = Duration::from_secs(3600);

/// The config subscription held back after an oversized message (see
/// [`UplinkEvent::Oversized`]): without it the broker would hand the same
/// retained message over after every reconnect and the uplink would never
/// stay up. Retried with doubling waits, so a fixed config gets through.
#[derive(Debug)]
struct ConfigHold {
    until: Option<Instant>,
    next: Duration,
}

impl ConfigHold {
    fn new() -> Self {
        Self {
            until: None,
            next: CONFIG_HOLD_MIN,
        }
    }

    fn hold(&mut self, now: Instant) -> Duration {
        let wait = self.next;
        self.until = Some(now + wait);
        self.next = (self.next * 2).min(CONFIG_HOLD_MAX);
        wait
    }

    fn holding(&self) -> bool {
        self.until.is_some()
    }

    /// True once when the wait is over (the caller subscribes again).
    fn expired(&mut self, now: Instant) -> bool {
        match self.until {
            Some(t) if now >= t => {
                self.until = None;
                true
            }
            _ => false,
        }
    }
}

impl Agent {
    /// Seals `detections` into the outbox and sends it if the window allows.
    fn store(&mut self, detections: Vec<Detection>) {
        let n = detections.len();
        match self.outbox.append(detections) {
            Ok(Appended::Stored { seq }) => {
                tracing::debug!(seq, detections = n, "batch stored");
                report(
                    self.delivery
                        .on_appended(&self.outbox, &mut self.uplink, Instant::now()),
                );
            }
            Ok(Appended::Empty | Appended::Shed { .. }) => {}
            Err(e) => tracing::error!(error = %e, detections = n,
                "could not write a batch to the outbox; these detections are lost"),
        }
    }

    /// Handles one uplink event; true when a remote config arrived that was
    /// applied or refused (the cameras and the aggregator should hear of it).
    fn handle(&mut self, event: UplinkEvent) -> bool {
        let now = Instant::now();
        match event {
            UplinkEvent::Connected => {
                self.uplink.announce(!self.config_hold.holding());
                let backlog = self.outbox.backlog().unwrap_or(0);
                if backlog > 0 {
                    tracing::info!(backlog, "sending unacknowledged batches");
                }
                report(
                    self.delivery
                        .on_connected(&self.outbox, &mut self.uplink, now),
                );
            }
            UplinkEvent::Disconnected => self.delivery.on_disconnected(),
            UplinkEvent::Oversized { bytes, limit } => {
                self.remote.refuse_oversized(bytes, limit);
                let wait = self.config_hold.hold(now);
                tracing::warn!(retry_in = ?wait, "holding the remote config subscription back");
            }
            UplinkEvent::Message { topic, payload } if topic == self.uplink.topics().config => {
                let received = self.remote.receive(&payload);
                if matches!(
                    received,
                    Received::Applied { .. } | Received::Unchanged { .. }
                ) {
                    self.config_hold = ConfigHold::new();
                }
                return matches!(received, Received::Applied { .. } | Received::Rejected(_));
            }
            UplinkEvent::Message { topic, payload } => {
                if topic != self.uplink.topics().ack {
                    tracing::debug!(%topic, "ignoring a message on an unexpected topic");
                    return false;
                }
                let ack: Ack = match decode(
                    &self.config.node_id,
                    &payload,
                    DEFAULT_MAX_PAYLOAD_BYTES,
                ) {
                    Ok(a) => a,
                    Err(reason) => {
                        tracing::warn!(%topic, code = reason.code(), %reason, "ignoring a malformed ack");
                        return false;
                    }
                };
                match self
                    .delivery
                    .on_ack(&ack, &mut self.outbox, &mut self.uplink, now)
                {
                    Ok(AckResult::Advanced { acked_seq, deleted }) => {
                        tracing::debug!(acked_seq, deleted, "ack");
                    }
                    Ok(AckResult::Stale | AckResult::OtherEpoch) => {}
                    Err(e) => tracing::error!(error = %e, "could not apply an ack to the outbox"),
                }
            }
        }
        false
    }

    /// Publishes a heartbeat now (when connected).
    fn heartbeat(&self, probe: &mut SystemProbe, pipelines: &Pipelines, detector: &str) {
        if !self.delivery.is_connected() {
            return;
        }
        let hb = probe.heartbeat(AgentState {
            node_id: &self.config.node_id,
            interval_s: self
                .config
                .heartbeat_interval
                .as_secs()
                .clamp(1, u64::from(u32::MAX)) as u32,
            detector,
            fps: pipelines.fps(),
            outbox: self
                .outbox
                .health()
                .map_err(|e| tracing::warn!(error = %e, "outbox health unavailable"))
                .ok(),
            cameras: pipelines.health(),
            config_version: self.remote.version(),
            config_error: self.remote.rejection().cloned(),
            config_unknown_cameras: self.remote.unknown_cameras(&self.local_cameras),
        });
        self.uplink.publish_heartbeat(&hb);
    }

    /// Hands the cameras what the remote config now says about them.
    fn reconfigure_cameras(&self, pipelines: &mut Pipelines) {
        let changed = pipelines.reconfigure(&self.remote.settings(&self.local_cameras));
        let unknown = self.remote.unknown_cameras(&self.local_cameras);
        if !unknown.is_empty() {
            tracing::warn!(?unknown, "the remote config names cameras this agent does not have; add them to the config file or fix their ids in the registry");
        }
        tracing::info!(version = ?self.remote.version(), ?changed, "remote config in effect");
    }
}

fn report(r: Result<(), OutboxError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "outbox read failed while sending");
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(mut config: AgentConfig) -> anyhow::Result<()> {
    let outbox_path = config.outbox_path();
    let outbox = Outbox::open(&outbox_path, config.outbox.max_bytes)?;
    tracing::info!(
        node_id = %config.node_id,
        outbox = %outbox_path.display(),
        epoch = outbox.epoch(),
        backlog = outbox.backlog()?,
        "outbox open"
    );
    // The saved remote config applies from the first frame, broker or not.
    let remote = RemoteConfigState::load(
        &config.data_dir,
        &config.node_id,
        config.mqtt.max_packet_size as usize,
    );
    let local_cameras = config.cameras.clone();
    config.cameras = remote.merged(&local_cameras);
    detect::announce(&config);
    let detector_name = detect::name(&config);
    if config.cameras.is_empty() {
        tracing::warn!("no cameras configured: add [[cameras]] to the config or pass --source; only heartbeats will be sent");
    }

    let (det_tx, mut det_rx) = mpsc::channel(DETECTION_CHANNEL);
    let (an_tx, mut an_rx) = mpsc::channel(ANALYTICS_CHANNEL);
    let mut pipelines =
        Pipelines::start(&config, det_tx, Some(an_tx)).context("cannot start camera threads")?;
    let mut pending_events = PendingEvents::default();
    let mut event_flush = interval(EVENT_FLUSH);
    event_flush.set_missed_tick_behavior(MissedTickBehavior::Delay);

    crate::uplink::install_crypto_provider();
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (uplink, uplink_task) = Uplink::connect(&config, Session::Daemon, ev_tx)?;
    let delivery = Delivery::new(
        &config.node_id,
        &outbox,
        config.outbox.max_inflight,
        config.outbox.ack_timeout,
    )?;
    let batcher = Batcher::new(
        config.outbox.batch_max_detections,
        config.outbox.batch_max_age,
    );
    let mut probe = SystemProbe::new(&config.data_dir);
    let mut agent = Agent {
        config,
        outbox,
        delivery,
        uplink,
        batcher,
        remote,
        local_cameras,
        config_hold: ConfigHold::new(),
    };
    systemd::ready();

    let mut heartbeat = interval(agent.config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut delivery_tick = interval(DELIVERY_TICK);
    delivery_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watchdog_every = systemd::watchdog_interval();
    let mut watchdog = interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut cameras_running = true;

    loop {
        let deadline = agent.batcher.deadline();
        tokio::select! {
            _ = &mut shutdown => break,
            d = det_rx.recv(), if cameras_running => match d {
                Some(d) => {
                    if let Some(batch) = agent.batcher.push(d, Instant::now()) {
                        agent.store(batch);
                    }
                }
                None => {
                    tracing::info!("every camera has stopped; still delivering and sending heartbeats");
                    cameras_running = false;
                }
            },
            a = an_rx.recv(), if cameras_running => {
                if let Some(a) = a {
                    pending_events.add(a, &agent.uplink, &agent.config.node_id);
                }
            }
            _ = event_flush.tick() => pending_events.flush(&agent.uplink, &agent.config.node_id),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                let batch = agent.batcher.seal();
                agent.store(batch);
            }
            ev = ev_rx.recv() => match ev {
                Some(ev) => {
                    if agent.handle(ev) {
                        agent.reconfigure_cameras(&mut pipelines);
                        // Tell the aggregator right away, not at the next tick.
                        agent.heartbeat(&mut probe, &pipelines, &detector_name);
                    }
                }
                None => anyhow::bail!("the MQTT event loop stopped unexpectedly"),
            },
            _ = delivery_tick.tick() => {
                let now = Instant::now();
                let r = agent.delivery.on_tick(&agent.outbox, &mut agent.uplink, now);
                report(r);
                if agent.delivery.is_connected() && agent.config_hold.expired(now) {
                    tracing::info!("subscribing to the remote config again");
                    agent.uplink.subscribe_config();
                }
            }
            _ = heartbeat.tick() => agent.heartbeat(&mut probe, &pipelines, &detector_name),
            _ = watchdog.tick(), if watchdog_every.is_some() => systemd::watchdog_ping(),
        }
    }

    // Shutdown, in order.
    systemd::stopping();
    pipelines.request_stop();
    // Keep draining so no camera stays blocked on a full channel; the
    // channel closes once every camera thread has exited.
    while let Some(d) = det_rx.recv().await {
        if let Some(batch) = agent.batcher.push(d, Instant::now()) {
            agent.store(batch);
        }
    }
    if let Err(e) = tokio::task::spawn_blocking(move || pipelines.join()).await {
        tracing::error!(error = %e, "camera threads did not stop cleanly");
    }
    while let Ok(a) = an_rx.try_recv() {
        pending_events.add(a, &agent.uplink, &agent.config.node_id);
    }
    pending_events.flush(&agent.uplink, &agent.config.node_id);
    let last = agent.batcher.seal();
    agent.store(last);

    let until = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut tick = interval(DELIVERY_TICK);
    while agent.outbox.backlog().unwrap_or(0) > 0 {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            ev = ev_rx.recv() => match ev {
                Some(ev) => {
                    // A config arriving while stopping is applied at the next start.
                    agent.handle(ev);
                }
                None => break,
            },
            _ = tick.tick() => {
                let r = agent.delivery.on_tick(&agent.outbox, &mut agent.uplink, Instant::now());
                report(r);
            }
        }
    }
    let backlog = agent.outbox.backlog().unwrap_or(0);
    if backlog > 0 {
        tracing::warn!(backlog, "stopping with unacknowledged batches; they stay in the outbox and are sent at the next start");
    }
    agent.uplink.publish_status(false);
    agent.uplink.disconnect();
    // Let the event loop flush the status and the disconnect.
    let mut task = uplink_task;
    let give_up = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(give_up);
    let mut events_open = true;
    let flushed = loop {
        tokio::select! {
            r = &mut task => break r.is_ok(),
            _ = &mut give_up => break false,
            // Keep reading so the event loop never blocks on a full channel
            // before it gets to the disconnect.
            ev = ev_rx.recv(), if events_open => events_open = ev.is_some(),
        }
    };
    if !flushed {
        tracing::warn!("broker unreachable at shutdown; the last will marks this node offline");
        task.abort();
    }
    tracing::info!(backlog, "stopped");
    Ok(())
}

/// A recording's results, as `edgeqi-agent process` hands them over.
#[derive(Debug, Default)]
pub struct Recording {
    pub detections: Vec<Detection>,
    pub events: Vec<TrackEvent>,
    pub line_counts: Vec<LineCount>,
    pub snapshots: Vec<Snapshot>,
}

/// What [`deliver_recording`] sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivered {
    pub broker: String,
    /// The outbox the detections went through.
    pub outbox: String,
    pub epoch: String,
    pub detections: u64,
    pub events: u64,
    pub snapshots: u64,
    /// Batches not acknowledged when the wait ended; they stay in the outbox
    /// and go out with the next `process` run. 0: the aggregator has stored
    /// every detection.
    pub unacked_batches: u64,
}

/// Name of the outbox `process` uses, beside the daemon's in `data_dir`:
/// its own ledger (own epoch), so a run never mixes its batches into the
/// sequence of a daemon that may be running at the same time.
pub const RECORDING_OUTBOX: &str = "process-outbox.db";

/// Sends a recording's results the way the daemon sends a camera's:
/// detections in batches through an outbox with the delivery window and the
/// aggregator's acks (so they are stored exactly once, and a run cut short
/// resumes with the next one), then events, line counts and snapshots on
/// their topics. Waits up to `timeout` for the broker and the acks.
pub async fn deliver_recording(
    config: &AgentConfig,
    recording: Recording,
    timeout: Duration,
) -> anyhow::Result<Delivered> {
    let path = config.data_dir.join(RECORDING_OUTBOX);
    let outbox = Outbox::open(&path, config.outbox.max_bytes)?;
    crate::uplink::install_crypto_provider();
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (uplink, uplink_task) = Uplink::connect(config, Session::Recording, ev_tx)?;
    let delivery = Delivery::new(
        &config.node_id,
        &outbox,
        config.outbox.max_inflight,
        config.outbox.ack_timeout,
    )?;
    let mut agent = Agent {
        config: config.clone(),
        outbox,
        delivery,
        uplink,
        batcher: Batcher::new(
            config.outbox.batch_max_detections,
            config.outbox.batch_max_age,
        ),
        // A recording does not subscribe to the remote config.
        remote: RemoteConfigState::empty(
            &config.data_dir,
            &config.node_id,
            config.mqtt.max_packet_size as usize,
        ),
        local_cameras: config.cameras.clone(),
        config_hold: ConfigHold::new(),
    };
    let mut sent = Delivered {
        broker: config.mqtt.url.to_string(),
        outbox: path.display().to_string(),
        epoch: agent.outbox.epoch().to_owned(),
        detections: recording.detections.len() as u64,
        events: recording.events.len() as u64,
        snapshots: recording.snapshots.len() as u64,
        unacked_batches: 0,
    };
    // Into the outbox first: from here on nothing is lost, whatever the broker does.
    for chunk in recording
        .detections
        .chunks(config.outbox.batch_max_detections.max(1))
    {
        agent.store(chunk.to_vec());
    }
    let mut analytics = Some((recording.events, recording.line_counts, recording.snapshots));
    let until = tokio::time::Instant::now() + timeout;
    let mut tick = interval(DELIVERY_TICK);
    loop {
        let connected = agent.delivery.is_connected();
        if connected {
            if let Some((events, mut line_counts, snapshots)) = analytics.take() {
                for chunk in events.chunks(EVENT_BATCH_MAX) {
                    agent.uplink.publish_events(&EventBatch {
                        v: PROTOCOL_VERSION,
                        node_id: config.node_id.clone(),
                        sent_at: chrono::Utc::now(),
                        events: chunk.to_vec(),
                        line_counts: std::mem::take(&mut line_counts),
                    });
                }
                if !line_counts.is_empty() {
                    // No events at all: the counts still go.
                    agent.uplink.publish_events(&EventBatch {
                        v: PROTOCOL_VERSION,
                        node_id: config.node_id.clone(),
                        sent_at: chrono::Utc::now(),
                        events: vec![],
                        line_counts,
                    });
                }
                for s in &snapshots {
                    agent.uplink.publish_snapshot(s);
                }
            }
            if agent.outbox.backlog()? == 0 {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            ev = ev_rx.recv() => match ev {
                Some(ev) => {
                    agent.handle(ev);
                }
                None => break,
            },
            _ = tick.tick() => {
                let r = agent.delivery.on_tick(&agent.outbox, &mut agent.uplink, Instant::now());
                report(r);
            }
        }
    }
    sent.unacked_batches = agent.outbox.backlog()?;
    let reached = analytics.is_none();
    agent.uplink.disconnect();
    let mut task = uplink_task;
    let give_up = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(give_up);
    let mut events_open = true;
    loop {
        tokio::select! {
            _ = &mut task => break,
            _ = &mut give_up => {
                task.abort();
                break;
            }
            ev = ev_rx.recv(), if events_open => events_open = ev.is_some(),
        }
    }
    if !reached {
        anyhow::bail!(
            "could not reach the MQTT broker at {} within {timeout:?}; the {} detections wait in {} for the next run",
            sent.broker,
            sent.detections,
            sent.outbox
        );
    }
    Ok(sent)
}
