//! Incidents: the work a city runs on. Created by citizen reports (and alert
//! rules), deduplicated by category, distance and time, walked through a
//! lifecycle, and measured against SLAs.
//!
//! The rules (transitions, SLA deadlines, dedup radius, area scores) are plain
//! functions here so they are tested without a database; storage is behind
//! [`IncidentStore`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::store::StoreResult;

pub mod hotspots;
pub mod sqlite;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    New,
    Acknowledged,
    InProgress,
    Resolved,
    Closed,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::New,
        Status::Acknowledged,
        Status::InProgress,
        Status::Resolved,
        Status::Closed,
        Status::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Acknowledged => "acknowledged",
            Status::InProgress => "in_progress",
            Status::Resolved => "resolved",
            Status::Closed => "closed",
            Status::Rejected => "rejected",
        }
    }

    /// Still needs work: new reports may join it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Status::New | Status::Acknowledged | Status::InProgress
        )
    }

    /// The lifecycle: `new → acknowledged → in_progress → resolved → closed`,
    /// rejection from any open state, and reopening a resolved incident.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (New, Acknowledged | InProgress | Rejected)
                | (Acknowledged, InProgress | Resolved | Rejected)
                | (InProgress, Resolved | Rejected)
                | (Resolved, Closed | InProgress)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("status {s:?} must be one of new, acknowledged, in_progress, resolved, closed, rejected"))
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            o => Err(format!(
                "severity {o:?} must be low, medium, high or critical"
            )),
        }
    }
}

/// How fast an incident must be acknowledged and resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Sla {
    /// Seconds.
    #[serde(serialize_with = "secs")]
    #[schema(value_type = i64)]
    pub acknowledge_within: Duration,
    /// Seconds.
    #[serde(serialize_with = "secs")]
    #[schema(value_type = i64)]
    pub resolve_within: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(d.num_seconds())
}

/// SLAs per (category, severity), falling back to per-severity defaults.
#[derive(Debug, Clone, Default)]
pub struct SlaPolicy {
    pub overrides: BTreeMap<(String, Severity), Sla>,
}

impl SlaPolicy {
    pub fn sla(&self, category: &str, severity: Severity) -> Sla {
        if let Some(s) = self.overrides.get(&(category.to_owned(), severity)) {
            return *s;
        }
        let (ack, resolve) = match severity {
            Severity::Critical => (Duration::minutes(15), Duration::hours(4)),
            Severity::High => (Duration::hours(1), Duration::hours(24)),
            Severity::Medium => (Duration::hours(4), Duration::hours(72)),
            Severity::Low => (Duration::hours(24), Duration::days(7)),
        };
        Sla {
            acknowledge_within: ack,
            resolve_within: resolve,
        }
    }
}

/// Dedup window: a report or alert of the same category this close in space
/// and time joins the open incident instead of opening another. Two without
/// a location (alerts from cameras with none registered) are "close".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupWindow {
    pub radius_m: f64,
    pub within: Duration,
}

impl Default for DedupWindow {
    fn default() -> Self {
        Self {
            radius_m: 50.0,
            within: Duration::minutes(60),
        }
    }
}

/// Great-circle distance in metres.
pub fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: i64,
    pub tenant_id: Option<i64>,
    pub category: String,
    pub severity: Severity,
    pub status: Status,
    pub title: String,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    /// `report` or `alert`.
    pub source: String,
    pub assignee: Option<String>,
    /// Citizen reports that opened or joined this incident.
    pub report_count: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub acknowledge_due: DateTime<Utc>,
    pub resolve_due: DateTime<Utc>,
}

impl Incident {
    /// Has an SLA deadline passed without the step it asks for?
    pub fn sla_breached(&self, now: DateTime<Utc>) -> bool {
        let ack_late = self.acknowledged_at.map_or(now, |t| t) > self.acknowledge_due
            && !matches!(self.status, Status::Rejected);
        let resolve_late = self.resolved_at.map_or(now, |t| t) > self.resolve_due
            && !matches!(self.status, Status::Rejected);
        ack_late || resolve_late
    }

    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["sla_breached"] = serde_json::json!(self.sla_breached(now));
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Comment {
    pub id: i64,
    pub incident_id: i64,
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A new incident or a report joining one.
#[derive(Debug, Clone)]
pub struct NewIncident {
    pub tenant_id: Option<i64>,
    pub category: String,
    pub severity: Severity,
    pub title: String,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub source: String,
}

/// A change asked for by `PATCH /api/v1/incidents/{id}`.
#[derive(Debug, Clone, Default)]
pub struct IncidentChange {
    pub status: Option<Status>,
    pub assignee: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("no incident {0}")]
    NotFound(i64),
    #[error("an incident cannot go from {from} to {to}")]
    InvalidTransition { from: Status, to: Status },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<rusqlite::Error> for IncidentError {
    fn from(e: rusqlite::Error) -> Self {
        IncidentError::Store(e.into())
    }
}

/// A citizen report as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub id: String,
    pub incident_id: i64,
    pub tenant_id: Option<i64>,
    pub lat: f64,
    pub lng: f64,
    pub notes: Option<String>,
    pub category: String,
    pub severity: Severity,
    pub detections: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub tenant_id: Option<i64>,
    pub status: Option<Status>,
    pub category: Option<String>,
    pub limit: usize,
    /// Continue after this id (newest first).
    pub before_id: Option<i64>,
}

#[async_trait::async_trait]
pub trait IncidentStore: Send + Sync + fmt::Debug {
    /// Joins the nearest open incident of the same tenant and category inside
    /// the dedup window, or opens a new one. Returns it and whether it is new.
    async fn open_or_join(
        &self,
        new: NewIncident,
        window: DedupWindow,
        sla: Sla,
    ) -> StoreResult<(Incident, bool)>;
    async fn incident(&self, id: i64) -> StoreResult<Option<Incident>>;
    async fn incidents(&self, filter: &IncidentFilter) -> StoreResult<Vec<Incident>>;
    /// Applies a change; refuses transitions the lifecycle does not allow.
    async fn change(
        &self,
        id: i64,
        change: IncidentChange,
        author: &str,
    ) -> Result<(Incident, Incident), IncidentError>;
    async fn comments(&self, incident_id: i64) -> StoreResult<Vec<Comment>>;
    async fn add_report(&self, report: &Report, photo: &[u8], photo_type: &str) -> StoreResult<()>;
    async fn report(&self, id: &str) -> StoreResult<Option<Report>>;
    async fn reports_of(&self, incident_id: i64) -> StoreResult<Vec<Report>>;
    async fn report_photo(&self, id: &str) -> StoreResult<Option<(Vec<u8>, String)>>;
}

/// Per-area performance: 70% SLA compliance, 30% resolution speed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AreaScore {
    /// Grid cell id: `lat_index:lng_index` of a `cell_deg` grid.
    pub area: String,
    pub center: [f64; 2],
    pub incidents: u64,
    pub resolved: u64,
    pub sla_compliance: f64,
    pub speed: f64,
    pub score: f64,
    pub rank: usize,
}

/// Scores areas (grid cells of `cell_deg` degrees) by how their incidents were handled.
pub fn area_scores(
    incidents: &[Incident],
    policy: &SlaPolicy,
    cell_deg: f64,
    now: DateTime<Utc>,
) -> Vec<AreaScore> {
    #[derive(Default)]
    struct Acc {
        n: u64,
        met: u64,
        resolved: u64,
        speed_sum: f64,
    }
    let mut cells: BTreeMap<(i64, i64), Acc> = BTreeMap::new();
    for i in incidents.iter().filter(|i| i.status != Status::Rejected) {
        let (Some(lat), Some(lng)) = (i.lat, i.lng) else {
            continue;
        };
        let key = (
            (lat / cell_deg).floor() as i64,
            (lng / cell_deg).floor() as i64,
        );
        let acc = cells.entry(key).or_default();
        acc.n += 1;
        acc.met += u64::from(!i.sla_breached(now));
        if let Some(done) = i.resolved_at {
            acc.resolved += 1;
            let allowed = policy
                .sla(&i.category, i.severity)
                .resolve_within
                .num_seconds()
                .max(1) as f64;
            let took = (done - i.created_at).num_seconds().max(0) as f64;
            acc.speed_sum += (1.0 - took / allowed).clamp(0.0, 1.0);
        }
    }
    let mut out: Vec<AreaScore> = cells
        .into_iter()
        .map(|((a, b), acc)| {
            let compliance = acc.met as f64 / acc.n as f64;
            let speed = if acc.resolved == 0 {
                0.0
            } else {
                acc.speed_sum / acc.resolved as f64
            };
            AreaScore {
                area: format!("{a}:{b}"),
                center: [(a as f64 + 0.5) * cell_deg, (b as f64 + 0.5) * cell_deg],
                incidents: acc.n,
                resolved: acc.resolved,
                sla_compliance: compliance,
                speed,
                score: 0.7 * compliance + 0.3 * speed,
                rank: 0,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then_with(|| x.area.cmp(&y.area))
    });
    for (i, a) in out.iter_mut().enumerate() {
        a.rank = i + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_only_the_documented_moves() {
        use Status::*;
        let allowed = [
            (New, Acknowledged),
            (New, InProgress),
            (New, Rejected),
            (Acknowledged, InProgress),
            (Acknowledged, Resolved),
            (Acknowledged, Rejected),
            (InProgress, Resolved),
            (InProgress, Rejected),
            (Resolved, Closed),
            (Resolved, InProgress),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn distance_is_in_metres() {
        // One degree of latitude is about 111 km.
        let d = distance_m(52.0, 13.0, 53.0, 13.0);
        assert!((d - 111_195.0).abs() < 200.0, "{d}");
        assert!(distance_m(52.52, 13.405, 52.5203, 13.405) < 50.0);
    }

    fn incident(
        lat: f64,
        created_h_ago: i64,
        resolved_after_h: Option<i64>,
        now: DateTime<Utc>,
    ) -> Incident {
        let created = now - Duration::hours(created_h_ago);
        let sla = SlaPolicy::default().sla("litter", Severity::High);
        Incident {
            id: 1,
            tenant_id: None,
            category: "litter".into(),
            severity: Severity::High,
            status: if resolved_after_h.is_some() {
                Status::Resolved
            } else {
                Status::New
            },
            title: "t".into(),
            lat: Some(lat),
            lng: Some(13.0),
            source: "report".into(),
            assignee: None,
            report_count: 1,
            created_at: created,
            updated_at: created,
            acknowledged_at: resolved_after_h.map(|_| created + Duration::minutes(10)),
            resolved_at: resolved_after_h.map(|h| created + Duration::hours(h)),
            closed_at: None,
            acknowledge_due: created + sla.acknowledge_within,
            resolve_due: created + sla.resolve_within,
        }
    }

    #[test]
    fn sla_breach_and_area_scores() {
        let now = Utc::now();
        let fast = incident(52.001, 30, Some(2), now);
        let late = incident(52.101, 30, None, now);
        assert!(!fast.sla_breached(now));
        assert!(late.sla_breached(now), "not acknowledged within an hour");
        let scores = area_scores(&[fast.clone(), late], &SlaPolicy::default(), 0.05, now);
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].rank, 1);
        assert!(scores[0].center[0] < 52.05, "the well-run area ranks first");
        let expected = 0.7 * 1.0 + 0.3 * (1.0 - 2.0 / 24.0);
        assert!(
            (scores[0].score - expected).abs() < 1e-9,
            "{}",
            scores[0].score
        );
        assert!((scores[1].score - 0.0).abs() < 1e-9);
    }
}

pub mod photo;
pub mod service;
pub mod yolo;
pub use service::{Incidents, PhotoAnalyzer, PhotoObject};

/// Opens the incident store for a `sqlite://PATH` URL.
pub fn open(url: &str) -> StoreResult<std::sync::Arc<dyn IncidentStore>> {
    Ok(std::sync::Arc::new(sqlite::SqliteIncidents::open(url)?))
}
