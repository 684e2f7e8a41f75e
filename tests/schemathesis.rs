//! The hostile HTTP client as part of the suite: schemathesis (PyPI, pinned
//! in `tests/schemathesis/requirements.txt`, installed by
//! `scripts/lib/schemathesis.sh`, which exports `EDGEQI_SCHEMATHESIS`) runs
//! all its checks, the stateful phase included, against a real aggregator's
//! `/api/v1/openapi.json`: with the admin token, without any token, and once
//! more after hostile payloads were published over MQTT. Any failure fails
//! the test: a 5xx, an answer (status, content type, body) the document does
//! not describe, a schema-valid request refused (apart from the
//! data-dependent rules listed in `tests/schemathesis/hooks.py`), or an
//! invalid one accepted.
//!
//! Examples per operation: `EDGEQI_SCHEMATHESIS_EXAMPLES` (default 25); the
//! seed: `EDGEQI_SCHEMATHESIS_SEED` (default fixed, so a failure reproduces;
//! set another to explore).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgeqi_e2e::{mosquitto_pub, wait_for, workspace_root, Aggregator, ADMIN_TOKEN};
use serde_json::json;

/// The `st` command, or `None` (and a note) when scripts/test could not install it.
fn schemathesis() -> Option<PathBuf> {
    match std::env::var_os("EDGEQI_SCHEMATHESIS") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "SKIPPED: EDGEQI_SCHEMATHESIS is not set (scripts/test installs schemathesis and sets it)"
            );
            None
        }
    }
}

/// Runs schemathesis against `agg` with `token` (or none); fails with its
/// report and the aggregator's log when it finds anything.
fn run(st: &PathBuf, agg: &Aggregator, token: Option<&str>, name: &str) -> Result<()> {
    let dir = workspace_root().join("tests/schemathesis");
    let examples = std::env::var("EDGEQI_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("EDGEQI_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261204".into());
    let report = agg.dir.join(format!("schemathesis-{name}"));
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(agg.api("/api/v1/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
        ])
        // One worker: hypothesis 6 is not thread-safe everywhere (a second
        // worker thread once crashed it while describing a strategy); the
        // three runs of this file go in parallel instead.
        .args(["--workers", "1", "--request-timeout", "20"])
        .arg("--report-dir")
        .arg(&report)
        .args(["--report", "junit"])
        // Hypothesis keeps found examples in a database; this run's
        // directory keeps them out of the checkout.
        .env("HOME", &agg.dir)
        .env("SCHEMATHESIS_HOOKS", dir.join("hooks.py"))
        .current_dir(&agg.dir);
    if let Some(t) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
    }
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("run {}", st.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis {name}: {} in {:.0?}; {}",
        out.status,
        started.elapsed(),
        text.lines()
            .rev()
            .find(|l| l.contains(" in ") && l.starts_with('='))
            .unwrap_or("")
    );
    if !out.status.success() {
        let log = agg.proc.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        bail!(
            "schemathesis ({name}) found problems:\n{text}\n--- aggregator log (last lines) ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

#[test]
fn contract_with_the_admin_token() -> Result<()> {
    let Some(st) = schemathesis() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    run(&st, &agg, Some(ADMIN_TOKEN), "admin")
}

#[test]
fn contract_without_a_token() -> Result<()> {
    let Some(st) = schemathesis() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    run(&st, &agg, None, "anonymous")
}

/// Payloads of every kind a careless or hostile node sends, valid ones among
/// them so that the lists have rows: numbers at the edge of their types,
/// times out of range, boxes inside out, scores that overflow `f32`, deep
/// nesting, bytes that are not UTF-8.
fn hostile_payloads(node: &str) -> Vec<(String, Vec<u8>)> {
    let topic = |kind: &str| format!("edgeqi/v1/nodes/{node}/{kind}");
    let det = |ts: &str, bbox: serde_json::Value, score: f64| {
        json!({"ts": ts, "camera_id": "north", "class_id": 2, "label": "car",
               "score": score, "bbox": bbox, "track_id": 7, "zone": "lane-1"})
    };
    let batch =
        |seq: serde_json::Value, detections: Vec<serde_json::Value>, counts: serde_json::Value| {
            json!({"v": 1, "node_id": node, "epoch": "hostile-1", "seq": seq,
               "sent_at": "2026-11-23T10:00:00Z", "detections": detections, "counts": counts})
            .to_string()
            .into_bytes()
        };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let count = |n: u64| {
        json!([{"minute": "2026-11-23T09:12:00Z", "camera_id": "north", "zone": "lane-1",
                "class_id": 2, "label": "car", "count": n}])
    };
    let event = |score: f64, bbox: serde_json::Value, ts: &str| {
        json!({"id": format!("{node}-north-7-{score}"), "ts": ts, "camera_id": "north",
               "track_id": 7, "track_key": format!("{node}-north-7"), "kind": "line_crossed",
               "class_id": 2, "label": "car", "score": score, "bbox": bbox, "zone": null,
               "line": "stop-line", "direction": "left_to_right", "dwell_s": null})
    };
    let events = |events: Vec<serde_json::Value>, count: u64| {
        json!({"v": 1, "node_id": node, "sent_at": "2026-11-23T10:00:02Z", "events": events,
               "line_counts": [{"camera_id": "north", "line": "stop-line", "label": "car",
                                "direction": "left_to_right", "count": count,
                                "since": "2026-11-23T06:00:00Z"}]})
        .to_string()
        .into_bytes()
    };
    let ok_box = json!([10.0, 20.0, 110.0, 220.0]);
    let mut nested = String::new();
    for _ in 0..5000 {
        nested.push('[');
    }
    vec![
        // Valid data, so that every list has something to serve.
        (
            topic("detections"),
            batch(json!(1), vec![det(&now, ok_box.clone(), 0.9)], json!([])),
        ),
        (
            topic("events"),
            events(vec![event(0.8, ok_box.clone(), &now)], 3),
        ),
        // Numbers at the edge of their types.
        (
            topic("detections"),
            batch(json!(2), vec![], count(u64::MAX)),
        ),
        (
            topic("detections"),
            batch(json!(3), vec![], count(u64::MAX)),
        ),
        (topic("events"), events(vec![], u64::MAX)),
        (topic("events"), events(vec![], u64::MAX)),
        // Times with no sane range.
        (
            topic("detections"),
            batch(
                json!(4),
                vec![det("9999-12-31T23:59:59Z", ok_box.clone(), 0.5)],
                json!([]),
            ),
        ),
        (
            topic("detections"),
            batch(
                json!(5),
                vec![det("0001-01-01T00:00:00+23:59", ok_box.clone(), 0.5)],
                json!([]),
            ),
        ),
        (
            topic("detections"),
            batch(
                json!(6),
                vec![det("9999-12-31T23:59:59-23:59", ok_box.clone(), 0.5)],
                json!([]),
            ),
        ),
        // Scores and boxes that are not what they claim.
        (
            topic("events"),
            events(vec![event(1e39, ok_box.clone(), &now)], 1),
        ),
        (
            topic("events"),
            events(vec![event(0.5, json!([200.0, 20.0, 100.0, 10.0]), &now)], 1),
        ),
        (
            topic("detections"),
            batch(
                json!(7),
                vec![det(&now, json!([f64::MAX, 0.0, -1.0, 1e300]), 0.5)],
                json!([]),
            ),
        ),
        // Shapes that are not payloads at all.
        (topic("detections"), b"{this is not json".to_vec()),
        (topic("detections"), nested.clone().into_bytes()),
        (topic("events"), nested.into_bytes()),
        (topic("heartbeat"), vec![0xff, 0xfe, 0x00, 0x80, b'{']),
        (
            topic("heartbeat"),
            json!({"v": 1, "node_id": node, "uptime_s": -1, "cameras": "x"})
                .to_string()
                .into_bytes(),
        ),
        (
            topic("status"),
            json!({"v": 1, "node_id": "someone-else", "online": "yes"})
                .to_string()
                .into_bytes(),
        ),
        (
            topic("snapshots"),
            json!({"v": 1, "node_id": node, "event_id": "x", "jpeg_b64": "!!!"})
                .to_string()
                .into_bytes(),
        ),
        // Last: a seq past i64 (it once stalled ingest for every node, so
        // nothing published after it was stored).
        (
            topic("detections"),
            batch(
                json!(1u64 << 63),
                vec![det(&now, ok_box.clone(), 0.9)],
                json!([]),
            ),
        ),
        (
            topic("detections"),
            batch(json!(u64::MAX), vec![], json!([])),
        ),
    ]
}

#[test]
fn contract_after_hostile_mqtt_payloads() -> Result<()> {
    let Some(st) = schemathesis() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let agg = Aggregator::start(dir.path())?;
    let payloads = hostile_payloads("hostile-1");
    for (topic, payload) in &payloads {
        mosquitto_pub(agg.mqtt_port, topic, payload)?;
    }
    // Ingest has seen them all once the valid batch is stored and the
    // refused ones are dead-lettered (or the wait runs out: the run below
    // then still goes over whatever was stored).
    let _ = wait_for(
        "the hostile payloads to be ingested",
        Duration::from_secs(20),
        || {
            let stored = agg.detections_total().ok()? >= 1;
            let refused = agg.get("/api/v1/dead-letters?limit=1000").ok()?["items"]
                .as_array()
                .map_or(0, Vec::len);
            (stored && refused >= 5).then_some(())
        },
    );
    run(&st, &agg, Some(ADMIN_TOKEN), "after-hostile-mqtt")?;
    // Random windows rarely cover the hostile minute: ask for it directly.
    for path in [
        "/api/v1/stats/timeseries?since=2026-11-23T09:00:00Z&until=2026-11-23T10:00:00Z&bucket=1m",
        "/api/v1/stats/timeseries?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z&bucket=100000d",
        "/api/v1/stats/lines",
        "/api/v1/stats/summary",
        "/api/v1/detections?limit=1000",
        "/api/v1/events?limit=1000",
    ] {
        let (status, body) = edgeqi_e2e::http_get(&agg.api(path), Some(ADMIN_TOKEN))?;
        if status >= 500 {
            bail!("GET {path} answers {status} after the hostile payloads: {body}");
        }
    }
    let (status, body) = edgeqi_e2e::http_get(&agg.api("/readyz"), None)?;
    if status != 200 {
        bail!("/readyz answers {status} after the hostile payloads: {body}");
    }
    Ok(())
}
