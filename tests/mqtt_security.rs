//! MQTT security of the embedded broker, end to end: per-node credentials
//! from `POST /api/v1/nodes`, refused logins, the topic ACL, and the TLS
//! listener — with real agent, aggregator, `mosquitto_pub`/`mosquitto_sub`
//! and `openssl` processes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeqi_e2e::{free_port, mosquitto_pub_with, wait_for, Agent, Aggregator};
use serde_json::{json, Value};

/// An agent config with one fast synthetic camera.
fn agent_config(dir: &Path) -> Result<String> {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        r#"
[outbox]
batch_max_age = "300ms"

[mqtt]
reconnect_max = "1s"

[[cameras]]
id = "north"
uri = "synthetic://?objects=3&seed=7"
fps = 30
"#,
    )?;
    Ok(path.display().to_string())
}

/// A well-formed one-detection batch of `node`: it would be stored if it
/// got through.
fn batch(node: &str, seq: u64) -> Vec<u8> {
    json!({
        "v": 1, "node_id": node, "epoch": "hand-1", "seq": seq,
        "sent_at": chrono::Utc::now(),
        "detections": [{
            "ts": chrono::Utc::now(),
            "camera_id": "north", "class_id": 5, "label": "bus", "score": 0.81,
            "bbox": [34.0, 233.0, 798.0, 766.0], "track_id": 17, "zone": null
        }]
    })
    .to_string()
    .into_bytes()
}

/// Detections stored for `node`.
fn stored_for(agg: &Aggregator, node: &str) -> Result<usize> {
    let body = agg.get(&format!("/api/v1/detections?node_id={node}&limit=1000"))?;
    Ok(body["items"].as_array().map_or(0, Vec::len))
}

/// Nodes that have reported (the list also shows provisioned nodes that
/// never did, with `"reported": false`).
fn node_ids(agg: &Aggregator) -> Result<Vec<String>> {
    Ok(agg.get("/api/v1/nodes")?["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["reported"] == true)
                .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

fn dead_letters(agg: &Aggregator) -> Result<Value> {
    agg.get("/api/v1/dead-letters")
}

#[test]
fn only_provisioned_nodes_with_the_right_password_get_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::new(dir.path(), None, vec![])?.secure();
    agg.restart()?;
    let cfg = agent_config(dir.path())?;
    let (user, password) = agg.provision("sec-ok")?;
    ensure!(user == "sec-ok" && password.len() > 40, "{user} {password}");
    let _ok = Agent::start(
        dir.path(),
        "sec-ok",
        &agg.mqtt_url(),
        &[
            "--config",
            &cfg,
            "--mqtt-username",
            &user,
            "--mqtt-password",
            &password,
        ],
    )?;
    // Provisioned, but with someone else's password: the password is per node.
    let (_, other_password) = agg.provision("sec-wrong")?;
    let wrong = Agent::start(
        dir.path(),
        "sec-wrong",
        &agg.mqtt_url(),
        &[
            "--config",
            &cfg,
            "--mqtt-username",
            "sec-wrong",
            "--mqtt-password",
            &password,
        ],
    )?;
    // Never provisioned, no credentials at all.
    let anonymous = Agent::start(dir.path(), "sec-anon", &agg.mqtt_url(), &["--config", &cfg])?;

    wait_for("sec-ok's detections", Duration::from_secs(60), || {
        (stored_for(&agg, "sec-ok").ok()? > 0).then_some(())
    })?;
    // The refused agents had plenty of time and data to send.
    wait_for(
        "the refused agents to queue batches",
        Duration::from_secs(30),
        || {
            (wrong.outbox_counter("enqueued_batches").ok()? > 2
                && anonymous.outbox_counter("enqueued_batches").ok()? > 2)
                .then_some(())
        },
    )?;
    for refused in [&wrong, &anonymous] {
        ensure!(
            stored_for(&agg, &refused.node_id)? == 0,
            "{} got data in",
            refused.node_id
        );
        ensure!(
            refused.outbox_pending()? > 0,
            "{}: nothing acked",
            refused.node_id
        );
        ensure!(
            refused.proc.log_text().contains("refused the login"),
            "{} log:\n{}",
            refused.node_id,
            refused.proc.log_text()
        );
    }
    let nodes = node_ids(&agg)?;
    ensure!(
        nodes.contains(&"sec-ok".to_owned())
            && !nodes.iter().any(|n| n == "sec-wrong" || n == "sec-anon"),
        "{nodes:?}"
    );
    // Neither password ever reaches a log.
    let log = agg.proc.log_text();
    ensure!(!log.contains(&password) && !log.contains(&other_password));
    ensure!(log.contains("CONNECT refused"), "{log}");

    // A third-party client gets the proper CONNACK codes.
    let err = mosquitto_pub_with(
        agg.mqtt_port,
        "edgeqi/v1/nodes/sec-ok/detections",
        &batch("sec-ok", 1),
        &["-i", "sec-ok", "-u", "sec-ok", "-P", "eqm_not-the-password"],
    )
    .expect_err("wrong password");
    ensure!(err.to_string().to_lowercase().contains("password"), "{err}");
    Ok(())
}

#[test]
fn a_node_cannot_publish_or_subscribe_under_another_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut agg = Aggregator::new(dir.path(), None, vec![])?.secure();
    agg.restart()?;
    let (user, password) = agg.provision("acl-a")?;
    agg.provision("acl-b")?;
    let login = [
        "-i",
        user.as_str(),
        "-u",
        user.as_str(),
        "-P",
        password.as_str(),
    ];

    // acl-a forging a batch of acl-b: the connection is closed before the
    // broker sees it (mosquitto_pub's own exit status varies, so only the
    // outcome is checked).
    let _ = mosquitto_pub_with(
        agg.mqtt_port,
        "edgeqi/v1/nodes/acl-b/detections",
        &batch("acl-b", 1),
        &login,
    );
    // ... and overwriting its own desired config or forging its own acks.
    let _ = mosquitto_pub_with(
        agg.mqtt_port,
        "edgeqi/v1/nodes/acl-a/ack",
        br#"{"v":1,"node_id":"acl-a","epoch":"x","acked_seq":99}"#,
        &login,
    );
    // Reading every node's acks: the connection is closed on SUBSCRIBE.
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &agg.mqtt_port.to_string()])
        .args(login)
        .args(["-t", "edgeqi/v1/nodes/+/ack", "-C", "1", "-W", "2"])
        .output()
        .context("run mosquitto_sub")?;

    // The control: the same client publishing its own batch is stored.
    mosquitto_pub_with(
        agg.mqtt_port,
        "edgeqi/v1/nodes/acl-a/detections",
        &batch("acl-a", 1),
        &login,
    )?;
    wait_for("acl-a's own batch", Duration::from_secs(20), || {
        (stored_for(&agg, "acl-a").ok()? == 1).then_some(())
    })?;
    ensure!(
        stored_for(&agg, "acl-b")? == 0,
        "the forged batch was stored"
    );
    ensure!(!node_ids(&agg)?.contains(&"acl-b".to_owned()));
    let dead = dead_letters(&agg)?.to_string();
    ensure!(
        !dead.contains("acl-b"),
        "the forged batch reached ingest: {dead}"
    );
    let log = agg.proc.log_text();
    for denied in [
        "may not publish on \"edgeqi/v1/nodes/acl-b/detections\"",
        "may not publish on \"edgeqi/v1/nodes/acl-a/ack\"",
        "may not subscribe to \"edgeqi/v1/nodes/+/ack\"",
    ] {
        ensure!(log.contains(denied), "no {denied:?} in:\n{log}");
    }
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (apt-get install openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A self-signed P-256 CA: `{name}.key` and `{name}.pem` in `dir`.
fn make_ca(dir: &Path, name: &str, cn: &str) -> Result<()> {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
        ],
    )
}

/// A private CA and a server certificate for localhost / 127.0.0.1 signed
/// by it, the way an operator would make them.
fn make_certificates(dir: &Path) -> Result<()> {
    make_ca(dir, "ca", "EdgeQI test CA")?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}

#[test]
fn tls_listener_accepts_mqtts_and_refuses_plaintext() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certificates(&certs)?;
    let tls_port = free_port();
    let mut agg = Aggregator::new(dir.path(), None, vec![])?
        .secure()
        .arg("--mqtt-tls-listen")
        .arg(format!("127.0.0.1:{tls_port}"))
        .arg("--mqtt-tls-cert")
        .arg(certs.join("server.pem").display().to_string())
        .arg("--mqtt-tls-key")
        .arg(certs.join("server.key").display().to_string());
    agg.restart()?;
    let (user, password) = agg.provision("tls-node")?;
    let cfg = agent_config(dir.path())?;
    let ca = certs.join("ca.pem").display().to_string();
    let _agent = Agent::start(
        dir.path(),
        "tls-node",
        &format!("mqtts://localhost:{tls_port}"),
        &[
            "--config",
            &cfg,
            "--mqtt-ca-file",
            &ca,
            "--mqtt-username",
            &user,
            "--mqtt-password",
            &password,
        ],
    )?;
    wait_for("detections over TLS", Duration::from_secs(60), || {
        (stored_for(&agg, "tls-node").ok()? > 0).then_some(())
    })?;

    // Plain MQTT to the TLS port: the handshake fails, nothing gets through.
    let login = [
        "-i",
        user.as_str(),
        "-u",
        user.as_str(),
        "-P",
        password.as_str(),
    ];
    let before = stored_for(&agg, "tls-node")?;
    let plain = mosquitto_pub_with(
        tls_port,
        "edgeqi/v1/nodes/tls-node/heartbeat",
        b"{}",
        &login,
    );
    ensure!(plain.is_err(), "plaintext MQTT to the TLS port worked");
    ensure!(
        agg.proc.log_text().contains("TLS handshake failed"),
        "{}",
        agg.proc.log_text()
    );
    // A TLS client that trusts another CA does not connect either.
    make_ca(&certs, "other", "Other CA")?;
    let other = certs.join("other.pem").display().to_string();
    let untrusted = mosquitto_pub_with(
        tls_port,
        "edgeqi/v1/nodes/tls-node/detections",
        &batch("tls-node", 1),
        &[&login[..], &["--cafile", other.as_str()]].concat(),
    );
    ensure!(untrusted.is_err(), "a client trusting another CA connected");
    // mosquitto_pub with the CA file works, as a third-party client would.
    mosquitto_pub_with(
        tls_port,
        "edgeqi/v1/nodes/tls-node/detections",
        &batch("tls-node", 1),
        &[&login[..], &["--cafile", ca.as_str()]].concat(),
    )?;
    wait_for(
        "the hand-written batch over TLS",
        Duration::from_secs(20),
        || (stored_for(&agg, "tls-node").ok()? > before).then_some(()),
    )?;
    Ok(())
}
