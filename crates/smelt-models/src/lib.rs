//! smelt-models: model architectures and what runs around them.
//!
//! - [`tokenizer`]: byte-level BPE from GGUF vocabularies, streaming detokenization.

pub mod error;
pub mod tokenizer;

pub use error::ModelError;
pub use tokenizer::{StreamDecoder, Tokenizer};
