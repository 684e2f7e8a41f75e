//! `model import`: Ultralytics YOLOv8 ONNX exports (fp32, or dynamic int8
//! with `ConvInteger`) to our safetensors layout (see [`super::weights`]).
//!
//! Each conv `P` is found by its initializers: `P.weight` + `P.bias` (fp32
//! export) or `P.weight_quantized` + `_zero_point` + `_scale` + `P.bias`
//! (int8 export). Both forms are written: fp32 weights are quantized per
//! output channel (symmetric, zero point 128), int8 weights are kept as
//! they are (their per-tensor zero point and scale repeated per channel)
//! and dequantized for the f32 path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::onnx::{OnnxModel, OnnxTensor};
use super::weights::ModelMeta;
use super::DetectorError;

/// Tensors every YOLOv8 detect export has.
const REQUIRED: &[&str] = &[
    "model.0.conv",
    "model.9.cv1.conv",
    "model.21.cv2.conv",
    "model.22.cv3.0.2",
    "model.22.cv2.2.2",
];

/// One conv's tensors in our layout.
#[derive(Debug)]
struct ConvTensors {
    dims: Vec<usize>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    weight_q: Vec<u8>,
    zp: Vec<u8>,
    scale: Vec<f32>,
}

/// What an import produced, for the CLI's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    pub convs: usize,
    pub quantized_source: bool,
    pub num_classes: usize,
    pub imgsz: (usize, usize),
}

/// Reads an ONNX file and writes the safetensors model to `out`.
/// `progress(done, total)` is called once per conv.
pub fn import_onnx(
    input: &Path,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImportSummary, DetectorError> {
    let (summary, bytes) = import_onnx_to_bytes(input, progress)?;
    std::fs::write(out, bytes).map_err(|e| DetectorError::Io {
        path: out.display().to_string(),
        source: e,
    })?;
    Ok(summary)
}

/// Reads an ONNX file and returns the safetensors model in memory (what
/// [`import_onnx`] writes), for loading an export without a separate import.
pub fn import_onnx_to_bytes(
    input: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ImportSummary, Vec<u8>), DetectorError> {
    let bytes = std::fs::read(input).map_err(|e| DetectorError::Io {
        path: input.display().to_string(),
        source: e,
    })?;
    let model = OnnxModel::parse(&bytes)
        .map_err(|e| DetectorError::Import(format!("{}: {e}", input.display())))?;
    drop(bytes);
    let (meta, convs, quantized) = convert(&model, input, progress)?;
    let summary = ImportSummary {
        convs: convs.len(),
        quantized_source: quantized,
        num_classes: meta.names.len(),
        imgsz: meta.imgsz,
    };
    Ok((summary, serialize(&meta, &convs)?))
}

fn not_yolo(input: &Path, why: impl std::fmt::Display) -> DetectorError {
    DetectorError::Import(format!(
        "{} is ONNX but not an Ultralytics YOLOv8 detect export ({why})",
        input.display()
    ))
}

fn convert(
    model: &OnnxModel,
    input: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ModelMeta, BTreeMap<String, ConvTensors>, bool), DetectorError> {
    if let Some(task) = model.metadata.get("task") {
        if task != "detect" {
            return Err(not_yolo(
                input,
                format!("its task is {task:?}, not \"detect\""),
            ));
        }
    }
    let inits = &model.initializers;
    // Conv weights: `P.weight_quantized` (int8 export) or a 4-D float
    // `P.weight` / `P.weight_<suffix>` (fp32 exports, e.g. `weight_fp32`).
    let mut float_weights: HashMap<String, String> = HashMap::new();
    let mut prefixes = std::collections::BTreeSet::new();
    for (k, t) in inits.iter().filter(|(k, _)| k.starts_with("model.")) {
        if let Some(p) = k.strip_suffix(".weight_quantized") {
            prefixes.insert(p.to_owned());
        } else if let Some(idx) = k.rfind(".weight") {
            let suffix = &k[idx + ".weight".len()..];
            let plain = suffix.is_empty()
                || (suffix.starts_with('_') && !matches!(suffix, "_scale" | "_zero_point"));
            if plain && t.dims.len() == 4 && t.data_type == super::onnx::DataType::Float {
                float_weights.insert(k[..idx].to_owned(), k.clone());
                prefixes.insert(k[..idx].to_owned());
            }
        }
    }
    let prefixes: Vec<String> = prefixes
        .into_iter()
        .filter(|p| !p.ends_with(".dfl.conv"))
        .collect();
    for r in REQUIRED {
        if !prefixes.iter().any(|p| p == r) {
            return Err(not_yolo(input, format!("no weights for {r}")));
        }
    }
    let mut convs = BTreeMap::new();
    let mut quantized = false;
    let total = prefixes.len();
    for (i, p) in prefixes.iter().enumerate() {
        let t = if let Some(wq) = inits.get(&format!("{p}.weight_quantized")) {
            quantized = true;
            from_quantized(inits, p, wq)
        } else {
            from_float(inits, p, float_weights.get(p).map_or("", String::as_str))
        }
        .map_err(|e| not_yolo(input, e))?;
        convs.insert(p.clone(), t);
        progress(i + 1, total);
    }
    let num_classes = convs["model.22.cv3.0.2"].dims[0];
    let names = match model.metadata.get("names") {
        Some(s) => {
            parse_names(s).ok_or_else(|| not_yolo(input, "its `names` metadata is unreadable"))?
        }
        None => (0..num_classes).map(|i| format!("class{i}")).collect(),
    };
    if names.len() != num_classes {
        return Err(not_yolo(
            input,
            format!("{} class names for {num_classes} classes", names.len()),
        ));
    }
    let imgsz = match model.metadata.get("imgsz") {
        Some(s) => {
            parse_imgsz(s).ok_or_else(|| not_yolo(input, format!("imgsz {s:?} is unreadable")))?
        }
        None => (640, 640),
    };
    let source = format!(
        "{} ({})",
        input
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        if quantized { "dynamic int8" } else { "fp32" }
    );
    Ok((
        ModelMeta {
            names,
            imgsz,
            source,
        },
        convs,
        quantized,
    ))
}

fn get<'a>(
    inits: &'a std::collections::HashMap<String, OnnxTensor>,
    name: &str,
) -> Result<&'a OnnxTensor, String> {
    inits
        .get(name)
        .ok_or_else(|| format!("missing tensor {name}"))
}

fn bias_for(
    inits: &std::collections::HashMap<String, OnnxTensor>,
    p: &str,
    cout: usize,
) -> Result<Vec<f32>, String> {
    match inits.get(&format!("{p}.bias")) {
        Some(b) => {
            let v = b.to_f32().map_err(|e| e.to_string())?;
            if v.len() != cout {
                return Err(format!(
                    "{p}.bias has {} values for {cout} channels",
                    v.len()
                ));
            }
            Ok(v)
        }
        None => Err(format!(
            "{p} has no bias: batch-norm is not fused (export with Ultralytics' exporter)"
        )),
    }
}

fn check_dims(p: &str, dims: &[usize]) -> Result<usize, String> {
    match dims {
        [o, _, k1, k2] if k1 == k2 && *o > 0 => Ok(*o),
        _ => Err(format!(
            "{p} weight has shape {dims:?}, expected a square 4-D kernel"
        )),
    }
}

fn from_float(
    inits: &HashMap<String, OnnxTensor>,
    p: &str,
    weight_name: &str,
) -> Result<ConvTensors, String> {
    let w = get(inits, weight_name)?;
    let cout = check_dims(p, &w.dims)?;
    let weight = w.to_f32().map_err(|e| e.to_string())?;
    let bias = bias_for(inits, p, cout)?;
    let per = weight.len() / cout;
    let mut weight_q = Vec::with_capacity(weight.len());
    let mut scale = Vec::with_capacity(cout);
    for o in 0..cout {
        let ch = &weight[o * per..(o + 1) * per];
        let amax = ch.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale.push(s);
        weight_q.extend(
            ch.iter()
                .map(|v| ((v / s).round().clamp(-127.0, 127.0) + 128.0) as u8),
        );
    }
    Ok(ConvTensors {
        dims: w.dims.clone(),
        weight,
        bias,
        weight_q,
        zp: vec![128; cout],
        scale,
    })
}

fn from_quantized(
    inits: &std::collections::HashMap<String, OnnxTensor>,
    p: &str,
    wq: &OnnxTensor,
) -> Result<ConvTensors, String> {
    let cout = check_dims(p, &wq.dims)?;
    let weight_q = wq.to_u8().map_err(|e| e.to_string())?;
    let zp_t = get(inits, &format!("{p}.weight_zero_point"))?;
    let zp = zp_t.to_u8().map_err(|e| e.to_string())?;
    let sc = get(inits, &format!("{p}.weight_scale"))?
        .to_f32()
        .map_err(|e| e.to_string())?;
    // Per-tensor (one value) or per-channel (one per output channel).
    let per_channel = |v: usize| v == 1 || v == cout;
    if !per_channel(zp.len()) || !per_channel(sc.len()) {
        return Err(format!(
            "{p}: {} zero points and {} scales for {cout} channels",
            zp.len(),
            sc.len()
        ));
    }
    let zp: Vec<u8> = (0..cout)
        .map(|o| zp[if zp.len() == 1 { 0 } else { o }])
        .collect();
    let scale: Vec<f32> = (0..cout)
        .map(|o| sc[if sc.len() == 1 { 0 } else { o }])
        .collect();
    let per = weight_q.len() / cout;
    let weight = weight_q
        .iter()
        .enumerate()
        .map(|(i, &q)| (f32::from(q) - f32::from(zp[i / per])) * scale[i / per])
        .collect();
    Ok(ConvTensors {
        dims: wq.dims.clone(),
        weight,
        bias: bias_for(inits, p, cout)?,
        weight_q,
        zp,
        scale,
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn serialize(
    meta: &ModelMeta,
    convs: &BTreeMap<String, ConvTensors>,
) -> Result<Vec<u8>, DetectorError> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (p, t) in convs {
        let cout = t.dims[0];
        owned.push((
            format!("{p}.weight"),
            Dtype::F32,
            t.dims.clone(),
            f32_bytes(&t.weight),
        ));
        owned.push((
            format!("{p}.bias"),
            Dtype::F32,
            vec![cout],
            f32_bytes(&t.bias),
        ));
        owned.push((
            format!("{p}.weight_q"),
            Dtype::U8,
            t.dims.clone(),
            t.weight_q.clone(),
        ));
        owned.push((
            format!("{p}.weight_zp"),
            Dtype::U8,
            vec![cout],
            t.zp.clone(),
        ));
        owned.push((
            format!("{p}.weight_scale"),
            Dtype::F32,
            vec![cout],
            f32_bytes(&t.scale),
        ));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, data) in &owned {
        let v = TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| DetectorError::Import(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), v));
    }
    safetensors::serialize(views, Some(meta.to_map()))
        .map_err(|e| DetectorError::Import(format!("cannot serialise the model: {e}")))
}

/// Parses Ultralytics' `names` metadata, a Python dict literal
/// `{0: 'person', 1: "o'clock", …}`, into a list ordered by index.
pub fn parse_names(s: &str) -> Option<Vec<String>> {
    let body = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut chars = body.chars().peekable();
    let mut out: Vec<(usize, String)> = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut num = String::new();
        while let Some(c) = chars.peek().copied().filter(char::is_ascii_digit) {
            num.push(c);
            chars.next();
        }
        let idx: usize = num.parse().ok()?;
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ':') {
            chars.next();
        }
        let quote = chars.next().filter(|c| *c == '\'' || *c == '"')?;
        let mut name = String::new();
        loop {
            match chars.next()? {
                '\\' => name.push(chars.next()?),
                c if c == quote => break,
                c => name.push(c),
            }
        }
        out.push((idx, name));
    }
    out.sort_by_key(|(i, _)| *i);
    if out.iter().enumerate().any(|(i, (j, _))| i != *j) {
        return None;
    }
    Some(out.into_iter().map(|(_, n)| n).collect())
}

fn parse_imgsz(s: &str) -> Option<(usize, usize)> {
    let v: Vec<usize> = serde_json::from_str(s).ok()?;
    match v[..] {
        [h, w] => Some((h, w)),
        [s] => Some((s, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_python_dicts() {
        assert_eq!(
            parse_names("{0: 'person', 1: \"o'clock\", 2: 'a\\'b'}"),
            Some(vec!["person".into(), "o'clock".into(), "a'b".into()])
        );
        assert_eq!(parse_names("{0: 'a', 2: 'b'}"), None);
        assert_eq!(parse_names("not a dict"), None);
    }
}
