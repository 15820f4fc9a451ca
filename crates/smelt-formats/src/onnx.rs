//! A minimal ONNX reader: the initializers (weights) and the node list of a model's main graph,
//! enough to take the weights of an exported transformer and to read a few constants and
//! attributes of its graph. smelt does not execute ONNX graphs.
//!
//! ONNX files are protocol buffers (onnx.proto3). The messages and fields read here:
//! ```text
//! ModelProto    7: graph GraphProto
//! GraphProto    1: node NodeProto (repeated)   5: initializer TensorProto (repeated)
//! NodeProto     1: input string (rep.)  2: output string (rep.)  3: name  4: op_type
//!               5: attribute AttributeProto (repeated)
//! AttributeProto 1: name  2: f float  3: i int64  5: t TensorProto
//! TensorProto   1: dims int64 (rep., packed or not)  2: data_type int32  4: float_data (packed)
//!               7: int64_data (packed)  8: name  9: raw_data bytes  14: data_location (1 = external)
//! ```
//! Wire format: each field is a varint key `(number << 3) | wire_type`; wire types 0 (varint),
//! 1 (8 bytes), 2 (varint length + bytes), 5 (4 bytes). Unknown fields are skipped. Every length
//! is checked against the bytes that remain, so a hostile file gives an error, never a panic or
//! a large allocation.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::storage::Storage;

/// An error reading an ONNX file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("invalid ONNX protobuf at byte {offset}: {reason}")]
    Invalid { offset: usize, reason: String },
    #[error("the ONNX file has no graph (field 7 of ModelProto)")]
    NoGraph,
    #[error("initializer {name:?} keeps its data in an external file; smelt reads self-contained ONNX files only")]
    External { name: String },
    #[error("the ONNX graph has two initializers named {name:?} (the second at byte {offset}); the file is corrupt")]
    Duplicate { name: String, offset: usize },
    #[error("no initializer named {name:?} in the ONNX graph")]
    Missing { name: String },
    #[error("initializer {name:?} has shape {found:?}, expected {expected:?}")]
    Shape { name: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("initializer {name:?} has ONNX data type {data_type}; smelt reads FLOAT (1) here")]
    DataType { name: String, data_type: i32 },
}

/// ONNX `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// ONNX `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;

/// Where a tensor's elements are.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    /// Little-endian bytes at this range of the file (`raw_data`).
    Raw(Range<usize>),
    /// The packed `float_data` field at this range.
    Floats(Range<usize>),
    /// The packed `int64_data` field (varints) at this range.
    Int64s(Range<usize>),
    None,
}

/// A tensor: an initializer, or the value of a `Constant` node.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxTensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    data: Data,
    external: bool,
}

impl OnnxTensor {
    /// Bytes of data the file holds for this tensor (0 for external or absent data).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            Data::Raw(r) | Data::Floats(r) | Data::Int64s(r) => r.len(),
            Data::None => 0,
        }
    }

    /// Elements, `None` for negative or overflowing dims.
    pub fn n_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
    }
}

/// The name of an ONNX `TensorProto.DataType` and its bits per element.
pub fn data_type_name(data_type: i32) -> (&'static str, u32) {
    match data_type {
        1 => ("FLOAT", 32),
        2 => ("UINT8", 8),
        3 => ("INT8", 8),
        4 => ("UINT16", 16),
        5 => ("INT16", 16),
        6 => ("INT32", 32),
        7 => ("INT64", 64),
        9 => ("BOOL", 8),
        10 => ("FLOAT16", 16),
        11 => ("DOUBLE", 64),
        12 => ("UINT32", 32),
        13 => ("UINT64", 64),
        16 => ("BFLOAT16", 16),
        _ => ("UNKNOWN", 0),
    }
}

/// An attribute of a node (only the scalar and tensor kinds are kept).
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub t: Option<OnnxTensor>,
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

/// An ONNX model file, memory-mapped.
pub struct OnnxFile {
    bytes: Storage,
    pub initializers: Vec<OnnxTensor>,
    pub nodes: Vec<Node>,
}

/// A cursor over one message's bytes; `base` is its offset in the file (for errors and ranges).
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], base: usize) -> Self {
        Reader { b, at: 0, base }
    }

    fn err(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Invalid { offset: self.base + self.at, reason: reason.into() }
    }

    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or_else(|| self.err("truncated varint"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>, OnnxError> {
        if n > self.b.len() - self.at {
            return Err(self.err(format!("field of {n} bytes runs past the end of its message ({} left)", self.b.len() - self.at)));
        }
        let r = self.at..self.at + n;
        self.at += n;
        Ok(r)
    }

    /// The next field: (number, wire type, value for wire type 0, byte range for the others).
    fn field(&mut self) -> Result<(u64, u8, u64, Range<usize>), OnnxError> {
        let key = self.varint()?;
        let (num, wt) = (key >> 3, (key & 7) as u8);
        match wt {
            0 => Ok((num, wt, self.varint()?, 0..0)),
            1 => Ok((num, wt, 0, self.take(8)?)),
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.err("length overflows"))?;
                Ok((num, wt, 0, self.take(n)?))
            }
            5 => Ok((num, wt, 0, self.take(4)?)),
            _ => Err(self.err(format!("unsupported wire type {wt} (field {num})"))),
        }
    }

    fn sub(&self, r: &Range<usize>) -> Reader<'a> {
        Reader::new(&self.b[r.clone()], self.base + r.start)
    }

    fn string(&self, r: &Range<usize>) -> Result<String, OnnxError> {
        std::str::from_utf8(&self.b[r.clone()]).map(str::to_string).map_err(|_| OnnxError::Invalid { offset: self.base + r.start, reason: "string is not UTF-8".into() })
    }

    fn abs(&self, r: &Range<usize>) -> Range<usize> {
        self.base + r.start..self.base + r.end
    }
}

fn tensor(mut r: Reader<'_>) -> Result<OnnxTensor, OnnxError> {
    let mut t = OnnxTensor { name: String::new(), dims: Vec::new(), data_type: 0, data: Data::None, external: false };
    while !r.done() {
        let (num, wt, v, range) = r.field()?;
        match (num, wt) {
            (1, 0) => t.dims.push(v as i64),
            (1, 2) => {
                let mut p = r.sub(&range);
                while !p.done() {
                    t.dims.push(p.varint()? as i64);
                }
            }
            (2, 0) => t.data_type = v as i32,
            (4, 2) => t.data = Data::Floats(r.abs(&range)),
            (7, 2) => t.data = Data::Int64s(r.abs(&range)),
            (8, 2) => t.name = r.string(&range)?,
            (9, 2) => t.data = Data::Raw(r.abs(&range)),
            (14, 0) => t.external = v == 1,
            _ => {}
        }
        if t.dims.len() > 16 {
            return Err(r.err("tensor with more than 16 dimensions"));
        }
    }
    Ok(t)
}

fn attribute(mut r: Reader<'_>) -> Result<Attribute, OnnxError> {
    let mut a = Attribute { name: String::new(), f: None, i: None, t: None };
    while !r.done() {
        let (num, wt, v, range) = r.field()?;
        match (num, wt) {
            (1, 2) => a.name = r.string(&range)?,
            (2, 5) => a.f = Some(f32::from_le_bytes(r.b[range].try_into().unwrap_or([0; 4]))),
            (3, 0) => a.i = Some(v as i64),
            (5, 2) => a.t = Some(tensor(r.sub(&range))?),
            _ => {}
        }
    }
    Ok(a)
}

fn node(mut r: Reader<'_>) -> Result<Node, OnnxError> {
    let mut n = Node { name: String::new(), op_type: String::new(), inputs: Vec::new(), outputs: Vec::new(), attributes: Vec::new() };
    while !r.done() {
        let (num, wt, _, range) = r.field()?;
        match (num, wt) {
            (1, 2) => n.inputs.push(r.string(&range)?),
            (2, 2) => n.outputs.push(r.string(&range)?),
            (3, 2) => n.name = r.string(&range)?,
            (4, 2) => n.op_type = r.string(&range)?,
            (5, 2) => n.attributes.push(attribute(r.sub(&range))?),
            _ => {}
        }
    }
    Ok(n)
}

/// Parses the graph of a serialized ModelProto.
pub fn parse(bytes: &[u8]) -> Result<(Vec<OnnxTensor>, Vec<Node>), OnnxError> {
    let mut m = Reader::new(bytes, 0);
    let mut graph = None;
    while !m.done() {
        let (num, wt, _, range) = m.field()?;
        if (num, wt) == (7, 2) {
            graph = Some(range);
        }
    }
    let graph = graph.ok_or(OnnxError::NoGraph)?;
    let mut g = m.sub(&graph);
    let (mut inits, mut nodes) = (Vec::new(), Vec::new());
    let mut names = std::collections::HashSet::new();
    while !g.done() {
        let (num, wt, _, range) = g.field()?;
        match (num, wt) {
            (1, 2) => nodes.push(node(g.sub(&range))?),
            (5, 2) => {
                let t = tensor(g.sub(&range))?;
                if !names.insert(t.name.clone()) {
                    return Err(OnnxError::Duplicate { name: t.name, offset: range.start });
                }
                inits.push(t)
            }
            _ => {}
        }
    }
    Ok((inits, nodes))
}

impl OnnxFile {
    pub fn open(path: impl AsRef<Path>) -> Result<OnnxFile, OnnxError> {
        let path = path.as_ref();
        let bytes = Storage::map(path).map_err(|source| OnnxError::Open { path: path.to_path_buf(), source })?;
        let (initializers, nodes) = parse(&bytes)?;
        Ok(OnnxFile { bytes, initializers, nodes })
    }

    pub fn initializer(&self, name: &str) -> Result<&OnnxTensor, OnnxError> {
        self.initializers.iter().find(|t| t.name == name).ok_or_else(|| OnnxError::Missing { name: name.into() })
    }

    /// A FLOAT tensor's elements, checking its shape when `expected` is given.
    pub fn floats(&self, t: &OnnxTensor, expected: Option<&[i64]>) -> Result<Vec<f32>, OnnxError> {
        if let Some(e) = expected {
            if t.dims != e {
                return Err(OnnxError::Shape { name: t.name.clone(), found: t.dims.clone(), expected: e.to_vec() });
            }
        }
        if t.external {
            return Err(OnnxError::External { name: t.name.clone() });
        }
        if t.data_type != FLOAT {
            return Err(OnnxError::DataType { name: t.name.clone(), data_type: t.data_type });
        }
        let n = t.dims.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
        let bytes = match &t.data {
            Data::Raw(r) | Data::Floats(r) => &self.bytes[r.clone()],
            _ => &[][..],
        };
        if n.and_then(|n| n.checked_mul(4)) != Some(bytes.len()) {
            let offset = match &t.data {
                Data::Raw(r) | Data::Floats(r) => r.start,
                _ => 0,
            };
            return Err(OnnxError::Invalid { offset, reason: format!("initializer {:?} of shape {:?} needs {} bytes of FLOAT data, it holds {}", t.name, t.dims, n.and_then(|n| n.checked_mul(4)).map_or("more than 2^64".into(), |b| b.to_string()), bytes.len()) });
        }
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A tensor's elements as f64 (FLOAT and INT64 tensors; for reading graph constants).
    pub fn values(&self, t: &OnnxTensor) -> Vec<f64> {
        match (&t.data, t.data_type) {
            (Data::Raw(r) | Data::Floats(r), FLOAT) => self.bytes[r.clone()].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
            (Data::Raw(r), INT64) => self.bytes[r.clone()].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64).collect(),
            (Data::Int64s(r), _) => {
                let mut p = Reader::new(&self.bytes[r.clone()], r.start);
                let mut out = Vec::new();
                while let Ok(v) = p.varint() {
                    out.push(v as i64 as f64);
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    /// A hand-built model: one 2x3 FLOAT initializer "w" (raw data) and one Add node.
    fn model() -> Vec<u8> {
        let mut t = Vec::new();
        for d in [2u64, 3] {
            varint(1 << 3, &mut t);
            varint(d, &mut t);
        }
        varint(2 << 3, &mut t);
        varint(1, &mut t);
        field(8, b"w", &mut t);
        let raw: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        field(9, &raw, &mut t);
        let mut n = Vec::new();
        field(1, b"x", &mut n);
        field(1, b"w", &mut n);
        field(2, b"y", &mut n);
        field(4, b"Add", &mut n);
        let mut g = Vec::new();
        field(1, &n, &mut g);
        field(5, &t, &mut g);
        let mut m = Vec::new();
        varint(1 << 3, &mut m); // ir_version
        varint(8, &mut m);
        field(7, &g, &mut m);
        m
    }

    #[test]
    fn reads_initializers_and_nodes() {
        let (inits, nodes) = parse(&model()).unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!((inits[0].name.as_str(), inits[0].dims.as_slice(), inits[0].data_type), ("w", &[2i64, 3][..], FLOAT));
        assert_eq!(nodes[0].op_type, "Add");
        assert_eq!(nodes[0].inputs, ["x", "w"]);
        assert_eq!(nodes[0].outputs, ["y"]);
    }

    #[test]
    fn duplicate_initializers_are_refused() {
        let m = model();
        // The graph holds one node and one initializer; append a second copy of the initializer.
        let (inits, _) = parse(&m).unwrap();
        let mut g = Vec::new();
        let mut r = Reader::new(&m, 0);
        while !r.done() {
            let (num, wt, _, range) = r.field().unwrap();
            if (num, wt) == (7, 2) {
                g = m[range].to_vec();
            }
        }
        let mut gr = Reader::new(&g, 0);
        let mut init = Vec::new();
        while !gr.done() {
            let (num, wt, _, range) = gr.field().unwrap();
            if (num, wt) == (5, 2) {
                init = g[range].to_vec();
            }
        }
        field(5, &init, &mut g);
        let mut m2 = Vec::new();
        field(7, &g, &mut m2);
        assert_eq!(inits[0].name, "w");
        let err = parse(&m2).unwrap_err();
        assert!(matches!(&err, OnnxError::Duplicate { name, .. } if name == "w"), "{err}");
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error() {
        let m = model();
        for cut in 1..m.len() {
            // A prefix either fails or parses to fewer fields; it never panics.
            let _ = parse(&m[..cut]);
        }
        assert!(matches!(parse(&m[..m.len() - 3]), Err(OnnxError::Invalid { .. })));
        assert!(matches!(parse(&[]), Err(OnnxError::NoGraph)));
        assert!(matches!(parse(&[0x3b]), Err(OnnxError::Invalid { .. })), "wire type 3 (groups) is rejected");
        assert!(matches!(parse(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]), Err(OnnxError::Invalid { .. })), "huge length");
    }
}
