//! `edgeqi-bench`: load generator for the aggregator.
//!
//! `edgeqi-bench ingest` runs simulated agents speaking protocol v1 over MQTT
//! (seq-numbered batches in an epoch, a window of unacknowledged batches,
//! resend on timeout, like the real agent), measures sustained end-to-end
//! throughput (publish → committed → acked) and publish→ack latency, then
//! verifies in the database that every acknowledged row is there exactly
//! once. With `--copy-baseline` it also times a raw binary `COPY` (PostgreSQL)
//! or prepared inserts (SQLite) of the same number of rows into a table with
//! the same indexes, in the same run, and prints the ratio.
//!
//! `--heartbeats-only` connects N nodes that only send heartbeats.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Parser)]
#[command(version, about = "EdgeQI load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Simulated agents publishing detections (or only heartbeats).
    Ingest(IngestArgs),
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// The aggregator's MQTT broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// Simulated nodes (one MQTT connection each).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Target detections per second over all nodes; 0 = as fast as acks allow.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Detections per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to publish for (ignored with --total).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Publish exactly this many detections in all (split over the nodes), then stop.
    #[arg(long)]
    total: Option<u64>,
    /// Unacknowledged batches a node may have outstanding (the agent uses 32).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Resend a batch not acknowledged within this many seconds.
    #[arg(long, default_value_t = 15)]
    resend_after: u64,
    /// Only heartbeats, every --heartbeat-interval seconds per node.
    #[arg(long)]
    heartbeats_only: bool,
    #[arg(long, default_value_t = 5)]
    heartbeat_interval: u64,
    /// The aggregator's HTTP address, to read nodes online (heartbeats mode).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_url: String,
    /// The aggregator's pid, to report its RSS.
    #[arg(long)]
    aggregator_pid: Option<u32>,
    /// The aggregator's database, to verify no loss / no duplicates (postgres:// or sqlite://).
    #[arg(long)]
    database_url: Option<String>,
    /// Also time a raw COPY (PostgreSQL) / prepared inserts (SQLite) of the same rows.
    #[arg(long)]
    copy_baseline: bool,
    /// Node id prefix (distinct runs into one database need distinct prefixes).
    #[arg(long, default_value = "bench")]
    prefix: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Ingest(a) if a.heartbeats_only => heartbeats(a).await,
            Cmd::Ingest(a) => ingest(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn endpoint(url: &str) -> Result<(String, u16)> {
    let e = edgeqi_shared::MqttEndpoint::parse(url).map_err(anyhow::Error::msg)?;
    if e.tls {
        bail!("the bench speaks plain MQTT only");
    }
    Ok((e.host, e.port))
}

fn options(id: &str, url: &str, inflight: usize) -> Result<MqttOptions> {
    let (host, port) = endpoint(url)?;
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_inflight(u16::try_from(inflight.max(10)).unwrap_or(u16::MAX));
    Ok(o)
}

/// One batch's JSON, written by hand: the generator must not be the
/// bottleneck on a 2-core machine it shares with the aggregator and database.
fn batch_json(node: &str, epoch: &str, seq: u64, n: usize) -> Vec<u8> {
    let now = chrono::Utc::now();
    let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut s = String::with_capacity(96 + n * 150);
    s.push_str(&format!(
        r#"{{"v":1,"node_id":"{node}","epoch":"{epoch}","seq":{seq},"sent_at":"{ts}","detections":["#
    ));
    const LABELS: [&str; 4] = ["person", "car", "bus", "bicycle"];
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"ts":"{ts}","camera_id":"cam-{}","class_id":{},"label":"{}","score":0.{},"bbox":[10.0,20.0,110.0,220.0],"track_id":{i},"zone":"zone-{}"}}"#,
            i % 4,
            i % 4,
            LABELS[i % 4],
            50 + i % 50,
            i % 3
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

#[derive(Debug, Default)]
struct NodeReport {
    batches: u64,
    resends: u64,
    latencies_us: Vec<u64>,
    last_acked: u64,
    first_publish: Option<Instant>,
    last_ack: Option<Instant>,
}

async fn ingest(a: IngestArgs) -> Result<()> {
    if a.nodes == 0 || a.batch == 0 {
        bail!("--nodes and --batch must be at least 1");
    }
    let epoch = format!("{:08x}", rand::random::<u32>());
    let per_node_batches: Option<u64> = a.total.map(|t| {
        let batches = t.div_ceil(a.batch as u64);
        batches.div_ceil(a.nodes as u64)
    });
    // Batches per second per node; 0 = unpaced.
    let interval = if a.rate == 0 {
        None
    } else {
        let per_node = a.rate as f64 / a.batch as f64 / a.nodes as f64;
        Some(Duration::from_secs_f64(1.0 / per_node.max(1e-6)))
    };
    let deadline = Instant::now() + Duration::from_secs(a.duration);
    let published = Arc::new(AtomicU64::new(0));
    eprintln!(
        "edgeqi-bench: {} nodes, batch {}, rate {}, {} (epoch {epoch})",
        a.nodes,
        a.batch,
        if a.rate == 0 {
            "unpaced".to_owned()
        } else {
            format!("{}/s", a.rate)
        },
        match a.total {
            Some(t) => format!("{t} detections"),
            None => format!("{} s", a.duration),
        }
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.nodes {
        let node = format!("{}-{i:05}", a.prefix);
        let opts = options(&node, &a.mqtt_url, a.window * 2)?;
        let (epoch, published) = (epoch.clone(), published.clone());
        let (batch, window, resend_after) =
            (a.batch, a.window, Duration::from_secs(a.resend_after));
        // Spread the nodes' ticks over one interval.
        let phase = interval.map(|iv| iv.mul_f64(i as f64 / a.nodes as f64));
        tasks.push(tokio::spawn(async move {
            run_node(NodeRun {
                node,
                epoch,
                opts,
                batch,
                window,
                resend_after,
                interval,
                phase,
                limit: per_node_batches,
                deadline,
                published,
            })
            .await
        }));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.context("node task")??);
    }
    let wall = started.elapsed();
    let batches: u64 = reports.iter().map(|r| r.batches).sum();
    let acked_batches: u64 = reports.iter().map(|r| r.last_acked).sum();
    let resends: u64 = reports.iter().map(|r| r.resends).sum();
    let rows = acked_batches * a.batch as u64;
    let first = reports.iter().filter_map(|r| r.first_publish).min();
    let last = reports.iter().filter_map(|r| r.last_ack).max();
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => wall,
    };
    let mut lat: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let rate = rows as f64 / span.as_secs_f64();
    let mut out = BTreeMap::new();
    out.insert("nodes", serde_json::json!(a.nodes));
    out.insert("batch", serde_json::json!(a.batch));
    out.insert("batches_published", serde_json::json!(batches));
    out.insert("batches_acked", serde_json::json!(acked_batches));
    out.insert("resends", serde_json::json!(resends));
    out.insert("detections_acked", serde_json::json!(rows));
    out.insert("seconds", serde_json::json!(span.as_secs_f64()));
    out.insert("detections_per_s", serde_json::json!(rate.round()));
    out.insert("ack_latency_ms_p50", serde_json::json!(pct(0.50)));
    out.insert("ack_latency_ms_p99", serde_json::json!(pct(0.99)));
    out.insert("ack_latency_ms_max", serde_json::json!(pct(1.0)));
    println!(
        "ingest: {rows} detections acked in {:.2} s = {:.0} detections/s; publish->ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {resends} resends",
        span.as_secs_f64(),
        rate,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if acked_batches != batches {
        bail!(
            "{} of {batches} batches were never acknowledged",
            batches - acked_batches
        );
    }
    if let Some(pid) = a.aggregator_pid {
        if let Some(rss) = rss_bytes(pid) {
            println!("aggregator RSS: {:.0} MiB", rss as f64 / 1048576.0);
            out.insert("aggregator_rss_bytes", serde_json::json!(rss));
        }
    }
    if let Some(url) = &a.database_url {
        let (stored, distinct) = verify(url, &a.prefix, &epoch).await?;
        println!("verify: {stored} rows stored, {distinct} distinct, {rows} acknowledged");
        out.insert("rows_stored", serde_json::json!(stored));
        if distinct != stored {
            bail!("{} duplicated rows", stored - distinct);
        }
        if stored != rows {
            bail!("stored {stored} rows but {rows} were acknowledged: loss");
        }
        println!("verify: OK, no loss and no duplicates");
        if a.copy_baseline {
            let copy_rate = copy_baseline(url, rows.max(1)).await?;
            println!(
                "baseline: raw {} of {rows} rows = {copy_rate:.0} rows/s; end to end / baseline = {:.2}",
                if url.starts_with("sqlite://") { "prepared INSERT (10k rows/tx)" } else { "binary COPY" },
                rate / copy_rate
            );
            out.insert("baseline_rows_per_s", serde_json::json!(copy_rate.round()));
            out.insert("ratio_vs_baseline", serde_json::json!(rate / copy_rate));
        }
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

struct NodeRun {
    node: String,
    epoch: String,
    opts: MqttOptions,
    batch: usize,
    window: usize,
    resend_after: Duration,
    interval: Option<Duration>,
    phase: Option<Duration>,
    limit: Option<u64>,
    deadline: Instant,
    published: Arc<AtomicU64>,
}

/// Shared between a node's publisher and its event loop.
#[derive(Debug, Default)]
struct AckState {
    acked: u64,
    /// seq → (first publish time, last send time)
    pending: BTreeMap<u64, (Instant, Instant)>,
    latencies_us: Vec<u64>,
    last_ack: Option<Instant>,
}

async fn run_node(r: NodeRun) -> Result<NodeReport> {
    let (client, mut eventloop) = AsyncClient::new(r.opts.clone(), r.window * 2 + 16);
    let state = Arc::new(Mutex::new(AckState::default()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let ack_topic = format!("edgeqi/v1/nodes/{}/ack", r.node);
    let (st, nt, node) = (state.clone(), notify.clone(), r.node.clone());
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel::<()>();
    let (resub, resub_topic) = (client.clone(), ack_topic.clone());
    let poller = tokio::spawn(async move {
        let mut sub_tx = Some(sub_tx);
        loop {
            match eventloop.poll().await {
                // A clean session forgets subscriptions: (re)subscribe on
                // every connect, or acks stop after a reconnect.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = resub.try_subscribe(&resub_topic, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = sub_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(ack) = serde_json::from_slice::<edgeqi_shared::Ack>(&p.payload) else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    if ack.acked_seq > s.acked {
                        s.acked = ack.acked_seq;
                        let done: Vec<u64> =
                            s.pending.range(..=ack.acked_seq).map(|(k, _)| *k).collect();
                        for seq in done {
                            if let Some((first, _)) = s.pending.remove(&seq) {
                                let us = now.duration_since(first).as_micros() as u64;
                                s.latencies_us.push(us);
                            }
                        }
                        s.last_ack = Some(now);
                        nt.notify_one();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing_free_log(&node, &e.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), sub_rx)
        .await
        .context("no SUBACK within 60 s")?
        .ok();
    let topic = format!("edgeqi/v1/nodes/{}/detections", r.node);
    if let Some(p) = r.phase {
        tokio::time::sleep(p).await;
    }
    let mut ticker = r.interval.map(|iv| {
        let mut t = tokio::time::interval(iv);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut seq = 0u64;
    let mut report = NodeReport::default();
    loop {
        let done = match r.limit {
            Some(l) => seq >= l,
            None => Instant::now() >= r.deadline,
        };
        if done {
            break;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        // Respect the window like the agent does: wait for acks.
        loop {
            let outstanding = {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                seq - s.acked
            };
            if outstanding < r.window as u64 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
            resend_overdue(&client, &topic, &r, &state, &mut report).await?;
        }
        seq += 1;
        let now = Instant::now();
        report.first_publish.get_or_insert(now);
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .insert(seq, (now, now));
        client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                batch_json(&r.node, &r.epoch, seq, r.batch),
            )
            .await?;
        r.published.fetch_add(1, Ordering::Relaxed);
    }
    report.batches = seq;
    // Wait for every batch to be acknowledged, resending overdue ones.
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let acked = state.lock().unwrap_or_else(|e| e.into_inner()).acked;
        if acked >= seq || Instant::now() > give_up {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
        resend_overdue(&client, &topic, &r, &state, &mut report).await?;
    }
    let _ = client.disconnect().await;
    poller.abort();
    let s = std::mem::take(&mut *state.lock().unwrap_or_else(|e| e.into_inner()));
    report.last_acked = s.acked.min(seq);
    report.latencies_us = s.latencies_us;
    report.last_ack = s.last_ack;
    Ok(report)
}

async fn resend_overdue(
    client: &AsyncClient,
    topic: &str,
    r: &NodeRun,
    state: &Mutex<AckState>,
    report: &mut NodeReport,
) -> Result<()> {
    let now = Instant::now();
    let overdue: Vec<u64> = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, (_, sent))| now.duration_since(*sent) > r.resend_after)
            .map(|(k, _)| *k)
            .collect();
        for k in &due {
            if let Some(v) = s.pending.get_mut(k) {
                v.1 = now;
            }
        }
        due
    };
    for seq in overdue {
        report.resends += 1;
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                batch_json(&r.node, &r.epoch, seq, r.batch),
            )
            .await?;
    }
    Ok(())
}

fn tracing_free_log(node: &str, msg: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    // At most one line per second across all nodes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) != now {
        eprintln!("edgeqi-bench: {node}: MQTT error: {msg}");
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rows stored for this run, and how many of them are distinct
/// (node, seq, index in batch).
async fn verify(url: &str, prefix: &str, epoch: &str) -> Result<(u64, u64)> {
    let like = format!("{prefix}-%");
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path)?;
        let (n, d): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COUNT(DISTINCT node_id || '/' || seq || '/' || track_id)
             FROM detections WHERE epoch = ?1 AND node_id LIKE ?2",
            rusqlite::params![epoch, like],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        return Ok((n as u64, d as u64));
    }
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT COUNT(*), COUNT(DISTINCT (node_id, seq, track_id))
             FROM detections WHERE epoch = $1 AND node_id LIKE $2",
            &[&epoch, &like],
        )
        .await?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Rows per second of the best raw write path into a table shaped and
/// indexed like `detections`, in the same database, then drops it.
async fn copy_baseline(url: &str, rows: u64) -> Result<f64> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        return tokio::task::spawn_blocking(move || sqlite_baseline(&path, rows)).await?;
    }
    use edgeqi_aggregator::store::postgres::{DETECTION_COLUMNS, DETECTION_TYPES};
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_copy_baseline;
             CREATE TABLE bench_copy_baseline (LIKE detections INCLUDING DEFAULTS);
             CREATE INDEX ON bench_copy_baseline (ts DESC, id DESC);
             CREATE INDEX ON bench_copy_baseline (node_id, ts DESC, id DESC);
             CREATE INDEX ON bench_copy_baseline (label, ts DESC, id DESC);
             CREATE INDEX ON bench_copy_baseline (camera_id, ts DESC, id DESC);",
        )
        .await?;
    let labels = ["person", "car", "bus", "bicycle"];
    let cams = ["cam-0", "cam-1", "cam-2", "cam-3"];
    let zones = ["zone-0", "zone-1", "zone-2"];
    let started = Instant::now();
    let tx = client.transaction().await?;
    let sink = tx
        .copy_in(&format!(
            "COPY bench_copy_baseline ({DETECTION_COLUMNS}) FROM STDIN BINARY"
        ))
        .await?;
    // The same columns and binary types as the store's own COPY.
    let w = BinaryCopyInWriter::new(sink, DETECTION_TYPES);
    let mut w = std::pin::pin!(w);
    let ts = chrono::Utc::now();
    let epoch = "baseline".to_owned();
    for i in 0..rows as i64 {
        let k = (i % 4) as usize;
        let node = format!("bench-{:05}", i % 10);
        let seq = i / 500;
        let class = k as i32;
        let score = 0.5f32 + (i % 50) as f32 / 100.0;
        let (x1, y1, x2, y2) = (10.0f32, 20.0f32, 110.0f32, 220.0f32);
        let track = i % 500;
        let zone = zones[(i % 3) as usize].to_owned();
        w.as_mut()
            .write(&[
                &i, &node, &epoch, &seq, &ts, &cams[k], &class, &labels[k], &score, &x1, &y1, &x2,
                &y2, &track, &zone,
            ])
            .await?;
    }
    w.finish().await?;
    tx.commit().await?;
    let secs = started.elapsed().as_secs_f64();
    client
        .batch_execute("DROP TABLE bench_copy_baseline")
        .await?;
    Ok(rows as f64 / secs)
}

fn sqlite_baseline(path: &str, rows: u64) -> Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
         DROP TABLE IF EXISTS bench_baseline;
         CREATE TABLE bench_baseline AS SELECT * FROM detections WHERE 0;
         CREATE INDEX bench_baseline_t ON bench_baseline (ts_ms DESC, id DESC);
         CREATE INDEX bench_baseline_n ON bench_baseline (node_id, ts_ms DESC, id DESC);
         CREATE INDEX bench_baseline_l ON bench_baseline (label, ts_ms DESC, id DESC);
         CREATE INDEX bench_baseline_c ON bench_baseline (camera_id, ts_ms DESC, id DESC);",
    )?;
    let labels = ["person", "car", "bus", "bicycle"];
    let ts = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut i = 0i64;
    while (i as u64) < rows {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO bench_baseline (id, node_id, epoch, seq, ts_ms, camera_id, class_id, label, score, x1, y1, x2, y2, track_id, zone)
                 VALUES (?1, ?2, 'baseline', ?3, ?4, ?5, ?6, ?7, ?8, 10.0, 20.0, 110.0, 220.0, ?9, ?10)",
            )?;
            let end = (i + 10_000).min(rows as i64);
            while i < end {
                let k = (i % 4) as usize;
                st.execute(rusqlite::params![
                    i + 1,
                    format!("bench-{:05}", i % 10),
                    i / 500,
                    ts,
                    format!("cam-{k}"),
                    k as i64,
                    labels[k],
                    0.5 + (i % 50) as f64 / 100.0,
                    i % 500,
                    format!("zone-{}", i % 3)
                ])?;
                i += 1;
            }
        }
        tx.commit()?;
    }
    let secs = started.elapsed().as_secs_f64();
    conn.execute_batch("DROP TABLE bench_baseline")?;
    Ok(rows as f64 / secs)
}

/// Heartbeat-only load: N nodes, each sending a heartbeat every interval.
async fn heartbeats(a: IngestArgs) -> Result<()> {
    let interval = Duration::from_secs(a.heartbeat_interval.max(1));
    let deadline = Instant::now() + Duration::from_secs(a.duration);
    let sent = Arc::new(AtomicU64::new(0));
    eprintln!(
        "edgeqi-bench: {} heartbeat-only nodes every {} s for {} s",
        a.nodes,
        interval.as_secs(),
        a.duration
    );
    let mut tasks = Vec::new();
    for i in 0..a.nodes {
        let node = format!("{}-{i:05}", a.prefix);
        let opts = options(&node, &a.mqtt_url, 10)?;
        let sent = sent.clone();
        let phase = interval.mul_f64(i as f64 / a.nodes as f64);
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(opts, 16);
            let n2 = node.clone();
            let poller = tokio::spawn(async move {
                loop {
                    if let Err(e) = eventloop.poll().await {
                        tracing_free_log(&n2, &e.to_string());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(interval);
            let started = Instant::now();
            while Instant::now() < deadline {
                tick.tick().await;
                let hb = serde_json::json!({
                    "v": 1, "node_id": node, "ts": chrono::Utc::now(),
                    "uptime_s": started.elapsed().as_secs(), "cpu_pct": 12.5,
                    "mem_used_bytes": 100_000_000u64, "mem_total_bytes": 1_000_000_000u64,
                    "backlog": 0, "fps": 10.0, "version": "bench",
                    "interval_s": interval.as_secs(), "cameras": []
                });
                let topic = format!("edgeqi/v1/nodes/{node}/heartbeat");
                if client
                    .publish(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&hb).unwrap_or_default(),
                    )
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            poller.abort();
        }));
    }
    // While the nodes run, sample how many the aggregator sees online.
    let mut online_max = 0u64;
    let mut rss_max = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(n) = nodes_online(&a.http_url).await {
            online_max = online_max.max(n);
            eprintln!(
                "edgeqi-bench: {n} nodes online, {} heartbeats sent",
                sent.load(Ordering::Relaxed)
            );
        }
        if let Some(pid) = a.aggregator_pid {
            rss_max = rss_max.max(rss_bytes(pid).unwrap_or(0));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "heartbeats: {} nodes, {} heartbeats sent, max {online_max} nodes online, aggregator max RSS {:.0} MiB",
        a.nodes,
        sent.load(Ordering::Relaxed),
        rss_max as f64 / 1048576.0
    );
    println!(
        "{}",
        serde_json::json!({"nodes": a.nodes, "heartbeats_sent": sent.load(Ordering::Relaxed),
            "nodes_online_max": online_max, "aggregator_rss_max_bytes": rss_max})
    );
    if online_max < a.nodes as u64 {
        bail!(
            "only {online_max} of {} nodes were ever tracked online",
            a.nodes
        );
    }
    Ok(())
}

/// `nodes_online` from `GET /api/v1/stats/summary`, over a plain HTTP/1.0
/// request (no HTTP client dependency for one call).
async fn nodes_online(http_url: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = http_url.strip_prefix("http://")?.trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut req = format!("GET /api/v1/stats/summary HTTP/1.0\r\nHost: {addr}\r\n");
    if let Ok(t) = std::env::var("EDGEQI_ADMIN_TOKEN") {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["nodes_online"].as_u64()
}
