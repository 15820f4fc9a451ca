//! smelt-models: model architectures and what runs around them.
//!
//! - [`llama`]: the Llama family of decoders (SmolLM2 and friends), one file.
//! - [`linear`], [`ops`], [`attention`]: the layers the architectures are made of, written once
//!   against any weight type.
//! - [`tokenizer`]: byte-level BPE from GGUF vocabularies, streaming detokenization.
//! - [`chat`], [`sampling`], [`generate`]: chat templates, token choice, the generation loop.

pub mod attention;
pub mod chat;
pub mod error;
pub mod generate;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod sampling;
pub mod tokenizer;

pub use error::ModelError;
pub use llama::{Llama, LlamaConfig, LoadOptions, Session};
pub use attention::KvType;
pub use chat::{ChatTemplate, Message};
pub use generate::{generate, GenerateConfig, Generation, StopReason};
pub use sampling::{Sampler, SamplerConfig};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// Opens a GGUF model and its tokenizer.
pub fn load(path: &std::path::Path, opts: LoadOptions) -> Result<(Llama, Tokenizer), ModelError> {
    let file = std::sync::Arc::new(smelt_formats::GgufFile::open(path)?);
    let tok = Tokenizer::from_gguf(&file.header)?;
    let model = Llama::from_gguf(file, opts)?;
    Ok((model, tok))
}
