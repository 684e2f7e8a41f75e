//! Hostile HTTP clients against the real aggregator binary (issue 12): slow
//! and half-open connections beyond the process's descriptor limit, bodies
//! announced larger than allowed, and decompression-bomb photos — answered
//! with 4xx or cut, while the API keeps answering and memory stays bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use edgeqi_e2e::{shared_dir, wait_for, Aggregator};

/// An aggregator with `http_toml` as its `[http]` table.
fn start(dir: &Path, http_toml: &str) -> Result<Aggregator> {
    let config = dir.join("aggregator.toml");
    std::fs::write(&config, format!("[http]\n{http_toml}\n"))?;
    let mut agg = Aggregator::new(dir, None, vec![])?
        .arg("--config")
        .arg(config.display().to_string());
    agg.restart()?;
    Ok(agg)
}

/// utime + stime of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// Sends `request` and reads the status line of the answer (within `max`).
fn status_of(port: u16, request: &[u8], max: Duration) -> Result<u16> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(max))?;
    c.write_all(request)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = c.read(&mut buf).context("an answer in time")?;
        ensure!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))
}

#[test]
fn half_open_connections_past_the_descriptor_limit_do_not_take_the_api_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The cap above the descriptor limit, so the accept loop meets EMFILE.
    let agg = start(
        dir.path(),
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections = 5000",
    )?;
    let pid = agg.proc.pid();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=256:256"])
        .output()?;
    ensure!(out.status.success(), "prlimit: {out:?}");

    // 600 clients that send half a request head and then nothing.
    let mut held = Vec::new();
    for _ in 0..600 {
        let mut c = TcpStream::connect(("127.0.0.1", agg.http_port))?;
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        held.push(c);
    }
    // The accept loop pauses on EMFILE instead of spinning.
    let before = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid)? - before;
    eprintln!("CPU with descriptors exhausted: {used} ticks (1/100 s) in 2 s");
    ensure!(
        used < 100,
        "the aggregator used {used} ticks of CPU in 2 s with its descriptors exhausted"
    );
    // While those clients are still connected, the API answers again once
    // their header timeouts free the descriptors.
    let t = Instant::now();
    wait_for("GET /healthz", Duration::from_secs(20), || {
        status_of(
            agg.http_port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .ok()
        .filter(|s| *s == 200)
    })?;
    eprintln!("answering again {:?} after the flood", t.elapsed());
    // The half-open ones were closed by the server.
    let first = &mut held[0];
    first.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 16];
    ensure!(
        matches!(first.read(&mut b), Ok(0) | Err(_)),
        "half-open connection closed"
    );
    let log = agg.proc.log_text();
    let warnings = log.matches("cannot accept HTTP connections").count();
    eprintln!("accept-error warnings logged: {warnings}");
    ensure!(
        (1..=3).contains(&warnings),
        "EMFILE met and logged, at most every 10 s ({warnings} lines)"
    );
    drop(held);
    Ok(())
}

/// A JPEG whose SOF0 header claims `width`x`height` with no real scan data.
fn jpeg_bomb(width: u16, height: u16) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x43, 0x00];
    j.extend_from_slice(&[1u8; 64]);
    j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    j.extend_from_slice(&height.to_be_bytes());
    j.extend_from_slice(&width.to_be_bytes());
    j.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
    for class in [0x00u8, 0x10] {
        j.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class, 1]);
        j.extend_from_slice(&[0u8; 16]);
    }
    j.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0,
    ]);
    j.extend_from_slice(&[0u8; 16]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

fn report_request(photo: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, value) in [
        ("photo", Some("p.jpg"), photo),
        ("lat", None, b"52.52".as_slice()),
        ("lng", None, b"13.40".as_slice()),
    ] {
        body.extend_from_slice(b"--BOUNDARY\r\n");
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--BOUNDARY--\r\n");
    let mut req = format!(
        "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=BOUNDARY\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn oversized_bodies_and_photo_bombs_get_413_at_once_and_memory_stays_flat() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agg = start(dir.path(), "")?;
    let pid = agg.proc.pid();
    let port = agg.http_port;
    for (what, request) in [
        (
            "a 100 MB Content-Length, head only",
            b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000000\r\n\r\n".to_vec(),
        ),
        ("a 20000x20000 JPEG bomb", report_request(&jpeg_bomb(20_000, 20_000))),
        ("a 60000x60000 JPEG bomb", report_request(&jpeg_bomb(60_000, 60_000))),
    ] {
        let t = Instant::now();
        let status = status_of(port, &request, Duration::from_secs(5))?;
        ensure!(status == 413, "{what}: HTTP {status}");
        ensure!(t.elapsed() < Duration::from_secs(2), "{what}: {:?}", t.elapsed());
    }
    // Several bombs at once, then the resident memory.
    let bombs: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                status_of(
                    port,
                    &report_request(&jpeg_bomb(20_000, 20_000)),
                    Duration::from_secs(10),
                )
            })
        })
        .collect();
    for b in bombs {
        let status = b.join().map_err(|_| anyhow::anyhow!("thread"))??;
        ensure!(status == 413, "HTTP {status}");
    }
    let rss = rss_kib(pid)?;
    eprintln!("aggregator RSS after 8 concurrent bombs: {rss} KiB");
    ensure!(rss < 300 * 1024, "aggregator RSS {rss} KiB after the bombs");
    // A real photo still becomes a report.
    let photo = std::fs::read(shared_dir().join("testdata/bus.jpg"))?;
    let status = status_of(port, &report_request(&photo), Duration::from_secs(30))?;
    ensure!(status == 201, "a real photo: HTTP {status}");
    Ok(())
}
