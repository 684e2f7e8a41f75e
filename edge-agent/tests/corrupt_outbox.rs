//! The real agent binary against a damaged outbox: it must refuse to start
//! (non-zero exit, no panic), say which file and how to recover, and leave
//! the file byte for byte as it was; after the file is moved aside as the
//! message says, it starts again with a new epoch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_edgeqi-agent");

fn agent(data_dir: &Path, log: &Path) -> Child {
    Command::new(AGENT)
        .args([
            "--node-id",
            "n1",
            // Nothing listens there: batches stay in the outbox.
            "--mqtt-url",
            "mqtt://127.0.0.1:9",
            "--data-dir",
            &data_dir.display().to_string(),
            "--source",
            "synthetic://?objects=3&frames=100000",
            "--log-format",
            "text",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("EDGEQI_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start the agent")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if wait_exit(child, Duration::from_secs(30)).is_none() {
        let _ = child.kill();
        panic!("the agent did not stop on SIGTERM");
    }
}

fn pending_batches(outbox: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// A data dir whose outbox holds real, unacknowledged batches.
fn outbox_with_backlog(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let outbox = data.join("outbox.db");
    let mut a = agent(&data, &dir.join("first.log"));
    wait_until("batches in the outbox", Duration::from_secs(60), || {
        pending_batches(&outbox) >= 2
    });
    stop(&mut a);
    outbox
}

fn refuses(data: &Path, outbox: &Path, log: &Path) -> String {
    let before = std::fs::read(outbox).expect("read");
    let mut a = agent(data, log);
    let status = wait_exit(&mut a, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = a.kill();
        panic!("the agent kept running on a damaged outbox")
    });
    let text = std::fs::read_to_string(log).expect("log");
    assert!(!status.success(), "exit {status:?}; {text}");
    assert!(
        std::fs::read(outbox).expect("read") == before,
        "the damaged outbox was changed"
    );
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
    let shown = outbox.display().to_string();
    assert!(text.contains("ERROR"), "{text}");
    assert!(
        text.contains(&format!("outbox {shown} is damaged")),
        "{text}"
    );
    assert!(
        text.contains(&format!("sqlite3 {shown} .recover")),
        "{text}"
    );
    assert!(
        text.contains(&format!("mv {shown} {shown}.damaged")),
        "{text}"
    );
    assert!(text.contains("new outbox epoch"), "{text}");
    text
}

#[test]
fn a_damaged_outbox_stops_the_agent_untouched_until_moved_aside() {
    let dir = tempfile::tempdir().expect("tmp");
    let outbox = outbox_with_backlog(dir.path());
    let data = outbox.parent().expect("data dir").to_owned();
    let good = std::fs::read(&outbox).expect("read");
    let epoch: String = rusqlite::Connection::open(&outbox)
        .and_then(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
        })
        .expect("epoch");

    // Garbage over the header.
    let mut bytes = good.clone();
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&outbox, &bytes).expect("write");
    refuses(&data, &outbox, &dir.path().join("header.log"));

    // Cut to half its size.
    std::fs::write(&outbox, &good[..good.len() / 2]).expect("write");
    refuses(&data, &outbox, &dir.path().join("half.log"));

    // Zeros.
    std::fs::write(&outbox, vec![0u8; good.len()]).expect("write");
    refuses(&data, &outbox, &dir.path().join("zeros.log"));

    // Recovery as the message says: move it aside, start again.
    std::fs::rename(&outbox, data.join("outbox.db.damaged")).expect("mv");
    let log = dir.path().join("after.log");
    let mut a = agent(&data, &log);
    wait_until(
        "the agent to open a new outbox",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("outbox open")),
    );
    stop(&mut a);
    let fresh: String = rusqlite::Connection::open(&outbox)
        .and_then(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
        })
        .expect("epoch");
    assert_ne!(fresh, epoch, "a new outbox is a new epoch");
}
