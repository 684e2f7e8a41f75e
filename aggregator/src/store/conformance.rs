//! One behavioural suite every [`Store`] backend must pass.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use edgeqi_shared::{Detection, DetectionBatch, DetectionCount, Heartbeat, NodeStatus};

use super::{DetectionQuery, Store};

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
    store.ping().await.expect("ping");
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
    };
    s.record_heartbeat(&hb).await.expect("heartbeat");
    let node = s.node("hb-node").await.expect("node").expect("registered");
    assert_eq!(node.heartbeat_interval_s, 5);
    assert_eq!(node.last_heartbeat.as_ref().map(|h| h.fps), Some(10.0));
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
    let dl = s.dead_letters(10).await.expect("list");
    assert_eq!(dl[0].reason_code, "invalid_json");
    assert_eq!(dl[0].payload, "{oops");
    assert_eq!(dl[0].node_id.as_deref(), Some("x"));
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
