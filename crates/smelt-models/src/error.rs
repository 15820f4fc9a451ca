//! Typed errors of the models crate. Each names the file, tensor or key involved, what was found,
//! what was expected and, where there is one, what to do.

use std::path::PathBuf;

use smelt_formats::{GgufError, QuantError, SafetensorsError};
use smelt_kernels::KernelError;

use crate::settings::SettingError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Onnx(#[from] smelt_formats::onnx::OnnxError),
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A model named from the catalog that could not be fetched (or an unknown name).
    #[error(transparent)]
    Asset(#[from] smelt_assets::AssetError),
    #[error("architecture {found:?} is not supported (smelt runs: {supported})")]
    UnsupportedArchitecture { found: String, supported: &'static str },
    #[error("model file is missing tensor {name:?}; is it a complete {arch} model?")]
    MissingTensor { name: String, arch: String },
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, found: Vec<u64>, expected: Vec<u64> },
    /// A hyper-parameter read from a model file that the architecture cannot run with.
    #[error("{key} = {value}: {problem}")]
    HyperParameter { key: String, value: String, problem: String },
    /// A small tensor (norm weight, bias, position table) holding NaN or infinity.
    #[error("tensor {name:?} holds {value} at element {index}: the model file is corrupt (norm weights, biases and position tables must be finite numbers)")]
    NonFiniteTensor { name: String, index: usize, value: f32 },
    /// A NaN or infinity that appeared while running the model.
    #[error("{stage} produced a non-finite value ({value}) at row {row}: a weight of that layer is probably corrupt (NaN or infinity in a scale); re-quantize the model from its source")]
    NonFiniteActivation { stage: String, row: usize, value: f32 },
    /// An embedding table and a tokenizer that do not fit each other.
    #[error("{table} has {rows} rows but the tokenizer's ids go up to {max_id} ({tokens} tokens); the table must have a row for every token id: is the tokenizer from another model?")]
    VocabMismatch { table: String, rows: usize, tokens: usize, max_id: u64 },
    /// A present side file (modules.json, sentence_bert_config.json, ...) that cannot be used.
    #[error("{path}: {reason}")]
    SideFile { path: PathBuf, reason: String },
    /// An error about one tensor's data (a quantization or kernel error), naming the tensor.
    #[error("tensor {name:?}: {source}")]
    InTensor { name: String, source: Box<ModelError> },
    #[error("{0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the prompt has {tokens} tokens but the context holds {context}; shorten it or raise the context size")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
}

impl ModelError {
    /// This error, said of tensor `name`.
    pub fn in_tensor(self, name: &str) -> ModelError {
        match self {
            e @ (ModelError::InTensor { .. } | ModelError::WrongShape { .. } | ModelError::MissingTensor { .. } | ModelError::NonFiniteTensor { .. }) => e,
            e => ModelError::InTensor { name: name.into(), source: Box::new(e) },
        }
    }

    /// A hyper-parameter error: `key = value: problem`.
    pub fn hyper(key: impl Into<String>, value: impl std::fmt::Display, problem: impl Into<String>) -> ModelError {
        ModelError::HyperParameter { key: key.into(), value: value.to_string(), problem: problem.into() }
    }
}

/// Checks that every value of a small tensor is finite (norm weights, biases, position tables:
/// a few kilobytes, scanned once at load).
pub fn check_finite(name: &str, values: &[f32]) -> Result<(), ModelError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(ModelError::NonFiniteTensor { name: name.into(), index, value: values[index] }),
        None => Ok(()),
    }
}

/// Checks activations after a stage of a forward pass; `stage` is only formatted on failure.
pub fn check_activations(values: &[f32], width: usize, stage: impl FnOnce() -> String) -> Result<(), ModelError> {
    if smelt_kernels::math::all_finite(values) {
        return Ok(());
    }
    let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(ModelError::NonFiniteActivation { stage: stage(), row: index / width.max(1), value: values[index] })
}
