//! smelt-models: model architectures and what runs around them.
//!
//! - [`llama`]: the Llama family of decoders (SmolLM2 and friends), one file.
//! - [`bert`]: the BERT family of encoders (all-MiniLM-L6-v2 and friends), one file; [`int8`]
//!   its int8 path; [`embed`] sentence embeddings on top.
//! - [`linear`], [`ops`], [`attention`]: the layers the architectures are made of, written once
//!   against any weight type.
//! - [`tokenizer`]: byte-level BPE from GGUF vocabularies, streaming detokenization.
//! - [`chat`], [`sampling`], [`generate`]: chat templates, token choice, the generation loop.

pub mod attention;
pub mod bert;
pub mod bert_onnx;
pub mod chat;
pub mod classify;
pub mod embed;
pub mod embed_quant;
pub mod error;
pub mod generate;
pub mod int8;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod sampling;
pub mod stats;
pub mod tokenizer;

pub use error::ModelError;
pub use llama::{Llama, LlamaConfig, LoadOptions, Session};
pub use attention::KvType;
pub use chat::{ChatTemplate, Message};
pub use embed::{EmbedOptions, Encoder, Pooling, Window};
pub use int8::Int8Spec;
pub use generate::{generate, GenerateConfig, Generation, StopReason};
pub use sampling::{Sampler, SamplerConfig};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// A decoder ready to run: weights, tokenizer, chat template.
pub struct Loaded {
    pub model: Llama,
    pub tok: Tokenizer,
    pub template: ChatTemplate,
}

/// Opens a model: a GGUF file, or an HF directory (config.json, model.safetensors,
/// tokenizer.json, tokenizer_config.json).
pub fn load(path: &std::path::Path, opts: LoadOptions) -> Result<Loaded, ModelError> {
    if path.is_dir() {
        let tok = Tokenizer::from_hf_json(&path.join("tokenizer.json"))?;
        let template = ChatTemplate::new(tokenizer::hf::hf_chat_template(path).as_deref(), &tok);
        let model = Llama::from_hf_dir(path, opts)?;
        return Ok(Loaded { model, tok, template });
    }
    let file = std::sync::Arc::new(smelt_formats::GgufFile::open(path)?);
    LlamaConfig::from_gguf(&file.header)?; // an unsupported architecture is the first thing to say
    let tok = Tokenizer::from_gguf(&file.header)?;
    let template = ChatTemplate::from_gguf(&file.header, &tok);
    let model = Llama::from_gguf(file, opts)?;
    Ok(Loaded { model, tok, template })
}
