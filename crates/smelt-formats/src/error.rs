//! Typed errors of the formats crate. Every variant carries the facts a user needs to find the
//! problem (file, field, byte offset, shape) and, where there is one, the fix.

use std::path::PathBuf;

use crate::quant::GgmlType;

/// Errors from quantization block operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: {n} elements is not a multiple of the block size {block}; pad the row or pick a type with smaller blocks (e.g. Q8_0 or F16)")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    #[error("{ty}: expected {expected} bytes of blocks for {n} elements, got {got}")]
    WrongByteLength { ty: GgmlType, n: usize, expected: usize, got: usize },
    #[error("{ty} has no reference {op} in smelt yet; supported: {supported}")]
    Unsupported { ty: GgmlType, op: &'static str, supported: String },
}

/// Errors from reading or writing GGUF files. Offsets are absolute byte offsets into the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("not a GGUF file: the first four bytes are {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("this GGUF file is big-endian (version field reads {swapped} byte-swapped); smelt reads little-endian GGUF only: convert it with llama.cpp's gguf tools")]
    BigEndian { swapped: u32 },
    #[error("GGUF version {version} is not supported (smelt reads v2 and v3; v1 files predate 64-bit counts: re-convert the model)")]
    UnsupportedVersion { version: u32 },
    #[error("file truncated while reading {field} at byte {offset}: needed {needed} bytes, only {available} left")]
    Truncated { field: String, offset: u64, needed: u64, available: u64 },
    #[error("{field} at byte {offset} claims {count} entries, impossible for the {available} bytes that remain")]
    ImpossibleCount { field: String, offset: u64, count: u64, available: u64 },
    #[error("{field} at byte {offset} is not valid UTF-8 (first invalid byte at position {valid_up_to})")]
    InvalidUtf8 { field: String, offset: u64, valid_up_to: usize },
    #[error("metadata value for {key:?} at byte {offset} has unknown type id {type_id}")]
    UnknownValueType { key: String, offset: u64, type_id: u32 },
    #[error("metadata value for {key:?} at byte {offset}: boolean byte is {value}, expected 0 or 1")]
    InvalidBool { key: String, offset: u64, value: u8 },
    #[error("metadata value for {key:?} at byte {offset}: arrays nested deeper than {max}")]
    ArrayTooDeep { key: String, offset: u64, max: usize },
    #[error("duplicate metadata key {key:?} at byte {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("general.alignment is {value}: it must be a u32 power of two")]
    BadAlignment { value: String },
    #[error("tensor {name:?} (info at byte {offset}) has {n_dims} dimensions; GGUF allows at most {max}")]
    TooManyDims { name: String, offset: u64, n_dims: u32, max: u32 },
    #[error("tensor {name:?} (info at byte {offset}) has shape {dims:?} whose element count overflows")]
    ShapeOverflow { name: String, offset: u64, dims: Vec<u64> },
    #[error("tensor {name:?} (info at byte {offset}) has unknown ggml type id {type_id}")]
    UnknownTensorType { name: String, offset: u64, type_id: u32 },
    #[error("tensor {name:?} (info at byte {offset}) of type {ty} has rows of {ne0} elements, not a multiple of its block size {block}")]
    RowNotBlockMultiple { name: String, offset: u64, ty: GgmlType, ne0: u64, block: usize },
    #[error("tensor {name:?}: data offset {data_offset} is not a multiple of the file's alignment {alignment}")]
    Misaligned { name: String, data_offset: u64, alignment: u64 },
    #[error("tensor {name:?}: data [{start}, {end}) lies past the end of the file ({file_len} bytes); the file is truncated or corrupt")]
    DataOutOfBounds { name: String, start: u64, end: u64, file_len: u64 },
    #[error("tensor {first:?} ({ty}) takes data bytes [{}, {}) of the data section, which runs into tensor {second:?} starting at {second_start}: the file's tensor offsets or types are corrupt", first_range.0, first_range.1)]
    OverlappingTensors { first: String, first_range: (u64, u64), ty: GgmlType, second: String, second_start: u64 },
    #[error("duplicate tensor name {name:?} (info at byte {offset})")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("no tensor named {name:?} in this GGUF file")]
    MissingTensor { name: String },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongValueType { key: String, expected: &'static str, found: &'static str },
    #[error("cannot write tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("write failed for {path}: {source}")]
    Write { path: PathBuf, #[source] source: std::io::Error },
}

/// Errors from safetensors files and HF `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("{path}: invalid safetensors file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: no tensor named {name:?} (the file has {available} tensors; is this the right model?)")]
    MissingTensor { path: PathBuf, name: String, available: usize },
    #[error("{path}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape { path: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: tensor {name:?} has dtype {dtype}, which smelt cannot convert to f32")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// Errors from NPY files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("invalid NPY data: {0}")]
    Invalid(String),
}
