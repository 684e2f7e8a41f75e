//! One behavioural suite every [`Store`] backend must pass.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use edgeqi_shared::{Detection, DetectionBatch, DetectionCount, Heartbeat, NodeStatus};

use super::{
    DeadLetterQuery, DetectionQuery, RetentionPolicy, Store, TimeseriesBy, TimeseriesQuery,
};

fn t0() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().expect("ts")
}

fn batch(node: &str, epoch: &str, seq: u64, n: usize) -> DetectionBatch {
    DetectionBatch {
        v: 1,
        node_id: node.into(),
        epoch: epoch.into(),
        seq,
        sent_at: t0(),
        detections: (0..n)
            .map(|i| Detection {
                ts: t0() + Duration::milliseconds((seq * 1000 + i as u64) as i64),
                camera_id: if i % 2 == 0 { "north" } else { "south" }.into(),
                class_id: Some((i % 3) as u32),
                label: ["person", "bicycle", "car"][i % 3].into(),
                score: 0.5 + (i % 5) as f32 / 10.0,
                bbox: [1.0, 2.0, 30.0, 40.0],
                track_id: Some(i as u64),
                zone: None,
            })
            .collect(),
        counts: vec![],
    }
}

pub async fn run_all(store: Arc<dyn Store>) {
    ingest_is_idempotent_and_acks_contiguous_prefix(&*store).await;
    epochs_are_separate(&*store).await;
    keyset_pagination_and_filters(&*store).await;
    registry_and_summary(&*store).await;
    dead_letters_are_kept(&*store).await;
    compacted_counts_are_stored(&*store).await;
    group_commit_stores_each_batch_once(&*store).await;
    timeseries_counts_rows_and_compacted_counts(&*store).await;
    sums_saturate_instead_of_failing(&*store).await;
    refused_data_is_not_retryable(&*store).await;
    store.ping().await.expect("ping");
    // Last: it deletes old data.
    retention_deletes_what_the_policy_no_longer_keeps(&*store).await;
}

async fn ingest_is_idempotent_and_acks_contiguous_prefix(s: &dyn Store) {
    let o = s
        .ingest_batch(&batch("a", "e1", 1, 3))
        .await
        .expect("seq 1");
    assert!(!o.duplicate);
    assert_eq!(o.acked_seq, 1);
    assert_eq!(o.detection_ids.len(), 3);
    // Seq 3 before 2: stored, but the ack stays at the contiguous prefix.
    let o = s
        .ingest_batch(&batch("a", "e1", 3, 2))
        .await
        .expect("seq 3");
    assert_eq!((o.duplicate, o.acked_seq), (false, 1));
    let o = s
        .ingest_batch(&batch("a", "e1", 5, 1))
        .await
        .expect("seq 5");
    assert_eq!(o.acked_seq, 1);
    let ledger = s.ledger("a").await.expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].holes, vec![(2, 2), (4, 4)]);
    assert_eq!(ledger[0].max_seq, 5);
    // Filling the hole jumps the ack over everything already stored after it.
    let o = s
        .ingest_batch(&batch("a", "e1", 2, 2))
        .await
        .expect("seq 2");
    assert_eq!(o.acked_seq, 3);
    // A resend is not stored again but is acked again.
    let o = s
        .ingest_batch(&batch("a", "e1", 1, 3))
        .await
        .expect("resend");
    assert!(o.duplicate);
    assert!(o.detection_ids.is_empty());
    assert_eq!(o.acked_seq, 3);
    let q = DetectionQuery {
        node_id: Some("a".into()),
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(
        s.detections(&q).await.expect("query").items.len(),
        3 + 2 + 1 + 2
    );
    let o = s
        .ingest_batch(&batch("a", "e1", 4, 0))
        .await
        .expect("empty batch");
    assert_eq!(o.acked_seq, 5);
    assert!(s.ledger("a").await.expect("ledger")[0].holes.is_empty());
}

async fn epochs_are_separate(s: &dyn Store) {
    // A re-flashed box starts at seq 1 again under a new epoch: not a resend.
    let o = s
        .ingest_batch(&batch("a", "e2", 1, 2))
        .await
        .expect("new epoch");
    assert!(!o.duplicate);
    assert_eq!(o.acked_seq, 1);
    // A simple client with no epoch has its own ledger line.
    let o = s
        .ingest_batch(&batch("a", "", 1, 1))
        .await
        .expect("empty epoch");
    assert!(!o.duplicate);
    let epochs: Vec<String> = s
        .ledger("a")
        .await
        .expect("ledger")
        .into_iter()
        .map(|e| e.epoch)
        .collect();
    assert_eq!(epochs, ["", "e1", "e2"]);
}

async fn keyset_pagination_and_filters(s: &dyn Store) {
    for seq in 1..=5 {
        s.ingest_batch(&batch("p", "e", seq, 7))
            .await
            .expect("ingest");
    }
    let mut q = DetectionQuery {
        node_id: Some("p".into()),
        limit: 4,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = s.detections(&q).await.expect("page");
        assert!(page.items.len() <= 4);
        seen.extend(page.items.iter().map(|d| (d.ts, d.id)));
        match page.next {
            Some(after) => q.after = Some(after),
            None => break,
        }
    }
    assert_eq!(seen.len(), 35, "every row exactly once across pages");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    // Each listed detection is found again by its id.
    let first = s
        .detections(&DetectionQuery {
            node_id: Some("p".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("first")
        .items
        .remove(0);
    assert_eq!(
        s.detection(first.id).await.expect("by id"),
        Some(first.clone())
    );
    assert_eq!(s.detection(i64::MAX).await.expect("unknown id"), None);

    let q = DetectionQuery {
        node_id: Some("p".into()),
        camera_id: Some("north".into()),
        label: Some("person".into()),
        min_score: Some(0.55),
        since: Some(t0() + Duration::seconds(2)),
        until: Some(t0() + Duration::seconds(5)),
        limit: 100,
        ..Default::default()
    };
    let items = s.detections(&q).await.expect("filtered").items;
    assert!(!items.is_empty());
    // Tenant scoping: an explicit node list, empty meaning nothing.
    let scoped = |nodes: Vec<&str>| DetectionQuery {
        node_ids: Some(nodes.into_iter().map(str::to_owned).collect()),
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(
        s.detections(&scoped(vec!["p"]))
            .await
            .expect("scoped")
            .items
            .len(),
        35
    );
    assert_eq!(
        s.detections(&scoped(vec!["p", "a"]))
            .await
            .expect("scoped")
            .items
            .len(),
        35 + 11
    );
    assert!(s
        .detections(&scoped(vec![]))
        .await
        .expect("scoped")
        .items
        .is_empty());
    // The same scoping for summaries.
    let sum = s
        .summary_for(Utc::now(), &["p".to_owned()])
        .await
        .expect("scoped summary");
    assert_eq!((sum.detections_total, sum.nodes_total), (35, 1));
    let none = s.summary_for(Utc::now(), &[]).await.expect("empty scope");
    assert_eq!((none.detections_total, none.nodes_total), (0, 0));
    for d in &items {
        assert_eq!(
            (d.camera_id.as_str(), d.label.as_str()),
            ("north", "person")
        );
        assert!(d.score >= 0.55);
        assert!(d.ts >= t0() + Duration::seconds(2) && d.ts < t0() + Duration::seconds(5));
    }
}

async fn registry_and_summary(s: &dyn Store) {
    let hb = Heartbeat {
        v: 1,
        node_id: "hb-node".into(),
        ts: t0(),
        uptime_s: 1,
        cpu_pct: 3.0,
        mem_used_bytes: 1,
        mem_total_bytes: 2,
        backlog: 0,
        fps: 10.0,
        version: "0.1.0".into(),
        interval_s: 5,
        disk_free_bytes: None,
        disk_total_bytes: None,
        temperature_c: None,
        detector: Some("motion".into()),
        outbox: None,
        cameras: vec![],
        config_version: Some(3),
        config_error: None,
        config_unknown_cameras: vec![],
    };
    s.record_heartbeat(&hb).await.expect("heartbeat");
    let node = s.node("hb-node").await.expect("node").expect("registered");
    assert_eq!(node.heartbeat_interval_s, 5);
    assert_eq!(node.last_heartbeat.as_ref().map(|h| h.fps), Some(10.0));
    // The applied remote config version is what `GET /nodes/{id}` compares.
    assert_eq!(
        node.last_heartbeat.as_ref().and_then(|h| h.config_version),
        Some(3)
    );
    assert!(node.is_online(Utc::now()));
    s.record_status(&NodeStatus {
        v: 1,
        node_id: "hb-node".into(),
        online: false,
        ts: t0(),
    })
    .await
    .expect("status");
    let node = s.node("hb-node").await.expect("node").expect("registered");
    assert!(!node.is_online(Utc::now()), "last will makes it offline");
    assert!(s.node("nobody").await.expect("lookup").is_none());

    let sum = s.summary(Utc::now()).await.expect("summary");
    let total: u64 = sum.by_class.values().sum();
    assert_eq!(sum.detections_total, total);
    assert!(sum.nodes_total >= 3);
    let q = DetectionQuery {
        limit: 10_000,
        ..Default::default()
    };
    assert_eq!(
        s.detections(&q).await.expect("all").items.len() as u64,
        sum.detections_total
    );
}

async fn dead_letters_are_kept(s: &dyn Store) {
    s.dead_letter(
        "edgeqi/v1/nodes/x/detections",
        Some("x"),
        "invalid_json",
        "bad",
        b"{oops",
    )
    .await
    .expect("dead letter");
    let q = |before_id, node_ids: Option<&[&str]>, limit| DeadLetterQuery {
        before_id,
        node_ids: node_ids.map(|n| n.iter().map(|s| s.to_string()).collect()),
        limit,
    };
    let dl = s.dead_letters(&q(None, None, 10)).await.expect("list");
    assert_eq!(dl[0].reason_code, "invalid_json");
    assert_eq!(dl[0].payload, "{oops");
    assert_eq!(dl[0].node_id.as_deref(), Some("x"));
    // Keyset pages, newest first, filtered by node before the limit.
    for (node, body) in [
        (Some("y"), "1"),
        (None, "2"),
        (Some("x"), "3"),
        (Some("y"), "4"),
    ] {
        s.dead_letter(
            "edgeqi/v1/nodes/q/detections",
            node,
            "invalid_json",
            "bad",
            body.as_bytes(),
        )
        .await
        .expect("dead letter");
    }
    // Each page as (its last id, its payloads).
    let page = |q: DeadLetterQuery| async move {
        let rows = s.dead_letters(&q).await.expect("dead letters");
        let last = rows.last().map(|d| d.id);
        (
            last,
            rows.into_iter().map(|d| d.payload).collect::<Vec<_>>(),
        )
    };
    let (last, first) = page(q(None, None, 2)).await;
    assert_eq!(first, ["4", "3"]);
    assert_eq!(page(q(last, None, 10)).await.1, ["2", "1", "{oops"]);
    let (last, ys) = page(q(None, Some(&["y"]), 1)).await;
    assert_eq!(ys, ["4"]);
    assert_eq!(page(q(last, Some(&["y"]), 5)).await.1, ["1"]);
    assert!(page(q(None, Some(&[]), 5)).await.1.is_empty());
}

async fn compacted_counts_are_stored(s: &dyn Store) {
    let mut b = batch("c", "e", 1, 0);
    b.counts.push(DetectionCount {
        minute: t0(),
        camera_id: "north".into(),
        zone: None,
        class_id: None,
        label: "motion".into(),
        count: 40,
    });
    let o = s.ingest_batch(&b).await.expect("counts batch");
    assert_eq!(o.acked_seq, 1);
}

async fn group_commit_stores_each_batch_once(s: &dyn Store) {
    // Two nodes, a resend queued beside its original, and a hole filled
    // within the group: one transaction, outcomes in input order.
    let group = [
        batch("g", "e", 1, 2),
        batch("g", "e", 3, 2),
        batch("h", "e", 1, 4),
        batch("g", "e", 1, 2),
        batch("g", "e", 2, 1),
    ];
    let out = s.ingest_batches(&group).await.expect("group");
    let got: Vec<(bool, u64, usize)> = out
        .iter()
        .map(|o| (o.duplicate, o.acked_seq, o.detection_ids.len()))
        .collect();
    assert_eq!(
        got,
        [
            (false, 3, 2),
            (false, 3, 2),
            (false, 1, 4),
            (true, 3, 0),
            (false, 3, 1)
        ]
    );
    let mut ids: Vec<i64> = out.iter().flat_map(|o| o.detection_ids.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 9, "every stored row has its own id");
    let count = |node: &str| DetectionQuery {
        node_id: Some(node.into()),
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(s.detections(&count("g")).await.expect("g").items.len(), 5);
    assert_eq!(s.detections(&count("h")).await.expect("h").items.len(), 4);
    // The whole group again: all duplicates, nothing written.
    let again = s.ingest_batches(&group).await.expect("resend group");
    assert!(again
        .iter()
        .all(|o| o.duplicate && o.detection_ids.is_empty()));
    assert_eq!(s.detections(&count("g")).await.expect("g").items.len(), 5);
    assert!(s.ingest_batches(&[]).await.expect("empty group").is_empty());
}

async fn timeseries_counts_rows_and_compacted_counts(s: &dyn Store) {
    // Node "ts" gets 6 rows in seq 1 (t0+1s..) and 6 in seq 61 (t0+61s..),
    // so two one-minute buckets, plus a compacted count of 40 at t0.
    s.ingest_batch(&batch("ts", "e", 1, 6)).await.expect("b1");
    s.ingest_batch(&batch("ts", "e", 61, 6)).await.expect("b61");
    let q = |by| TimeseriesQuery {
        since: t0(),
        until: t0() + Duration::minutes(2),
        bucket: std::time::Duration::from_secs(60),
        by,
        node_ids: None,
    };
    let points = s
        .timeseries(&q(TimeseriesBy::Label))
        .await
        .expect("by label");
    let total: u64 = points.iter().map(|p| p.count).sum();
    // Everything stored in the window by every node, counts included.
    let all = s
        .detections(&DetectionQuery {
            since: Some(t0()),
            until: Some(t0() + Duration::minutes(2)),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .expect("rows")
        .items
        .len() as u64;
    assert_eq!(total, all + 40, "rows plus the compacted count");
    assert!(points
        .iter()
        .all(|p| p.bucket == t0() || p.bucket == t0() + Duration::minutes(1)));
    let motion = points
        .iter()
        .find(|p| p.key == "motion" && p.bucket == t0())
        .expect("compacted motion count");
    assert_eq!(motion.count, 40);
    let cams = s
        .timeseries(&q(TimeseriesBy::Camera))
        .await
        .expect("by camera");
    assert!(cams.iter().any(|p| p.key == "north") && cams.iter().any(|p| p.key == "south"));
    let zones = s.timeseries(&q(TimeseriesBy::Zone)).await.expect("by zone");
    assert_eq!(zones.iter().map(|p| p.count).sum::<u64>(), total);
    // Limited to some nodes (a tenant's), other nodes' rows are not counted.
    let only = |nodes: Vec<String>| TimeseriesQuery {
        node_ids: Some(nodes),
        ..q(TimeseriesBy::Label)
    };
    let ts_only: u64 = s
        .timeseries(&only(vec!["ts".into()]))
        .await
        .expect("one node")
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(ts_only, 12, "node ts: its 12 rows");
    let with_counts: u64 = s
        .timeseries(&only(vec!["ts".into(), "c".into()]))
        .await
        .expect("two nodes")
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(with_counts, 12 + 40, "and node c's compacted count");
    assert!(s
        .timeseries(&only(vec![]))
        .await
        .expect("no nodes")
        .is_empty());
}

/// Counts stored before ingest bounded them (or by a client that skips
/// validation) must never make a query fail: sums saturate.
async fn sums_saturate_instead_of_failing(s: &dyn Store) {
    let minute = t0() + Duration::minutes(30);
    for seq in 1..=2 {
        let mut b = batch("huge", "e", seq, 0);
        b.counts = vec![DetectionCount {
            minute,
            camera_id: "north".into(),
            zone: None,
            class_id: None,
            label: "car".into(),
            count: u64::MAX,
        }];
        s.ingest_batch(&b)
            .await
            .expect("stored as the largest count");
    }
    let points = s
        .timeseries(&TimeseriesQuery {
            since: minute,
            until: minute + Duration::minutes(1),
            bucket: std::time::Duration::from_secs(60),
            by: TimeseriesBy::Label,
            node_ids: Some(vec!["huge".into()]),
        })
        .await
        .expect("a sum over i64::MAX answers");
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].count, i64::MAX as u64);
}

/// A value the database cannot hold comes back as a refusal (ingest
/// dead-letters it), never as an error ingest would retry forever.
async fn refused_data_is_not_retryable(s: &dyn Store) {
    let mut b = batch("refused", "e", 1, 1);
    b.seq = 1 << 63;
    let err = s.ingest_batch(&b).await.expect_err("seq above i64::MAX");
    assert!(!err.is_retryable(), "{err}");
    // Text with U+0000: PostgreSQL refuses it, SQLite keeps it.
    let mut b = batch("refused", "e", 1, 1);
    b.detections[0].label = "ca\u{0}r".into();
    if let Err(e) = s.ingest_batch(&b).await {
        assert!(!e.is_retryable(), "{e}");
    }
}

async fn retention_deletes_what_the_policy_no_longer_keeps(s: &dyn Store) {
    let everything = DetectionQuery {
        limit: 100_000,
        ..Default::default()
    };
    assert!(!s
        .detections(&everything)
        .await
        .expect("rows")
        .items
        .is_empty());
    // Keeping a day, ten days after the test data: all detections go; dead
    // letters (received now) stay under a 1 h policy judged now.
    let policy = RetentionPolicy {
        detections: Some(Duration::days(1)),
        heartbeats: None,
        dead_letters: Some(Duration::hours(1)),
    };
    let report = s
        .apply_retention(&policy, t0().max(Utc::now()) + Duration::days(10))
        .await
        .expect("retention");
    assert!(
        report.detections_deleted + report.partitions_dropped > 0,
        "{report:?}"
    );
    assert!(s
        .detections(&everything)
        .await
        .expect("rows")
        .items
        .is_empty());
    assert!(
        s.dead_letters(&DeadLetterQuery {
            limit: 10,
            ..DeadLetterQuery::default()
        })
        .await
        .expect("dead letters")
        .is_empty(),
        "older than 1 h ten days on"
    );
    // The ledger is not subject to retention: resends are still recognised.
    assert!(
        s.ingest_batch(&batch("a", "e1", 1, 3))
            .await
            .expect("resend")
            .duplicate
    );
}

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/edgeqi.db");
    let store = super::open(&format!("sqlite://{}", path.display())).expect("open");
    run_all(store).await;
    // Reopening runs no migration twice and keeps the data.
    let again = super::open(&format!("sqlite://{}", path.display())).expect("reopen");
    assert_eq!(again.ledger("a").await.expect("ledger").len(), 3);
}

#[tokio::test]
async fn sqlite_refuses_a_corrupt_file_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).expect("write junk");
    let err = super::open(&format!("sqlite://{}", path.display())).expect_err("corrupt");
    assert!(err.to_string().contains("junk.db"), "{err}");
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.db");
    let url = format!("sqlite://{}", path.display());
    drop(super::open(&url).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "user_version", 999).expect("bump");
    drop(conn);
    let err = super::open(&url).expect_err("newer schema");
    assert!(
        matches!(err, super::StoreError::TooNew { found: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer aggregator"), "{err}");
}

#[tokio::test]
async fn sqlite_hot_queries_use_an_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::sqlite::SqliteStore::open(&dir.path().join("x.db").display().to_string())
        .expect("open");
    for q in hot_queries() {
        let plan = store.explain_detections(&q).await.expect("explain");
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
            "{q:?}: {plan}"
        );
        assert!(
            !plan.contains("TEMP B-TREE"),
            "{q:?} sorts instead of walking the index: {plan}"
        );
    }
}

/// The API's common queries: newest first, by node, by label, by camera,
/// and a next page.
fn hot_queries() -> Vec<DetectionQuery> {
    let base = DetectionQuery {
        limit: 100,
        ..Default::default()
    };
    vec![
        base.clone(),
        DetectionQuery {
            node_id: Some("n".into()),
            ..base.clone()
        },
        DetectionQuery {
            label: Some("car".into()),
            since: Some(t0()),
            ..base.clone()
        },
        DetectionQuery {
            camera_id: Some("north".into()),
            ..base.clone()
        },
        DetectionQuery {
            node_id: Some("n".into()),
            after: Some((t0().timestamp_millis(), 10)),
            ..base
        },
    ]
}

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let Some(db) = super::postgres::test_db::fresh().await else {
        eprintln!("EDGEQI_TEST_DATABASE_URL is not set: PostgreSQL conformance skipped (scripts/test sets it)");
        return;
    };
    let settings = super::postgres::PgSettings::default();
    let store = super::connect(&db.url, &settings).await.expect("open");
    run_all(store.clone()).await;
    drop(store);
    // Migrations are safe to run twice and keep the data.
    let again = super::connect(&db.url, &settings).await.expect("reopen");
    assert_eq!(again.ledger("a").await.expect("ledger").len(), 3);
    drop(again);
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_refuses_a_newer_schema_and_uses_indexes() {
    let Some(db) = super::postgres::test_db::fresh().await else {
        eprintln!("EDGEQI_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let settings = super::postgres::PgSettings::default();
    let store = super::postgres::PgStore::open(&db.url, &settings)
        .await
        .expect("open");
    let today = super::postgres::partition_name_for(Utc::now());
    assert!(
        store
            .partitions()
            .await
            .expect("partitions")
            .contains(&today),
        "partition for today"
    );
    for q in hot_queries() {
        let plan = store.explain_detections(&q).await.expect("explain");
        assert!(plan.contains("Index"), "{q:?}: {plan}");
        let sorts = plan.lines().any(|l| {
            let node = l.trim_start().trim_start_matches("->").trim_start();
            node.starts_with("Sort  (") || node.starts_with("Incremental Sort")
        });
        assert!(!plan.contains("Seq Scan") && !sorts, "{q:?}: {plan}");
    }
    let plan = store.explain_detection_by_id(42).await.expect("explain");
    assert!(
        plan.contains("Index Scan") && !plan.contains("Seq Scan"),
        "one detection by id: {plan}"
    );
    drop(store);
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO edgeqi_schema (version, applied_by) VALUES (999, 'the future')")
        .await
        .expect("bump");
    let err = super::connect(&db.url, &settings)
        .await
        .expect_err("newer schema");
    assert!(err.to_string().contains("version 999"), "{err}");
    db.drop_db().await;
}
