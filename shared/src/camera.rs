//! What a camera looks at, as the aggregator's registry keeps it and the
//! agent applies it: metadata (name, position, heading), inference pace,
//! zones and counting lines — and the one validation both sides run, so a
//! camera the API accepts is a camera every agent accepts, and the agent's
//! config file obeys the same rules.
//!
//! Geometry is in normalised frame coordinates: `[x, y]` with both in
//! `0..=1`, `y` pointing down, so a zone survives a resolution change.

use serde::{Deserialize, Serialize};

use crate::topic::is_valid_node_id;

/// `[x, y]` in normalised frame coordinates. `f64` on the wire and in the
/// registry so values read back exactly as written; the agent's tracker
/// works in `f32`.
pub type Point = [f64; 2];

/// Most cameras one node's remote config may carry.
pub const MAX_CAMERAS_PER_NODE: usize = 64;
/// Most zones (and, separately, lines) per camera.
pub const MAX_ZONES_PER_CAMERA: usize = 32;
pub const MAX_LINES_PER_CAMERA: usize = 32;
/// Most corners of one zone polygon.
pub const MAX_POLYGON_POINTS: usize = 64;
/// Smallest zone area, in squared frame fractions: a 0.001 × 0.001 square.
/// Anything smaller (or collinear corners) can never contain a detection.
pub const MIN_ZONE_AREA: f64 = 1e-6;
/// Upper bound for `detect_fps` (the agent samples, it does not record).
pub const MAX_DETECT_FPS: f64 = 60.0;
/// Longest camera display name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A named polygon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneSpec {
    pub id: String,
    /// At least 3 corners, in order (either winding).
    pub polygon: Vec<Point>,
}

/// A named counting line from `from` to `to`; crossing directions are as
/// seen standing on `from` looking towards `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineSpec {
    pub id: String,
    pub from: Point,
    pub to: Point,
}

/// WGS 84 position in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lng: f64,
}

/// One camera's registry entry as it travels in a remote config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraSpec {
    /// The agent's camera id (`[[cameras]] id` in its config file).
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub location: Option<GeoPoint>,
    /// Compass heading the camera faces, degrees clockwise from north, `0..=360`.
    #[serde(default)]
    pub heading: Option<f64>,
    /// Inferences per second at most; `None` keeps the agent's own setting.
    #[serde(default)]
    pub detect_fps: Option<f64>,
    #[serde(default)]
    pub zones: Vec<ZoneSpec>,
    #[serde(default)]
    pub lines: Vec<LineSpec>,
}

/// One thing wrong with one field; `field` is a path relative to the
/// object checked (`zones[0].polygon`, `location.lat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// Most problems [`describe`] spells out; the rest are counted. A hostile
/// document can hold thousands, and the line travels in API errors and in
/// every heartbeat's `config_error`.
pub const MAX_DESCRIBED_PROBLEMS: usize = 10;

/// Joins problems into one line for logs and API errors: the first
/// [`MAX_DESCRIBED_PROBLEMS`], then how many more there are.
pub fn describe(problems: &[Problem]) -> String {
    let mut line = problems
        .iter()
        .take(MAX_DESCRIBED_PROBLEMS)
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > MAX_DESCRIBED_PROBLEMS {
        line.push_str(&format!(
            "; and {} more problems",
            problems.len() - MAX_DESCRIBED_PROBLEMS
        ));
    }
    line
}

/// Whether both coordinates are finite and inside the frame.
pub fn is_normalised(p: &Point) -> bool {
    p.iter().all(|c| c.is_finite() && (0.0..=1.0).contains(c))
}

/// Camera, zone and line ids share the node id alphabet: they end up in
/// topic-free but URL, metric and file-name positions.
pub const ID_RULE: &str = "use 1 to 64 of A-Z a-z 0-9 _ -";

/// Absolute area of a simple polygon (shoelace formula).
pub fn polygon_area(polygon: &[Point]) -> f64 {
    let n = polygon.len();
    let twice: f64 = (0..n)
        .map(|i| {
            let [x1, y1] = polygon[i];
            let [x2, y2] = polygon[(i + 1) % n];
            x1 * y2 - x2 * y1
        })
        .sum();
    twice.abs() / 2.0
}

/// Problems of one zone; `at` is its path (`zones[3]`).
pub fn check_zone(at: &str, z: &ZoneSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if !is_valid_node_id(&z.id) {
        out.push(problem(
            format!("{at}.id"),
            format!("{:?}: {ID_RULE}", z.id),
        ));
    }
    if z.polygon.len() < 3 || z.polygon.len() > MAX_POLYGON_POINTS {
        out.push(problem(
            format!("{at}.polygon"),
            format!(
                "needs 3 to {MAX_POLYGON_POINTS} [x, y] points, each coordinate in 0..=1 (fractions of the frame); got {} points",
                z.polygon.len()
            ),
        ));
    } else if !z.polygon.iter().all(is_normalised) {
        out.push(problem(
            format!("{at}.polygon"),
            "needs at least 3 [x, y] points, each coordinate in 0..=1 (fractions of the frame)",
        ));
    } else if polygon_area(&z.polygon) < MIN_ZONE_AREA {
        out.push(problem(
            format!("{at}.polygon"),
            "encloses no area (the points are collinear or nearly equal)",
        ));
    }
    out
}

/// Problems of one line; `at` is its path (`lines[0]`).
pub fn check_line(at: &str, l: &LineSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if !is_valid_node_id(&l.id) {
        out.push(problem(
            format!("{at}.id"),
            format!("{:?}: {ID_RULE}", l.id),
        ));
    }
    if !is_normalised(&l.from) || !is_normalised(&l.to) || l.from == l.to {
        out.push(problem(
            at,
            "from and to must be two different [x, y] points with coordinates in 0..=1",
        ));
    }
    out
}

/// Problems of a camera's zone list: their number, then (within the
/// bound: the id check is quadratic) each zone and unique ids.
pub fn check_zones(prefix: &str, zones: &[ZoneSpec]) -> Vec<Problem> {
    let mut out = Vec::new();
    if zones.len() > MAX_ZONES_PER_CAMERA {
        out.push(problem(
            format!("{prefix}zones"),
            format!(
                "{} zones; a camera has at most {MAX_ZONES_PER_CAMERA}",
                zones.len()
            ),
        ));
        return out;
    }
    for (i, z) in zones.iter().enumerate() {
        let at = format!("{prefix}zones[{i}]");
        out.extend(check_zone(&at, z));
        if zones[..i].iter().any(|o| o.id == z.id) {
            out.push(problem(
                format!("{at}.id"),
                format!("zone id {:?} is used twice on this camera", z.id),
            ));
        }
    }
    out
}

/// Problems of a camera's line list: their number, then (within the
/// bound) each line and unique ids.
pub fn check_lines(prefix: &str, lines: &[LineSpec]) -> Vec<Problem> {
    let mut out = Vec::new();
    if lines.len() > MAX_LINES_PER_CAMERA {
        out.push(problem(
            format!("{prefix}lines"),
            format!(
                "{} lines; a camera has at most {MAX_LINES_PER_CAMERA}",
                lines.len()
            ),
        ));
        return out;
    }
    for (i, l) in lines.iter().enumerate() {
        let at = format!("{prefix}lines[{i}]");
        out.extend(check_line(&at, l));
        if lines[..i].iter().any(|o| o.id == l.id) {
            out.push(problem(
                format!("{at}.id"),
                format!("line id {:?} is used twice on this camera", l.id),
            ));
        }
    }
    out
}

/// Problems of `detect_fps`, when given.
pub fn check_detect_fps(field: &str, fps: f64) -> Option<Problem> {
    (!(fps.is_finite() && fps > 0.0 && fps <= MAX_DETECT_FPS))
        .then(|| problem(field, format!("{fps} is outside (0, {MAX_DETECT_FPS}]")))
}

impl CameraSpec {
    /// Every problem of this camera, with paths prefixed by `prefix`
    /// (`""` or `cameras[2].`).
    pub fn problems(&self, prefix: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        if !is_valid_node_id(&self.id) {
            out.push(problem(
                format!("{prefix}id"),
                format!("camera id {:?}: {ID_RULE}", self.id),
            ));
        }
        if let Some(name) = &self.name {
            if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                out.push(problem(
                    format!("{prefix}name"),
                    format!("at most {MAX_NAME_LEN} bytes without control characters"),
                ));
            }
        }
        if let Some(GeoPoint { lat, lng }) = self.location {
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                out.push(problem(
                    format!("{prefix}location.lat"),
                    format!("{lat} is outside -90..=90 degrees"),
                ));
            }
            if !(lng.is_finite() && (-180.0..=180.0).contains(&lng)) {
                out.push(problem(
                    format!("{prefix}location.lng"),
                    format!("{lng} is outside -180..=180 degrees"),
                ));
            }
        }
        if let Some(h) = self.heading {
            if !(h.is_finite() && (0.0..=360.0).contains(&h)) {
                out.push(problem(
                    format!("{prefix}heading"),
                    format!("{h} is outside 0..=360 degrees (clockwise from north)"),
                ));
            }
        }
        if let Some(fps) = self.detect_fps {
            out.extend(check_detect_fps(&format!("{prefix}detect_fps"), fps));
        }
        out.extend(check_zones(prefix, &self.zones));
        out.extend(check_lines(prefix, &self.lines));
        out
    }
}

/// Problems of a whole camera list: their number, then (within the bound)
/// each camera and unique ids.
pub fn check_cameras(prefix: &str, cameras: &[CameraSpec]) -> Vec<Problem> {
    let mut out = Vec::new();
    if cameras.len() > MAX_CAMERAS_PER_NODE {
        out.push(problem(
            format!("{prefix}cameras"),
            format!(
                "{} cameras; a node has at most {MAX_CAMERAS_PER_NODE}",
                cameras.len()
            ),
        ));
        return out;
    }
    for (i, c) in cameras.iter().enumerate() {
        let at = format!("{prefix}cameras[{i}].");
        out.extend(c.problems(&at));
        if cameras[..i].iter().any(|o| o.id == c.id) {
            out.push(problem(
                format!("{at}id"),
                format!("camera id {:?} is used twice", c.id),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera() -> CameraSpec {
        CameraSpec {
            id: "north".into(),
            name: Some("North gate".into()),
            location: Some(GeoPoint {
                lat: 52.37,
                lng: 4.89,
            }),
            heading: Some(270.0),
            detect_fps: Some(5.0),
            zones: vec![ZoneSpec {
                id: "crossing".into(),
                polygon: vec![[0.1, 0.5], [0.9, 0.5], [0.9, 0.9], [0.1, 0.9]],
            }],
            lines: vec![LineSpec {
                id: "stop-line".into(),
                from: [0.0, 0.6],
                to: [1.0, 0.6],
            }],
        }
    }

    fn fields(c: &CameraSpec) -> Vec<String> {
        c.problems("").into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_good_camera_has_no_problems() {
        assert!(camera().problems("").is_empty());
        let bare = CameraSpec {
            id: "c".into(),
            name: None,
            location: None,
            heading: None,
            detect_fps: None,
            zones: vec![],
            lines: vec![],
        };
        assert!(bare.problems("").is_empty());
        // Edges of the ranges are inside.
        let mut c = camera();
        c.location = Some(GeoPoint {
            lat: -90.0,
            lng: 180.0,
        });
        c.heading = Some(360.0);
        assert!(c.problems("").is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut c = camera();
        c.id = "no spaces".into();
        c.location = Some(GeoPoint {
            lat: 200.0,
            lng: -181.0,
        });
        c.heading = Some(-1.0);
        c.detect_fps = Some(0.0);
        c.name = Some("a\nb".into());
        c.zones.push(ZoneSpec {
            id: "crossing".into(),
            polygon: vec![[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]],
        });
        c.zones.push(ZoneSpec {
            id: "two".into(),
            polygon: vec![[0.1, 0.1], [2.0, 0.1], [0.5, 0.5]],
        });
        c.lines.push(LineSpec {
            id: "l".into(),
            from: [0.5, 0.5],
            to: [0.5, 0.5],
        });
        c.lines.push(LineSpec {
            id: "stop-line".into(),
            from: [0.0, 0.0],
            to: [1.0, 1.0],
        });
        assert_eq!(
            fields(&c),
            [
                "id",
                "name",
                "location.lat",
                "location.lng",
                "heading",
                "detect_fps",
                "zones[1].polygon",
                "zones[1].id",
                "zones[2].polygon",
                "lines[1]",
                "lines[2].id",
            ]
        );
        let text = describe(&c.problems(""));
        assert!(text.contains("collinear"), "{text}");
        assert!(text.contains("used twice"), "{text}");
    }

    #[test]
    fn limits_are_enforced() {
        let mut c = camera();
        c.zones = (0..=MAX_ZONES_PER_CAMERA)
            .map(|i| ZoneSpec {
                id: format!("z{i}"),
                polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]],
            })
            .collect();
        c.lines[0].from = [f64::NAN, 0.0];
        assert_eq!(fields(&c), ["zones", "lines[0]"]);
        c.lines = (0..=MAX_LINES_PER_CAMERA)
            .map(|i| LineSpec {
                id: format!("l{i}"),
                from: [0.0, 0.0],
                to: [1.0, 1.0],
            })
            .collect();
        assert_eq!(fields(&c), ["zones", "lines"]);
        let mut z = camera();
        z.zones[0].polygon = vec![[0.5, 0.5]; MAX_POLYGON_POINTS + 1];
        assert_eq!(fields(&z), ["zones[0].polygon"]);
        let cams = vec![camera(), camera()];
        let p = check_cameras("", &cams);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "cameras[1].id");
    }

    #[test]
    fn a_hostile_list_is_one_problem_and_a_bounded_line() {
        // Thousands of bad cameras: one problem (the count), not thousands,
        // and no quadratic id check.
        let mut bad = camera();
        bad.id = "no spaces".into();
        bad.zones = vec![
            ZoneSpec {
                id: "z".into(),
                polygon: vec![[2.0, 2.0]; 3],
            };
            5000
        ];
        let many = vec![bad.clone(); 5000];
        let p = check_cameras("config.", &many);
        assert_eq!(p.len(), 1, "{}", describe(&p));
        assert!(p[0].message.contains("5000 cameras"), "{}", p[0]);
        // Within the camera bound, every camera's problems are found, but
        // the line that travels stays short.
        let some = vec![bad; MAX_CAMERAS_PER_NODE];
        let p = check_cameras("config.", &some);
        assert!(p.len() > MAX_DESCRIBED_PROBLEMS, "{}", p.len());
        let line = describe(&p);
        assert!(line.len() < 2000, "{} bytes", line.len());
        assert!(
            line.ends_with(&format!(
                "and {} more problems",
                p.len() - MAX_DESCRIBED_PROBLEMS
            )),
            "{line}"
        );
    }

    #[test]
    fn area_of_a_unit_square() {
        let sq = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!((polygon_area(&sq) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn json_shape_is_the_toml_shape() {
        let c = camera();
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["zones"][0]["polygon"][1], serde_json::json!([0.9, 0.5]));
        assert_eq!(v["lines"][0]["from"], serde_json::json!([0.0, 0.6]));
        let back: CameraSpec = serde_json::from_value(v).expect("back");
        assert_eq!(back, c);
        // Optional keys may be left out.
        let min: CameraSpec = serde_json::from_str(r#"{"id":"c"}"#).expect("minimal");
        assert!(min.zones.is_empty() && min.location.is_none());
    }
}
