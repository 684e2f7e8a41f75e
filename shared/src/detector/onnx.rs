//! A minimal ONNX reader: just the protobuf messages an Ultralytics export
//! uses (model, graph, node, attribute, tensor, metadata).
//!
//! Hand-rolled instead of prost + generated code because the build must not
//! need `protoc`, and we read six messages with a dozen fields; unknown
//! fields are skipped as the wire format allows.

use std::collections::HashMap;

/// Why bytes are not a readable ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model (protobuf decoding failed at byte {offset}: {what})")]
    Malformed { offset: usize, what: &'static str },
    #[error("not an ONNX model: {0}")]
    NotOnnx(&'static str),
    #[error("ONNX tensor {name}: {what}")]
    Tensor { name: String, what: String },
}

/// ONNX `TensorProto.DataType` values we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Int32,
    Int64,
    Other(i64),
}

impl DataType {
    fn from_code(c: i64) -> Self {
        match c {
            1 => Self::Float,
            2 => Self::Uint8,
            3 => Self::Int8,
            6 => Self::Int32,
            7 => Self::Int64,
            o => Self::Other(o),
        }
    }
}

/// An initializer: a named constant tensor.
#[derive(Debug, Clone)]
pub struct OnnxTensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data_type: DataType,
    raw: Vec<u8>,
    float_data: Vec<f32>,
    int_data: Vec<i64>,
}

impl OnnxTensor {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    fn err(&self, what: impl Into<String>) -> OnnxError {
        OnnxError::Tensor {
            name: self.name.clone(),
            what: what.into(),
        }
    }

    /// Values as f32 (the tensor must be FLOAT).
    pub fn to_f32(&self) -> Result<Vec<f32>, OnnxError> {
        if self.data_type != DataType::Float {
            return Err(self.err(format!("expected FLOAT, found {:?}", self.data_type)));
        }
        let v: Vec<f32> = if self.raw.is_empty() {
            self.float_data.clone()
        } else {
            self.raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        self.check_len(v)
    }

    /// Values as u8 (UINT8), or INT8 shifted by +128 so both read alike.
    pub fn to_u8(&self) -> Result<Vec<u8>, OnnxError> {
        let v: Vec<u8> = match self.data_type {
            DataType::Uint8 if !self.raw.is_empty() => self.raw.clone(),
            DataType::Uint8 => self.int_data.iter().map(|&x| x as u8).collect(),
            DataType::Int8 if !self.raw.is_empty() => self
                .raw
                .iter()
                .map(|&b| (b as i8 as i16 + 128) as u8)
                .collect(),
            DataType::Int8 => self.int_data.iter().map(|&x| (x + 128) as u8).collect(),
            other => return Err(self.err(format!("expected UINT8 or INT8, found {other:?}"))),
        };
        self.check_len(v)
    }

    /// Whether the tensor is INT8 (its [`OnnxTensor::to_u8`] values are shifted by 128).
    pub fn is_int8(&self) -> bool {
        self.data_type == DataType::Int8
    }

    fn check_len<T>(&self, v: Vec<T>) -> Result<Vec<T>, OnnxError> {
        if v.len() == self.numel() {
            Ok(v)
        } else {
            Err(self.err(format!("{} values for shape {:?}", v.len(), self.dims)))
        }
    }
}

/// A graph node: op type, inputs and outputs (attributes are not needed).
#[derive(Debug, Clone, Default)]
pub struct OnnxNode {
    pub op_type: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// The parts of an ONNX model the importer needs.
#[derive(Debug, Default)]
pub struct OnnxModel {
    pub ir_version: i64,
    pub producer: String,
    pub nodes: Vec<OnnxNode>,
    pub initializers: HashMap<String, OnnxTensor>,
    pub metadata: HashMap<String, String>,
}

impl OnnxModel {
    /// Parses a serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, OnnxError> {
        let mut model = OnnxModel::default();
        let mut graph: Option<&[u8]> = None;
        let mut r = Reader::new(bytes, 0);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Value::Varint(v)) => model.ir_version = v as i64,
                (2, Value::Bytes(b)) => model.producer = utf8(b),
                (7, Value::Bytes(b)) => graph = Some(b),
                (14, Value::Bytes(b)) => {
                    let (k, v) = parse_string_pair(b, r.base)?;
                    model.metadata.insert(k, v);
                }
                _ => {}
            }
        }
        if model.ir_version <= 0 {
            return Err(OnnxError::NotOnnx("no ir_version field"));
        }
        let graph = graph.ok_or(OnnxError::NotOnnx("no graph"))?;
        let mut g = Reader::new(graph, 0);
        while let Some((field, value)) = g.next()? {
            match (field, value) {
                (1, Value::Bytes(b)) => model.nodes.push(parse_node(b)?),
                (5, Value::Bytes(b)) => {
                    let t = parse_tensor(b)?;
                    model.initializers.insert(t.name.clone(), t);
                }
                _ => {}
            }
        }
        if model.nodes.is_empty() {
            return Err(OnnxError::NotOnnx("the graph has no nodes"));
        }
        Ok(model)
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_string_pair(b: &[u8], base: usize) -> Result<(String, String), OnnxError> {
    let mut r = Reader::new(b, base);
    let (mut k, mut v) = (String::new(), String::new());
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => k = utf8(b),
            (2, Value::Bytes(b)) => v = utf8(b),
            _ => {}
        }
    }
    Ok((k, v))
}

fn parse_node(b: &[u8]) -> Result<OnnxNode, OnnxError> {
    let mut n = OnnxNode::default();
    let mut r = Reader::new(b, 0);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => n.inputs.push(utf8(b)),
            (2, Value::Bytes(b)) => n.outputs.push(utf8(b)),
            (3, Value::Bytes(b)) => n.name = utf8(b),
            (4, Value::Bytes(b)) => n.op_type = utf8(b),
            _ => {}
        }
    }
    Ok(n)
}

fn parse_tensor(b: &[u8]) -> Result<OnnxTensor, OnnxError> {
    let mut t = OnnxTensor {
        name: String::new(),
        dims: Vec::new(),
        data_type: DataType::Other(0),
        raw: Vec::new(),
        float_data: Vec::new(),
        int_data: Vec::new(),
    };
    let mut r = Reader::new(b, 0);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Varint(v)) => t.dims.push(v as usize),
            (1, Value::Bytes(p)) => t
                .dims
                .extend(packed_varints(p)?.into_iter().map(|v| v as usize)),
            (2, Value::Varint(v)) => t.data_type = DataType::from_code(v as i64),
            (4, Value::Fixed32(v)) => t.float_data.push(f32::from_bits(v)),
            (4, Value::Bytes(p)) => t.float_data.extend(
                p.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            (5 | 7, Value::Varint(v)) => t.int_data.push(v as i64),
            (5 | 7, Value::Bytes(p)) => t
                .int_data
                .extend(packed_varints(p)?.into_iter().map(|v| v as i64)),
            (8, Value::Bytes(p)) => t.name = utf8(p),
            (9, Value::Bytes(p)) => t.raw = p.to_vec(),
            (14, Value::Varint(1)) => {
                return Err(OnnxError::Tensor {
                    name: t.name,
                    what: "stored as external data; re-export the model as one file".into(),
                })
            }
            _ => {}
        }
    }
    Ok(t)
}

fn packed_varints(p: &[u8]) -> Result<Vec<u64>, OnnxError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < p.len() {
        out.push(read_varint(p, &mut pos).map_err(|()| OnnxError::Malformed {
            offset: pos,
            what: "bad packed varint",
        })?);
    }
    Ok(out)
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Walks the fields of one protobuf message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the file, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn malformed(&self, what: &'static str) -> OnnxError {
        OnnxError::Malformed {
            offset: self.base + self.pos,
            what,
        }
    }

    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, OnnxError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = read_varint(self.buf, &mut self.pos).map_err(|_| self.malformed("bad key"))?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(self.malformed("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(
                read_varint(self.buf, &mut self.pos).map_err(|_| self.malformed("bad varint"))?,
            ),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = read_varint(self.buf, &mut self.pos)
                    .map_err(|_| self.malformed("bad length"))?;
                let len = usize::try_from(len).map_err(|_| self.malformed("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?
                    .try_into()
                    .map_err(|_| self.malformed("short fixed32"))?,
            )),
            _ => return Err(self.malformed("unknown wire type")),
        };
        Ok(Some((field, value)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.malformed("field runs past the end")),
        }
    }
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ()> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(())?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_not_onnx() {
        assert!(OnnxModel::parse(b"hello, this is not a model").is_err());
        assert!(OnnxModel::parse(b"").is_err());
        assert!(OnnxModel::parse(&[0xff; 64]).is_err());
    }
}
