//! GGUF, the file format of llama.cpp/ggml: read (v2, v3; zero-copy over mmap) and write
//! (byte-identical for an unmodified file).

mod reader;
pub mod value;
mod writer;

use std::path::{Path, PathBuf};

pub use reader::parse;
pub use value::{GgufArray, GgufValue, Metadata};
pub use writer::{GgufWriter, TensorSpec};

use crate::error::GgufError;
use crate::quant::GgmlType;
use crate::storage::Storage;

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;

/// One tensor's description. `dims` are in ggml order: `dims[0]` is the contiguous row length
/// (for a linear layer `[in_features, out_features]`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
    /// Where this tensor's info lies in the file (for messages).
    pub info_offset: u64,
}

impl TensorInfo {
    /// Elements per row (`dims[0]`, 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (`n_elements / row_len`).
    pub fn n_rows(&self) -> u64 {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }

    /// Shape in ggml order, e.g. `[576, 49152]`.
    pub fn shape_string(&self) -> String {
        format!("{:?}", self.dims)
    }
}

/// Everything in a GGUF file except the tensor data.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub file_len: u64,
}

impl GgufHeader {
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// A required unsigned integer (any integer type that is non-negative).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        v.as_u64().ok_or_else(|| GgufError::WrongValueType { key: key.into(), expected: "unsigned integer", found: v.type_name() })
    }

    /// A required float (any numeric type).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        v.as_f64().ok_or_else(|| GgufError::WrongValueType { key: key.into(), expected: "number", found: v.type_name() })
    }

    /// Total parameters (elements of all tensors).
    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements).sum()
    }
}

/// An open GGUF file: header plus the file's bytes (memory-mapped, so opening reads only the
/// pages the header touches).
pub struct GgufFile {
    pub header: GgufHeader,
    storage: Storage,
    path: Option<PathBuf>,
}

impl GgufFile {
    /// Opens and validates `path` (memory-mapped; tensor data is not read until used).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let storage = Storage::map(path).map_err(|source| GgufError::Io { path: path.into(), source })?;
        let header = parse(&storage)?;
        Ok(GgufFile { header, storage, path: Some(path.into()) })
    }

    /// Parses a whole file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let storage = Storage::Owned(bytes);
        let header = parse(&storage)?;
        Ok(GgufFile { header, storage, path: None })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The raw bytes of a tensor (zero-copy). Bounds were checked when the file was parsed.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        &self.storage[start..start + t.n_bytes as usize]
    }

    /// `len` bytes of the file from absolute offset `start` (a range a tensor info produced).
    ///
    /// # Panics
    /// If the range lies outside the file; ranges from this file's tensor infos never do.
    pub fn tensor_data_range(&self, start: usize, len: usize) -> &[u8] {
        &self.storage[start..start + len]
    }

    /// Looks a tensor up by name and returns its info and bytes.
    pub fn tensor_by_name(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let t = self.tensor(name).ok_or_else(|| GgufError::MissingTensor { name: name.into() })?;
        Ok((t, self.tensor_data(t)))
    }

    /// Dequantizes a whole tensor to f32 with the reference dequantizer.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, crate::error::QuantError> {
        crate::quant::dequantize_to_vec(t.ty, self.tensor_data(t))
    }

    /// Re-writes this file unchanged (byte-identical for files laid out as ggml lays them out).
    pub fn write_to<W: std::io::Write>(&self, out: W) -> Result<W, GgufError> {
        let specs = self.header.tensors.iter().map(TensorSpec::from_info).collect();
        let mut w = GgufWriter::new(out, self.header.version, &self.header.metadata, specs)?;
        for t in &self.header.tensors {
            w.write_tensor(self.tensor_data(t))?;
        }
        w.finish()
    }
}
