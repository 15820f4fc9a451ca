//! smelt-formats: reading and writing model files exactly.
//!
//! - [`quant`]: the registry of ggml tensor types (block geometry, bits per weight) with scalar
//!   reference quantizers and dequantizers, bit-compatible with ggml and the `gguf` package.
//! - [`gguf`]: GGUF v2/v3 reader (zero-copy over mmap, hostile-input safe) and writer.
//! - [`safetensors`]: HF safetensors via the `safetensors` crate, with dtype conversion.
//! - [`hf_config`]: HF `config.json` into typed configs.
//! - [`npy`]: numpy `.npy` arrays.
//! - [`fsutil`]: write-to-temp-then-rename for every output (devices and pipes written in place).
//! - [`texts`]: text inputs, plain lines or JSON lines (with ids or labels).

pub mod error;
pub mod fsutil;
pub mod gguf;
pub mod hf_config;
pub mod npy;
pub mod onnx;
pub mod quant;
pub mod safetensors;
mod storage;
pub mod texts;

pub use error::{GgufError, NpyError, QuantError, SafetensorsError};
pub use gguf::{GgufFile, GgufHeader, GgufValue, Metadata, TensorInfo};
pub use quant::{GgmlType, TypeInfo, REGISTRY};
