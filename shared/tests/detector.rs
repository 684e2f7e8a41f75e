//! YOLOv8 parity with onnxruntime's reference detections, and import errors.
//! Needs ../shared (models and test images) beside the checkout: missing
//! files fail these tests, they are not skipped.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgeqi_shared::detector::decode::read_rgb;
use edgeqi_shared::detector::image_ops::iou;
use edgeqi_shared::detector::import::import_onnx;
use edgeqi_shared::detector::{Detection, DetectorOptions, Precision, Yolo};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared");

fn shared(rel: &str) -> PathBuf {
    let p = Path::new(SHARED).join(rel);
    assert!(
        p.exists(),
        "{} is missing: these tests need ../shared beside the checkout",
        p.display()
    );
    p
}

/// yolov8n_int8.onnx imported once per test binary.
fn imported_int8() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("yolov8n.safetensors");
        let mut calls = 0;
        let summary = import_onnx(&shared("models/yolov8n_int8.onnx"), &out, &mut |_, _| {
            calls += 1
        })
        .expect("import");
        assert!(summary.quantized_source);
        assert_eq!(summary.num_classes, 80);
        assert_eq!(summary.imgsz, (640, 640));
        assert_eq!(calls, summary.convs, "progress once per conv");
        (dir, out)
    });
    path
}

#[derive(Debug)]
struct Ref {
    class_id: usize,
    score: f32,
    bbox: [f32; 4],
}

fn reference(model: &str, image: &str) -> Vec<Ref> {
    let text = std::fs::read_to_string(shared("testdata/reference_detections.json"))
        .expect("read reference");
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference json");
    v["models"][model][image]
        .as_array()
        .expect("reference list")
        .iter()
        .map(|d| Ref {
            class_id: d["class_id"].as_u64().expect("class_id") as usize,
            score: d["score"].as_f64().expect("score") as f32,
            bbox: {
                let b: Vec<f32> = d["bbox"]
                    .as_array()
                    .expect("bbox")
                    .iter()
                    .map(|x| x.as_f64().expect("num") as f32)
                    .collect();
                [b[0], b[1], b[2], b[3]]
            },
        })
        .collect()
}

/// Decodes with the detector's own reader (libjpeg-turbo for JPEG, like
/// the reference's Pillow) and detects.
fn detect(yolo: &Yolo, image: &str) -> Vec<Detection> {
    let img = read_rgb(&shared(&format!("testdata/{image}"))).expect("decode");
    yolo.detect_rgb(&img.data, img.width, img.height)
        .expect("detect")
}

/// Every reference detection ≥ 0.3 is found (same class, IoU, score), and
/// nothing ≥ 0.3 is found that the reference lacks.
fn assert_matches(refs: &[Ref], ours: &[Detection], min_iou: f32, max_dscore: f32, what: &str) {
    for r in refs.iter().filter(|r| r.score >= 0.3) {
        let best = ours
            .iter()
            .filter(|d| d.class_id == r.class_id)
            .max_by(|a, b| iou(&a.bbox, &r.bbox).total_cmp(&iou(&b.bbox, &r.bbox)));
        let Some(d) = best else {
            panic!("{what}: reference {r:?} not found in {ours:#?}");
        };
        let i = iou(&d.bbox, &r.bbox);
        assert!(i >= min_iou, "{what}: {r:?} best IoU {i} with {d:?}");
        assert!(
            (d.score - r.score).abs() <= max_dscore,
            "{what}: {r:?} score {} vs {}",
            d.score,
            r.score
        );
    }
    for d in ours.iter().filter(|d| d.score >= 0.3) {
        assert!(
            refs.iter()
                .any(|r| r.class_id == d.class_id && iou(&d.bbox, &r.bbox) >= min_iou),
            "{what}: extra detection {d:?}"
        );
    }
}

fn yolo(precision: Precision) -> Yolo {
    Yolo::load(
        imported_int8(),
        DetectorOptions {
            precision,
            threads: 2,
            ..DetectorOptions::default()
        },
    )
    .expect("load model")
}

#[test]
fn f32_matches_the_fp32_reference() {
    let y = yolo(Precision::F32);
    for image in ["bus.jpg", "zidane.jpg"] {
        let ours = detect(&y, image);
        assert_matches(
            &reference("yolov8n_fp32.onnx", image),
            &ours,
            0.9,
            0.05,
            &format!("f32 {image}"),
        );
    }
}

/// The int8 path end to end: the tolerances, every detection, both
/// images. This holds because the input is bit-identical to the reference's
/// (libjpeg-turbo decode, Pillow-exact letterbox); with `image`'s zune-jpeg
/// decoder (up to 4 grey levels off on ~10% of bytes) zidane's borderline
/// tie (reference score 0.33) drifted to IoU 0.82. Measured with exact
/// input: worst IoU 0.947 (the bus), worst |Δscore| 0.024 (the tie).
#[test]
fn int8_matches_the_int8_reference() {
    let y = yolo(Precision::Int8);
    for image in ["bus.jpg", "zidane.jpg"] {
        let ours = detect(&y, image);
        assert_matches(
            &reference("yolov8n_int8.onnx", image),
            &ours,
            0.85,
            0.08,
            &format!("int8 {image}"),
        );
    }
}

#[test]
fn the_fp32_export_imports_and_matches_its_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fp32.safetensors");
    let s = import_onnx(&shared("models/yolov8n_fp32.onnx"), &out, &mut |_, _| {})
        .expect("import fp32");
    assert!(!s.quantized_source);
    let opts = DetectorOptions {
        precision: Precision::F32,
        threads: 2,
        ..DetectorOptions::default()
    };
    let y = Yolo::load(&out, opts).expect("load");
    let ours = detect(&y, "bus.jpg");
    assert_matches(
        &reference("yolov8n_fp32.onnx", "bus.jpg"),
        &ours,
        0.9,
        0.05,
        "fp32 import, bus.jpg",
    );
}

#[test]
fn an_onnx_export_loads_directly_and_detects_like_its_import() {
    let opts = DetectorOptions {
        precision: Precision::Int8,
        threads: 2,
        ..DetectorOptions::default()
    };
    let direct = Yolo::load(&shared("models/yolov8n_int8.onnx"), opts).expect("load .onnx");
    let imported = Yolo::load(imported_int8(), opts).expect("load import");
    let (a, b) = (detect(&direct, "bus.jpg"), detect(&imported, "bus.jpg"));
    assert!(a.iter().any(|d| d.label == "bus"), "{a:?}");
    assert_eq!(a, b, "the same weights, the same detections");
    // A file named .onnx that is not one says so.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bus.onnx");
    std::fs::copy(shared("testdata/bus.jpg"), &bad).expect("copy");
    let err = Yolo::load(&bad, DetectorOptions::default()).expect_err("a JPEG is not ONNX");
    assert!(err.to_string().contains("not an ONNX model"), "{err}");
}

#[test]
fn labels_and_input_size_come_from_the_model_file() {
    let y = yolo(Precision::F32);
    assert_eq!(y.labels().len(), 80);
    assert_eq!(y.labels()[5], "bus");
    assert_eq!(y.input_size(), (640, 640));
}

#[test]
fn importing_a_non_onnx_file_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bus.onnx");
    std::fs::copy(shared("testdata/bus.jpg"), &bad).expect("copy");
    let err = import_onnx(&bad, &dir.path().join("x.safetensors"), &mut |_, _| {})
        .expect_err("a JPEG is not ONNX");
    assert!(err.to_string().contains("not an ONNX model"), "{err}");
}

/// Protobuf for a one-node ONNX model (an Add), written by hand.
fn tiny_onnx() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, num: u8, payload: &[u8]) {
        out.push(num << 3 | 2);
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
    }
    let mut node = Vec::new();
    field(&mut node, 1, b"a");
    field(&mut node, 2, b"b");
    field(&mut node, 4, b"Add");
    let mut graph = Vec::new();
    field(&mut graph, 1, &node);
    let mut model = vec![1 << 3, 8];
    field(&mut model, 7, &graph);
    model
}

#[test]
fn importing_an_onnx_that_is_not_yolov8_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = dir.path().join("add.onnx");
    std::fs::write(&f, tiny_onnx()).expect("write");
    let err = import_onnx(&f, &dir.path().join("x.safetensors"), &mut |_, _| {})
        .expect_err("not a detector");
    assert!(
        err.to_string()
            .contains("not an Ultralytics YOLOv8 detect export"),
        "{err}"
    );
}

#[test]
fn loading_a_non_model_fails_clearly() {
    let err = Yolo::load(&shared("testdata/bus.jpg"), DetectorOptions::default())
        .expect_err("not a model");
    assert!(err.to_string().contains("safetensors"), "{err}");
}
