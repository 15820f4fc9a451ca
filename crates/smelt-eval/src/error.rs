//! Errors of the measuring code.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] smelt_models::ModelError),
    #[error("the text has {tokens} tokens, fewer than one chunk of {ctx}: give a longer text or a smaller --ctx")]
    TooFewTokens { tokens: usize, ctx: usize },
    #[error("the models have different vocabularies ({a} and {b} tokens): KL divergence needs the same tokenizer")]
    VocabMismatch { a: usize, b: usize },
    #[error("the two encoders gave different numbers of vectors or dimensions ({a} and {b})")]
    ShapeMismatch { a: String, b: String },
    #[error("{0}")]
    BadOption(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}
