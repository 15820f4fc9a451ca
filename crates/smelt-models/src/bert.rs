//! The BERT family of encoders (BERT, MiniLM, all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2, ...),
//! after Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
//! Understanding", as HF `transformers`' `BertModel` computes it (post-LayerNorm).
//!
//! For a sequence of tokens `t_1..t_n` (with `[CLS]` and `[SEP]`):
//! ```text
//! x_i = LayerNorm(word[t_i] + position[i] + token_type[0])
//! per layer:
//!   a = Wo attention(Wq x + bq, Wk x + bk, Wv x + bv) + bo     (bidirectional, per sequence)
//!   x = LayerNorm(x + a)
//!   f = Wout gelu(Win x + bin) + bout                          (gelu with erf)
//!   x = LayerNorm(x + f)
//! ```
//! Sequences of a batch are packed one after another without padding: the linear layers see all
//! their tokens as one matrix, attention runs per (sequence, head).
//!
//! Layers may have fewer heads than `num_attention_heads` (HF's `pruned_heads`): a layer with
//! `h` heads of width `d_head = hidden / num_attention_heads` has `3 h d_head` rows of Q, K and
//! V and an output projection of `hidden x h d_head`.

use std::sync::Arc;

use smelt_formats::hf_config::{load_config, BertConfig, HfConfig};
use smelt_formats::safetensors::SafetensorsFile;
use smelt_formats::GgmlType;
use smelt_kernels::pool::{Disjoint, ThreadPool};
use smelt_kernels::{math, vec};

use crate::attention;
use crate::int8::{Calibration, DenseWeight, Int8Spec};
use crate::error::{check_activations, check_finite};
use crate::linear::Linear;
use crate::observe::{note, MatrixInput, Observer};
use crate::ops;
use crate::settings::Bound;
use crate::ModelError;

/// A linear layer with a bias.
#[derive(Debug)]
pub struct Dense {
    pub w: DenseWeight,
    pub b: Vec<f32>,
}

/// LayerNorm weight and bias.
#[derive(Debug)]
pub struct Norm {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

#[derive(Debug)]
pub struct BertLayer {
    /// Attention heads of this layer (`q = heads x d_head` wide).
    pub heads: usize,
    /// Query, key and value stacked: rows `[0, q)` are Q, `[q, 2q)` K, `[2q, 3q)` V.
    pub qkv: Dense,
    pub o: Dense,
    pub ln_attn: Norm,
    pub up: Dense,
    pub down: Dense,
    pub ln_ffn: Norm,
}

/// A loaded encoder.
pub struct Bert {
    pub cfg: BertConfig,
    pub word: Linear,
    pub position: Vec<f32>,
    pub token_type: Vec<f32>,
    pub ln_emb: Norm,
    pub layers: Vec<BertLayer>,
}

/// Where the weights come from: safetensors names, or an ONNX file's initializers.
pub trait WeightSource {
    fn matrix(&self, name: &str, rows: usize, cols: usize, as_type: Option<GgmlType>) -> Result<Linear, ModelError>;
    /// A small tensor of `shape` (biases, norms, position tables) as f32, checked to be finite.
    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
}

impl WeightSource for Arc<SafetensorsFile> {
    fn matrix(&self, name: &str, rows: usize, cols: usize, as_type: Option<GgmlType>) -> Result<Linear, ModelError> {
        let l = Linear::load_safetensors(self, name, as_type)?;
        if l.rows != rows || l.cols != cols {
            return Err(ModelError::WrongShape { name: name.into(), found: vec![l.rows as u64, l.cols as u64], expected: vec![rows as u64, cols as u64] });
        }
        Ok(l)
    }

    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let found = self.get(name)?.shape.clone();
        if found != shape {
            return Err(ModelError::WrongShape { name: name.into(), found: found.iter().map(|&d| d as u64).collect(), expected: shape.iter().map(|&d| d as u64).collect() });
        }
        let v = self.tensor_f32(name, None)?;
        check_finite(name, &v)?;
        Ok(v)
    }
}

/// The HF tensor names of a BERT checkpoint (some are saved with a `bert.` prefix).
pub fn hf_names(prefix: &str) -> impl Fn(&str) -> String + '_ {
    move |s| format!("{prefix}{s}")
}

/// Bounds on dimensions read from config.json (guards hostile files before allocating).
const MAX_DIM: usize = 1 << 20;

/// LayerNorm's epsilon: a small positive number (BERT uses 1e-12).
pub const LAYER_NORM_EPS: Bound = Bound::positive("layer_norm_eps", 1.0);

impl Bert {
    /// Loads `config.json` and `model.safetensors` from an HF model directory.
    pub fn from_hf_dir(dir: &std::path::Path, as_type: Option<GgmlType>) -> Result<Bert, ModelError> {
        let cfg = match load_config(&dir.join("config.json"))? {
            HfConfig::Bert(c) => c,
            HfConfig::Llama(_) => return Err(ModelError::UnsupportedArchitecture { found: "llama".into(), supported: "bert" }),
            HfConfig::Other { model_type } => return Err(ModelError::UnsupportedArchitecture { found: model_type, supported: "bert" }),
        };
        let st = Arc::new(SafetensorsFile::open(dir.join("model.safetensors"))?);
        let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
        Self::build(cfg, &st, &hf_names(prefix), as_type)
    }

    /// Builds the model from any source of HF-named weights.
    pub fn build(cfg: BertConfig, src: &dyn WeightSource, name: &dyn Fn(&str) -> String, as_type: Option<GgmlType>) -> Result<Bert, ModelError> {
        check_config(&cfg)?;
        let (d, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let dense = |p: &str, rows: usize, cols: usize| -> Result<Dense, ModelError> {
            Ok(Dense { w: DenseWeight::Typed(src.matrix(&name(&format!("{p}.weight")), rows, cols, as_type)?), b: src.vector(&name(&format!("{p}.bias")), &[rows])? })
        };
        let norm = |p: &str| -> Result<Norm, ModelError> { Ok(Norm { w: src.vector(&name(&format!("{p}.weight")), &[d])?, b: src.vector(&name(&format!("{p}.bias")), &[d])? }) };
        let word = src.matrix(&name("embeddings.word_embeddings.weight"), cfg.vocab_size, d, None)?;
        let position = src.vector(&name("embeddings.position_embeddings.weight"), &[cfg.max_position_embeddings, d])?;
        let token_type = src.vector(&name("embeddings.token_type_embeddings.weight"), &[cfg.type_vocab_size, d])?;
        let ln_emb = norm("embeddings.LayerNorm")?;
        let heads = layer_heads(&cfg)?;
        let hd = d / cfg.num_attention_heads;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, &h) in heads.iter().enumerate() {
            let q = h * hd;
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            let m = |s: &str| src.matrix(&name(&p(&format!("attention.self.{s}.weight"))), q, d, as_type);
            let v = |s: &str| src.vector(&name(&p(&format!("attention.self.{s}.bias"))), &[q]);
            let qkv = Dense { w: DenseWeight::Typed(Linear::stack(&p("attention.self.qkv"), &[&m("query")?, &m("key")?, &m("value")?])?), b: [v("query")?, v("key")?, v("value")?].concat() };
            let o = Dense { w: DenseWeight::Typed(src.matrix(&name(&p("attention.output.dense.weight")), d, q, as_type)?), b: src.vector(&name(&p("attention.output.dense.bias")), &[d])? };
            layers.push(BertLayer {
                heads: h,
                qkv,
                o,
                ln_attn: norm(&p("attention.output.LayerNorm"))?,
                up: dense(&p("intermediate.dense"), ffn, d)?,
                down: dense(&p("output.dense"), d, ffn)?,
                ln_ffn: norm(&p("output.LayerNorm"))?,
            });
        }
        Ok(Bert { cfg, word, position, token_type, ln_emb, layers })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.cfg.hidden_size / self.cfg.num_attention_heads
    }

    /// The type of the layers' weight matrices (e.g. `F32`).
    pub fn weight_type(&self) -> String {
        self.layers.first().map(|l| l.qkv.w.type_name().to_string()).unwrap_or_default()
    }

    /// Runs `seqs` (framed token sequences) in the stored precision and returns the
    /// per-channel maxima of every matrix's input, for [`Bert::quantize_int8`].
    pub fn calibrate(&self, pool: &ThreadPool, seqs: &[&[u32]]) -> Result<Calibration, ModelError> {
        let mut bufs = BertBuffers::default();
        let mut calib = Calibration::default();
        for chunk in seqs.chunks(32) {
            self.forward_observed(pool, chunk, &mut bufs, Some(&mut calib))?;
        }
        Ok(calib)
    }

    /// Quantizes the selected weight matrices to int8 per channel (activations are then
    /// quantized per row at run time), smoothed by `calib` where it has the matrix's input;
    /// returns how many matrices were converted.
    pub fn quantize_int8(&mut self, spec: &Int8Spec, calib: Option<&Calibration>) -> Result<usize, ModelError> {
        let mut n = 0;
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (kind, dense) in [&mut l.qkv, &mut l.o, &mut l.up, &mut l.down].into_iter().enumerate() {
                if spec.selects(i, kind) && matches!(dense.w, DenseWeight::Typed(_)) {
                    dense.w.to_int8(calib.and_then(|c| c.get(i, kind)))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Parameters of every matrix and vector.
    pub fn n_params(&self) -> u64 {
        let dense = |x: &Dense| (x.w.rows() * x.w.cols() + x.b.len()) as u64;
        let per: u64 = self.layers.iter().map(|l| dense(&l.qkv) + dense(&l.o) + dense(&l.up) + dense(&l.down) + 4 * l.ln_attn.w.len() as u64).sum();
        per + (self.word.rows * self.word.cols) as u64 + (self.position.len() + self.token_type.len() + 2 * self.ln_emb.w.len()) as u64
    }

    /// Bytes of every weight matrix as stored (embeddings included; biases and norms, a few
    /// kB, are not counted).
    pub fn weight_bytes(&self) -> u64 {
        let per: usize = self.layers.iter().map(|l| l.qkv.w.bytes() + l.o.w.bytes() + l.up.w.bytes() + l.down.w.bytes()).sum();
        (per + self.word.bytes().len() + 4 * (self.position.len() + self.token_type.len())) as u64
    }

    /// Hidden states of the last layer for a batch of sequences (each already framed by
    /// `[CLS] ... [SEP]` and no longer than `max_position_embeddings`), packed: row `i` of the
    /// result is token `i` of the concatenated sequences.
    pub fn forward(&self, pool: &ThreadPool, seqs: &[&[u32]], bufs: &mut BertBuffers) -> Result<Vec<f32>, ModelError> {
        self.forward_observed(pool, seqs, bufs, None)
    }

    /// [`Bert::forward`], showing `obs` the input of every weight matrix (see [`crate::observe`]).
    pub fn forward_observed(&self, pool: &ThreadPool, seqs: &[&[u32]], bufs: &mut BertBuffers, mut obs: Option<&mut dyn Observer>) -> Result<Vec<f32>, ModelError> {
        let c = &self.cfg;
        let (d, ffn) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps as f32;
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        starts.push(0usize);
        for s in seqs {
            if s.len() > c.max_position_embeddings {
                return Err(ModelError::PromptTooLong { tokens: s.len(), context: c.max_position_embeddings });
            }
            starts.push(starts.last().unwrap_or(&0) + s.len());
        }
        let t = *starts.last().unwrap_or(&0);
        if t == 0 {
            return Ok(Vec::new());
        }
        let b = bufs;
        let hd = d / c.num_attention_heads;
        let q_max = self.layers.iter().map(|l| l.heads * hd).max().unwrap_or(0);
        b.resize(t, d, q_max, ffn);
        // Embeddings: x = LayerNorm(word + position + token_type[0]).
        for (s, seq) in seqs.iter().enumerate() {
            for (i, &tok) in seq.iter().enumerate() {
                if tok as usize >= c.vocab_size {
                    return Err(ModelError::BadToken { id: tok, vocab: c.vocab_size });
                }
                let row = &mut b.x[(starts[s] + i) * d..(starts[s] + i + 1) * d];
                self.word.row_f32(tok as usize, row)?;
                math::add_layernorm(row, &self.position[i * d..(i + 1) * d], &self.token_type[..d], &self.ln_emb.w, &self.ln_emb.b, eps);
            }
        }
        // Biases are folded into the pass that follows each product: Q, K and V's into one
        // pass over the stacked output, the up projection's into GELU, the output
        // projections' into the residual LayerNorms.
        for (li, layer) in self.layers.iter().enumerate() {
            let (qkv, up) = (&layer.qkv, &layer.up);
            let q = layer.heads * hd;
            note(&mut obs, li, MatrixInput::AttnQkv, &b.x, t, d);
            qkv.w.apply(pool, &b.x[..t * d], t, &mut b.qkv[..t * 3 * q], &mut b.scratch)?;
            ops::par_rows(pool, &mut b.qkv[..t * 3 * q], t, &|_, row| ops::add_assign(row, &qkv.b));
            attention(pool, &b.qkv[..t * 3 * q], &starts, (layer.heads, hd), &mut b.att[..t * q]);
            note(&mut obs, li, MatrixInput::AttnOutput, &b.att, t, q);
            layer.o.w.apply(pool, &b.att[..t * q], t, &mut b.tmp[..t * d], &mut b.scratch)?;
            residual_norm(pool, &mut b.x, &b.tmp, &layer.o.b, &layer.ln_attn, eps, t, d);
            note(&mut obs, li, MatrixInput::FfnUp, &b.x, t, d);
            up.w.apply(pool, &b.x[..t * d], t, &mut b.h[..t * ffn], &mut b.scratch)?;
            ops::par_rows(pool, &mut b.h[..t * ffn], t, &|_, h| math::bias_gelu(h, &up.b));
            note(&mut obs, li, MatrixInput::FfnDown, &b.h, t, ffn);
            layer.down.w.apply(pool, &b.h[..t * ffn], t, &mut b.tmp[..t * d], &mut b.scratch)?;
            residual_norm(pool, &mut b.x, &b.tmp, &layer.down.b, &layer.ln_ffn, eps, t, d);
            // A NaN or infinity stops here, naming its layer, rather than becoming an embedding.
            check_activations(&b.x[..t * d], d, || format!("encoder layer {li} (encoder.layer.{li}.*)"))?;
        }
        Ok(b.x[..t * d].to_vec())
    }
}

/// Refuses a config.json the encoder cannot run: dimensions out of range, a hidden size that is
/// not a multiple of the heads, an activation other than GELU, relative positions, a bad
/// LayerNorm epsilon (the inference model and the training pass share it).
pub fn check_config(cfg: &BertConfig) -> Result<(), ModelError> {
    for (k, v) in [
        ("hidden_size", cfg.hidden_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("intermediate_size", cfg.intermediate_size),
        ("max_position_embeddings", cfg.max_position_embeddings),
        ("type_vocab_size", cfg.type_vocab_size),
        ("vocab_size", cfg.vocab_size),
    ] {
        if v == 0 || v > MAX_DIM {
            return Err(ModelError::hyper(k, v, format!("a dimension must be 1 to {MAX_DIM}")));
        }
    }
    if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(ModelError::hyper("hidden_size", cfg.hidden_size, format!("not a multiple of num_attention_heads = {}", cfg.num_attention_heads)));
    }
    if !cfg.hidden_act.starts_with("gelu") {
        return Err(ModelError::hyper("hidden_act", format!("{:?}", cfg.hidden_act), "not supported yet (gelu is)"));
    }
    if cfg.position_embedding_type != "absolute" {
        return Err(ModelError::hyper("position_embedding_type", format!("{:?}", cfg.position_embedding_type), "not supported yet (absolute is)"));
    }
    LAYER_NORM_EPS.check(cfg.layer_norm_eps).map_err(|e| ModelError::hyper("layer_norm_eps", cfg.layer_norm_eps, format!("must be {}", e.expected)))?;
    Ok(())
}

/// Each layer's head count: `num_attention_heads` less the heads `pruned_heads` lists for it.
/// Refuses layer indices and heads out of range, and a layer left without heads.
pub fn layer_heads(cfg: &BertConfig) -> Result<Vec<usize>, ModelError> {
    let n = cfg.num_attention_heads;
    if cfg.num_hidden_layers > MAX_DIM {
        return Err(ModelError::hyper("num_hidden_layers", cfg.num_hidden_layers, format!("a dimension must be 1 to {MAX_DIM}")));
    }
    let mut heads = vec![n; cfg.num_hidden_layers];
    for (layer, gone) in &cfg.pruned_heads {
        let l: usize = layer.parse().ok().filter(|l| *l < cfg.num_hidden_layers).ok_or_else(|| ModelError::hyper("pruned_heads", format!("{layer:?}"), format!("not a layer index below num_hidden_layers = {}", cfg.num_hidden_layers)))?;
        let set: std::collections::BTreeSet<usize> = gone.iter().copied().collect();
        if let Some(h) = set.iter().find(|h| **h >= n) {
            return Err(ModelError::hyper("pruned_heads", format!("layer {l} head {h}"), format!("heads are numbered below num_attention_heads = {n}")));
        }
        if set.len() >= n {
            return Err(ModelError::hyper("pruned_heads", format!("layer {l}: {} heads", set.len()), "a layer needs at least one head (remove the layer instead)"));
        }
        heads[l] = n - set.len();
    }
    Ok(heads)
}

/// `x = LayerNorm(x + y + bias)` row by row.
#[allow(clippy::too_many_arguments)]
fn residual_norm(pool: &ThreadPool, x: &mut [f32], y: &[f32], bias: &[f32], n: &Norm, eps: f32, t: usize, d: usize) {
    ops::par_rows(pool, &mut x[..t * d], t, &|r, row| math::add_layernorm(row, &y[r * d..(r + 1) * d], bias, &n.w, &n.b, eps));
}

/// From this many tokens in a sequence on, attention's two products run as small GEMMs (the
/// `gemm` crate) rather than a dot per (query, key) and an axpy per (query, value).
const GEMM_MIN_KEYS: usize = 32;

/// Bidirectional attention within each sequence (`starts` delimits them in the packed rows):
/// per (sequence, head) task, the scores of every query over the sequence's keys, their
/// softmaxes, then the mixes of the values.
fn attention(pool: &ThreadPool, qkv: &[f32], starts: &[usize], (heads, hd): (usize, usize), out: &mut [f32]) {
    let d = heads * hd;
    let (q, k, v, stride) = (qkv, &qkv[d..], &qkv[2 * d..], 3 * d);
    let scale = 1.0 / (hd as f32).sqrt();
    let sink = Disjoint::new(out);
    let n_seq = starts.len() - 1;
    pool.run(n_seq * heads, &|task| {
        let (s, h) = (task / heads, task % heads);
        let (a, z) = (starts[s], starts[s + 1]);
        let n = z - a;
        if n == 0 {
            return;
        }
        let (kh, vh) = (&k[a * stride + h * hd..], &v[a * stride + h * hd..]);
        // All n x n scores first, then every row's softmax, then every mix: each phase's rows
        // are independent, so the CPU overlaps one row's dependency chain with the next's.
        attention::with_scores(n * n, |scores| {
            if n >= GEMM_MIN_KEYS {
                attention::scores_gemm(&q[a * stride + h * hd..], stride, kh, stride, (n, n, hd), scale, scores);
                scores.chunks_exact_mut(n).for_each(math::softmax);
                // SAFETY: this task alone writes head `h` of tokens `a..z`: rows of `out` at
                // stride `d`, columns `h * hd..` (`sink` spans every token's row).
                unsafe { attention::mix_gemm(scores, vh, stride, (n, n, hd), sink.as_mut_ptr().add(a * d + h * hd), d) };
            } else {
                for (i, row) in (a..z).zip(scores.chunks_exact_mut(n)) {
                    vec::attn_scores(&q[i * stride + h * hd..i * stride + (h + 1) * hd], kh, stride, n, scale, row);
                }
                scores.chunks_exact_mut(n).for_each(math::softmax);
                for (i, row) in (a..z).zip(scores.chunks_exact(n)) {
                    // SAFETY: each (token, head) output slice belongs to one task.
                    let o = unsafe { sink.slice(i * d + h * hd..i * d + (h + 1) * hd) };
                    vec::attn_mix(row, vh, stride, o);
                }
            }
        });
    });
}

/// Activations of a batch, kept between batches.
#[derive(Debug, Default)]
pub struct BertBuffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    h: Vec<f32>,
    scratch: Vec<u8>,
}

impl BertBuffers {
    /// For `t` tokens, hidden width `d`, attention width at most `q`, FFN width `ffn`.
    fn resize(&mut self, t: usize, d: usize, q: usize, ffn: usize) {
        for buf in [&mut self.x, &mut self.tmp] {
            buf.resize(t * d, 0.0);
        }
        self.att.resize(t * q, 0.0);
        self.qkv.resize(t * 3 * q, 0.0);
        self.h.resize(t * ffn, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pruned: &str) -> BertConfig {
        let json = format!(r#"{{"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 3, "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512, "vocab_size": 100, "pruned_heads": {pruned}}}"#);
        let dir = std::env::temp_dir().join(format!("smelt-bert-heads-{}-{}", std::process::id(), pruned.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), json).unwrap();
        let cfg = match load_config(&dir.join("config.json")).unwrap() {
            HfConfig::Bert(c) => c,
            _ => panic!("not a BERT config"),
        };
        std::fs::remove_dir_all(&dir).ok();
        cfg
    }

    #[test]
    fn pruned_heads_give_each_layer_its_head_count() {
        // Duplicates count once; layers not listed keep every head.
        assert_eq!(layer_heads(&config(r#"{"0": [1, 7, 7], "2": [11]}"#)).unwrap(), vec![10, 12, 11]);
        assert_eq!(layer_heads(&config("{}")).unwrap(), vec![12; 3]);
    }

    #[test]
    fn impossible_pruned_heads_are_refused() {
        for (bad, says) in [(r#"{"3": [0]}"#, "layer index"), (r#"{"x": [0]}"#, "layer index"), (r#"{"0": [12]}"#, "numbered below"), (r#"{"1": [0,1,2,3,4,5,6,7,8,9,10,11]}"#, "at least one head")] {
            let e = layer_heads(&config(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
