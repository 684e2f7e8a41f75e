//! Ingest against a real embedded broker and a real SQLite store: hostile
//! payloads are dead-lettered one by one and never hold back other nodes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use edgeqi_shared::{Detection, DetectionBatch};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use super::{IngestHealth, IngestSettings};
use crate::live::LiveBus;
use crate::store::{DeadLetterQuery, DetectionQuery, Store};

fn detection(label: &str) -> Detection {
    Detection {
        ts: Utc::now(),
        camera_id: "north".into(),
        class_id: Some(2),
        label: label.into(),
        score: 0.9,
        bbox: [1.0, 2.0, 30.0, 40.0],
        track_id: Some(1),
        zone: None,
    }
}

fn batch(node: &str, seq: u64, label: &str) -> Vec<u8> {
    serde_json::to_vec(&DetectionBatch {
        v: 1,
        node_id: node.into(),
        epoch: "ep".into(),
        seq,
        sent_at: Utc::now(),
        detections: vec![detection(label)],
        counts: vec![],
    })
    .expect("json")
}

struct Running {
    store: Arc<dyn Store>,
    health: Arc<IngestHealth>,
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Ingest on an embedded broker over a fresh SQLite file; `poison` is run on
/// the database first (triggers that make it refuse some rows).
async fn start(poison: &str) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgeqi.db");
    let path = path.to_str().expect("utf-8 path").to_owned();
    let store = crate::store::open(&format!("sqlite://{path}")).expect("store");
    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute_batch(poison))
        .expect("poison the database");
    let broker = crate::broker::start_embedded(1 << 20, 64).expect("broker");
    let addr = broker.internal;
    let health = Arc::new(IngestHealth::default());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(super::run(
        IngestSettings {
            endpoint: edgeqi_shared::MqttEndpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: false,
                credentials: None,
            },
            client_id: "ingest-test".into(),
            username: Some("ingest-test".into()),
            password: Some(broker.token.to_string()),
            keep_alive: Duration::from_secs(10),
            max_packet_size: 1 << 20,
            group_max_detections: 1000,
            max_age: Duration::from_secs(7 * 86_400),
            max_clock_skew: Duration::from_secs(60),
            events: None,
            alerts: None,
            registry: None,
        },
        store.clone(),
        LiveBus::new(16),
        health.clone(),
        stop_rx,
    ));
    for _ in 0..200 {
        if health.connected.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(health.connected.load(Ordering::Relaxed), "ingest connected");
    let mut opts = MqttOptions::new("ingest-test-agents", addr.ip().to_string(), addr.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_credentials("ingest-test-agents", broker.token.to_string());
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if let Ok(ack) = serde_json::from_slice::<edgeqi_shared::Ack>(&p.payload) {
                    let _ = tx.send((ack.node_id, ack.acked_seq));
                }
            }
        }
    });
    client
        .subscribe("edgeqi/v1/nodes/+/ack", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // The subscription must be in place before anything is acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Running {
        store,
        health,
        client,
        acks,
        _stop: stop,
        _dir: dir,
    }
}

impl Running {
    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Waits until every node in `want` has been acknowledged up to its seq.
    async fn wait_acks(&mut self, want: &[(&str, u64)]) -> HashMap<String, u64> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let done = |seen: &HashMap<String, u64>| {
            want.iter()
                .all(|(n, s)| seen.get(*n).is_some_and(|got| got >= s))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&seen) {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some((node, seq))) => {
                    let e = seen.entry(node).or_default();
                    *e = (*e).max(seq);
                }
                _ => panic!("acks never came: wanted {want:?}, got {seen:?}"),
            }
        }
        seen
    }

    async fn dead_letters(&self) -> Vec<crate::store::DeadLetter> {
        self.store
            .dead_letters(&DeadLetterQuery {
                before_id: None,
                node_ids: None,
                limit: 100,
            })
            .await
            .expect("dead letters")
    }

    async fn stored(&self, node: &str) -> usize {
        self.store
            .detections(&DetectionQuery {
                node_id: Some(node.into()),
                limit: 1000,
                ..DetectionQuery::default()
            })
            .await
            .expect("detections")
            .items
            .len()
    }
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_dead_lettered_alone_and_every_other_node_goes_on() {
    // A row the database refuses whatever ingest does: the same class as a
    // value out of range, but past every check validation has.
    let mut r = start(
        "CREATE TRIGGER poison BEFORE INSERT ON detections WHEN NEW.label = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
    )
    .await;
    // The poisoned batch first, then others in the same group commit.
    r.publish("edgeqi/v1/nodes/bad/detections", batch("bad", 1, "poison"))
        .await;
    for seq in 1..=3 {
        for node in ["good-1", "good-2", "good-3"] {
            r.publish(
                &format!("edgeqi/v1/nodes/{node}/detections"),
                batch(node, seq, "car"),
            )
            .await;
        }
    }
    r.publish("edgeqi/v1/nodes/bad/detections", batch("bad", 2, "car"))
        .await;
    r.wait_acks(&[("good-1", 3), ("good-2", 3), ("good-3", 3)])
        .await;
    for node in ["good-1", "good-2", "good-3"] {
        assert_eq!(r.stored(node).await, 3, "{node}");
    }
    // The bad node's clean batch is stored; its poisoned one is not, so its
    // ack stays below it (the ledger shows the hole).
    assert_eq!(r.stored("bad").await, 1);
    let ledger = r.store.ledger("bad").await.expect("ledger");
    assert_eq!(ledger[0].acked_seq, 0, "{ledger:?}");
    let dead = r.dead_letters().await;
    let refused: Vec<_> = dead
        .iter()
        .filter(|d| d.reason_code == "store_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{dead:?}");
    assert_eq!(refused[0].node_id.as_deref(), Some("bad"));
    assert!(
        refused[0].reason.contains("poisoned row"),
        "{:?}",
        refused[0]
    );
    assert!(refused[0].payload.contains("poison"));
    // A refusal is not a database failure: /readyz stays 200.
    assert!(!r.health.store_failing.load(Ordering::Relaxed));

    // Ingest goes on afterwards too.
    r.publish(
        "edgeqi/v1/nodes/good-1/detections",
        batch("good-1", 4, "bus"),
    )
    .await;
    r.wait_acks(&[("good-1", 4)]).await;
}

#[tokio::test]
async fn hostile_values_are_dead_lettered_with_a_reason_and_others_are_acknowledged() {
    let mut r = start("").await;
    let now = Utc::now();
    let topic = |n: &str, kind: &str| format!("edgeqi/v1/nodes/{n}/{kind}");
    let raw = |mut v: serde_json::Value, edit: &dyn Fn(&mut serde_json::Value)| {
        edit(&mut v);
        serde_json::to_vec(&v).expect("json")
    };
    let base: serde_json::Value =
        serde_json::from_slice(&batch("h", 1, "car")).expect("batch json");
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "seq 2^63",
            raw(base.clone(), &|v| v["seq"] = serde_json::json!(1u64 << 63)),
        ),
        (
            "count u64::MAX",
            raw(base.clone(), &|v| {
                v["counts"] = serde_json::json!([{"minute": now, "camera_id": "north",
                    "label": "car", "count": u64::MAX}]);
            }),
        ),
        (
            "ts in year 9999",
            raw(base.clone(), &|v| {
                v["detections"][0]["ts"] = "9999-12-31T23:59:59Z".into()
            }),
        ),
        (
            "ts pushed past year 9999 by its offset",
            raw(base.clone(), &|v| {
                v["detections"][0]["ts"] = "9999-12-31T23:59:59-05:00".into()
            }),
        ),
        (
            "ts from before the clock was set",
            raw(base.clone(), &|v| {
                v["detections"][0]["ts"] = "1970-01-01T00:00:05Z".into()
            }),
        ),
        (
            "score overflowing f32",
            raw(base.clone(), &|v| v["detections"][0]["score"] = 1e39.into()),
        ),
        (
            "a label holding U+0000",
            raw(base.clone(), &|v| {
                v["detections"][0]["label"] = "ca\u{0}r".into()
            }),
        ),
    ];
    for (_, payload) in &hostile {
        r.publish(&topic("h", "detections"), payload.clone()).await;
    }
    // A heartbeat whose camera fps overflows to infinity.
    let hb = serde_json::json!({"v":1,"node_id":"h","ts":now,"uptime_s":1,"cpu_pct":1,
        "mem_used_bytes":1,"mem_total_bytes":2,"backlog":0,"fps":1,"version":"0.1.0",
        "cameras":[{"camera_id":"c","state":"streaming","fps":1e39,"frames_total":5}]});
    r.publish(
        &topic("h", "heartbeat"),
        serde_json::to_vec(&hb).expect("json"),
    )
    .await;
    r.publish(&topic("ok", "detections"), batch("ok", 1, "car"))
        .await;
    r.wait_acks(&[("ok", 1)]).await;
    assert_eq!(r.stored("ok").await, 1);
    assert_eq!(r.stored("h").await, 0, "nothing hostile is stored");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = r.dead_letters().await;
        if dead.len() > hostile.len() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        dead.len(),
        hostile.len() + 1,
        "one dead letter each: {dead:#?}"
    );
    for d in &dead {
        assert_eq!(d.reason_code, "invalid_field", "{d:?}");
        assert_eq!(d.node_id.as_deref(), Some("h"));
    }
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    for want in [
        "seq 9223372036854775808 is above",
        "count 18446744073709551615 must be",
        "ahead of the aggregator's clock",
        "old (ingest.max_age)",
        "score inf is outside",
        "contains U+0000",
        "cameras[0]: fps inf must be finite",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want:?} in {reasons:#?}"
        );
    }
    assert!(!r.health.store_failing.load(Ordering::Relaxed));
}
