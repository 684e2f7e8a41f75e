//! A retained remote config far above `mqtt.max_packet_size` on a real
//! Mosquitto (which keeps up to 256 MB retained): the agent must refuse it
//! with a reason in its heartbeats and keep its uplink up, delivering
//! detections, instead of losing the connection after every reconnect.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_edgeqi-agent");
const NODE: &str = "big-1";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn mosquitto(dir: &Path, port: u16) -> Killed {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("conf");
    let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: apt-get install mosquitto mosquitto-clients");
    let child = Command::new(exe)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mosquitto.log")).expect("log"))
        .spawn()
        .expect("start mosquitto");
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Killed(child)
}

fn publish_retained(port: u16, topic: &str, payload: &[u8]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", topic, "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("write");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn a_retained_config_above_the_packet_limit_does_not_take_the_uplink_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let _broker = mosquitto(dir.path(), port);

    // 50 MB of a valid-looking document, retained.
    let mut doc = format!(r#"{{"v":1,"node_id":"{NODE}","version":9,"config":{{"cameras":[]}}}}"#)
        .into_bytes();
    doc.resize(50 << 20, b' ');
    publish_retained(port, &format!("edgeqi/v1/nodes/{NODE}/config"), &doc);

    // The aggregator's part, by hand: ack every batch, read heartbeats.
    let mut opts = MqttOptions::new("test-aggregator", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 100);
    client
        .subscribe(
            format!("edgeqi/v1/nodes/{NODE}/detections"),
            QoS::AtLeastOnce,
        )
        .expect("sub");
    client
        .subscribe(format!("edgeqi/v1/nodes/{NODE}/heartbeat"), QoS::AtMostOnce)
        .expect("sub");

    let log = dir.path().join("agent.log");
    let _agent = Killed(
        Command::new(AGENT)
            .args([
                "--node-id",
                NODE,
                "--mqtt-url",
                &format!("mqtt://127.0.0.1:{port}"),
            ])
            .args(["--data-dir", &dir.path().join("data").display().to_string()])
            .args([
                "--source",
                "synthetic://?objects=3",
                "--heartbeat-interval",
                "1s",
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("EDGEQI_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("agent"),
    );

    let mut acked = 0u64;
    let mut refused: Option<Value> = None;
    let mut acked_after_refusal = 0u64;
    let until = Instant::now() + Duration::from_secs(60);
    for ev in conn.iter() {
        assert!(
            Instant::now() < until,
            "timed out: acked {acked}, refusal {refused:?}, {acked_after_refusal} acked after it; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let Ok(Event::Incoming(Packet::Publish(p))) = ev else {
            continue;
        };
        let msg: Value = serde_json::from_slice(&p.payload).expect("json");
        if p.topic.ends_with("/detections") {
            let ack =
                json!({"v": 1, "node_id": NODE, "epoch": msg["epoch"], "acked_seq": msg["seq"]});
            client
                .publish(
                    format!("edgeqi/v1/nodes/{NODE}/ack"),
                    QoS::AtLeastOnce,
                    false,
                    ack.to_string(),
                )
                .expect("ack");
            acked += 1;
            if refused.is_some() {
                acked_after_refusal += 1;
            }
        } else if let Some(err) = msg.get("config_error").filter(|e| !e.is_null()) {
            assert!(msg["config_version"].is_null(), "nothing applied: {msg}");
            refused = Some(err.clone());
        }
        if refused.is_some() && acked_after_refusal >= 5 {
            break;
        }
    }
    let err = refused.expect("refusal");
    assert_eq!(err["code"], "too_large", "{err}");
    assert!(err["version"].is_null(), "{err}");
    // The size is the packet's (the document plus topic and header).
    let reason = err["reason"].as_str().unwrap_or_default();
    let size: usize = reason
        .strip_prefix("payload is ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((50 << 20..(50 << 20) + 1024).contains(&size), "{err}");
    assert!(reason.contains("over the 1048576-byte limit"), "{err}");
    let text = std::fs::read_to_string(&log).expect("log");
    let drops = text.matches("lost the MQTT connection").count();
    assert!(
        drops <= 1,
        "the connection dropped {drops} times (once for the oversized message is all):\n{text}"
    );
    assert!(text.contains("larger than mqtt.max_packet_size"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
