//! The evaluator: one task that takes committed observations off the
//! [`AlertFeed`](super::AlertFeed) queue, checks them against the enabled
//! rules of the observing node's tenant, keeps each rule's window and
//! cooldown, and runs a firing rule's actions (incident, live `alert`
//! message, webhook).
//!
//! Only this task touches windows, so they need no locks; actions that wait
//! on the network (webhooks) run in their own tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::store::ListQuery;
use super::webhook::{Job, WebhookSender};
use super::{Alerts, CompiledSchedule, Evidence, Firing, Observation, StoredRule, Window};
use crate::accounts::{AccountStore, AuditRecord};
use crate::incidents::{Incidents, NewIncident};
use crate::live::{LiveBus, LiveEvent};

/// What the actions need from the rest of the aggregator.
#[derive(Debug, Clone)]
pub struct EngineDeps {
    pub incidents: Arc<Incidents>,
    pub live: LiveBus,
    pub accounts: Arc<dyn AccountStore>,
    /// Camera locations: an alert's incident is placed at the camera that saw it.
    pub registry: crate::registry::Registry,
}

/// How often rules and node tenants are re-read even without a change signal
/// (nodes are provisioned elsewhere).
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// An unknown node triggers a tenant refresh at most this often.
const UNKNOWN_NODE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct ActiveRule {
    rule: StoredRule,
    schedule: Option<CompiledSchedule>,
}

/// Owns the receiving end of the feed; [`Evaluator::run`] is the task.
#[derive(Debug)]
pub struct Evaluator {
    alerts: Arc<Alerts>,
    rx: mpsc::Receiver<Vec<Observation>>,
}

impl Evaluator {
    pub(super) fn new(alerts: Arc<Alerts>, rx: mpsc::Receiver<Vec<Observation>>) -> Self {
        Self { alerts, rx }
    }

    /// Runs until `shutdown` turns true (or every feed is dropped).
    pub async fn run(self, deps: EngineDeps, mut shutdown: watch::Receiver<bool>) {
        let Evaluator { alerts, mut rx } = self;
        let sender = WebhookSender::new(alerts.store.clone(), alerts.settings.clone());
        let mut state = State {
            alerts: alerts.clone(),
            deps,
            sender,
            rules: Vec::new(),
            windows: HashMap::new(),
            node_tenants: HashMap::new(),
            tenants_loaded: None,
        };
        state.reload().await;
        state.resume_deliveries().await;
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                // A rule change is applied before any observation queued after it.
                biased;
                // (The guard `wait_for` returns must not live across the awaits below.)
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                () = alerts.changed().notified() => state.reload().await,
                _ = tick.tick() => state.reload().await,
                batch = rx.recv() => match batch {
                    Some(batch) => state.evaluate(batch).await,
                    None => return,
                },
            }
        }
    }
}

struct State {
    alerts: Arc<Alerts>,
    deps: EngineDeps,
    sender: WebhookSender,
    rules: Vec<ActiveRule>,
    /// Per rule: the version (`updated_at`) the window was built for, and the window.
    windows: HashMap<i64, (DateTime<Utc>, Window)>,
    node_tenants: HashMap<String, i64>,
    tenants_loaded: Option<Instant>,
}

impl State {
    async fn reload(&mut self) {
        match self.alerts.store.rules(&ListQuery::default()).await {
            Ok(rules) => {
                let last_fired = self.alerts.store.last_fired().await.unwrap_or_default();
                self.rules = rules
                    .into_iter()
                    .filter(|r| r.spec.enabled)
                    .filter_map(|rule| {
                        let schedule = match &rule.spec.schedule {
                            None => None,
                            Some(s) => match s.compile() {
                                Ok(c) => Some(c),
                                Err(e) => {
                                    tracing::error!(rule = rule.id, error = %e, "stored schedule does not compile; rule skipped");
                                    return None;
                                }
                            },
                        };
                        Some(ActiveRule { rule, schedule })
                    })
                    .collect();
                // Windows of deleted or changed rules start afresh; cooldowns
                // come from the alert history so they survive both.
                let keep: HashMap<i64, DateTime<Utc>> = self
                    .rules
                    .iter()
                    .map(|r| (r.rule.id, r.rule.updated_at))
                    .collect();
                self.windows
                    .retain(|id, (version, _)| keep.get(id) == Some(&*version));
                for r in &self.rules {
                    let (_, w) = self
                        .windows
                        .entry(r.rule.id)
                        .or_insert_with(|| (r.rule.updated_at, Window::default()));
                    if let Some(t) = last_fired.get(&r.rule.id) {
                        w.last_fired = Some(w.last_fired.map_or(*t, |l| l.max(*t)));
                    }
                }
                self.alerts.set_enabled_rules(self.rules.len());
                metrics::gauge!("edgeqi_alert_rules_enabled").set(self.rules.len() as f64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot load alert rules; keeping the old ones"),
        }
        self.refresh_tenants().await;
    }

    async fn refresh_tenants(&mut self) {
        let accounts = &self.deps.accounts;
        let mut map = HashMap::new();
        match accounts.tenants().await {
            Ok(tenants) => {
                for t in tenants {
                    match accounts.tenant_nodes(t.id).await {
                        Ok(nodes) => map.extend(nodes.into_iter().map(|n| (n, t.id))),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load node tenants");
                            return;
                        }
                    }
                }
                self.node_tenants = map;
                self.tenants_loaded = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "cannot load tenants"),
        }
    }

    /// Deliveries a restart interrupted are picked up where they stopped.
    async fn resume_deliveries(&self) {
        let pending = match self.alerts.store.pending_deliveries().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending webhook deliveries");
                return;
            }
        };
        for p in pending {
            let rule = self.alerts.store.rule(p.rule_id).await.ok().flatten();
            match rule.and_then(|r| r.spec.actions.webhook) {
                Some(w) => {
                    tracing::info!(
                        delivery = p.id,
                        attempts = p.attempts_made,
                        "resuming webhook delivery"
                    );
                    self.sender.spawn(Job {
                        delivery_id: p.id,
                        url: p.url,
                        secret: w.secret,
                        body: p.body,
                        max_attempts: w.max_attempts,
                        attempts_made: p.attempts_made,
                    });
                }
                None => {
                    let _ = self
                        .alerts
                        .store
                        .abandon_delivery(p.id, "the rule or its webhook was removed")
                        .await;
                }
            }
        }
    }

    async fn evaluate(&mut self, batch: Vec<Observation>) {
        if self.rules.is_empty() {
            return;
        }
        let unknown = batch
            .iter()
            .any(|o| !self.node_tenants.contains_key(&o.node_id));
        if unknown
            && self
                .tenants_loaded
                .is_none_or(|t| t.elapsed() >= UNKNOWN_NODE_REFRESH)
        {
            self.refresh_tenants().await;
        }
        let oldest = Utc::now()
            - chrono::Duration::from_std(self.alerts.settings.max_age)
                .unwrap_or(chrono::Duration::minutes(15));
        let mut firings = Vec::new();
        for o in &batch {
            if o.ts < oldest {
                metrics::counter!("edgeqi_alert_observations_stale_total").increment(1);
                continue;
            }
            let tenant = self.node_tenants.get(&o.node_id).copied();
            for (i, r) in self.rules.iter().enumerate() {
                let spec = &r.rule.spec;
                // A tenant's rule sees its tenant's nodes; a global rule sees all.
                if r.rule.tenant_id.is_some_and(|t| Some(t) != tenant) || !spec.matches(o) {
                    continue;
                }
                if r.schedule.is_some_and(|s| !s.allows(o.ts)) {
                    continue;
                }
                let (_, window) = self
                    .windows
                    .entry(r.rule.id)
                    .or_insert_with(|| (r.rule.updated_at, Window::default()));
                if let Some(f) = window.observe(
                    o.ts,
                    o.object.clone(),
                    o.evidence.clone(),
                    spec.threshold,
                    chrono::Duration::seconds(i64::from(spec.window_s)),
                    chrono::Duration::seconds(i64::from(spec.cooldown_s)),
                ) {
                    firings.push((i, o.clone(), f));
                }
            }
        }
        for (i, o, f) in firings {
            let rule = self.rules[i].rule.clone();
            self.fire(&rule, &o, f).await;
        }
    }

    async fn fire(&self, rule: &StoredRule, o: &Observation, f: Firing) {
        let spec = &rule.spec;
        let now = Utc::now();
        metrics::counter!("edgeqi_alerts_fired_total", "kind" => match spec.kind {
            super::RuleKind::Threshold => "threshold",
            super::RuleKind::Watchlist => "watchlist",
        })
        .increment(1);
        let what = match (&spec.zone, &spec.line) {
            (_, Some(l)) => format!(" crossing {l}"),
            (Some(z), None) => format!(" in {z}"),
            _ => String::new(),
        };
        let title = format!(
            "{}: {} {}{what} on {}/{}",
            spec.name, f.count, o.label, o.node_id, o.camera_id
        );
        let mut incident_id = None;
        let mut incident_created = false;
        // Every incident belongs to a tenant when it can: a global rule's
        // incident is the observing node's tenant's, so that tenant's
        // operators can work it (the alert itself stays the rule's).
        let incident_tenant = rule
            .tenant_id
            .or_else(|| self.node_tenants.get(&o.node_id).copied());
        if let Some(action) = &spec.actions.incident {
            let svc = &self.deps.incidents;
            // Where the triggering camera stands, when the registry knows:
            // dedup by distance and hotspots then work for alerts as for
            // reports. Unregistered or unplaced cameras give no location.
            let location = match self.deps.registry.camera(&o.node_id, &o.camera_id).await {
                Ok(camera) => camera.and_then(|c| c.location),
                Err(e) => {
                    tracing::warn!(rule = rule.id, node_id = %o.node_id, camera_id = %o.camera_id, error = %e, "cannot read the camera's location; the incident gets none");
                    None
                }
            };
            let sla = svc.sla.sla(&action.category, action.severity);
            match svc
                .store
                .open_or_join(
                    NewIncident {
                        tenant_id: incident_tenant,
                        category: action.category.clone(),
                        severity: action.severity,
                        title: title.clone(),
                        lat: location.map(|l| l.lat),
                        lng: location.map(|l| l.lng),
                        source: "alert".into(),
                    },
                    svc.dedup,
                    sla,
                )
                .await
            {
                Ok((incident, created)) => {
                    incident_id = Some(incident.id);
                    incident_created = created;
                    self.deps
                        .live
                        .send(LiveEvent::Incident(incident.to_json(now)));
                }
                Err(e) => {
                    tracing::error!(rule = rule.id, error = %e, "alert could not open an incident")
                }
            }
        }
        let (detections, events): (Vec<_>, Vec<_>) = f
            .evidence
            .iter()
            .partition(|e| matches!(e, Evidence::Detection(_)));
        let mut body = json!({
            "rule_id": rule.id,
            "rule_name": spec.name,
            "kind": spec.kind,
            "tenant_id": rule.tenant_id,
            "fired_at": now,
            "trigger_ts": o.ts,
            "on": spec.on,
            "node_id": o.node_id,
            "camera_id": o.camera_id,
            "label": o.label,
            "score": o.score,
            "zone": o.zone,
            "line": o.line,
            "direction": o.direction,
            "count": f.count,
            "threshold": spec.threshold,
            "window_s": spec.window_s,
            "title": title,
            "incident_id": incident_id,
            "detection_ids": detections.iter().filter_map(|e| match e { Evidence::Detection(id) => Some(*id), _ => None }).collect::<Vec<_>>(),
            "event_ids": events.iter().filter_map(|e| match e { Evidence::Event(id) => Some(id.clone()), _ => None }).collect::<Vec<_>>(),
        });
        let id = match self
            .alerts
            .store
            .record_alert(rule.id, rule.tenant_id, o.ts, incident_id, body.clone())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                // Without a stored alert there is nothing to point a webhook or client at.
                tracing::error!(rule = rule.id, error = %e, "cannot record the alert");
                return;
            }
        };
        body["id"] = json!(id);
        tracing::info!(alert = id, rule = rule.id, count = f.count, node_id = %o.node_id, camera_id = %o.camera_id, incident = incident_id, "alert fired");
        if let Some(incident) = incident_id {
            let record = AuditRecord {
                actor: format!("alert-rule:{}", rule.id),
                tenant_id: incident_tenant,
                action: if incident_created {
                    "incident.create"
                } else {
                    "incident.join"
                }
                .into(),
                target: format!("incident:{incident}"),
                before: None,
                after: Some(json!({"alert": id})),
                remote_addr: None,
            };
            if let Err(e) = self.deps.accounts.audit(record).await {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
        if spec.actions.websocket {
            self.deps.live.send(LiveEvent::Alert(body.clone()));
        }
        if let Some(hook) = &spec.actions.webhook {
            let payload = json!({"type": "alert", "data": body}).to_string();
            match self
                .alerts
                .store
                .create_delivery(id, rule.id, rule.tenant_id, &hook.url, &payload)
                .await
            {
                Ok(delivery_id) => self.sender.spawn(Job {
                    delivery_id,
                    url: hook.url.clone(),
                    secret: hook.secret.clone(),
                    body: payload,
                    max_attempts: hook.max_attempts,
                    attempts_made: 0,
                }),
                Err(e) => {
                    tracing::error!(alert = id, error = %e, "cannot log the webhook delivery; not sending")
                }
            }
        }
    }
}
