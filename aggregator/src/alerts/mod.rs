//! Alert rules and watchlists: what operators want to be told about, checked
//! against every detection and track event after it is committed.
//!
//! - this module: the rule model and its validation, schedules, the sliding
//!   window that counts distinct objects, and [`AlertFeed`], the bounded
//!   hand-off from ingest to the evaluator
//! - [`store`]: rules, fired alerts and the webhook delivery log in SQLite
//! - [`engine`]: the evaluator task (matching, windows, cooldowns, actions)
//! - [`webhook`]: HMAC-signed webhook deliveries with retries
//!
//! Rules and windows work in event time (the detection's `ts`), so a burst
//! of resent backlog is judged by when things were seen, not when they
//! arrived; observations older than [`AlertSettings::max_age`] are skipped
//! so a node coming back after an outage does not fire stale alerts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, Local, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::incidents::Severity;
use crate::store::StoreResult;

pub mod engine;
pub mod store;
pub mod webhook;

#[cfg(test)]
mod tests;

pub use engine::{EngineDeps, Evaluator};
pub use store::{AlertStore, StoredRule};

/// Tunables of the evaluator and the webhook sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Committed batches waiting for the evaluator; when full, new ones are
    /// dropped (counted in `edgeqi_alert_observations_dropped_total`) so
    /// ingest never waits for alerting.
    pub queue_capacity: usize,
    /// Observations older than this (by their own timestamp) are not evaluated.
    pub max_age: Duration,
    /// One webhook attempt may take this long (connect, send, answer).
    pub webhook_timeout: Duration,
    /// First retry delay; doubles per attempt, with jitter, up to `webhook_backoff_max`.
    pub webhook_backoff: Duration,
    pub webhook_backoff_max: Duration,
    /// Webhook requests in flight at once.
    pub webhook_concurrency: usize,
    /// Let webhook URLs reach loopback, private, link-local and other
    /// internal addresses (off: they are refused at rule create/update and
    /// at every delivery, after DNS resolution).
    pub allow_private_webhooks: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_age: Duration::from_secs(15 * 60),
            webhook_timeout: Duration::from_secs(10),
            webhook_backoff: Duration::from_secs(1),
            webhook_backoff_max: Duration::from_secs(300),
            webhook_concurrency: 8,
            allow_private_webhooks: false,
        }
    }
}

/// `threshold`: at least N distinct objects within a window; `watchlist`:
/// any single match of the listed labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Threshold,
    Watchlist,
}

/// What a rule is checked against: stored detections, or one kind of track event.
pub const SOURCES: [&str; 6] = [
    "detection",
    edgeqi_shared::protocol::track_event::APPEARED,
    edgeqi_shared::protocol::track_event::LEFT,
    edgeqi_shared::protocol::track_event::ZONE_ENTERED,
    edgeqi_shared::protocol::track_event::ZONE_LEFT,
    edgeqi_shared::protocol::track_event::LINE_CROSSED,
];

/// When a rule is active. `days` are lower-case three-letter weekdays;
/// `start`/`end` are `HH:MM` (`end` may be `24:00`; `end` before `start`
/// spans midnight and belongs to the day it started); `timezone` is `UTC`,
/// `local` (the aggregator host's zone, with its daylight saving) or a fixed
/// offset like `+02:00`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentAction {
    pub category: String,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAction {
    pub url: String,
    /// HMAC-SHA256 key; never shown by the API.
    pub secret: String,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actions {
    pub incident: Option<IncidentAction>,
    pub websocket: bool,
    pub webhook: Option<WebhookAction>,
}

/// A validated rule. Its JSON form is also what `POST` accepts, so a
/// `PATCH` is a merge patch over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    pub kind: RuleKind,
    pub enabled: bool,
    /// Empty: any label (threshold rules only).
    pub labels: Vec<String>,
    pub node_id: Option<String>,
    pub camera_id: Option<String>,
    pub zone: Option<String>,
    pub line: Option<String>,
    pub direction: Option<String>,
    /// One of [`SOURCES`].
    pub on: String,
    pub min_score: f32,
    pub threshold: u32,
    pub window_s: u32,
    pub cooldown_s: u32,
    pub schedule: Option<Schedule>,
    pub actions: Actions,
}

/// Client input for a rule: everything optional so that missing and wrong
/// fields are answered with one clear 422 message each.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    name: Option<String>,
    kind: Option<RuleKind>,
    enabled: Option<bool>,
    labels: Option<Vec<String>>,
    node_id: Option<String>,
    camera_id: Option<String>,
    zone: Option<String>,
    line: Option<String>,
    direction: Option<String>,
    on: Option<String>,
    min_score: Option<f64>,
    threshold: Option<i64>,
    window_s: Option<i64>,
    cooldown_s: Option<i64>,
    schedule: Option<ScheduleInput>,
    actions: Option<ActionsInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleInput {
    days: Option<Vec<String>>,
    start: Option<String>,
    end: Option<String>,
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionsInput {
    incident: Option<IncidentInput>,
    websocket: Option<bool>,
    webhook: Option<WebhookInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentInput {
    category: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookInput {
    url: Option<String>,
    secret: Option<String>,
    max_attempts: Option<i64>,
}

pub const MAX_WINDOW_S: i64 = 86_400;
pub const MAX_COOLDOWN_S: i64 = 7 * 86_400;
pub const MAX_THRESHOLD: i64 = 10_000;
pub const MAX_WEBHOOK_ATTEMPTS: i64 = 10;
pub const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 5;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A name-like field: 1..=max characters, no control characters.
fn text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(s) => {
            let s = s.trim().to_owned();
            if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
                Err(format!(
                    "{field} must be 1-{max} characters without control characters"
                ))
            } else {
                Ok(Some(s))
            }
        }
    }
}

fn ranged(field: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<u32, String> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!("{field}={v} must be in [{lo}, {hi}]"))
    }
}

impl RuleInput {
    /// Parses a JSON body; a type error is reported like a range error.
    pub fn from_json(v: serde_json::Value) -> Result<Self, String> {
        serde_json::from_value(v).map_err(|e| format!("invalid rule: {e}"))
    }

    /// Checks every field and fills defaults.
    pub fn validate(self) -> Result<RuleSpec, String> {
        let name = text("name", self.name, 200)?.ok_or("name is required")?;
        let kind = self.kind.unwrap_or(RuleKind::Threshold);
        let labels = self
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|l| text("each label", Some(l), 64).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()?;
        if labels.len() > 100 {
            return Err("at most 100 labels".into());
        }
        if kind == RuleKind::Watchlist && labels.is_empty() {
            return Err("a watchlist needs at least one label".into());
        }
        let node_id = text("node_id", self.node_id, 64)?;
        let camera_id = text("camera_id", self.camera_id, 128)?;
        let zone = text("zone", self.zone, 128)?;
        let line = text("line", self.line, 128)?;
        let direction = self.direction;
        if let Some(d) = &direction {
            use edgeqi_shared::protocol::line_direction::{LEFT_TO_RIGHT, RIGHT_TO_LEFT};
            if d != LEFT_TO_RIGHT && d != RIGHT_TO_LEFT {
                return Err(format!(
                    "direction {d:?} must be {LEFT_TO_RIGHT} or {RIGHT_TO_LEFT}"
                ));
            }
            if line.is_none() {
                return Err("direction needs a line".into());
            }
        }
        let on = match self.on {
            Some(o) => o,
            None if line.is_some() => edgeqi_shared::protocol::track_event::LINE_CROSSED.into(),
            None => "detection".into(),
        };
        if !SOURCES.contains(&on.as_str()) {
            return Err(format!("on={on:?} must be one of {}", SOURCES.join(", ")));
        }
        if line.is_some() && on != edgeqi_shared::protocol::track_event::LINE_CROSSED {
            return Err(
                "a line is only crossed by line_crossed events: set on=line_crossed".into(),
            );
        }
        let min_score = self.min_score.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_score) {
            return Err(format!("min_score={min_score} must be in [0, 1]"));
        }
        let (threshold, window_s) = match kind {
            RuleKind::Threshold => (
                ranged("threshold", self.threshold, 1, 1, MAX_THRESHOLD)?,
                ranged("window_s", self.window_s, 60, 1, MAX_WINDOW_S)?,
            ),
            RuleKind::Watchlist => {
                if self.threshold.is_some_and(|t| t != 1) {
                    return Err("a watchlist fires on every match: leave threshold out".into());
                }
                if let Some(w) = self.window_s.filter(|w| *w != 0) {
                    return Err(format!(
                        "window_s={w}: a watchlist has no window (leave it out)"
                    ));
                }
                (1, 0)
            }
        };
        let cooldown_s = ranged("cooldown_s", self.cooldown_s, 60, 0, MAX_COOLDOWN_S)?;
        let schedule = self.schedule.map(ScheduleInput::validate).transpose()?;
        let actions = self.actions.unwrap_or_default().validate()?;
        Ok(RuleSpec {
            name,
            kind,
            enabled: self.enabled.unwrap_or(true),
            labels,
            node_id,
            camera_id,
            zone,
            line,
            direction,
            on,
            min_score: min_score as f32,
            threshold,
            window_s,
            cooldown_s,
            schedule,
            actions,
        })
    }
}

impl ScheduleInput {
    fn validate(self) -> Result<Schedule, String> {
        let days = match self.days {
            None => DAYS.iter().map(|d| (*d).to_owned()).collect(),
            Some(days) => {
                if days.is_empty() {
                    return Err("schedule.days must name at least one day".into());
                }
                for d in &days {
                    if !DAYS.contains(&d.as_str()) {
                        return Err(format!(
                            "schedule.days: {d:?} must be one of {}",
                            DAYS.join(", ")
                        ));
                    }
                }
                days
            }
        };
        let s = Schedule {
            days,
            start: self.start.unwrap_or_else(|| "00:00".into()),
            end: self.end.unwrap_or_else(|| "24:00".into()),
            timezone: self.timezone.unwrap_or_else(|| "UTC".into()),
        };
        s.compile()?;
        Ok(s)
    }
}

impl ActionsInput {
    fn validate(self) -> Result<Actions, String> {
        let incident = match self.incident {
            None => None,
            Some(i) => Some(IncidentAction {
                category: text("actions.incident.category", i.category, 64)?
                    .ok_or("actions.incident.category is required")?,
                severity: i.severity.as_deref().unwrap_or("medium").parse()?,
            }),
        };
        let webhook = match self.webhook {
            None => None,
            Some(w) => {
                let url = w.url.ok_or("actions.webhook.url is required")?;
                check_webhook_url(&url)?;
                let secret = w.secret.ok_or("actions.webhook.secret is required")?;
                if !(16..=256).contains(&secret.len()) {
                    return Err("actions.webhook.secret must be 16-256 bytes".into());
                }
                Some(WebhookAction {
                    url,
                    secret,
                    max_attempts: ranged(
                        "actions.webhook.max_attempts",
                        w.max_attempts,
                        i64::from(DEFAULT_WEBHOOK_ATTEMPTS),
                        1,
                        MAX_WEBHOOK_ATTEMPTS,
                    )?,
                })
            }
        };
        Ok(Actions {
            incident,
            websocket: self.websocket.unwrap_or(true),
            webhook,
        })
    }
}

/// An absolute `http://` or `https://` URL with a host and no credentials.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("actions.webhook.url {url:?} {why}"));
    if url.len() > 2048 {
        return bad("is longer than 2048 characters");
    }
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return bad("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("must start with http:// or https://");
    }
    match uri.authority() {
        None => bad("has no host"),
        Some(a) if a.host().is_empty() => bad("has no host"),
        Some(a) if a.as_str().contains('@') => bad("must not carry credentials"),
        Some(_) => Ok(()),
    }
}

/// Which clock a schedule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    Utc,
    Local,
    Fixed(FixedOffset),
}

/// A schedule ready to check instants against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompiledSchedule {
    /// Bit `n`: weekday `n` days from Monday.
    days: u8,
    start_min: u32,
    end_min: u32,
    zone: Zone,
}

fn minutes(field: &str, v: &str, allow_24: bool) -> Result<u32, String> {
    let bad = || format!("schedule.{field}={v:?} must be HH:MM");
    let (h, m) = v.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if (h < 24 && m < 60) || (allow_24 && h == 24 && m == 0) {
        Ok(h * 60 + m)
    } else {
        Err(bad())
    }
}

impl Schedule {
    pub fn compile(&self) -> Result<CompiledSchedule, String> {
        let mut days = 0u8;
        for d in &self.days {
            let i = DAYS
                .iter()
                .position(|x| x == d)
                .ok_or_else(|| format!("schedule.days: {d:?} is not a day"))?;
            days |= 1 << i;
        }
        let start_min = minutes("start", &self.start, false)?;
        let end_min = minutes("end", &self.end, true)?;
        if start_min == end_min {
            return Err("schedule.start and schedule.end must differ".into());
        }
        let zone = match self.timezone.as_str() {
            "UTC" | "utc" | "Z" => Zone::Utc,
            "local" => Zone::Local,
            other => Zone::Fixed(other.parse::<FixedOffset>().map_err(|_| {
                format!("schedule.timezone={other:?} must be UTC, local, or an offset like +02:00")
            })?),
        };
        Ok(CompiledSchedule {
            days,
            start_min,
            end_min,
            zone,
        })
    }
}

impl CompiledSchedule {
    fn local(&self, t: DateTime<Utc>) -> (Weekday, u32) {
        let wm = |wd: Weekday, h: u32, m: u32| (wd, h * 60 + m);
        match self.zone {
            Zone::Utc => wm(t.weekday(), t.hour(), t.minute()),
            Zone::Local => {
                let l = t.with_timezone(&Local);
                wm(l.weekday(), l.hour(), l.minute())
            }
            Zone::Fixed(o) => {
                let l = t.with_timezone(&o);
                wm(l.weekday(), l.hour(), l.minute())
            }
        }
    }

    fn on(&self, d: Weekday) -> bool {
        self.days & (1 << d.num_days_from_monday()) != 0
    }

    /// Is the rule active at `t`?
    pub fn allows(&self, t: DateTime<Utc>) -> bool {
        let (day, m) = self.local(t);
        if self.start_min < self.end_min {
            self.on(day) && self.start_min <= m && m < self.end_min
        } else {
            // Spans midnight: the early hours belong to the previous day's window.
            (m >= self.start_min && self.on(day)) || (m < self.end_min && self.on(day.pred()))
        }
    }
}

/// What made an alert: the stored detection or track event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    Detection(i64),
    Event(String),
}

/// One committed detection or track event, as the evaluator sees it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub node_id: String,
    pub camera_id: String,
    pub ts: DateTime<Utc>,
    /// `detection` or a track event kind.
    pub kind: String,
    pub label: String,
    pub score: f32,
    pub zone: Option<String>,
    pub line: Option<String>,
    pub direction: Option<String>,
    /// Identity of the tracked object, when the agent tracks.
    pub object: Option<String>,
    pub evidence: Evidence,
}

impl Observation {
    /// Detections of a committed batch, with the ids storage gave them.
    pub fn from_detections(
        batch: &edgeqi_shared::DetectionBatch,
        ids: &[i64],
        out: &mut Vec<Observation>,
    ) {
        for (d, id) in batch.detections.iter().zip(ids) {
            out.push(Observation {
                node_id: batch.node_id.clone(),
                camera_id: d.camera_id.clone(),
                ts: d.ts,
                kind: "detection".into(),
                label: d.label.clone(),
                score: d.score,
                zone: d.zone.clone(),
                line: None,
                direction: None,
                object: d
                    .track_id
                    .map(|t| format!("{}/{}/{t}", batch.node_id, d.camera_id)),
                evidence: Evidence::Detection(*id),
            });
        }
    }

    /// Track events of a stored batch.
    pub fn from_events(batch: &edgeqi_shared::protocol::EventBatch) -> Vec<Observation> {
        batch
            .events
            .iter()
            .map(|e| Observation {
                node_id: batch.node_id.clone(),
                camera_id: e.camera_id.clone(),
                ts: e.ts,
                kind: e.kind.clone(),
                label: e.label.clone(),
                score: e.score,
                zone: e.zone.clone(),
                line: e.line.clone(),
                direction: e.direction.clone(),
                object: Some(e.track_key.clone()),
                evidence: Evidence::Event(e.id.clone()),
            })
            .collect()
    }
}

impl RuleSpec {
    /// Does `o` match everything the rule names (schedule aside)?
    pub fn matches(&self, o: &Observation) -> bool {
        let same = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == got)
        };
        o.kind == self.on
            && (self.labels.is_empty() || self.labels.contains(&o.label))
            && o.score >= self.min_score
            && same(&self.node_id, Some(&o.node_id))
            && same(&self.camera_id, Some(&o.camera_id))
            && same(&self.zone, o.zone.as_deref())
            && same(&self.line, o.line.as_deref())
            && same(&self.direction, o.direction.as_deref())
    }
}

/// The most matches one rule's window keeps; beyond it the oldest go (the
/// count can then only be too low, never too high).
const MAX_WINDOW_HITS: usize = 50_000;

#[derive(Debug, Clone)]
struct Hit {
    ts: DateTime<Utc>,
    object: Option<String>,
    evidence: Evidence,
}

/// One rule's sliding window: matches within `window_s` of the newest one,
/// counted as distinct objects (a tracked object counts once however many
/// frames it is in; an untracked detection counts once each).
#[derive(Debug, Default)]
pub struct Window {
    /// Sorted by time.
    hits: VecDeque<Hit>,
    per_object: HashMap<String, u32>,
    untracked: usize,
    newest: Option<DateTime<Utc>>,
    /// Event time of the match that fired last.
    pub last_fired: Option<DateTime<Utc>>,
}

/// A rule decided to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// Distinct objects in the window.
    pub count: usize,
    /// The newest matches in the window (at most 50).
    pub evidence: Vec<Evidence>,
}

impl Window {
    fn remove_front(&mut self) {
        if let Some(h) = self.hits.pop_front() {
            match h.object {
                Some(o) => {
                    if let Some(n) = self.per_object.get_mut(&o) {
                        *n -= 1;
                        if *n == 0 {
                            self.per_object.remove(&o);
                        }
                    }
                }
                None => self.untracked -= 1,
            }
        }
    }

    /// Distinct objects in the window.
    pub fn count(&self) -> usize {
        self.per_object.len() + self.untracked
    }

    /// Adds one match at event time `ts` and says whether the rule fires:
    /// the window holds `threshold` distinct objects and the cooldown since
    /// the last firing has passed.
    pub fn observe(
        &mut self,
        ts: DateTime<Utc>,
        object: Option<String>,
        evidence: Evidence,
        threshold: u32,
        window: chrono::Duration,
        cooldown: chrono::Duration,
    ) -> Option<Firing> {
        let newest = self.newest.map_or(ts, |n| n.max(ts));
        let cutoff = newest - window;
        if ts < cutoff {
            // Arrived late and already outside the window.
            return None;
        }
        self.newest = Some(newest);
        let at = self.hits.partition_point(|h| h.ts <= ts);
        match &object {
            Some(o) => *self.per_object.entry(o.clone()).or_default() += 1,
            None => self.untracked += 1,
        }
        self.hits.insert(
            at,
            Hit {
                ts,
                object,
                evidence,
            },
        );
        while self.hits.front().is_some_and(|h| h.ts < cutoff) || self.hits.len() > MAX_WINDOW_HITS
        {
            self.remove_front();
        }
        let cooled = self.last_fired.is_none_or(|l| ts >= l + cooldown);
        if self.count() < threshold as usize || !cooled {
            return None;
        }
        self.last_fired = Some(ts);
        Some(Firing {
            count: self.count(),
            evidence: self
                .hits
                .iter()
                .rev()
                .take(50)
                .map(|h| h.evidence.clone())
                .collect(),
        })
    }
}

/// Ingest's handle to the evaluator: a bounded queue it never waits on.
#[derive(Debug, Clone)]
pub struct AlertFeed {
    tx: mpsc::Sender<Vec<Observation>>,
    enabled_rules: Arc<AtomicUsize>,
}

impl AlertFeed {
    /// Is any rule enabled? When not, ingest skips building observations.
    pub fn wants(&self) -> bool {
        self.enabled_rules.load(Ordering::Relaxed) > 0
    }

    /// Hands committed observations to the evaluator, or drops and counts
    /// them when it is behind.
    pub fn offer(&self, observations: Vec<Observation>) {
        if observations.is_empty() {
            return;
        }
        let n = observations.len() as u64;
        match self.tx.try_send(observations) {
            Ok(()) => metrics::counter!("edgeqi_alert_observations_total").increment(n),
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue_full",
                    mpsc::error::TrySendError::Closed(_) => "evaluator_stopped",
                };
                metrics::counter!("edgeqi_alert_observations_dropped_total", "reason" => why)
                    .increment(n);
                // Under overload this happens per batch: say it at most every 10 s.
                static LAST_WARNED_S: AtomicI64 = AtomicI64::new(0);
                let now = Utc::now().timestamp();
                let last = LAST_WARNED_S.load(Ordering::Relaxed);
                if last + 10 <= now
                    && LAST_WARNED_S
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        dropped = n,
                        reason = why,
                        "alert evaluator is behind; observations not evaluated (see edgeqi_alert_observations_dropped_total)"
                    );
                }
            }
        }
    }
}

/// The shared alerting handle: rule storage, the feed, and the signal that
/// rules changed.
#[derive(Debug)]
pub struct Alerts {
    pub store: AlertStore,
    pub settings: AlertSettings,
    feed: AlertFeed,
    changed: Notify,
}

impl Alerts {
    /// Opens the alert tables in the `sqlite://` database and makes the
    /// evaluator that [`Evaluator::run`] drives.
    pub fn open(url: &str, settings: AlertSettings) -> StoreResult<(Arc<Self>, Evaluator)> {
        let store = AlertStore::open(url)?;
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let alerts = Arc::new(Self {
            store,
            settings,
            feed: AlertFeed {
                tx,
                enabled_rules: Arc::new(AtomicUsize::new(0)),
            },
            changed: Notify::new(),
        });
        Ok((alerts.clone(), Evaluator::new(alerts, rx)))
    }

    pub fn feed(&self) -> AlertFeed {
        self.feed.clone()
    }

    /// Called after every rule change: the feed opens (or closes) at once
    /// and the evaluator reloads its rules before the next observation.
    pub async fn rules_changed(&self) -> StoreResult<()> {
        let n = self.store.count_enabled().await?;
        self.feed.enabled_rules.store(n, Ordering::Relaxed);
        self.changed.notify_one();
        Ok(())
    }

    pub(crate) fn set_enabled_rules(&self, n: usize) {
        self.feed.enabled_rules.store(n, Ordering::Relaxed);
    }

    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes,
/// anything else replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
