//! Typed errors of the models crate.

use smelt_formats::{GgufError, QuantError};
use smelt_kernels::KernelError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Onnx(#[from] smelt_formats::onnx::OnnxError),
    #[error("architecture {found:?} is not supported (smelt runs: {supported})")]
    UnsupportedArchitecture { found: String, supported: &'static str },
    #[error("model file is missing tensor {name:?}; is it a complete {arch} model?")]
    MissingTensor { name: String, arch: String },
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, found: Vec<u64>, expected: Vec<u64> },
    #[error("bad hyper-parameter: {0}")]
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
