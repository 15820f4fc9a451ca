//! smelt-models: model architectures and what runs around them.
//!
//! - [`llama`]: the Llama family of decoders (SmolLM2 and friends), one file.
//! - [`bert`]: the BERT family of encoders (all-MiniLM-L6-v2 and friends), one file; [`int8`]
//!   its int8 path; [`embed`] sentence embeddings on top.
//! - [`linear`], [`ops`], [`attention`]: the layers the architectures are made of, written once
//!   against any weight type.
//! - [`tokenizer`]: byte-level BPE from GGUF vocabularies, streaming detokenization.
//! - [`chat`], [`sampling`], [`generate`]: chat templates, token choice, the generation loop.
//! - [`observe`]: the activation observer (the input of every weight matrix, for calibration).

pub mod attention;
pub mod backward;
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
pub mod lora;
pub mod observe;
pub mod ops;
pub mod sampling;
pub mod settings;
pub mod stats;
pub mod tokenizer;

pub use error::ModelError;
pub use llama::{Llama, LlamaConfig, LoadOptions, Scratch, Session, Step};
pub use attention::KvType;
pub use chat::{ChatTemplate, Message};
pub use embed::{EmbedOptions, Encoder, Pooling, Window};
pub use int8::Int8Spec;
pub use generate::{generate, GenerateConfig, Generation, StopReason, TextStream};
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
    let (model, tok, template) = if path.is_dir() {
        let tok = Tokenizer::from_hf_json(&path.join("tokenizer.json"))?;
        let template = ChatTemplate::new(tokenizer::hf::hf_chat_template(path)?.as_deref(), &tok);
        (Llama::from_hf_dir(path, opts)?, tok, template)
    } else {
        let file = std::sync::Arc::new(smelt_formats::GgufFile::open(path)?);
        LlamaConfig::from_gguf(&file.header)?; // an unsupported architecture is the first thing to say
        let tok = Tokenizer::from_gguf(&file.header)?;
        let template = ChatTemplate::from_gguf(&file.header, &tok);
        (Llama::from_gguf(file, opts)?, tok, template)
    };
    check_vocab(&model.embed.name, model.embed.rows, tok.vocab_size(), tok.vocab_size().saturating_sub(1) as u64)?;
    Ok(Loaded { model, tok, template })
}

/// Opens a decoder by what a user types: an existing path (GGUF file or HF directory) as is,
/// else a catalog name (`smollm2-135m`), fetched and cached when needed (`on` sees the fetch's
/// progress). Every command and the server open models through this.
pub fn open(name_or_path: &str, opts: LoadOptions, on: &mut dyn FnMut(smelt_assets::Event)) -> Result<(std::path::PathBuf, Loaded), ModelError> {
    let path = smelt_assets::resolve_model(name_or_path, on)?;
    let loaded = load(&path, opts)?;
    Ok((path, loaded))
}

/// A side file's JSON (tokenizer_config.json, modules.json, ...): `None` when the file is absent;
/// an error naming it when it is present but cannot be read or parsed (a broken side file must
/// not silently change what the model computes).
pub fn read_side_file(path: &std::path::Path) -> Result<Option<serde_json::Value>, ModelError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::SideFile { path: path.into(), reason: format!("cannot read it: {e}") }),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| ModelError::SideFile { path: path.into(), reason: format!("invalid JSON: {e}") })
}

/// An embedding table must have a row for every id its tokenizer can produce; checked at load,
/// not when a rare token first appears.
pub fn check_vocab(table: &str, rows: usize, tokens: usize, max_id: u64) -> Result<(), ModelError> {
    if max_id >= rows as u64 {
        return Err(ModelError::VocabMismatch { table: format!("the embedding table {table:?}"), rows, tokens, max_id });
    }
    Ok(())
}
