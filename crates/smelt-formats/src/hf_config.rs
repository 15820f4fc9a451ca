//! HF `config.json` (and sentence-transformers' `1_Pooling/config.json`) into typed configs.
//! Field names mirror HF's; defaults are HF's where a field may be absent.

use std::path::Path;

use serde::Deserialize;

use crate::error::SafetensorsError;

fn one() -> usize {
    1
}
fn bert_eps() -> f64 {
    1e-12
}
fn rms_eps() -> f64 {
    1e-6
}
fn rope_theta() -> f64 {
    10000.0
}
fn gelu() -> String {
    "gelu".into()
}
fn silu() -> String {
    "silu".into()
}
fn absolute() -> String {
    "absolute".into()
}

/// BERT family (`model_type` "bert"): all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2, ...
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "one")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    /// Attention heads removed from each layer (HF's head pruning): layer index (as a string,
    /// as JSON keys are) to the removed heads, numbered as in the unpruned layer. Their rows of
    /// Q, K and V and columns of the output projection are absent from the weights.
    #[serde(default)]
    pub pruned_heads: std::collections::BTreeMap<String, Vec<usize>>,
}

/// Llama family (`model_type` "llama", also "mistral"-like configs).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

impl LlamaConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// A parsed `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum HfConfig {
    Bert(BertConfig),
    Llama(LlamaConfig),
    /// A `model_type` smelt has no typed config for.
    Other { model_type: String },
}

/// sentence-transformers pooling (`1_Pooling/config.json`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PoolingConfig {
    pub word_embedding_dimension: usize,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json(path: &Path) -> Result<serde_json::Value, SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io { path: path.into(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| SafetensorsError::Config { path: path.into(), reason: format!("invalid JSON: {e}") })
}

/// Parses a HF `config.json` into the typed config of its `model_type`.
pub fn load_config(path: &Path) -> Result<HfConfig, SafetensorsError> {
    let v = read_json(path)?;
    parse_config(&v).map_err(|reason| SafetensorsError::Config { path: path.into(), reason })
}

/// [`load_config`] on an already parsed JSON value.
pub fn parse_config(v: &serde_json::Value) -> Result<HfConfig, String> {
    let model_type = v.get("model_type").and_then(|m| m.as_str()).ok_or("no \"model_type\" field")?.to_string();
    let typed = |e: serde_json::Error| format!("{model_type} config: {e}");
    Ok(match model_type.as_str() {
        "bert" => HfConfig::Bert(serde_json::from_value(v.clone()).map_err(typed)?),
        "llama" | "mistral" | "qwen2" => HfConfig::Llama(serde_json::from_value(v.clone()).map_err(typed)?),
        _ => HfConfig::Other { model_type },
    })
}

/// Parses sentence-transformers' `1_Pooling/config.json`.
pub fn load_pooling(path: &Path) -> Result<PoolingConfig, SafetensorsError> {
    let v = read_json(path)?;
    serde_json::from_value(v).map_err(|e| SafetensorsError::Config { path: path.into(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_and_llama_configs_parse_with_defaults() {
        let bert = serde_json::json!({"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
            "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512, "vocab_size": 30522});
        let HfConfig::Bert(b) = parse_config(&bert).unwrap() else { panic!("not bert") };
        assert_eq!((b.type_vocab_size, b.layer_norm_eps, b.hidden_act.as_str()), (1, 1e-12, "gelu"));
        let llama = serde_json::json!({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
            "vocab_size": 49152, "rope_theta": 100000.0, "tie_word_embeddings": true});
        let HfConfig::Llama(l) = parse_config(&llama).unwrap() else { panic!("not llama") };
        assert_eq!((l.n_kv_heads(), l.head_dim(), l.rope_theta), (3, 64, 1e5));
        assert!(parse_config(&serde_json::json!({"model_type": "bert"})).unwrap_err().contains("hidden_size"));
        assert!(matches!(parse_config(&serde_json::json!({"model_type": "t5"})), Ok(HfConfig::Other { .. })));
    }
}
