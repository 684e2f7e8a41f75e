//! PostgreSQL faults end to end: a real agent publishes through a real
//! aggregator into a private PostgreSQL server that the test stops and starts
//! again mid-stream. While the database is down the aggregator must stop
//! acknowledging (the agent's outbox keeps growing) and `/readyz` must say
//! so; when it returns, ingest recovers by itself, and in the end exactly
//! what the agent's outbox accepted is stored, once. The aggregator is
//! started while the database is still down (it must wait, not exit), and a
//! lock held past `statement_timeout` stands in for a slow database.
//!
//! Runs when `EDGEQI_TEST_DATABASE_URL` is set (scripts/test sets it after
//! starting PostgreSQL, so the server binaries are installed); the test
//! starts its own throw-away cluster so stopping it disturbs nobody.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use edgeqi_e2e::{
    bin, fault_test_agent_config, free_port, http_get, readyz, wait_aggregator_ready, wait_for,
    Agent, Proc, ADMIN_TOKEN,
};

/// A private PostgreSQL cluster in a temp dir (initdb, pg_ctl).
struct PrivatePg {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
}

fn pg_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

impl PrivatePg {
    fn run(&self, args: &[&str]) -> Result<()> {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            Command::new(args[0])
        };
        let args = if self.as_root { args } else { &args[1..] };
        let out = cmd.args(args).output().context("run a PostgreSQL tool")?;
        if !out.status.success() {
            bail!(
                "{args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn init(dir: &Path) -> Result<Self> {
        let bindir = pg_bindir()
            .context("EDGEQI_TEST_DATABASE_URL is set but no /usr/lib/postgresql/*/bin/initdb")?;
        let as_root = Command::new("id")
            .arg("-u")
            .output()?
            .stdout
            .starts_with(b"0");
        let base = dir.join("pg");
        std::fs::create_dir_all(&base)?;
        if as_root {
            // The server refuses to run as root: hand the directory over.
            Command::new("chmod")
                .args(["755", &dir.display().to_string()])
                .status()?;
            Command::new("chown")
                .args(["postgres:", &base.display().to_string()])
                .status()?;
        }
        let pg = Self {
            data: base.join("data"),
            bindir,
            port: free_port(),
            as_root,
        };
        let initdb = pg.bindir.join("initdb").display().to_string();
        let data = pg.data.display().to_string();
        pg.run(&[
            &initdb,
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ])?;
        pg.start()?;
        Ok(pg)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let pg_ctl = self.bindir.join("pg_ctl").display().to_string();
        let data = self.data.display().to_string();
        let mut all = vec![pg_ctl.as_str(), "-D", data.as_str(), "-w"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data
                .parent()
                .map_or(Path::new("/tmp"), |p| p)
                .display()
        );
        let log = self.data.with_extension("log").display().to_string();
        self.pg_ctl(&["-l", &log, "-o", &opts, "start"])
    }

    fn stop(&self) -> Result<()> {
        self.pg_ctl(&["-m", "fast", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[test]
fn database_outage_stops_acks_and_loses_nothing() -> Result<()> {
    if std::env::var_os("EDGEQI_TEST_DATABASE_URL").is_none() {
        eprintln!("EDGEQI_TEST_DATABASE_URL is not set: PostgreSQL fault test skipped (scripts/test sets it)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pg = PrivatePg::init(dir.path())?;

    let (http_port, mqtt_port) = (free_port(), free_port());
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        "[database]\nconnect_timeout = \"1s\"\nstatement_timeout = \"5s\"\n",
    )?;
    let mut cmd = Command::new(bin("edgeqi-aggregator"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{mqtt_port}"))
        .arg("--mqtt-allow-anonymous")
        .arg("--database-url")
        .arg(pg.url())
        .env("RUST_LOG", "info,rumqttd=warn")
        .env("EDGEQI_ADMIN_TOKEN", ADMIN_TOKEN);
    // Started while the database is down: it waits for it instead of
    // exiting, and becomes ready by itself once the database is up.
    pg.stop()?;
    let mut agg = Proc::spawn("edgeqi-aggregator", cmd, dir.path().join("aggregator.log"))?;
    wait_for(
        "the start-up wait to be logged",
        Duration::from_secs(20),
        || {
            agg.log_text()
                .contains("database unreachable at start-up")
                .then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        agg.is_running(),
        "the aggregator must wait for a database that is down at start-up:\n{}",
        agg.log_text()
    );
    ensure!(
        readyz(http_port) != Some(200),
        "not ready without a database"
    );
    pg.start()?;
    wait_aggregator_ready(&mut agg, http_port, Duration::from_secs(60))?;

    // ~25 s of detections from a synthetic camera.
    let agent_cfg =
        fault_test_agent_config(dir.path(), "synthetic://?objects=3&frames=750&seed=11")?;
    let agent = Agent::start(
        dir.path(),
        "pg-fault",
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        &["--config", &agent_cfg.display().to_string()],
    )?;
    let api = |path: &str| -> Result<serde_json::Value> {
        let (status, body) = http_get(
            &format!("http://127.0.0.1:{http_port}{path}"),
            Some(ADMIN_TOKEN),
        )?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    };
    let stored =
        || -> Option<u64> { api("/api/v1/stats/summary").ok()?["detections_total"].as_u64() };
    wait_for("first detections stored", Duration::from_secs(30), || {
        stored().filter(|n| *n > 0)
    })?;

    // Database down: unready, no acks, the outbox grows; the process lives.
    pg.stop()?;
    wait_for("/readyz to turn unready", Duration::from_secs(15), || {
        (readyz(http_port) == Some(503)).then_some(())
    })?;
    let pending_at_stop = agent.outbox_pending()?;
    std::thread::sleep(Duration::from_secs(4));
    let pending_later = agent.outbox_pending()?;
    ensure!(
        pending_later > pending_at_stop,
        "with the database down nothing may be acked: outbox {pending_at_stop} -> {pending_later}"
    );
    ensure!(
        agg.is_running(),
        "the aggregator must survive a database outage"
    );

    // Database back: recovers by itself.
    pg.start()?;
    wait_for("/readyz ready again", Duration::from_secs(30), || {
        (readyz(http_port) == Some(200)).then_some(())
    })?;

    // A slow database: a lock held longer than statement_timeout (5 s)
    // makes commits fail with a timeout; ingest reports it, stops acking and
    // goes on by itself when the lock is released.
    let timeouts_before = agg.log_text().matches("statement timeout").count();
    let psql = pg.bindir.join("psql").display().to_string();
    let port = pg.port.to_string();
    std::thread::scope(|scope| -> Result<()> {
        let locker = scope.spawn(|| {
            pg.run(&[
                &psql,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-c",
                "BEGIN; LOCK TABLE batches IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(9); COMMIT;",
            ])
        });
        wait_for("a commit to time out", Duration::from_secs(20), || {
            (agg.log_text().matches("statement timeout").count() > timeouts_before).then_some(())
        })?;
        ensure!(
            readyz(http_port) == Some(503),
            "unready while commits time out"
        );
        locker.join().expect("psql thread")?;
        Ok(())
    })?;
    wait_for(
        "/readyz ready after the slow spell",
        Duration::from_secs(30),
        || (readyz(http_port) == Some(200)).then_some(()),
    )?;

    // Drain, then exactly what the outbox accepted is stored, once.
    agent.wait_drained(Duration::from_secs(120))?;
    let enqueued = agent.outbox_counter("enqueued_detections")?;
    ensure!(
        agent.outbox_counter("shed_detections")? == 0,
        "nothing may be shed"
    );
    let total = stored().context("summary")?;
    ensure!(
        total == enqueued,
        "stored {total} detections, the agent's outbox accepted {enqueued}"
    );
    let ledger = api("/api/v1/nodes/pg-fault/ledger")?;
    let epoch = agent.epoch()?;
    let entry = ledger["epochs"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["epoch"] == epoch.as_str()).cloned())
        .context("ledger entry")?;
    ensure!(
        entry["acked_seq"] == agent.outbox_counter("enqueued_batches")?,
        "ledger {entry}"
    );
    ensure!(
        entry["holes"].as_array().is_some_and(Vec::is_empty),
        "holes: {entry}"
    );
    let log = agg.log_text();
    ensure!(
        log.contains("not acknowledging until it works"),
        "the outage is logged clearly"
    );
    Ok(())
}
