//! Human review of what the detector saw, and the training set it yields.
//!
//! An operator confirms, relabels or rejects a stored detection or a citizen
//! report (whose photo and detections are stored). The latest review of a
//! subject is its state; every review is also in the audit log. Reviewed
//! reports export as a YOLO dataset ([`yolo_dataset`]): their photo, one
//! `class cx cy w h` line per reviewed object, and `data.yaml`. Detections
//! have no stored frame (agents send only per-track snapshot crops, taken at
//! another moment than the detection), so their reviews are listed in the
//! dataset's `manifest.json` but carry no image or label file.
//!
//! Storage keeps its own schema version in the aggregator's SQLite file.

use std::collections::BTreeSet;
use std::io::Write;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::store::component::ComponentDb;
use crate::store::{StoreError, StoreResult};

const COMPONENT: &str = "reviews";

const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        tenant_id INTEGER,
        node_id TEXT,
        verdict TEXT NOT NULL,
        objects TEXT NOT NULL,
        note TEXT,
        reviewer TEXT NOT NULL,
        reviewed_ms INTEGER NOT NULL,
        UNIQUE (kind, subject)
    );
    CREATE INDEX reviews_by_time ON reviews (reviewed_ms DESC, id DESC);
"#];

/// What was reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A stored detection (`/api/v1/detections`), by id.
    Detection,
    /// A citizen report, by its `rpt_…` id.
    Report,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Detection => "detection",
            SubjectKind::Report => "report",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "detection" => Some(SubjectKind::Detection),
            "report" => Some(SubjectKind::Report),
            _ => None,
        }
    }
}

/// The reviewer's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The detector was right.
    Confirmed,
    /// The objects are there but (some) labels or boxes were wrong; `objects` holds the right ones.
    Relabeled,
    /// Nothing of what the detector saw is there; not exported.
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::Relabeled => "relabeled",
            Verdict::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "confirmed" => Ok(Verdict::Confirmed),
            "relabeled" => Ok(Verdict::Relabeled),
            "rejected" => Ok(Verdict::Rejected),
            o => Err(format!(
                "verdict {o:?} must be confirmed, relabeled or rejected"
            )),
        }
    }
}

/// One object as the reviewer settled it, in image pixels `[x1, y1, x2, y2]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewedObject {
    /// 1-64 characters, not blank, no control characters.
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub label: String,
    /// `[x1, y1, x2, y2]` in pixels, x1 < x2 and y1 < y2.
    #[schema(value_type = BboxDoc, inline)]
    pub bbox: [f32; 4],
}

/// `[x1, y1, x2, y2]`: four pixel coordinates, none negative (the order
/// x1 < x2, y1 < y2 is checked too).
#[derive(Debug)]
pub struct BboxDoc;

impl utoipa::PartialSchema for BboxDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0.0)),
            )
            .min_items(Some(4))
            .max_items(Some(4))
            .into()
    }
}

impl utoipa::ToSchema for BboxDoc {}

/// The current review of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub id: i64,
    pub kind: SubjectKind,
    /// The detection id or report id.
    pub subject: String,
    pub tenant_id: Option<i64>,
    /// The node of a reviewed detection.
    pub node_id: Option<String>,
    pub verdict: Verdict,
    /// What the subject holds after review (empty when rejected).
    pub objects: Vec<ReviewedObject>,
    pub note: Option<String>,
    pub reviewer: String,
    pub reviewed_at: DateTime<Utc>,
}

/// A review about to be recorded.
#[derive(Debug, Clone)]
pub struct NewReview {
    pub kind: SubjectKind,
    pub subject: String,
    pub tenant_id: Option<i64>,
    pub node_id: Option<String>,
    pub verdict: Verdict,
    pub objects: Vec<ReviewedObject>,
    pub note: Option<String>,
    pub reviewer: String,
}

/// Which reviews a caller may see and asked for.
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter {
    /// Limit to one tenant: its reports, and detections of `nodes`.
    pub tenant: Option<(i64, Vec<String>)>,
    pub kind: Option<SubjectKind>,
    pub verdict: Option<Verdict>,
    pub limit: usize,
    /// Continue after this review id (newest first).
    pub before_id: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ReviewStore {
    db: ComponentDb,
}

fn review_row(r: &Row<'_>) -> rusqlite::Result<Review> {
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    };
    let kind: String = r.get("kind")?;
    let verdict: String = r.get("verdict")?;
    let objects: String = r.get("objects")?;
    Ok(Review {
        id: r.get("id")?,
        kind: SubjectKind::parse(&kind).ok_or_else(|| bad(format!("kind {kind:?}")))?,
        subject: r.get("subject")?,
        tenant_id: r.get("tenant_id")?,
        node_id: r.get("node_id")?,
        verdict: Verdict::parse(&verdict).map_err(bad)?,
        objects: serde_json::from_str(&objects).map_err(|e| bad(e.to_string()))?,
        note: r.get("note")?,
        reviewer: r.get("reviewer")?,
        reviewed_at: Utc
            .timestamp_millis_opt(r.get("reviewed_ms")?)
            .single()
            .unwrap_or_default(),
    })
}

impl ReviewStore {
    /// Opens (and migrates) the review tables of a `sqlite://PATH` file.
    pub fn open(url: &str) -> StoreResult<Self> {
        Ok(Self {
            db: ComponentDb::open(url, COMPONENT, MIGRATIONS)?,
        })
    }

    /// Records a review, replacing the subject's previous one; returns the
    /// previous and the new review.
    pub async fn record(&self, new: NewReview) -> StoreResult<(Option<Review>, Review)> {
        self.db
            .with(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let get = |tx: &rusqlite::Transaction<'_>| {
                    tx.query_row(
                        "SELECT * FROM reviews WHERE kind = ?1 AND subject = ?2",
                        params![new.kind.as_str(), new.subject],
                        review_row,
                    )
                    .optional()
                };
                let before = get(&tx)?;
                let objects = serde_json::to_string(&new.objects)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                tx.execute(
                    "INSERT INTO reviews (kind, subject, tenant_id, node_id, verdict, objects, note, reviewer, reviewed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (kind, subject) DO UPDATE SET verdict = excluded.verdict, objects = excluded.objects,
                         note = excluded.note, reviewer = excluded.reviewer, reviewed_ms = excluded.reviewed_ms",
                    params![
                        new.kind.as_str(),
                        new.subject,
                        new.tenant_id,
                        new.node_id,
                        new.verdict.as_str(),
                        objects,
                        new.note,
                        new.reviewer,
                        Utc::now().timestamp_millis()
                    ],
                )?;
                let after = get(&tx)?
                    .ok_or_else(|| StoreError::Database("review vanished".into()))?;
                tx.commit()?;
                Ok((before, after))
            })
            .await
    }

    /// The current reviews of some subjects of one kind, by subject.
    pub async fn of(
        &self,
        kind: SubjectKind,
        subjects: Vec<String>,
    ) -> StoreResult<std::collections::HashMap<String, Review>> {
        if subjects.is_empty() {
            return Ok(Default::default());
        }
        self.db
            .with(move |c| {
                let list = serde_json::to_string(&subjects).unwrap_or_else(|_| "[]".into());
                let mut stmt = c.prepare_cached(
                    "SELECT * FROM reviews WHERE kind = ?1 AND subject IN (SELECT value FROM json_each(?2))",
                )?;
                let rows = stmt.query_map(params![kind.as_str(), list], review_row)?;
                let mut out = std::collections::HashMap::new();
                for r in rows {
                    let r = r?;
                    out.insert(r.subject.clone(), r);
                }
                Ok(out)
            })
            .await
    }

    /// Reviews newest first.
    pub async fn list(&self, f: ReviewFilter) -> StoreResult<Vec<Review>> {
        self.db
            .with(move |c| {
                let (tenant, nodes) = match &f.tenant {
                    Some((t, nodes)) => (
                        Some(*t),
                        Some(serde_json::to_string(nodes).unwrap_or_else(|_| "[]".into())),
                    ),
                    None => (None, None),
                };
                // A tenant sees its reports' reviews and its nodes' detections'.
                let mut stmt = c.prepare_cached(
                    "SELECT * FROM reviews
                     WHERE (?1 IS NULL OR (kind = 'report' AND tenant_id = ?1)
                            OR (kind = 'detection' AND node_id IN (SELECT value FROM json_each(?2))))
                       AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR verdict = ?4)
                       AND (?5 IS NULL OR id < ?5)
                     ORDER BY id DESC LIMIT ?6",
                )?;
                let rows = stmt.query_map(
                    params![
                        tenant,
                        nodes,
                        f.kind.map(SubjectKind::as_str),
                        f.verdict.map(Verdict::as_str),
                        f.before_id,
                        f.limit as i64
                    ],
                    review_row,
                )?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }
}

/// One image of a dataset and the objects on it.
#[derive(Debug, Clone)]
pub struct LabeledImage {
    /// File stem inside `images/` and `labels/` (the report id).
    pub name: String,
    /// `jpg` or `png`.
    pub extension: &'static str,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<ReviewedObject>,
}

/// A YOLO label line: class index, then the box centre and size as
/// fractions of the image (clamped to the image), six decimals.
pub fn yolo_line(class: usize, bbox: [f32; 4], width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let clamp = |v: f32, max: f64| f64::from(v).clamp(0.0, max);
    let (x1, x2) = (clamp(bbox[0], w), clamp(bbox[2], w));
    let (y1, y2) = (clamp(bbox[1], h), clamp(bbox[3], h));
    let (x1, x2) = (x1.min(x2), x1.max(x2));
    let (y1, y2) = (y1.min(y2), y1.max(y2));
    format!(
        "{class} {:.6} {:.6} {:.6} {:.6}",
        (x1 + x2) / 2.0 / w,
        (y1 + y2) / 2.0 / h,
        (x2 - x1) / w,
        (y2 - y1) / h
    )
}

/// Quotes a YAML scalar (single quotes, doubled inside).
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Writes a YOLO dataset zip: `images/NAME.EXT`, `labels/NAME.txt`,
/// `data.yaml` (class names sorted, indexed from 0) and `manifest.json`
/// (`manifest` as given, plus the class names). Images are stored as they
/// are (already compressed); text is deflated.
pub fn yolo_dataset(
    images: &[LabeledImage],
    mut manifest: serde_json::Value,
) -> Result<Vec<u8>, String> {
    let names: Vec<&str> = images
        .iter()
        .flat_map(|i| i.objects.iter().map(|o| o.label.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let class = |label: &str| names.binary_search(&label).unwrap_or(0);
    let err = |e: zip::result::ZipError| format!("writing the zip: {e}");
    let io = |e: std::io::Error| format!("writing the zip: {e}");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let text = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for img in images {
        zip.start_file(format!("images/{}.{}", img.name, img.extension), stored)
            .map_err(err)?;
        zip.write_all(&img.bytes).map_err(io)?;
        zip.start_file(format!("labels/{}.txt", img.name), text)
            .map_err(err)?;
        for o in &img.objects {
            writeln!(
                zip,
                "{}",
                yolo_line(class(&o.label), o.bbox, img.width, img.height)
            )
            .map_err(io)?;
        }
    }
    let mut yaml = String::from(
        "# EdgeQI reviewed data: YOLO format (images/ and labels/ side by side).\npath: .\ntrain: images\nval: images\n",
    );
    yaml.push_str(&format!("nc: {}\nnames:\n", names.len()));
    for n in &names {
        yaml.push_str(&format!("  - {}\n", yaml_str(n)));
    }
    zip.start_file("data.yaml", text).map_err(err)?;
    zip.write_all(yaml.as_bytes()).map_err(io)?;
    manifest["names"] = serde_json::json!(names);
    zip.start_file("manifest.json", text).map_err(err)?;
    zip.write_all(
        serde_json::to_string_pretty(&manifest)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(io)?;
    Ok(zip.finish().map_err(err)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_lines_are_normalised_centre_and_size() {
        assert_eq!(
            yolo_line(3, [100.0, 50.0, 300.0, 250.0], 400, 500),
            "3 0.500000 0.300000 0.500000 0.400000"
        );
        // Boxes beyond the image are clipped to it; swapped corners are put right.
        assert_eq!(
            yolo_line(0, [300.0, -20.0, 500.0, 100.0], 400, 200),
            "0 0.875000 0.250000 0.250000 0.500000"
        );
    }

    #[test]
    fn yaml_names_are_quoted() {
        assert_eq!(yaml_str("it's"), "'it''s'");
    }

    #[tokio::test]
    async fn latest_review_wins_and_tenants_are_separated() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = ReviewStore::open(&url).expect("open");
        let new = |kind, subject: &str, tenant, node: Option<&str>, verdict| NewReview {
            kind,
            subject: subject.into(),
            tenant_id: tenant,
            node_id: node.map(str::to_owned),
            verdict,
            objects: vec![],
            note: None,
            reviewer: "op".into(),
        };
        let (before, first) = store
            .record(new(
                SubjectKind::Report,
                "rpt_a",
                Some(1),
                None,
                Verdict::Confirmed,
            ))
            .await
            .expect("first");
        assert!(before.is_none());
        let (before, second) = store
            .record(new(
                SubjectKind::Report,
                "rpt_a",
                Some(1),
                None,
                Verdict::Rejected,
            ))
            .await
            .expect("second");
        assert_eq!(before.expect("previous").verdict, Verdict::Confirmed);
        assert_eq!(second.id, first.id, "one current review per subject");
        store
            .record(new(
                SubjectKind::Detection,
                "7",
                None,
                Some("gate-02"),
                Verdict::Confirmed,
            ))
            .await
            .expect("detection");
        let all = store
            .list(ReviewFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("all");
        assert_eq!(all.len(), 2);
        let t1 = store
            .list(ReviewFilter {
                tenant: Some((1, vec!["gate-01".into()])),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("tenant");
        assert_eq!(t1.len(), 1, "{t1:?}");
        assert_eq!(t1[0].verdict, Verdict::Rejected);
        let t2 = store
            .list(ReviewFilter {
                tenant: Some((2, vec!["gate-02".into()])),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("tenant 2");
        assert_eq!(t2.len(), 1);
        assert_eq!(t2[0].kind, SubjectKind::Detection);
        let of = store
            .of(SubjectKind::Report, vec!["rpt_a".into(), "rpt_b".into()])
            .await
            .expect("of");
        assert_eq!(of.len(), 1);
    }
}
