//! The operations dashboard in a real browser: Debian's Chromium, headless,
//! driven by `tests/browser/dashboard.mjs` (playwright-core) against a real
//! aggregator. It logs in through the form as a user made with the API, sees
//! a node come online after a heartbeat published with `mosquitto_pub`, sees a
//! detection appear within 2 s, survives a burst, and watches the live
//! indicator recover when the aggregator restarts. Any page error fails it.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci` in tests/browser:
//! `source scripts/lib/browser.sh` (scripts/test does) installs them.
//! Screenshots land in target/test-artifacts/.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use edgeqi_e2e::{shared_dir, workspace_root, Aggregator};
use serde_json::json;

const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn browser_ready() -> Result<()> {
    let root = workspace_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<String> = [
        (
            Command::new("node").arg("--version").output().is_ok(),
            "node".to_owned(),
        ),
        (std::path::Path::new(&chromium).exists(), chromium),
        (
            root.join("tests/browser/node_modules/playwright-core")
                .exists(),
            "tests/browser/node_modules (npm ci)".to_owned(),
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        bail!(
            "the browser test needs {}: run `source scripts/lib/browser.sh` (scripts/test does)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// POST with a bearer token; status and JSON body.
fn post(url: &str, token: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_json::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

#[test]
fn dashboard_in_headless_chromium() -> Result<()> {
    if std::env::var_os("EDGEQI_SKIP_BROWSER").is_some() {
        eprintln!("EDGEQI_SKIP_BROWSER is set: skipping the browser test");
        return Ok(());
    }
    browser_ready()?;
    let dir = tempfile::tempdir()?;
    let admin_token = format!("ui-test-{}", std::process::id());
    let mut agg = Aggregator::new(
        dir.path(),
        None,
        vec![("EDGEQI_ADMIN_TOKEN".into(), admin_token.clone())],
    )?;
    agg.restart()?;

    // The operator the browser logs in as, made the way an admin would.
    let (username, password) = ("ops-lead", "correct horse battery");
    let (status, body) = post(
        &agg.api("/api/v1/users"),
        &admin_token,
        &json!({"username": username, "password": password, "role": "admin"}),
    )?;
    let mut env: Vec<(&str, String)> = vec![
        ("EDGEQI_URL", agg.api("")),
        ("EDGEQI_MQTT_PORT", agg.mqtt_port.to_string()),
        (
            "EDGEQI_ARTIFACTS",
            workspace_root()
                .join("target/test-artifacts")
                .display()
                .to_string(),
        ),
    ];
    // A citizen report's photo, if the incidents API is there to take it.
    let photo = shared_dir().join("testdata/bus.jpg");
    if photo.exists() {
        env.push(("EDGEQI_REPORT_PHOTO", photo.display().to_string()));
    }
    match status {
        201 | 200 => {
            env.push(("EDGEQI_USERNAME", username.into()));
            env.push(("EDGEQI_PASSWORD", password.into()));
        }
        // An aggregator without the users API: the token form instead.
        404 | 405 => env.push(("EDGEQI_ACCESS_TOKEN", admin_token.clone())),
        _ => bail!("creating the test user: HTTP {status}: {body}"),
    }

    let mut child = Command::new("node")
        .arg("tests/browser/dashboard.mjs")
        .current_dir(workspace_root())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("run node tests/browser/dashboard.mjs")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);

    // A hung browser must not hang the test suite.
    let done = Arc::new(AtomicBool::new(false));
    let pid = child.id();
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + BROWSER_TIMEOUT;
            while std::time::Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("browser test ran past {BROWSER_TIMEOUT:?}: killing it");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        })
    };

    let mut restarts = 0;
    for line in stdout.lines() {
        let line = line?;
        eprintln!("browser: {line}");
        if line.trim() == "@@restart-aggregator" {
            agg.restart()?;
            restarts += 1;
            writeln!(stdin, "@@restarted")?;
            stdin.flush()?;
        }
    }
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    ensure!(
        status.success(),
        "the browser checks failed ({status}); aggregator log:\n{}",
        tail(&agg.proc.log_text(), 40)
    );
    ensure!(
        restarts == 1,
        "the script asked for {restarts} restarts, not 1"
    );
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
