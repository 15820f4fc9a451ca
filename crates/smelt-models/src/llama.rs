//! The Llama family of decoders (Llama 1-3, SmolLM/SmolLM2, Mistral-style GQA models stored as
//! GGUF `llama`), after Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language
//! Models", and the ggml/llama.cpp graph for GGUF files (`src/models/llama.cpp`).
//!
//! Per layer, for the hidden state `x` of each token (`d` values):
//! ```text
//! h = rmsnorm(x) * attn_norm
//! q = Wq h (n_heads x d_head), k = Wk h, v = Wv h (n_kv x d_head); RoPE on q and k
//! x = x + Wo attention(q, K, V)
//! h = rmsnorm(x) * ffn_norm
//! x = x + Wdown (silu(Wgate h) * Wup h)
//! ```
//! then `logits = Wout rmsnorm(x) * output_norm`, with `Wout` the token embedding when the file
//! has no `output.weight` (tied embeddings). Written once for every weight type.
//!
//! Layers may differ in width (a pruned model): each has its own query and key/value head counts
//! and FFN width ([`LayerShape`]), read from llama.cpp's per-layer metadata arrays
//! (`{arch}.attention.head_count`, `.head_count_kv`, `.feed_forward_length` holding one value
//! per layer). llama.cpp's `llama` graph takes layer 0's widths for every layer; its `deci` graph
//! (Nemotron-NAS, otherwise the Llama graph) takes each layer's own, so files with differing
//! layers are written as `deci`, and both are read here.

use std::sync::Arc;

use smelt_formats::gguf::{GgufArray, GgufHeader};
use smelt_formats::hf_config::{load_config, HfConfig};
use smelt_formats::safetensors::SafetensorsFile;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::matmul::{gemm_multi, gemv_multi};
use smelt_kernels::pool::ThreadPool;

use crate::attention::{attend, attend_one_each, Heads, KvCache, KvType};
use crate::linear::{vector, Linear};
use crate::observe::{note, MatrixInput, Observer};
use crate::error::{check_activations, check_finite};
use crate::ops::{self, Rope, RopeStyle};
use crate::settings::Bound;
use crate::ModelError;

/// The widths of one block (the same for every block of an unpruned model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; each serves `n_heads / n_kv_heads` query heads.
    pub n_kv_heads: usize,
    /// Rows of `ffn_gate` and `ffn_up`, columns of `ffn_down`.
    pub ffn_dim: usize,
}

/// Hyper-parameters, from GGUF metadata (`{arch}.*` keys).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub dim: usize,
    pub n_layers: usize,
    /// Each layer's widths (`n_layers` of them).
    pub shapes: Vec<LayerShape>,
    pub head_dim: usize,
    pub vocab: usize,
    pub norm_eps: f32,
    pub rope_theta: f64,
    pub rope_dim: usize,
    /// Linear RoPE scaling factor (1 = none).
    pub rope_scale: f64,
    /// Context the model was trained with.
    pub ctx_train: usize,
}

/// Architectures this file runs.
pub const ARCHITECTURES: &str = "llama, deci";

/// `general.architecture` of a file whose layers differ in width (see the module doc).
pub const PER_LAYER_ARCH: &str = "deci";

/// Upper bound on any dimension read from metadata (guards hostile files before allocating).
const MAX_DIM: u64 = 1 << 20;

/// RMSNorm's epsilon: a small positive number (models use 1e-6 to 1e-5).
pub const NORM_EPS: Bound = Bound::positive("rms norm epsilon", 1.0);
/// RoPE's base frequency (10^4 for Llama 2, 5 x 10^5 for Llama 3, 10^5 for SmolLM2).
pub const ROPE_THETA: Bound = Bound { name: "rope base", min: 1.0, max: 1e12, min_exclusive: false, integer: false };
/// Linear RoPE scaling factor.
pub const ROPE_SCALE: Bound = Bound::positive("rope scaling factor", 1e6);

/// Where a config's values came from, to name them as the file does in messages.
#[derive(Clone, Copy)]
enum Keys<'a> {
    Gguf(&'a str),
    Hf,
}

impl Keys<'_> {
    /// The file's name for one of [`LlamaConfig`]'s fields.
    fn name(self, field: &str) -> String {
        let (gguf, hf) = match field {
            "dim" => ("embedding_length", "hidden_size"),
            "n_heads" => ("attention.head_count", "num_attention_heads"),
            "n_kv_heads" => ("attention.head_count_kv", "num_key_value_heads"),
            "n_layers" => ("block_count", "num_hidden_layers"),
            "head_dim" => ("attention.key_length", "head_dim"),
            "rope_dim" => ("rope.dimension_count", "head_dim"),
            "norm_eps" => ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
            "rope_theta" => ("rope.freq_base", "rope_theta"),
            "rope_scale" => ("rope.scaling.factor", "rope_scaling.factor"),
            other => (other, other),
        };
        match self {
            Keys::Gguf(arch) => format!("{arch}.{gguf}"),
            Keys::Hf => format!("{hf} (config.json)"),
        }
    }
}

impl LlamaConfig {
    pub fn from_gguf(h: &GgufHeader) -> Result<LlamaConfig, ModelError> {
        let arch = h.architecture().unwrap_or("").to_string();
        if arch != "llama" && arch != PER_LAYER_ARCH {
            return Err(ModelError::UnsupportedArchitecture { found: arch, supported: ARCHITECTURES });
        }
        let key = |s: &str| format!("{arch}.{s}");
        let dim_of = |s: &str| -> Result<usize, ModelError> {
            let v = h.get_u64(&key(s))?;
            if v == 0 || v > MAX_DIM {
                return Err(ModelError::hyper(key(s), v, format!("a dimension must be 1 to {MAX_DIM}")));
            }
            Ok(v as usize)
        };
        let opt = |s: &str| h.get(&key(s)).and_then(|v| v.as_u64());
        let float = |s: &str, default: f64| -> Result<f64, ModelError> {
            match h.get(&key(s)) {
                None => Ok(default),
                Some(_) => Ok(h.get_f64(&key(s))?),
            }
        };
        let dim = dim_of("embedding_length")?;
        let n_layers = dim_of("block_count")?;
        // A width per layer: one value for all, or an array of one per layer.
        let per_layer = |s: &str| -> Result<Vec<usize>, ModelError> {
            let arr = match h.get(&key(s)).and_then(|v| v.as_array()) {
                None => return Ok(vec![dim_of(s)?; n_layers]),
                Some(a) => a,
            };
            let vals: Option<Vec<u64>> = match arr {
                GgufArray::U32(v) => Some(v.iter().map(|&x| x as u64).collect()),
                GgufArray::I32(v) => v.iter().map(|&x| u64::try_from(x).ok()).collect(),
                GgufArray::U64(v) => Some(v.clone()),
                GgufArray::I64(v) => v.iter().map(|&x| u64::try_from(x).ok()).collect(),
                _ => None,
            };
            let vals = vals.filter(|v| v.len() == n_layers).ok_or_else(|| ModelError::hyper(key(s), format!("an array of {} values", arr.len()), format!("one non-negative integer per layer ({n_layers}) or a single value")))?;
            vals.iter()
                .enumerate()
                .map(|(l, &v)| match v {
                    0 => Err(ModelError::hyper(format!("{}[{l}]", key(s)), 0, "layers without attention or without an FFN (Nemotron-NAS) are not supported yet")),
                    v if v > MAX_DIM => Err(ModelError::hyper(format!("{}[{l}]", key(s)), v, format!("a dimension must be 1 to {MAX_DIM}"))),
                    v => Ok(v as usize),
                })
                .collect()
        };
        let heads = per_layer("attention.head_count")?;
        let kv_heads = match h.get(&key("attention.head_count_kv")) {
            Some(_) => per_layer("attention.head_count_kv")?,
            None => heads.clone(),
        };
        let ffn = per_layer("feed_forward_length")?;
        let shapes: Vec<LayerShape> = (0..n_layers).map(|l| LayerShape { n_heads: heads[l], n_kv_heads: kv_heads[l], ffn_dim: ffn[l] }).collect();
        // llama.cpp's rule: the head size is `key_length`, else the width over layer 0's heads.
        let n_heads = heads[0];
        let explicit_head_dim = opt("attention.key_length").is_some();
        let head_dim = if explicit_head_dim { dim_of("attention.key_length")? } else { dim / n_heads };
        if !explicit_head_dim && dim % n_heads != 0 {
            return Err(ModelError::hyper(
                key("embedding_length"),
                dim,
                format!("not a multiple of {} = {n_heads}, and no {} gives the head size", key("attention.head_count"), key("attention.key_length")),
            ));
        }
        let rope_dim = match opt("rope.dimension_count") {
            Some(_) => dim_of("rope.dimension_count")?,
            None => head_dim,
        };
        let rope_scale = match h.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => 1.0,
            Some("linear") => float("rope.scaling.factor", 1.0)?,
            Some(other) => return Err(ModelError::hyper(key("rope.scaling.type"), format!("{other:?}"), "not supported yet (none and linear are)")),
        };
        let vocab = match h.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(a) => a.len(),
            None => opt("vocab_size").unwrap_or(0) as usize,
        };
        let cfg = LlamaConfig {
            dim,
            n_layers,
            shapes,
            head_dim,
            vocab,
            norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)? as f32,
            rope_theta: float("rope.freq_base", 10000.0)?,
            rope_dim,
            rope_scale,
            // Contexts past MAX_DIM are used up to it (nothing smelt runs needs more).
            ctx_train: match opt("context_length") {
                Some(0) => return Err(ModelError::hyper(key("context_length"), 0, "a model must hold at least one token")),
                Some(v) => v.min(MAX_DIM) as usize,
                None => 2048,
            },
        };
        cfg.validate(Keys::Gguf(&arch))?;
        Ok(cfg)
    }

    /// The checks every source of a config goes through: head counts that divide, RoPE that fits
    /// the heads, finite hyper-parameters in range.
    fn validate(&self, keys: Keys) -> Result<(), ModelError> {
        if self.shapes.len() != self.n_layers {
            return Err(ModelError::hyper(keys.name("n_layers"), self.n_layers, format!("the widths describe {} layers", self.shapes.len())));
        }
        for (l, s) in self.shapes.iter().enumerate() {
            if !s.n_heads.is_multiple_of(s.n_kv_heads) {
                let at = if self.is_uniform() { String::new() } else { format!(" in layer {l}") };
                return Err(ModelError::hyper(
                    keys.name("n_heads"),
                    s.n_heads,
                    format!("not a multiple of {} = {}{at}: every key/value head must serve the same number of query heads", keys.name("n_kv_heads"), s.n_kv_heads),
                ));
            }
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return Err(ModelError::hyper(keys.name("rope_dim"), self.rope_dim, format!("RoPE needs an even number of dimensions, at most the head size {}", self.head_dim)));
        }
        for (field, v, bound) in [("norm_eps", self.norm_eps as f64, NORM_EPS), ("rope_theta", self.rope_theta, ROPE_THETA), ("rope_scale", self.rope_scale, ROPE_SCALE)] {
            let name = keys.name(field);
            bound.check_as(v, &name).map_err(|e| ModelError::hyper(name, v, format!("must be {}", e.expected)))?;
        }
        Ok(())
    }

    /// Whether every layer has the same widths (a file llama.cpp's `llama` graph runs).
    pub fn is_uniform(&self) -> bool {
        self.shapes.windows(2).all(|w| w[0] == w[1])
    }

    /// Layer `l`'s query width (`n_heads * head_dim`).
    pub fn q_dim(&self, l: usize) -> usize {
        self.shapes[l].n_heads * self.head_dim
    }

    /// Layer `l`'s key/value width (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self, l: usize) -> usize {
        self.shapes[l].n_kv_heads * self.head_dim
    }

    /// The widest of any layer's `(q_dim, kv_dim, ffn_dim)` (buffer sizes).
    fn widest(&self) -> (usize, usize, usize) {
        self.shapes.iter().fold((0, 0, 0), |(q, kv, f), s| (q.max(s.n_heads * self.head_dim), kv.max(s.n_kv_heads * self.head_dim), f.max(s.ffn_dim)))
    }
}

/// One transformer block's weights; shapes as (rows, cols), with this layer's
/// `q = n_heads * head_dim`, `kv = n_kv_heads * head_dim`, `ffn = ffn_dim`.
#[derive(Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>, // (dim)
    pub wq: Linear,          // (q, dim)
    pub wk: Linear,          // (kv, dim)
    pub wv: Linear,          // (kv, dim)
    pub wo: Linear,          // (dim, q)
    pub ffn_norm: Vec<f32>,  // (dim)
    pub gate: Linear,        // (ffn, dim)
    pub up: Linear,          // (ffn, dim)
    pub down: Linear,        // (dim, ffn)
}

/// A loaded model.
pub struct Llama {
    pub cfg: LlamaConfig,
    pub embed: Linear,
    /// `output.weight`, or `None` when the embedding is tied.
    pub output: Option<Linear>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    pub rope: Rope,
    /// The GGUF file the weights come from (`None` for HF safetensors).
    pub file: Option<Arc<GgufFile>>,
}

/// Options for loading.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Convert every weight matrix to this type at load time (e.g. run a Q4_1 file as F32).
    pub weight_type: Option<GgmlType>,
}

fn check(lin: &Linear, rows: usize, cols: usize) -> Result<(), ModelError> {
    if lin.rows != rows || lin.cols != cols {
        return Err(ModelError::WrongShape { name: lin.name.clone(), found: vec![lin.cols as u64, lin.rows as u64], expected: vec![cols as u64, rows as u64] });
    }
    Ok(())
}

impl Llama {
    /// Builds the model over an open GGUF file.
    pub fn from_gguf(file: Arc<GgufFile>, opts: LoadOptions) -> Result<Llama, ModelError> {
        let cfg = LlamaConfig::from_gguf(&file.header)?;
        let as_ty = opts.weight_type;
        // A block's matrix `NAME.weight` and its bias `NAME.bias` when the file has one
        // (llama.cpp's Llama graph adds each of these optional biases after its product).
        let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            let l = Linear::load(&file, name, as_ty)?;
            check(&l, rows, cols)?;
            match name.strip_suffix(".weight").filter(|_| name.starts_with("blk.")).map(|stem| format!("{stem}.bias")).filter(|b| file.tensor(b).is_some()) {
                Some(b) => l.with_bias(vector(&file, &b, rows)?),
                None => Ok(l),
            }
        };
        let d = cfg.dim;
        let embed = Linear::load(&file, "token_embd.weight", as_ty)?;
        if embed.cols != d || embed.rows == 0 {
            return Err(ModelError::WrongShape { name: "token_embd.weight".into(), found: vec![embed.cols as u64, embed.rows as u64], expected: vec![d as u64, cfg.vocab as u64] });
        }
        let mut cfg = cfg;
        cfg.vocab = embed.rows;
        let output = match file.tensor("output.weight") {
            Some(_) => Some(lin("output.weight", cfg.vocab, d)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let (qd, kvd, ffn) = (cfg.q_dim(i), cfg.kv_dim(i), cfg.shapes[i].ffn_dim);
            layers.push(Layer {
                attn_norm: vector(&file, &p("attn_norm.weight"), d)?,
                wq: lin(&p("attn_q.weight"), qd, d)?,
                wk: lin(&p("attn_k.weight"), kvd, d)?,
                wv: lin(&p("attn_v.weight"), kvd, d)?,
                wo: lin(&p("attn_output.weight"), d, qd)?,
                ffn_norm: vector(&file, &p("ffn_norm.weight"), d)?,
                gate: lin(&p("ffn_gate.weight"), ffn, d)?,
                up: lin(&p("ffn_up.weight"), ffn, d)?,
                down: lin(&p("ffn_down.weight"), d, ffn)?,
            });
        }
        let output_norm = vector(&file, "output_norm.weight", d)?;
        let rope = Rope::new(RopeStyle::Interleaved, cfg.rope_dim, cfg.rope_theta, cfg.rope_scale);
        Ok(Llama { cfg, embed, output, output_norm, layers, rope, file: Some(file) })
    }

    /// Loads an HF model directory: `config.json` and `model.safetensors` (HF tensor names,
    /// F32/F16/BF16). HF weights use the half-split RoPE pairing (`rotate_half`).
    pub fn from_hf_dir(dir: &std::path::Path, opts: LoadOptions) -> Result<Llama, ModelError> {
        let hf = match load_config(&dir.join("config.json"))? {
            HfConfig::Llama(c) => c,
            HfConfig::Bert(_) => return Err(ModelError::UnsupportedArchitecture { found: "bert".into(), supported: ARCHITECTURES }),
            HfConfig::Other { model_type } => return Err(ModelError::UnsupportedArchitecture { found: model_type, supported: ARCHITECTURES }),
        };
        let bounded = |name: &str, v: usize| {
            if v == 0 || v as u64 > MAX_DIM {
                Err(ModelError::hyper(format!("{name} (config.json)"), v, format!("a dimension must be 1 to {MAX_DIM}")))
            } else {
                Ok(v)
            }
        };
        let n_heads = bounded("num_attention_heads", hf.num_attention_heads)?;
        let n_kv_heads = bounded("num_key_value_heads", hf.n_kv_heads())?;
        let head_dim = bounded("head_dim", hf.head_dim())?;
        let rope_scale = match hf.rope_scaling.as_ref() {
            None | Some(serde_json::Value::Null) => 1.0,
            Some(v) => match v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()) {
                Some("linear") => v.get("factor").and_then(|f| f.as_f64()).unwrap_or(1.0),
                other => return Err(ModelError::hyper("rope_scaling (config.json)", format!("{other:?}"), "not supported yet (linear is)")),
            },
        };
        let n_layers = bounded("num_hidden_layers", hf.num_hidden_layers)?;
        let shape = LayerShape { n_heads, n_kv_heads, ffn_dim: bounded("intermediate_size", hf.intermediate_size)? };
        let cfg = LlamaConfig {
            dim: bounded("hidden_size", hf.hidden_size)?,
            n_layers,
            shapes: vec![shape; n_layers],
            head_dim,
            vocab: bounded("vocab_size", hf.vocab_size)?,
            norm_eps: hf.rms_norm_eps as f32,
            rope_theta: hf.rope_theta,
            rope_dim: head_dim,
            rope_scale,
            ctx_train: bounded("max_position_embeddings", hf.max_position_embeddings)?,
        };
        cfg.validate(Keys::Hf)?;
        let st = Arc::new(SafetensorsFile::open(dir.join("model.safetensors"))?);
        let as_ty = opts.weight_type;
        let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            let l = Linear::load_safetensors(&st, name, as_ty)?;
            check(&l, rows, cols)?;
            Ok(l)
        };
        let vec = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let v = st.tensor_f32(name, Some(&[n]))?;
            check_finite(name, &v)?;
            Ok(v)
        };
        let (d, qd, kvd, ffn) = (cfg.dim, cfg.q_dim(0), cfg.kv_dim(0), shape.ffn_dim);
        let embed = lin("model.embed_tokens.weight", cfg.vocab, d)?;
        let output = match st.get("lm_head.weight") {
            Ok(_) if !hf.tie_word_embeddings => Some(lin("lm_head.weight", cfg.vocab, d)?),
            _ => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            layers.push(Layer {
                attn_norm: vec(&p("input_layernorm.weight"), d)?,
                wq: lin(&p("self_attn.q_proj.weight"), qd, d)?,
                wk: lin(&p("self_attn.k_proj.weight"), kvd, d)?,
                wv: lin(&p("self_attn.v_proj.weight"), kvd, d)?,
                wo: lin(&p("self_attn.o_proj.weight"), d, qd)?,
                ffn_norm: vec(&p("post_attention_layernorm.weight"), d)?,
                gate: lin(&p("mlp.gate_proj.weight"), ffn, d)?,
                up: lin(&p("mlp.up_proj.weight"), ffn, d)?,
                down: lin(&p("mlp.down_proj.weight"), d, ffn)?,
            });
        }
        let output_norm = vec("model.norm.weight", d)?;
        let rope = Rope::new(RopeStyle::Halves, cfg.rope_dim, cfg.rope_theta, cfg.rope_scale);
        Ok(Llama { cfg, embed, output, output_norm, layers, rope, file: None })
    }

    /// Parameters (weights of every matrix and norm).
    pub fn n_params(&self) -> u64 {
        let m = |l: &Linear| (l.rows * l.cols) as u64;
        let layers: u64 = self.layers.iter().map(|l| m(&l.wq) + m(&l.wk) + m(&l.wv) + m(&l.wo) + m(&l.gate) + m(&l.up) + m(&l.down) + (l.attn_norm.len() + l.ffn_norm.len()) as u64).sum();
        layers + m(&self.embed) + self.output.as_ref().map_or(0, m) + self.output_norm.len() as u64
    }

    /// Opens `path` and builds the model.
    pub fn open(path: &std::path::Path, opts: LoadOptions) -> Result<Llama, ModelError> {
        Self::from_gguf(Arc::new(GgufFile::open(path)?), opts)
    }

    /// A fresh session holding at most `max_ctx` tokens (clamped to the trained context), with
    /// an f16 KV cache.
    pub fn session(&self, max_ctx: usize) -> Session {
        self.session_with(max_ctx, KvType::F16)
    }

    /// A fresh session with the given KV cache type.
    pub fn session_with(&self, max_ctx: usize, kv: KvType) -> Session {
        let max = max_ctx.clamp(1, self.cfg.ctx_train);
        let rows = (0..self.cfg.n_layers).map(|l| self.cfg.kv_dim(l)).collect();
        Session { kv: KvCache::new(rows, max, kv), bufs: Buffers::default(), tokens: Vec::new() }
    }

    /// Every weight matrix, by its tensor name (the embedding, each layer's seven, a separate
    /// output head), mutable: calibration swaps one for a candidate and back.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let layers = self.layers.iter_mut().flat_map(|l| [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.gate, &mut l.up, &mut l.down]);
        std::iter::once(&mut self.embed).chain(self.output.as_mut()).chain(layers).find(|w| w.name == name)
    }

    /// Adds every pair of `adapter` to its matrix, scaled by `strength` times the adapter's own
    /// scale (llama.cpp's `--lora-scaled`; 1 for `--lora`). Refuses an adapter of another
    /// architecture, a pair for a tensor this model does not have or of another shape (an adapter
    /// for another base), and pairs on the embedding or output head. Nothing changes on error.
    pub fn apply_lora(&mut self, adapter: &crate::lora::LoraAdapter, strength: f32) -> Result<(), ModelError> {
        if adapter.arch != "llama" {
            return Err(ModelError::hyper("general.architecture", format!("{:?}", adapter.arch), "the adapter was made for another architecture than this llama model"));
        }
        let mut adapted = Vec::with_capacity(adapter.pairs.len());
        for (name, pair) in &adapter.pairs {
            if name == "token_embd.weight" || name == "output.weight" {
                return Err(ModelError::hyper(name, "LoRA pair", "adapters of the embedding or output head are not supported"));
            }
            let lin = self.linear_mut(name).ok_or_else(|| ModelError::hyper(name, "LoRA pair", "this model has no such matrix: is the adapter for another base model?"))?;
            if (pair.rows, pair.cols) != (lin.rows, lin.cols) {
                return Err(ModelError::WrongShape { name: format!("{name} (LoRA for another base model?)"), found: vec![pair.cols as u64, pair.rows as u64], expected: vec![lin.cols as u64, lin.rows as u64] });
            }
            adapted.push((name, lin.clone().with_lora(pair.clone(), strength * adapter.scale(pair.rank))?));
        }
        for (name, lin) in adapted {
            if let Some(w) = self.linear_mut(name) {
                *w = lin;
            }
        }
        Ok(())
    }

    /// Bytes of weights (for reports).
    pub fn weight_bytes(&self) -> usize {
        let per_layer: usize = self.layers.iter().map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|w| w.bytes().len()).sum::<usize>()).sum();
        per_layer + self.embed.bytes().len() + self.output.as_ref().map_or(0, |o| o.bytes().len())
    }

    /// Runs `tokens` (appended after what the session holds) and returns the logits of the last
    /// one (`all = false`, `vocab` values) or of every one (`tokens.len() * vocab` values).
    pub fn forward<'s>(&self, pool: &ThreadPool, sess: &'s mut Session, tokens: &[u32], all: bool) -> Result<&'s [f32], ModelError> {
        self.forward_observed(pool, sess, tokens, all, None)
    }

    /// [`Llama::forward`], showing `obs` the input of every weight matrix (see [`crate::observe`]).
    pub fn forward_observed<'s>(&self, pool: &ThreadPool, sess: &'s mut Session, tokens: &[u32], all: bool, obs: Option<&mut dyn Observer>) -> Result<&'s [f32], ModelError> {
        self.forward_inner(pool, sess, tokens, all, obs, None, None)
    }

    /// [`Llama::forward`] from an empty session, keeping the residual stream at the input of
    /// every layer (`residuals[l]`, `tokens.len() x dim`), for [`Llama::forward_from`], and after
    /// the last layer (`residuals[n_layers]`, before the output norm).
    pub fn forward_capture<'s>(&self, pool: &ThreadPool, sess: &'s mut Session, tokens: &[u32], all: bool, residuals: &mut Vec<Vec<f32>>) -> Result<&'s [f32], ModelError> {
        residuals.clear();
        self.forward_inner(pool, sess, tokens, all, None, None, Some(residuals))
    }

    /// [`Llama::forward`] from an empty session with the layers before `layer` skipped: `x` is
    /// their output (the residual stream at `layer`'s input, as [`Llama::forward_capture`] kept
    /// it). The same logits as a full pass when the skipped layers are unchanged; calibration
    /// uses it to measure a change in layer `layer` or later at a fraction of the cost.
    pub fn forward_from<'s>(&self, pool: &ThreadPool, sess: &'s mut Session, tokens: &[u32], all: bool, layer: usize, x: &[f32]) -> Result<&'s [f32], ModelError> {
        if sess.kv.len != 0 || layer > self.layers.len() || x.len() != tokens.len() * self.cfg.dim {
            return Err(ModelError::Config(format!("forward_from: needs an empty session, a layer up to {} and {} x {} inputs", self.layers.len(), tokens.len(), self.cfg.dim)));
        }
        self.forward_inner(pool, sess, tokens, all, None, Some((layer, x)), None)
    }

    /// One decoding step of several sequences at once (continuous batching): `steps[i].tokens`
    /// are appended to `steps[i].sess`, all rows go through each weight matrix together (the
    /// weights are read once per step, not once per sequence), attention runs per sequence on
    /// its own cache. Returns the logits of each sequence's last token (`steps.len() x vocab`).
    /// Any sequence's error (a full context, an unknown token) fails the step before anything
    /// is computed, leaving every session as it was.
    pub fn forward_batch<'b>(&self, pool: &ThreadPool, scratch: &'b mut Scratch, steps: &mut [Step<'_>]) -> Result<&'b [f32], ModelError> {
        let mut seqs: Vec<Seq<'_>> = steps.iter_mut().map(|s| {
            let Session { kv, tokens, .. } = &mut *s.sess;
            Seq { kv, held: tokens, new: s.tokens }
        }).collect();
        self.forward_core(pool, &mut scratch.0, &mut seqs, false, None, None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_inner<'s>(&self, pool: &ThreadPool, sess: &'s mut Session, tokens: &[u32], all: bool, obs: Option<&mut dyn Observer>, from: Option<(usize, &[f32])>, keep: Option<&mut Vec<Vec<f32>>>) -> Result<&'s [f32], ModelError> {
        let Session { kv, bufs, tokens: held } = sess;
        self.forward_core(pool, bufs, &mut [Seq { kv, held, new: tokens }], all, obs, from, keep)
    }

    /// The forward pass over the new tokens of every sequence in `seqs`, stacked as rows
    /// (`m` = their total): norms, projections and the FFN see all `m` rows at once; RoPE
    /// positions, the KV cache and attention are each sequence's own. Logits: every row
    /// (`all`, one sequence only) or the last row of each sequence.
    #[allow(clippy::too_many_arguments)]
    fn forward_core<'b>(&self, pool: &ThreadPool, b: &'b mut Buffers, seqs: &mut [Seq<'_>], all: bool, mut obs: Option<&mut dyn Observer>, from: Option<(usize, &[f32])>, mut keep: Option<&mut Vec<Vec<f32>>>) -> Result<&'b [f32], ModelError> {
        let c = &self.cfg;
        if all && seqs.len() != 1 {
            return Err(ModelError::Config("every row's logits are available for one sequence at a time".into()));
        }
        // Row offset of each sequence's first new token.
        let mut at = Vec::with_capacity(seqs.len() + 1);
        at.push(0usize);
        for s in seqs.iter() {
            if s.new.is_empty() && seqs.len() > 1 {
                return Err(ModelError::Config("a sequence of a batched step has no token".into()));
            }
            if s.kv.len + s.new.len() > s.kv.max {
                return Err(ModelError::PromptTooLong { tokens: s.kv.len + s.new.len(), context: s.kv.max });
            }
            if let Some(&t) = s.new.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(ModelError::BadToken { id: t, vocab: c.vocab });
            }
            at.push(at[at.len() - 1] + s.new.len());
        }
        let m = at[seqs.len()];
        let seqs_len = seqs.len();
        if m == 0 {
            return Ok(&b.logits[..0]);
        }
        let d = c.dim;
        let (q_max, kv_max, ffn_max) = c.widest();
        let half = c.rope_dim / 2;
        b.resize(m, d, q_max, kv_max, ffn_max, half);
        for (i, s) in seqs.iter_mut().enumerate() {
            s.kv.reserve(s.new.len());
            for (j, &tok) in s.new.iter().enumerate() {
                let t = at[i] + j;
                match from {
                    Some((_, x)) => b.x[t * d..(t + 1) * d].copy_from_slice(&x[t * d..(t + 1) * d]),
                    None => self.embed.row_f32(tok as usize, &mut b.x[t * d..(t + 1) * d])?,
                }
                self.rope.angles(s.kv.len + j, &mut b.cos[t * half..(t + 1) * half], &mut b.sin[t * half..(t + 1) * half]);
            }
        }
        for (l, layer) in self.layers.iter().enumerate().skip(from.map_or(0, |f| f.0)) {
            let s = c.shapes[l];
            let heads = Heads { n_heads: s.n_heads, n_kv: s.n_kv_heads, d_head: c.head_dim };
            let (qd, kvd, ffn) = (c.q_dim(l), c.kv_dim(l), s.ffn_dim);
            if let Some(k) = keep.as_deref_mut() {
                k.push(b.x[..m * d].to_vec());
            }
            let x = &b.x;
            ops::par_rows(pool, &mut b.h[..m * d], m, &|t, h| ops::rmsnorm(&x[t * d..(t + 1) * d], &layer.attn_norm, c.norm_eps, h));
            note(&mut obs, l, MatrixInput::AttnQkv, &b.h, m, d);
            if m == 1 {
                let ws = [&layer.wq.matrix()?, &layer.wk.matrix()?, &layer.wv.matrix()?];
                gemv_multi(pool, &ws, &b.h[..d], &mut [&mut b.q[..qd], &mut b.k[..kvd], &mut b.v[..kvd]], &mut b.scratch)?;
                layer.wq.finish_rows(&b.h, 1, &mut b.q[..qd]);
                layer.wk.finish_rows(&b.h, 1, &mut b.k[..kvd]);
                layer.wv.finish_rows(&b.h, 1, &mut b.v[..kvd]);
            } else {
                let ws = [&layer.wq.matrix()?, &layer.wk.matrix()?, &layer.wv.matrix()?];
                gemm_multi(pool, &ws, &b.h[..m * d], m, &mut [&mut b.q[..m * qd], &mut b.k[..m * kvd], &mut b.v[..m * kvd]], &mut b.scratch)?;
                layer.wq.finish_rows(&b.h, m, &mut b.q[..m * qd]);
                layer.wk.finish_rows(&b.h, m, &mut b.k[..m * kvd]);
                layer.wv.finish_rows(&b.h, m, &mut b.v[..m * kvd]);
            }
            let (cos, sin) = (&b.cos, &b.sin);
            let rope = |t: usize, row: &mut [f32]| self.rope.apply(row, c.head_dim, &cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            ops::par_rows(pool, &mut b.q[..m * qd], m, &rope);
            ops::par_rows(pool, &mut b.k[..m * kvd], m, &rope);
            for (i, sq) in seqs.iter_mut().enumerate() {
                let (r, n) = (at[i], sq.new.len());
                sq.kv.store(l, &b.k[r * kvd..], &b.v[r * kvd..], kvd, n);
                if n > 1 || seqs_len == 1 {
                    attend(pool, heads, &b.q[r * qd..], qd, sq.kv.layer(l), sq.kv.len, n, &mut b.att[r * qd..(r + n) * qd], &mut b.widen);
                }
            }
            // The sequences with one new token (decoding) attend together, in one dispatch.
            if seqs_len > 1 {
                let one: Vec<_> = seqs.iter().enumerate().filter(|(_, s)| s.new.len() == 1).map(|(i, s)| (at[i], s.kv.layer(l), s.kv.len + 1)).collect();
                if !one.is_empty() {
                    attend_one_each(pool, heads, &b.q, qd, &one, &mut b.att[..m * qd]);
                }
            }
            note(&mut obs, l, MatrixInput::AttnOutput, &b.att[..m * qd], m, qd);
            layer.wo.apply(pool, &b.att[..m * qd], m, &mut b.o[..m * d], &mut b.scratch)?;
            let o = &b.o;
            ops::par_rows(pool, &mut b.x[..m * d], m, &|t, x| ops::add_assign(x, &o[t * d..(t + 1) * d]));
            let x = &b.x;
            ops::par_rows(pool, &mut b.h[..m * d], m, &|t, h| ops::rmsnorm(&x[t * d..(t + 1) * d], &layer.ffn_norm, c.norm_eps, h));
            note(&mut obs, l, MatrixInput::FfnUp, &b.h, m, d);
            if m == 1 {
                let ws = [&layer.gate.matrix()?, &layer.up.matrix()?];
                gemv_multi(pool, &ws, &b.h[..d], &mut [&mut b.g[..ffn], &mut b.u[..ffn]], &mut b.scratch)?;
                layer.gate.finish_rows(&b.h, 1, &mut b.g[..ffn]);
                layer.up.finish_rows(&b.h, 1, &mut b.u[..ffn]);
            } else {
                let ws = [&layer.gate.matrix()?, &layer.up.matrix()?];
                gemm_multi(pool, &ws, &b.h[..m * d], m, &mut [&mut b.g[..m * ffn], &mut b.u[..m * ffn]], &mut b.scratch)?;
                layer.gate.finish_rows(&b.h, m, &mut b.g[..m * ffn]);
                layer.up.finish_rows(&b.h, m, &mut b.u[..m * ffn]);
            }
            let u = &b.u;
            ops::par_rows(pool, &mut b.g[..m * ffn], m, &|t, g| ops::silu_mul_in_place(g, &u[t * ffn..(t + 1) * ffn]));
            note(&mut obs, l, MatrixInput::FfnDown, &b.g[..m * ffn], m, ffn);
            layer.down.apply(pool, &b.g[..m * ffn], m, &mut b.o[..m * d], &mut b.scratch)?;
            let o = &b.o;
            ops::par_rows(pool, &mut b.x[..m * d], m, &|t, x| ops::add_assign(x, &o[t * d..(t + 1) * d]));
            // A NaN or infinity never reaches the output: it stops here, naming its layer (a
            // scan of m x d values, next to the layer's m x 12 d^2 multiply-adds).
            check_activations(&b.x[..m * d], d, || format!("layer {l} (blk.{l}.*)"))?;
        }
        if let Some(k) = keep {
            k.push(b.x[..m * d].to_vec());
        }
        for s in seqs.iter_mut() {
            s.kv.len += s.new.len();
            s.held.extend_from_slice(s.new);
        }
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let rows: Vec<usize> = if all { (0..m).collect() } else { at[1..].iter().map(|&e| e - 1).collect() };
        let n = rows.len();
        b.logits.resize(n * c.vocab, 0.0);
        b.last.resize(n * d, 0.0);
        for (i, &t) in rows.iter().enumerate() {
            ops::rmsnorm(&b.x[t * d..(t + 1) * d], &self.output_norm, c.norm_eps, &mut b.last[i * d..(i + 1) * d]);
        }
        note(&mut obs, self.layers.len(), MatrixInput::Output, &b.last, n, d);
        head.apply(pool, &b.last, n, &mut b.logits, &mut b.scratch)?;
        check_activations(&b.logits, c.vocab, || format!("the output head ({})", head.name))?;
        Ok(&b.logits)
    }
}

/// One sequence's share of [`Llama::forward_batch`]: its session and the tokens to append.
pub struct Step<'a> {
    pub sess: &'a mut Session,
    pub tokens: &'a [u32],
}

/// The borrowed parts of a sequence inside the forward pass.
struct Seq<'a> {
    kv: &'a mut KvCache,
    held: &'a mut Vec<u32>,
    new: &'a [u32],
}

/// Activation buffers shared by the sequences of batched steps ([`Llama::forward_batch`]);
/// sessions that only ever run in batches allocate none of their own.
#[derive(Debug, Default)]
pub struct Scratch(Buffers);

/// Activations of one forward pass, kept between calls so that decoding allocates nothing.
#[derive(Debug, Default)]
struct Buffers {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    widen: Vec<f32>,
    scratch: Vec<u8>,
}

impl Buffers {
    #[allow(clippy::too_many_arguments)]
    fn resize(&mut self, m: usize, d: usize, qd: usize, kvd: usize, ffn: usize, half: usize) {
        for (buf, n) in [
            (&mut self.x, m * d),
            (&mut self.h, m * d),
            (&mut self.q, m * qd),
            (&mut self.k, m * kvd),
            (&mut self.v, m * kvd),
            (&mut self.att, m * qd),
            (&mut self.o, m * d),
            (&mut self.g, m * ffn),
            (&mut self.u, m * ffn),
            (&mut self.cos, m * half),
            (&mut self.sin, m * half),
        ] {
            buf.resize(n, 0.0);
        }
    }
}

/// A conversation's state: the KV cache, the tokens it holds, the activation buffers.
#[derive(Debug)]
pub struct Session {
    pub kv: KvCache,
    bufs: Buffers,
    tokens: Vec<u32>,
}

impl Session {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// Keeps only the first `n` tokens (the rest are recomputed when sent again).
    pub fn truncate(&mut self, n: usize) {
        self.kv.truncate(n);
        self.tokens.truncate(self.kv.len);
    }

    /// The tokens held, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The most tokens it may hold.
    pub fn max_len(&self) -> usize {
        self.kv.max
    }
}
