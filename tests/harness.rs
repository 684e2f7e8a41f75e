//! Test harness for workspace-level end-to-end tests: starts the real
//! `edgeqi-aggregator` and `edgeqi-agent` binaries, a real Mosquitto, and
//! talks to them the way users do (MQTT, REST, WebSocket).
//!
//! Every process gets ephemeral ports and its own temp directory, and is
//! killed when its handle drops, so tests can run in parallel.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `../shared` beside the checkout: test data and models.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// Path of a workspace binary, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // Cargo does not build other packages' binaries for a test target,
        // so build them here; it is a no-op when they are up to date. The
        // same selection as scripts/test's build and `cargo test
        // --workspace`: building only the two packages would resolve other
        // features (dev-dependencies count for the whole workspace), so
        // the first e2e test of a run rebuilt the binaries for minutes.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--workspace", "--all-targets"]);
        // Nor may it see the variables cargo sets for this test process:
        // ring's build script tracks CARGO_MANIFEST_DIR, so inheriting it
        // made the build dirty and rebuilt ring, rustls and everything on
        // top, here and again in the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&key.as_ref());
            if set_for_tests {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join(name)
}

/// A port nobody listens on right now, and never handed out before in this
/// test process: tests run in parallel, and one that keeps a port unused on
/// purpose (a broker that is not there yet) must not see another test's
/// server appear on it — that once connected one test's agent to another
/// test's aggregator.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process that is SIGKILLed on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("{} is not running", self.name)
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!(
                    "{} did not exit within {timeout:?} after SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The bootstrap admin token every test aggregator is started with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// The aggregator's `/readyz` status, or `None` while nothing answers.
pub fn readyz(http_port: u16) -> Option<u16> {
    http_get(&format!("http://127.0.0.1:{http_port}/readyz"), None)
        .ok()
        .map(|(s, _)| s)
}

/// Waits until an aggregator started by hand answers `/readyz` with 200,
/// failing early (with its log) if it exits.
pub fn wait_aggregator_ready(agg: &mut Proc, http_port: u16, timeout: Duration) -> Result<()> {
    wait_for("aggregator ready", timeout, || {
        if !agg.is_running() {
            return Some(Err(anyhow::anyhow!(
                "aggregator exited:\n{}",
                agg.log_text()
            )));
        }
        (readyz(http_port) == Some(200)).then_some(Ok(()))
    })?
}

/// Writes an agent config for fault tests: short batch age and ack timeout,
/// fast reconnects, one synthetic camera `north` at 30 fps with `uri`.
pub fn fault_test_agent_config(dir: &Path, uri: &str) -> Result<PathBuf> {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[outbox]
batch_max_age = "200ms"
ack_timeout = "2s"

[mqtt]
reconnect_max = "1s"

[[cameras]]
id = "north"
uri = "{uri}"
fps = 30
"#
        ),
    )?;
    Ok(path)
}

/// HTTP GET returning status and JSON body (Null when not JSON).
pub fn http_get(url: &str, token: Option<&str>) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    Ok((status, body))
}

/// HTTP POST of a JSON body (or none) returning status and JSON body.
pub fn http_post(url: &str, token: Option<&str>, body: Option<&Value>) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.post(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = match body {
        Some(b) => req.send_json(b),
        None => req.send_empty(),
    }
    .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    Ok((status, body))
}

/// A running `edgeqi-aggregator` on ephemeral ports.
#[derive(Debug)]
pub struct Aggregator {
    pub proc: Proc,
    pub dir: PathBuf,
    pub http_port: u16,
    /// Embedded broker port (0 in external-broker mode).
    pub mqtt_port: u16,
    external: Option<String>,
    env: Vec<(String, String)>,
    /// Embedded broker: let clients in without credentials (the default
    /// here, so tests about other things need not provision nodes).
    anonymous: bool,
    extra_args: Vec<String>,
}

impl Aggregator {
    /// Embedded broker mode, started and ready.
    pub fn start(dir: &Path) -> Result<Self> {
        let mut a = Self::new(dir, None, vec![])?;
        a.restart()?;
        Ok(a)
    }

    /// Picks ports and paths but does not start the process yet, so an agent
    /// can be pointed at a broker that is not there.
    pub fn new(
        dir: &Path,
        external_url: Option<String>,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        Ok(Self {
            proc: Proc::spawn(
                "placeholder",
                Command::new("true"),
                dir.join("placeholder.log"),
            )?,
            dir: dir.to_path_buf(),
            http_port: free_port(),
            mqtt_port: if external_url.is_some() {
                0
            } else {
                free_port()
            },
            external: external_url,
            env,
            anonymous: true,
            extra_args: Vec::new(),
        })
    }

    /// Embedded broker with anonymous access off, as in production: agents
    /// need credentials from [`Aggregator::provision`].
    pub fn secure(mut self) -> Self {
        self.anonymous = false;
        self
    }

    /// An extra command-line argument for every (re)start.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Provisions `node_id` (in a tenant "e2e") through the API and returns
    /// its MQTT (username, password).
    pub fn provision(&self, node_id: &str) -> Result<(String, String)> {
        let (_, tenants) = http_get(&self.api("/api/v1/tenants"), Some(ADMIN_TOKEN))?;
        let existing = tenants["items"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == "e2e"))
            .and_then(|t| t["id"].as_i64());
        let tenant = match existing {
            Some(id) => id,
            None => {
                let (status, t) = http_post(
                    &self.api("/api/v1/tenants"),
                    Some(ADMIN_TOKEN),
                    Some(&serde_json::json!({"name": "e2e"})),
                )?;
                if status != 201 {
                    bail!("POST /api/v1/tenants: HTTP {status}: {t}");
                }
                t["id"].as_i64().context("tenant id")?
            }
        };
        let (status, body) = http_post(
            &self.api("/api/v1/nodes"),
            Some(ADMIN_TOKEN),
            Some(&serde_json::json!({"node_id": node_id, "tenant_id": tenant})),
        )?;
        if status != 201 {
            bail!("POST /api/v1/nodes: HTTP {status}: {body}");
        }
        Ok((
            body["mqtt"]["username"]
                .as_str()
                .context("username")?
                .to_owned(),
            body["mqtt"]["password"]
                .as_str()
                .context("password")?
                .to_owned(),
        ))
    }

    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.dir.join("edgeqi.db").display())
    }

    /// Where agents should connect.
    pub fn mqtt_url(&self) -> String {
        self.external
            .clone()
            .unwrap_or_else(|| format!("mqtt://127.0.0.1:{}", self.mqtt_port))
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The live feed URL with the admin token and extra query parameters.
    pub fn ws_url(&self, query: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/api/v1/ws?access_token={ADMIN_TOKEN}&{query}",
            self.http_port
        )
    }

    /// (Re)starts the process on the same ports and database and waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let mut cmd = Command::new(bin("edgeqi-aggregator"));
        cmd.arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--database-url")
            .arg(self.db_url())
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("EDGEQI_ADMIN_TOKEN", ADMIN_TOKEN);
        match &self.external {
            Some(url) => cmd.arg("--mqtt-url").arg(url),
            None => cmd
                .arg("--mqtt-listen")
                .arg(format!("127.0.0.1:{}", self.mqtt_port)),
        };
        if self.anonymous && self.external.is_none() {
            cmd.arg("--mqtt-allow-anonymous");
        }
        cmd.args(&self.extra_args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.proc = Proc::spawn("edgeqi-aggregator", cmd, self.dir.join("aggregator.log"))?;
        let url = self.api("/readyz");
        let proc = &mut self.proc;
        wait_for("aggregator /readyz", Duration::from_secs(30), || {
            if !proc.is_running() {
                return Some(Err(anyhow::anyhow!(
                    "aggregator exited:\n{}",
                    proc.log_text()
                )));
            }
            match http_get(&url, Some(ADMIN_TOKEN)) {
                Ok((200, _)) => Some(Ok(())),
                _ => None,
            }
        })?
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(&self.api(path), Some(ADMIN_TOKEN))?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    pub fn detections_total(&self) -> Result<u64> {
        self.get("/api/v1/stats/summary")?["detections_total"]
            .as_u64()
            .context("detections_total")
    }
}

/// A running `edgeqi-agent`.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
    pub node_id: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Agent {
    /// Starts an agent with the given extra arguments (sources etc.).
    pub fn start(dir: &Path, node_id: &str, mqtt_url: &str, extra: &[&str]) -> Result<Self> {
        let data_dir = dir.join(format!("agent-{node_id}"));
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            node_id.into(),
            "--mqtt-url".into(),
            mqtt_url.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--heartbeat-interval".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = Self {
            proc: Proc::spawn(
                "placeholder",
                Command::new("true"),
                dir.join("placeholder.log"),
            )?,
            node_id: node_id.into(),
            data_dir,
            args,
        };
        a.restart()?;
        Ok(a)
    }

    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let mut cmd = Command::new(bin("edgeqi-agent"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        let log = self.data_dir.with_extension("log");
        self.proc = Proc::spawn("edgeqi-agent", cmd, log)?;
        Ok(())
    }

    /// A counter from the agent's outbox (`enqueued_detections`, …), read
    /// straight from its SQLite file the way an installer would inspect it.
    pub fn outbox_counter(&self, name: &str) -> Result<u64> {
        let conn = self.outbox()?;
        let v: Option<i64> = conn
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .ok();
        Ok(v.unwrap_or(0) as u64)
    }

    /// Waits until the source has finished and everything it produced was
    /// acknowledged: nothing pending and no new detection for three polls
    /// in a row (4.5 s — one quiet poll is not enough on a loaded machine,
    /// where a live source can pause that long between frames). Returns the
    /// outbox's `enqueued_detections`.
    pub fn wait_drained(&self, timeout: Duration) -> Result<u64> {
        let (mut last, mut quiet) = (u64::MAX, 0);
        wait_for(
            "the outbox to drain and the source to finish",
            timeout,
            || {
                let enq = self.outbox_counter("enqueued_detections").ok()?;
                let pending = self.outbox_pending().ok()?;
                quiet = if pending == 0 && enq == last && enq > 0 {
                    quiet + 1
                } else {
                    0
                };
                last = enq;
                if quiet >= 3 {
                    return Some(enq);
                }
                std::thread::sleep(Duration::from_millis(1500));
                None
            },
        )
    }

    pub fn outbox_pending(&self) -> Result<u64> {
        let n: i64 = self
            .outbox()?
            .query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    pub fn epoch(&self) -> Result<String> {
        Ok(self
            .outbox()?
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })?)
    }

    fn outbox(&self) -> Result<rusqlite::Connection> {
        let path = self.data_dir.join("outbox.db");
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

/// A real Mosquitto broker on an ephemeral port, persisting to its directory.
#[derive(Debug)]
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Result<Self> {
        let which = Command::new("sh")
            .args(["-c", "command -v mosquitto || ls /usr/sbin/mosquitto"])
            .output()?;
        if !which.status.success() {
            bail!("mosquitto is not installed: run scripts/test (it installs it) or apt-get install mosquitto mosquitto-clients");
        }
        let exe = String::from_utf8_lossy(&which.stdout)
            .lines()
            .next()
            .unwrap_or("mosquitto")
            .trim()
            .to_owned();
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::create_dir_all(dir.join("mosquitto-data"))?;
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_inflight_messages 100\nmax_queued_messages 100000\n",
                dir.join("mosquitto-data").display()
            ),
        )?;
        let mut cmd = Command::new(exe);
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("mosquitto", cmd, dir.join("mosquitto.log"))?;
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(Self { proc, port })
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Runs `mosquitto_pub` (a client this project did not write).
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8]) -> Result<()> {
    mosquitto_pub_with(port, topic, payload, &[])
}

/// `mosquitto_pub` with extra arguments (`-u`, `-P`, `-i`, `--cafile` …).
pub fn mosquitto_pub_with(port: u16, topic: &str, payload: &[u8], extra: &[&str]) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args(extra)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run mosquitto_pub (apt-get install mosquitto-clients)")?;
    child.stdin.take().context("stdin")?.write_all(payload)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Collects WebSocket text frames in the background.
#[derive(Debug)]
pub struct LiveFeed {
    frames: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl LiveFeed {
    pub fn connect(url: &str) -> Result<Self> {
        use futures_util::StreamExt;
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = frames.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ws, _) = rt
            .block_on(tokio_tungstenite::connect_async(url))
            .with_context(|| format!("WebSocket connect {url}"))?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let (_tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        if let Ok(v) = serde_json::from_str::<Value>(&t) {
                            sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        }
                    }
                }
            });
        });
        Ok(Self {
            frames,
            _thread: thread,
        })
    }

    pub fn frames(&self) -> Vec<Value> {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn of_type(&self, t: &str) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f["type"] == t)
            .collect()
    }
}
