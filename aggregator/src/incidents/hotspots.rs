//! Hotspots: incidents clustered on a square metric grid.
//!
//! A grid, not a density clustering (DBSCAN and kin), because operators
//! compare hotspots across days and tenants: a fixed grid gives the same
//! cell the same key every time, and costs one pass. Cells are `cell_m`
//! metres high everywhere; their width in degrees of longitude follows the
//! cell row's latitude, so cells stay roughly square away from the equator.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Incident;

/// Metres per degree of latitude (mean Earth radius 6,371 km).
const M_PER_DEG_LAT: f64 = 111_195.0;

/// One grid cell holding at least one incident.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hotspot {
    /// Stable key of the cell for this `cell_m`: `"{row}:{col}"`.
    pub cell: String,
    /// South-west and north-east corners, `[lat, lng]`.
    pub south_west: [f64; 2],
    pub north_east: [f64; 2],
    /// Mean position of the cell's incidents.
    pub lat: f64,
    pub lng: f64,
    pub count: u64,
    /// Incidents not yet resolved, closed or rejected.
    pub open: u64,
    pub by_category: BTreeMap<String, u64>,
}

/// Clusters the located incidents (those without a position are skipped)
/// into cells of `cell_m` metres, busiest first (ties by cell key).
pub fn hotspots(incidents: &[Incident], cell_m: f64) -> Vec<Hotspot> {
    let dlat = cell_m / M_PER_DEG_LAT;
    let mut cells: HashMap<(i64, i64), (Hotspot, f64, f64)> = HashMap::new();
    for i in incidents {
        let (Some(lat), Some(lng)) = (i.lat, i.lng) else {
            continue;
        };
        let row = (lat / dlat).floor() as i64;
        let dlng = lng_step(row, dlat);
        let col = (lng / dlng).floor() as i64;
        let (h, sum_lat, sum_lng) = cells.entry((row, col)).or_insert_with(|| {
            let (s, w) = (row as f64 * dlat, col as f64 * dlng);
            (
                Hotspot {
                    cell: format!("{row}:{col}"),
                    south_west: [s, w],
                    north_east: [s + dlat, w + dlng],
                    lat: 0.0,
                    lng: 0.0,
                    count: 0,
                    open: 0,
                    by_category: BTreeMap::new(),
                },
                0.0,
                0.0,
            )
        });
        h.count += 1;
        h.open += u64::from(i.status.is_open());
        *h.by_category.entry(i.category.clone()).or_default() += 1;
        *sum_lat += lat;
        *sum_lng += lng;
    }
    let mut out: Vec<Hotspot> = cells
        .into_values()
        .map(|(mut h, sum_lat, sum_lng)| {
            h.lat = sum_lat / h.count as f64;
            h.lng = sum_lng / h.count as f64;
            h
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cell.cmp(&b.cell)));
    out
}

/// Degrees of longitude that span `dlat`'s metres at the centre of `row`.
fn lng_step(row: i64, dlat: f64) -> f64 {
    let centre = ((row as f64 + 0.5) * dlat).to_radians();
    // Near the poles a cell would span the globe; cap at 10° wide.
    (dlat / centre.cos().max(1e-6)).min(10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::{Severity, Status};
    use chrono::Utc;

    fn at(id: i64, lat: f64, lng: f64, category: &str, status: Status) -> Incident {
        Incident {
            id,
            tenant_id: None,
            category: category.into(),
            severity: Severity::Medium,
            status,
            title: String::new(),
            lat: Some(lat),
            lng: Some(lng),
            source: "report".into(),
            assignee: None,
            report_count: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            acknowledged_at: None,
            resolved_at: None,
            closed_at: None,
            acknowledge_due: Utc::now(),
            resolve_due: Utc::now(),
        }
    }

    #[test]
    fn near_incidents_share_a_cell_and_far_ones_do_not() {
        // Two reports 40 m apart in Lisbon, one 2 km away, one with no position.
        let mut unlocated = at(4, 0.0, 0.0, "pothole", Status::New);
        unlocated.lat = None;
        let list = vec![
            at(1, 38.722_00, -9.139_00, "pothole", Status::New),
            at(2, 38.722_30, -9.139_20, "graffiti", Status::Resolved),
            at(3, 38.740_00, -9.139_00, "pothole", Status::New),
            unlocated,
        ];
        let h = hotspots(&list, 250.0);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!((h[0].count, h[0].open), (2, 1));
        assert_eq!(h[0].by_category.get("graffiti"), Some(&1));
        assert!((h[0].lat - 38.72215).abs() < 1e-9);
        assert_eq!(h[1].count, 1);
        for c in &h {
            assert!(c.south_west[0] <= c.lat && c.lat < c.north_east[0], "{c:?}");
            assert!(c.south_west[1] <= c.lng && c.lng < c.north_east[1], "{c:?}");
        }
    }

    #[test]
    fn cells_are_about_cell_m_wide_at_any_latitude() {
        for lat in [0.0_f64, 38.7, 60.0, -33.9] {
            let h = hotspots(&[at(1, lat, 10.0, "x", Status::New)], 500.0);
            let c = &h[0];
            let height_m = (c.north_east[0] - c.south_west[0]) * M_PER_DEG_LAT;
            let width_m = (c.north_east[1] - c.south_west[1])
                * M_PER_DEG_LAT
                * ((c.north_east[0] + c.south_west[0]) / 2.0)
                    .to_radians()
                    .cos();
            assert!((height_m - 500.0).abs() < 1e-6, "{lat}: {height_m}");
            assert!((width_m - 500.0).abs() < 1.0, "{lat}: {width_m}");
        }
    }
}
