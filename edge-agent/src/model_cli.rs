//! `model import|fetch`, `detect` and `bench detector`: the detector's
//! command line, usable without an agent configuration.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use edgeqi_shared::detector::decode::read_rgb as read_image;
use edgeqi_shared::detector::import::import_onnx;
use edgeqi_shared::detector::{profile_start, profile_take, DetectorOptions, Precision, Yolo};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::detect::yolo::{default_precision, find_model, MODELS_DIR};

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Convert an Ultralytics YOLOv8 detect ONNX export (fp32 or dynamic int8) to the agent's model file.
    Import {
        /// The .onnx file.
        file: PathBuf,
        /// Where to write the .safetensors model.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Download a YOLOv8 ONNX export from the model hub, verify its checksum and import it.
    Fetch {
        /// Model name, e.g. yolov8n (see the list with --help).
        name: String,
        /// Directory for the .onnx and the imported .safetensors.
        #[arg(long, value_name = "DIR", default_value = MODELS_DIR)]
        dir: PathBuf,
        /// Expected SHA-256 of the .onnx (required: EdgeQI pins none; the download is refused without it).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Download from this URL instead of the hub.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// f32 or int8 [default: f32]
    #[arg(long, value_name = "P")]
    precision: Option<Precision>,
    /// One JSON line per image.
    #[arg(long)]
    json: bool,
    /// Threads for inference [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Minimum class score.
    #[arg(long, value_name = "SCORE", default_value_t = edgeqi_shared::detector::default_conf_threshold())]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, value_name = "IOU", default_value_t = edgeqi_shared::detector::default_iou_threshold())]
    iou: f32,
    /// Images (JPEG or PNG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Time the detector on one image: median and p90 per frame, peak RSS.
    Detector {
        /// f32 or int8 [default: f32]
        #[arg(long, value_name = "P")]
        precision: Option<Precision>,
        /// Threads for inference (the pool size bounds what is used).
        #[arg(long, value_name = "N", default_value_t = 2)]
        threads: usize,
        /// Timed runs.
        #[arg(long, value_name = "R", default_value_t = 20)]
        runs: usize,
        /// Untimed runs first.
        #[arg(long, value_name = "W", default_value_t = 3)]
        warmup: usize,
        /// Also print per-layer timings of one run.
        #[arg(long)]
        layers: bool,
        /// The image.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

pub fn model(args: &ModelArgs) -> ExitCode {
    match &args.command {
        ModelCommand::Import { file, out } => match import(file, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        ModelCommand::Fetch {
            name,
            dir,
            sha256,
            url,
        } => match fetch(name, dir, sha256.as_deref(), url.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

fn import(file: &Path, out: &Path) -> Result<(), String> {
    let bar = ProgressBar::new(0).with_message(format!("importing {}", file.display()));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} convs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = import_onnx(file, out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let s = summary?;
    eprintln!(
        "imported {} ({} source, {} convs, {} classes, input {}x{}) -> {}",
        file.display(),
        if s.quantized_source {
            "dynamic int8"
        } else {
            "fp32"
        },
        s.convs,
        s.num_classes,
        s.imgsz.1,
        s.imgsz.0,
        out.display()
    );
    Ok(())
}

/// Models `fetch` knows and where the hub serves their ONNX export.
///
/// No SHA-256 is pinned here: a pinned checksum is only worth something if
/// it was taken from the exact file the URL serves, and none could be
/// downloaded and hashed (nor found recorded anywhere trustworthy) where
/// this was written. So `fetch` verifies against the checksum the caller
/// passes with `--sha256` (the hub shows each file's SHA-256 on its page)
/// and refuses to download without one.
const HUB: &[(&str, &str)] = &[
    (
        "yolov8n",
        "https://huggingface.co/Ultralytics/YOLOv8/resolve/main/yolov8n.onnx",
    ),
    (
        "yolov8s",
        "https://huggingface.co/Ultralytics/YOLOv8/resolve/main/yolov8s.onnx",
    ),
    (
        "yolov8m",
        "https://huggingface.co/Ultralytics/YOLOv8/resolve/main/yolov8m.onnx",
    ),
];

/// How long to wait for the hub to accept a connection before calling the
/// machine offline (a dead uplink must not hang the command).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A lower-case 64-digit hex SHA-256, or why the argument is not one.
fn parse_sha256(arg: &str) -> Result<String, String> {
    let hex = arg.trim().to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "--sha256 {arg:?} is not a SHA-256 (64 hexadecimal digits)"
        ))
    }
}

/// Downloads `name`'s ONNX export, checks its SHA-256 against `sha256`, saves
/// it in `dir` and imports it next to it. Nothing is written unless the
/// checksum matches.
fn fetch(name: &str, dir: &Path, sha256: Option<&str>, url: Option<&str>) -> Result<(), String> {
    let url = match (url, HUB.iter().find(|(n, _)| *n == name)) {
        (Some(u), _) => u.to_owned(),
        (None, Some((_, u))) => (*u).to_owned(),
        (None, None) => {
            let names: Vec<&str> = HUB.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown model {name:?}; known: {}, or pass --url",
                names.join(", ")
            ));
        }
    };
    let Some(expected) = sha256 else {
        return Err(format!(
            "no checksum to verify {url} against: EdgeQI pins none (it could not hash the \
             hub's file itself), so pass the publisher's SHA-256 with --sha256 HEX \
             (the hub lists it on the file's page). Nothing was downloaded."
        ));
    };
    let expected = parse_sha256(expected)?;
    let bytes = download(name, &url, dir)?;
    let got = hex(&Sha256::digest(&bytes));
    if got != expected {
        return Err(format!(
            "checksum mismatch for {url}: expected sha256 {expected}, got {got}; nothing was saved"
        ));
    }
    eprintln!("sha256 verified: {got}");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let onnx = dir.join(format!("{name}.onnx"));
    // Write then rename, so an interrupted fetch leaves no half file behind.
    let part = dir.join(format!(".{name}.onnx.part"));
    std::fs::write(&part, &bytes)
        .and_then(|()| std::fs::rename(&part, &onnx))
        .map_err(|e| format!("cannot write {}: {e}", onnx.display()))?;
    import(&onnx, &dir.join(format!("{name}.safetensors")))
}

/// The body at `url`, with a progress bar; connection failures are reported
/// as being offline, with what to do instead.
fn download(name: &str, url: &str, dir: &Path) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Io(_)
        | ureq::Error::Timeout(_) => format!(
            "cannot reach the model hub ({url}): this machine seems to be offline ({e}). \
             Copy an Ultralytics YOLOv8 ONNX export here by other means and run \
             `edgeqi-agent model import FILE.onnx --out {}/{name}.safetensors`",
            dir.display()
        ),
        ureq::Error::StatusCode(code) => {
            format!("download of {url} failed: the server answered HTTP {code}")
        }
        other => format!("download of {url} failed: {other}"),
    })?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("downloading {msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(name.to_owned());
    let mut reader = resp.body_mut().as_reader();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("download of {url} broke off: {e}"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        bar.set_position(bytes.len() as u64);
    }
    bar.finish_and_clear();
    Ok(bytes)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn load(
    model: Option<&Path>,
    precision: Option<Precision>,
    threads: Option<usize>,
    conf: f32,
    iou: f32,
) -> Result<(PathBuf, Yolo), String> {
    let path = find_model(model).ok_or_else(|| {
        format!("no model: pass --model FILE (or EDGEQI_MODEL), or put an imported *.safetensors in {MODELS_DIR}/")
    })?;
    let mut options = DetectorOptions {
        precision: precision.unwrap_or(default_precision()),
        conf_threshold: conf,
        iou_threshold: iou,
        ..DetectorOptions::default()
    };
    if let Some(t) = threads {
        options.threads = t.max(1);
    }
    let y = Yolo::load(&path, options).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, y))
}

/// Decodes an image as the reference pipeline does (JPEG via libjpeg-turbo).
fn read_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize), String> {
    let img = read_image(path).map_err(|e| e.to_string())?;
    Ok((img.data, img.width, img.height))
}

pub fn detect(args: &DetectArgs, model: Option<&Path>) -> ExitCode {
    let (_, yolo) = match load(model, args.precision, args.threads, args.conf, args.iou) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let mut failed = false;
    for image in &args.images {
        let result = read_rgb(image).and_then(|(rgb, w, h)| {
            let t0 = Instant::now();
            let d = yolo
                .detect_rgb(&rgb, w, h)
                .map_err(|e| format!("{}: {e}", image.display()))?;
            Ok((d, t0.elapsed()))
        });
        match result {
            Ok((dets, took)) => {
                let infer_ms = took.as_secs_f64() * 1e3;
                if args.json {
                    let line = serde_json::json!({
                        "image": image.display().to_string(),
                        "detections": dets.iter().map(|d| serde_json::json!({
                            "class_id": d.class_id,
                            "label": d.label,
                            "score": d.score,
                            "bbox": d.bbox,
                        })).collect::<Vec<_>>(),
                        "infer_ms": (infer_ms * 1000.0).round() / 1000.0,
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}: {} objects in {infer_ms:.1} ms",
                        image.display(),
                        dets.len()
                    );
                    for d in &dets {
                        let b = d.bbox;
                        println!(
                            "  {:<14} {:.2}  [{:.0}, {:.0}, {:.0}, {:.0}]",
                            d.label, d.score, b[0], b[1], b[2], b[3]
                        );
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn bench(args: &BenchArgs, model: Option<&Path>) -> ExitCode {
    let BenchWhat::Detector {
        precision,
        threads,
        runs,
        warmup,
        layers,
        image,
    } = &args.what;
    let (path, yolo) = match load(model, *precision, Some(*threads), 0.25, 0.45) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let (rgb, w, h) = match read_rgb(image) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let opts = *yolo.options();
    println!(
        "bench detector: {} {} threads={} kernel={} image={} ({w}x{h}) input={}x{}",
        path.display(),
        opts.precision,
        opts.threads,
        yolo.kernel().name(),
        image.display(),
        yolo.input_size().1,
        yolo.input_size().0
    );
    for _ in 0..*warmup {
        if let Err(e) = yolo.detect_rgb(&rgb, w, h) {
            return fail(e);
        }
    }
    let mut times = Vec::with_capacity(*runs);
    for _ in 0..(*runs).max(1) {
        let t0 = Instant::now();
        if let Err(e) = yolo.detect_rgb(&rgb, w, h) {
            return fail(e);
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    if *layers {
        profile_start();
        let _ = yolo.detect_rgb(&rgb, w, h);
        print_layers(&profile_take());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, p90) = (percentile(&sorted, 0.5), percentile(&sorted, 0.9));
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    println!(
        "{} runs: median {median:.1} ms, p90 {p90:.1} ms, min {:.1} ms, peak RSS {rss:.1} MB",
        sorted.len(),
        sorted[0]
    );
    let line = serde_json::json!({
        "precision": opts.precision.to_string(),
        "threads": opts.threads,
        "runs": sorted.len(),
        "median_ms": (median * 1000.0).round() / 1000.0,
        "p90_ms": (p90 * 1000.0).round() / 1000.0,
        "peak_rss_mb": (rss * 10.0).round() / 10.0,
    });
    println!("{line}");
    ExitCode::SUCCESS
}

fn print_layers(layers: &[(String, Duration)]) {
    let total: Duration = layers.iter().map(|(_, d)| *d).sum();
    println!(
        "per-layer timings of one run (total {:.1} ms):",
        total.as_secs_f64() * 1e3
    );
    let mut by_name: Vec<(String, Duration, usize)> = Vec::new();
    for (name, d) in layers {
        match by_name.iter_mut().find(|(n, _, _)| n == name) {
            Some(e) => {
                e.1 += *d;
                e.2 += 1;
            }
            None => by_name.push((name.clone(), *d, 1)),
        }
    }
    for (name, d, n) in &by_name {
        let ms = d.as_secs_f64() * 1e3;
        println!(
            "  {name:<24} {ms:7.2} ms {:5.1}%{}",
            100.0 * ms / (total.as_secs_f64() * 1e3),
            if *n > 1 {
                format!("  ({n} calls)")
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-file HTTP server on localhost answering every request with
    /// `body`; returns its URL and a counter of requests served.
    fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/yolov8n.onnx",
            listener.local_addr().expect("addr")
        );
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                // Read the request head; the body of a GET is empty.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        (url, served)
    }

    fn files_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn fetch_refuses_a_file_whose_checksum_differs_and_saves_nothing() {
        let (url, served) = serve(b"this is not the model you pinned".to_vec());
        let dir = tempfile::tempdir().expect("temp dir");
        let pinned = hex(&Sha256::digest(b"the real model"));
        let err = fetch("yolov8n", dir.path(), Some(&pinned), Some(&url))
            .expect_err("wrong file must be refused");
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains(&pinned), "says what was expected: {err}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            files_in(dir.path()).is_empty(),
            "{:?}",
            files_in(dir.path())
        );
    }

    #[test]
    fn fetch_says_plainly_when_the_hub_cannot_be_reached() {
        // A port that was just free: nothing listens there, so the connection is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("http://127.0.0.1:{port}/yolov8n.onnx");
        let dir = tempfile::tempdir().expect("temp dir");
        let err = fetch("yolov8n", dir.path(), Some(&"0".repeat(64)), Some(&url))
            .expect_err("nothing listens");
        assert!(err.contains("seems to be offline"), "{err}");
        assert!(
            err.contains("model import"),
            "says what to do instead: {err}"
        );
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn fetch_without_a_checksum_downloads_nothing() {
        let (url, served) = serve(b"anything".to_vec());
        let dir = tempfile::tempdir().expect("temp dir");
        let err = fetch("yolov8n", dir.path(), None, Some(&url)).expect_err("needs --sha256");
        assert!(err.contains("--sha256"), "{err}");
        let err = fetch("yolov8n", dir.path(), Some("abc"), Some(&url)).expect_err("not a hash");
        assert!(err.contains("64 hexadecimal digits"), "{err}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn fetch_verifies_then_imports_the_download() {
        let onnx =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/yolov8n_int8.onnx");
        let body = std::fs::read(&onnx).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (needs ../shared beside the checkout)",
                onnx.display()
            )
        });
        let sha = hex(&Sha256::digest(&body)).to_ascii_uppercase();
        let (url, _) = serve(body.clone());
        let dir = tempfile::tempdir().expect("temp dir");
        fetch(
            "yolov8n",
            &dir.path().join("models"),
            Some(&sha),
            Some(&url),
        )
        .expect("fetch");
        let saved = std::fs::read(dir.path().join("models/yolov8n.onnx")).expect("onnx saved");
        assert_eq!(saved, body);
        let model = dir.path().join("models/yolov8n.safetensors");
        let yolo = Yolo::load(&model, DetectorOptions::default()).expect("imported model loads");
        assert_eq!(yolo.labels().len(), 80);
        let mut names = files_in(&dir.path().join("models"));
        names.sort();
        assert_eq!(names, ["yolov8n.onnx", "yolov8n.safetensors"]);
    }
}
