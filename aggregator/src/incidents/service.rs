//! Turning a citizen's photo into an incident: image checks, object
//! detection, the label → category table, severity, rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{DedupWindow, IncidentStore, Severity, SlaPolicy};

/// One object found in a report photo, in photo pixels.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PhotoObject {
    pub label: String,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// Finds objects in a decoded photo (the YOLO detector when a model is configured).
pub trait PhotoAnalyzer: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    fn analyze(&self, photo: &image::RgbImage) -> Result<Vec<PhotoObject>, String>;
}

/// Detector labels to city categories; unknown labels fall to `other`.
#[derive(Debug, Clone)]
pub struct CategoryMap {
    pub by_label: HashMap<String, String>,
}

impl Default for CategoryMap {
    fn default() -> Self {
        let table: &[(&str, &[&str])] = &[
            ("vehicle", &["car", "truck", "bus", "motorcycle", "train"]),
            ("bicycle", &["bicycle"]),
            ("pedestrian", &["person"]),
            (
                "litter",
                &[
                    "bottle", "cup", "suitcase", "backpack", "handbag", "umbrella",
                ],
            ),
            (
                "street_furniture",
                &[
                    "bench",
                    "fire hydrant",
                    "stop sign",
                    "parking meter",
                    "traffic light",
                ],
            ),
            ("animal", &["dog", "cat", "horse", "bird", "cow", "sheep"]),
        ];
        let by_label = table
            .iter()
            .flat_map(|(cat, labels)| {
                labels
                    .iter()
                    .map(move |l| ((*l).to_owned(), (*cat).to_owned()))
            })
            .collect();
        Self { by_label }
    }
}

impl CategoryMap {
    /// The category of the report: that of its main subject, the mapped
    /// object with the largest score-weighted area (a photo of a bus with
    /// passers-by is about the bus).
    pub fn classify<'a>(&self, objects: &'a [PhotoObject]) -> (String, Option<&'a PhotoObject>) {
        let weight = |o: &PhotoObject| {
            o.score * (o.bbox[2] - o.bbox[0]).max(0.0) * (o.bbox[3] - o.bbox[1]).max(0.0)
        };
        let best = objects
            .iter()
            .filter(|o| self.by_label.contains_key(&o.label))
            .max_by(|a, b| weight(a).total_cmp(&weight(b)));
        match best {
            Some(o) => (self.by_label[&o.label].clone(), Some(o)),
            None => ("other".to_owned(), None),
        }
    }
}

/// Severity from how much of the photo the problem fills and how sure the
/// detector is; many objects of the category raise it one step.
pub fn severity(
    best: Option<&PhotoObject>,
    same_category: usize,
    width: u32,
    height: u32,
) -> Severity {
    let Some(o) = best else { return Severity::Low };
    let area = ((o.bbox[2] - o.bbox[0]).max(0.0) * (o.bbox[3] - o.bbox[1]).max(0.0)) as f64;
    let frac = area / (f64::from(width.max(1)) * f64::from(height.max(1)));
    let weight = frac * f64::from(o.score);
    let base = if weight >= 0.2 {
        Severity::High
    } else if weight >= 0.03 {
        Severity::Medium
    } else {
        Severity::Low
    };
    if same_category >= 5 {
        match base {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            _ => Severity::Critical,
        }
    } else {
        base
    }
}

/// A fixed-window request counter per client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_window: u32,
    window: Duration,
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when `client` is over its budget.
    pub fn check(&self, client: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            // Bounded memory under a flood of distinct addresses.
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = seen.entry(client.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            return Err(self
                .window
                .saturating_sub(now.duration_since(entry.0))
                .as_secs()
                .max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Everything the incident and report routes need.
#[derive(Debug)]
pub struct Incidents {
    pub store: Arc<dyn IncidentStore>,
    pub sla: SlaPolicy,
    pub dedup: DedupWindow,
    pub categories: CategoryMap,
    pub analyzer: Option<Arc<dyn PhotoAnalyzer>>,
    pub report_limiter: RateLimiter,
    pub max_photo_bytes: usize,
    /// Header checks, decode caps and decode slots of report photos.
    pub photos: super::photo::PhotoDecoder,
    /// Tenant of public reports that name none (`reports.default_tenant_id`;
    /// `None`: they belong to no tenant, and only global users see them).
    pub report_tenant: Option<i64>,
}

impl Incidents {
    pub fn new(store: Arc<dyn IncidentStore>, analyzer: Option<Arc<dyn PhotoAnalyzer>>) -> Self {
        Self {
            store,
            sla: SlaPolicy::default(),
            dedup: DedupWindow::default(),
            categories: CategoryMap::default(),
            analyzer,
            report_limiter: RateLimiter::new(20, Duration::from_secs(60)),
            max_photo_bytes: 10 * 1024 * 1024,
            photos: super::photo::PhotoDecoder::new(
                super::photo::PhotoLimits::default(),
                super::photo::default_concurrency(),
            ),
            report_tenant: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(label: &str, score: f32, bbox: [f32; 4]) -> PhotoObject {
        PhotoObject {
            label: label.into(),
            score,
            bbox,
        }
    }

    #[test]
    fn categories_and_severity() {
        let map = CategoryMap::default();
        let objects = vec![
            obj("person", 0.6, [0.0, 0.0, 10.0, 10.0]),
            obj("bus", 0.9, [0.0, 0.0, 800.0, 600.0]),
        ];
        let (cat, best) = map.classify(&objects);
        assert_eq!(cat, "vehicle");
        assert_eq!(severity(best, 1, 810, 1080), Severity::High);
        assert_eq!(map.classify(&[obj("toaster", 0.9, [0.0; 4])]).0, "other");
        let small = obj("bottle", 0.5, [0.0, 0.0, 20.0, 20.0]);
        assert_eq!(severity(Some(&small), 1, 640, 480), Severity::Low);
        assert_eq!(severity(Some(&small), 6, 640, 480), Severity::Medium);
        assert_eq!(severity(None, 0, 640, 480), Severity::Low);
    }

    #[test]
    fn rate_limiter_counts_per_client() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
        assert!(l.check("b").is_ok());
    }
}
