//! BERT's training pass: the forward of [`crate::bert`] in f32 keeping every activation its
//! backward needs, and that backward, layer by layer in reverse (llm.c's `gpt2_forward` /
//! `gpt2_backward`, for a post-LayerNorm encoder).
//!
//! For the `t` packed tokens of a batch (`starts` delimits the sequences; `d` hidden, `q = h
//! d_head` a layer's attention width, `f` its FFN width):
//! ```text
//! e      = word[id] + position[i] + token_type[0]             (t x d)   kept
//! x_0    = LayerNorm(e)                                        (t x d)
//! per layer l, input x (kept):
//!   Q, K, V = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv           (t x q)   kept, and P per head
//!   A      = attention(Q, K, V) per sequence, bidirectional   (t x q)   kept
//!   r1     = x + A Wo^T + bo;  x1 = LayerNorm(r1)             (t x d)   both kept
//!   u      = x1 Win^T + bin;   g = gelu(u)                    (t x f)   both kept
//!   r2     = x1 + g Wout^T + bout; x_{l+1} = LayerNorm(r2)    (t x d)   r2 kept
//! ```
//! The backward runs the same steps in reverse with [`super`]'s layer gradients; the residual
//! branches add their gradients. Products go through `gemm` on chunks of rows on the pool.
//!
//! For quantization-aware training of the int8 path, [`BertTrain::act_quant`] names the matrices
//! whose inputs (`x`, `A`, `x1`, `g`) are fake-quantized as the int8 kernels quantize them at run
//! time ([`crate::int8::fake_quantize_rows`]); the product then reads the round-tripped input
//! `x~`, its weight gradient is `dW = dY^T x~`, and `dx = dY W` passes straight through the
//! rounding (the straight-through estimator). The weights themselves are whatever the parameters
//! hold (the caller puts the fake-quantized ones there).

use std::ops::Range;
use std::path::Path;

use smelt_formats::hf_config::{load_config, BertConfig, HfConfig};
use smelt_formats::safetensors::SafetensorsFile;
use smelt_kernels::pool::ThreadPool;

use super::params::Params;
use super::par::{pair_mut, par_attention, par_attention_backward, par_gelu_backward, par_linear, par_linear_backward, par_map};
use super::{embedding_backward, gelu, layernorm, layernorm_backward, Heads};
use crate::bert::layer_heads;
use crate::error::check_activations;
use crate::int8::{fake_quantize_rows, Calibration};
use crate::ModelError;

/// Where one layer's tensors lie in [`Params::data`].
#[derive(Clone, Debug)]
struct LayerSlots {
    q: Range<usize>,  // (q, d)
    k: Range<usize>,  // (q, d)
    v: Range<usize>,  // (q, d)
    qb: Range<usize>, // (q)
    kb: Range<usize>, // (q)
    vb: Range<usize>, // (q)
    o: Range<usize>,  // (d, q)
    ob: Range<usize>, // (d)
    ln1: (Range<usize>, Range<usize>),
    up: Range<usize>,   // (f, d)
    upb: Range<usize>,  // (f)
    down: Range<usize>, // (d, f)
    downb: Range<usize>,
    ln2: (Range<usize>, Range<usize>),
}

/// A BERT encoder with f32 parameters in one buffer, ready for training.
#[derive(Clone, Debug)]
pub struct BertTrain {
    pub cfg: BertConfig,
    /// Heads of each layer (HF `pruned_heads` honoured).
    pub heads: Vec<usize>,
    pub params: Params,
    prefix: String,
    word: Range<usize>,     // (vocab, d)
    position: Range<usize>, // (max_position, d)
    token_type: Range<usize>,
    ln_emb: (Range<usize>, Range<usize>),
    layers: Vec<LayerSlots>,
    /// Keep only each layer's input in the forward and recompute the rest in the backward: a
    /// layer's activations shrink from about `4d + 4q + 2f + h n` values a token to `d`, for one
    /// more forward of the layers.
    pub recompute: bool,
    /// Per layer, per matrix kind ([`crate::int8::KINDS`]: qkv, o, up, down), how its input is
    /// fake-quantized; empty (the default) or `None` entries leave inputs in f32.
    pub act_quant: Vec<[Option<ActQuant>; 4]>,
    /// The backward stops below this layer: layers `0..trained_from` and the embeddings get no
    /// gradient (their entries of `grads` are left as they are). 0 (the default) trains all.
    pub trained_from: usize,
}

/// How the int8 path quantizes one matrix's input at run time: per row, after multiplying by the
/// smoothing factors `1 / f_c` when the matrix was smoothed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActQuant {
    pub smooth: Option<Vec<f32>>,
}

/// What the forward keeps of one layer.
#[derive(Debug, Default)]
struct LayerActs {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities, sequence after sequence (`h n^2` each).
    probs: Vec<f32>,
    att: Vec<f32>,
    r1: Vec<f32>,
    s1: Vec<(f32, f32)>,
    x1: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
    r2: Vec<f32>,
    s2: Vec<(f32, f32)>,
    /// The fake-quantized inputs of qkv, o, up and down (`x`, `att`, `x1`, `g`), where quantized.
    xq: [Option<Vec<f32>>; 4],
}

impl LayerActs {
    /// The input matrix `kind` multiplied by: its fake-quantized value, or `plain`.
    fn input<'a>(&'a self, kind: usize, plain: &'a [f32]) -> &'a [f32] {
        self.xq[kind].as_deref().unwrap_or(plain)
    }
}

/// Activations of one batch, from [`BertTrain::forward`].
#[derive(Debug, Default)]
pub struct BertActs {
    pub starts: Vec<usize>,
    ids: Vec<u32>,
    emb: Vec<f32>,
    emb_stats: Vec<(f32, f32)>,
    layers: Vec<LayerActs>,
    /// The last layer's hidden states, `t x d`.
    pub out: Vec<f32>,
}

impl BertActs {
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Hidden states after layer `l` (`t x d`).
    pub fn hidden(&self, l: usize) -> &[f32] {
        self.layers.get(l + 1).map_or(&self.out, |a| &a.x)
    }
}

/// Where [`BertTrain::from_fn`] gets a tensor: `(name, shape) -> values`.
pub type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>, ModelError> + 'a;

impl BertTrain {
    /// Loads `config.json` and an F32/F16 `model.safetensors` from an HF BERT directory.
    pub fn from_dir(dir: &Path) -> Result<BertTrain, ModelError> {
        let cfg = match load_config(&dir.join("config.json"))? {
            HfConfig::Bert(c) => c,
            HfConfig::Llama(_) => return Err(ModelError::UnsupportedArchitecture { found: "llama".into(), supported: "bert" }),
            HfConfig::Other { model_type } => return Err(ModelError::UnsupportedArchitecture { found: model_type, supported: "bert" }),
        };
        let st = SafetensorsFile::open(dir.join("model.safetensors"))?;
        Self::from_safetensors(cfg, &st)
    }

    /// Takes every tensor the encoder uses from `st` (names as HF writes them, with or without a
    /// `bert.` prefix, which the parameter names keep).
    pub fn from_safetensors(cfg: BertConfig, st: &SafetensorsFile) -> Result<BertTrain, ModelError> {
        let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
        Self::from_fn(cfg, prefix, &mut |name, shape| Ok(st.tensor_f32(name, Some(shape))?))
    }

    /// Builds the encoder of `cfg` from `get(name, shape)`, which returns the values of the
    /// tensor called `prefix` + its HF name.
    pub fn from_fn(cfg: BertConfig, prefix: &str, get: &mut TensorSource) -> Result<BertTrain, ModelError> {
        crate::bert::check_config(&cfg)?;
        let heads = layer_heads(&cfg)?;
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size / cfg.num_attention_heads);
        let mut p = Params::default();
        let mut take = |name: &str, shape: &[usize]| -> Result<Range<usize>, ModelError> {
            let full = format!("{prefix}{name}");
            let v = get(&full, shape)?;
            crate::error::check_finite(&full, &v)?;
            p.push(&full, shape, &v)
        };
        let word = take("embeddings.word_embeddings.weight", &[cfg.vocab_size, d])?;
        let position = take("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, d])?;
        let token_type = take("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, d])?;
        let ln_emb = (take("embeddings.LayerNorm.weight", &[d])?, take("embeddings.LayerNorm.bias", &[d])?);
        let mut layers = Vec::with_capacity(heads.len());
        for (i, &h) in heads.iter().enumerate() {
            let q = h * hd;
            let n = |s: &str| format!("encoder.layer.{i}.{s}");
            layers.push(LayerSlots {
                q: take(&n("attention.self.query.weight"), &[q, d])?,
                k: take(&n("attention.self.key.weight"), &[q, d])?,
                v: take(&n("attention.self.value.weight"), &[q, d])?,
                qb: take(&n("attention.self.query.bias"), &[q])?,
                kb: take(&n("attention.self.key.bias"), &[q])?,
                vb: take(&n("attention.self.value.bias"), &[q])?,
                o: take(&n("attention.output.dense.weight"), &[d, q])?,
                ob: take(&n("attention.output.dense.bias"), &[d])?,
                ln1: (take(&n("attention.output.LayerNorm.weight"), &[d])?, take(&n("attention.output.LayerNorm.bias"), &[d])?),
                up: take(&n("intermediate.dense.weight"), &[f, d])?,
                upb: take(&n("intermediate.dense.bias"), &[f])?,
                down: take(&n("output.dense.weight"), &[d, f])?,
                downb: take(&n("output.dense.bias"), &[d])?,
                ln2: (take(&n("output.LayerNorm.weight"), &[d])?, take(&n("output.LayerNorm.bias"), &[d])?),
            });
        }
        Ok(BertTrain { cfg, heads, params: p, prefix: prefix.to_string(), word, position, token_type, ln_emb, layers, recompute: false, act_quant: Vec::new(), trained_from: 0 })
    }

    /// A student of the layers `keep` (ascending, each below the layer count), renumbered from
    /// 0, with everything else (embeddings, heads pruned per layer) as in this encoder.
    pub fn keep_layers(&self, keep: &[usize]) -> Result<BertTrain, ModelError> {
        let n = self.layers.len();
        if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep.iter().any(|&l| l >= n) {
            return Err(ModelError::hyper("layers to keep", format!("{keep:?}"), format!("give distinct layers in ascending order, each below {n}")));
        }
        let mut cfg = self.cfg.clone();
        cfg.num_hidden_layers = keep.len();
        cfg.pruned_heads = keep.iter().enumerate().filter_map(|(i, l)| self.cfg.pruned_heads.get(&l.to_string()).map(|h| (i.to_string(), h.clone()))).collect();
        let layer_prefix = format!("{}encoder.layer.", self.prefix);
        BertTrain::from_fn(cfg, &self.prefix, &mut |name, _| {
            let source = match name.strip_prefix(&layer_prefix).and_then(|r| r.split_once('.')) {
                Some((i, rest)) => format!("{layer_prefix}{}.{rest}", keep[i.parse::<usize>().map_err(|_| ModelError::hyper("tensor", name, "bad layer index"))?]),
                None => name.to_string(),
            };
            self.params.get(&source).map(<[f32]>::to_vec).ok_or_else(|| ModelError::MissingTensor { name: source, arch: "bert".into() })
        })
        .map(|b| BertTrain { recompute: self.recompute, ..b })
    }

    /// `bert.` when the checkpoint's names carry it, else empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The ranges of the weight matrices (what weight decay applies to): not the biases, norms
    /// or embeddings.
    pub fn matrices(&self) -> Vec<Range<usize>> {
        self.layers.iter().flat_map(|l| [l.q.clone(), l.k.clone(), l.v.clone(), l.o.clone(), l.up.clone(), l.down.clone()]).collect()
    }

    fn w(&self, r: &Range<usize>) -> &[f32] {
        &self.params.data[r.clone()]
    }

    /// Where matrix `kind` ([`crate::int8::KINDS`]) of layer `layer` lies in the parameters,
    /// as the inference model stacks it (Q, K and V one under the other for `qkv`), and its
    /// `(rows, cols)`.
    pub fn matrix_ranges(&self, layer: usize, kind: usize) -> Option<(Vec<Range<usize>>, usize, usize)> {
        let l = self.layers.get(layer)?;
        let (d, f, q) = (self.cfg.hidden_size, self.cfg.intermediate_size, self.heads[layer] * self.hd());
        Some(match kind {
            0 => (vec![l.q.clone(), l.k.clone(), l.v.clone()], 3 * q, d),
            1 => (vec![l.o.clone()], d, q),
            2 => (vec![l.up.clone()], f, d),
            3 => (vec![l.down.clone()], d, f),
            _ => return None,
        })
    }

    /// Runs `seqs` as they are (no fake quantization) and returns the per-channel maxima of
    /// every matrix's input, as [`crate::bert::Bert::calibrate`] measures them for the int8 path.
    pub fn input_maxima(&self, pool: &ThreadPool, seqs: &[&[u32]]) -> Result<Calibration, ModelError> {
        let mut calib = Calibration::default();
        for chunk in seqs.chunks(32) {
            let acts = self.run(pool, chunk, false, true)?;
            for (li, a) in acts.layers.iter().enumerate() {
                let q = self.heads[li] * self.hd();
                for (kind, (x, cols)) in [(&a.x, self.cfg.hidden_size), (&a.att, q), (&a.x1, self.cfg.hidden_size), (&a.g, self.cfg.intermediate_size)].into_iter().enumerate() {
                    calib.record(li, kind, x, cols);
                }
            }
        }
        Ok(calib)
    }

    /// The fake-quantized copy of `x` (rows of `cols`) when layer `li` quantizes the input of
    /// matrix `kind`.
    fn quantized_input(&self, li: usize, kind: usize, x: &[f32], cols: usize, quantize: bool) -> Option<Vec<f32>> {
        let aq = self.act_quant.get(li).filter(|_| quantize)?[kind].as_ref()?;
        let mut out = vec![0f32; x.len()];
        fake_quantize_rows(x, cols, aq.smooth.as_deref(), &mut out);
        Some(out)
    }

    fn hd(&self) -> usize {
        self.cfg.hidden_size / self.cfg.num_attention_heads
    }

    /// Layer `li` on its input `x` (`t x d`): what its backward needs, and its output; the
    /// inputs of the matrices [`BertTrain::act_quant`] names are fake-quantized when `quantize`.
    fn layer_forward(&self, pool: &ThreadPool, li: usize, x: Vec<f32>, starts: &[usize], quantize: bool) -> Result<(LayerActs, Vec<f32>), ModelError> {
        let c = &self.cfg;
        let (d, f, hd, t) = (c.hidden_size, c.intermediate_size, self.hd(), x.len() / c.hidden_size);
        let eps = c.layer_norm_eps as f32;
        let (l, h) = (&self.layers[li], self.heads[li]);
        let qw = h * hd;
        let mut a = LayerActs { x, ..Default::default() };
        a.xq[0] = self.quantized_input(li, 0, &a.x, d, quantize);
        let xin = a.xq[0].as_deref().unwrap_or(&a.x);
        for (w, b, out) in [(&l.q, &l.qb, &mut a.q), (&l.k, &l.kb, &mut a.k), (&l.v, &l.vb, &mut a.v)] {
            *out = vec![0f32; t * qw];
            par_linear(pool, xin, self.w(w), Some(self.w(b)), (t, d, qw), out);
        }
        (a.probs, a.att) = par_attention(pool, &a.q, &a.k, &a.v, starts, Heads { q: h, kv: h, dim: hd }, false);
        a.xq[1] = self.quantized_input(li, 1, &a.att, qw, quantize);
        a.r1 = vec![0f32; t * d];
        par_linear(pool, a.xq[1].as_deref().unwrap_or(&a.att), self.w(&l.o), Some(self.w(&l.ob)), (t, qw, d), &mut a.r1);
        a.r1.iter_mut().zip(&a.x).for_each(|(r, x)| *r += *x);
        a.x1 = vec![0f32; t * d];
        a.s1 = layernorm(&a.r1, self.w(&l.ln1.0), self.w(&l.ln1.1), eps, d, &mut a.x1);
        a.xq[2] = self.quantized_input(li, 2, &a.x1, d, quantize);
        a.u = vec![0f32; t * f];
        par_linear(pool, a.xq[2].as_deref().unwrap_or(&a.x1), self.w(&l.up), Some(self.w(&l.upb)), (t, d, f), &mut a.u);
        a.g = vec![0f32; t * f];
        par_map(pool, &a.u, &mut a.g, &|u, g| gelu(u, g));
        a.xq[3] = self.quantized_input(li, 3, &a.g, f, quantize);
        a.r2 = vec![0f32; t * d];
        par_linear(pool, a.xq[3].as_deref().unwrap_or(&a.g), self.w(&l.down), Some(self.w(&l.downb)), (t, f, d), &mut a.r2);
        a.r2.iter_mut().zip(&a.x1).for_each(|(r, x)| *r += *x);
        let mut out = vec![0f32; t * d];
        a.s2 = layernorm(&a.r2, self.w(&l.ln2.0), self.w(&l.ln2.1), eps, d, &mut out);
        check_activations(&out, d, || format!("encoder layer {li} (training forward)"))?;
        Ok((a, out))
    }

    /// Runs `seqs` (framed token sequences, each at most `max_position_embeddings` long),
    /// keeping the activations for [`BertTrain::backward`].
    pub fn forward(&self, pool: &ThreadPool, seqs: &[&[u32]]) -> Result<BertActs, ModelError> {
        self.run(pool, seqs, true, !self.recompute)
    }

    /// [`BertTrain::forward`], with the fake quantization on or off, keeping every layer's
    /// activations or only its input.
    fn run(&self, pool: &ThreadPool, seqs: &[&[u32]], quantize: bool, keep: bool) -> Result<BertActs, ModelError> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let eps = c.layer_norm_eps as f32;
        let mut starts = vec![0usize];
        let mut ids = Vec::new();
        let mut emb = Vec::new();
        for s in seqs {
            if s.len() > c.max_position_embeddings {
                return Err(ModelError::PromptTooLong { tokens: s.len(), context: c.max_position_embeddings });
            }
            for (i, &tok) in s.iter().enumerate() {
                if tok as usize >= c.vocab_size {
                    return Err(ModelError::BadToken { id: tok, vocab: c.vocab_size });
                }
                let (w, p, ty) = (&self.w(&self.word)[tok as usize * d..][..d], &self.w(&self.position)[i * d..][..d], &self.w(&self.token_type)[..d]);
                emb.extend((0..d).map(|j| w[j] + p[j] + ty[j]));
            }
            ids.extend_from_slice(s);
            starts.push(ids.len());
        }
        let t = ids.len();
        let mut x = vec![0f32; t * d];
        let emb_stats = layernorm(&emb, self.w(&self.ln_emb.0), self.w(&self.ln_emb.1), eps, d, &mut x);
        let mut layers = Vec::with_capacity(self.layers.len());
        for li in 0..self.layers.len() {
            let (mut a, next) = self.layer_forward(pool, li, x, &starts, quantize)?;
            if !keep {
                a = LayerActs { x: a.x, ..Default::default() };
            }
            layers.push(a);
            x = next;
        }
        Ok(BertActs { starts, ids, emb, emb_stats, layers, out: x })
    }

    /// Accumulates into `grads` (as long as the parameters) the gradient of a loss whose
    /// gradient with respect to the last hidden states is `d_out` (`t x d`), plus, for each
    /// `(l, g)` of `d_hidden`, `g` with respect to the hidden states after layer `l`.
    pub fn backward(&self, pool: &ThreadPool, a: &BertActs, d_out: &[f32], d_hidden: &[(usize, &[f32])], grads: &mut [f32]) -> Result<(), ModelError> {
        let c = &self.cfg;
        let (d, f, hd, t) = (c.hidden_size, c.intermediate_size, self.hd(), a.tokens());
        if grads.len() != self.params.len() || d_out.len() != t * d || d_hidden.iter().any(|(l, g)| *l >= self.layers.len() || g.len() != t * d) {
            return Err(ModelError::hyper("gradient", format!("{} values", grads.len()), format!("expected {} parameters and {t} x {d} output gradients", self.params.len())));
        }
        let mut dx = d_out.to_vec();
        for (li, (l, kept)) in self.layers.iter().zip(&a.layers).enumerate().rev() {
            if li < self.trained_from {
                return Ok(());
            }
            let fresh;
            let la = if self.recompute {
                fresh = self.layer_forward(pool, li, kept.x.clone(), &a.starts, true)?.0;
                &fresh
            } else {
                kept
            };
            for (_, g) in d_hidden.iter().filter(|(k, _)| *k == li) {
                dx.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += *b);
            }
            let qw = self.heads[li] * hd;
            // x_{l+1} = LayerNorm(r2)
            let mut dr2 = vec![0f32; t * d];
            let (dg, db) = pair_mut(grads, &l.ln2.0, &l.ln2.1);
            layernorm_backward(&la.r2, self.w(&l.ln2.0), &la.s2, &dx, d, &mut dr2, dg, db);
            // r2 = x1 + g Wout^T + bout
            let mut dgact = vec![0f32; t * f];
            par_linear_backward(pool, la.input(3, &la.g), self.w(&l.down), &dr2, (t, f, d), Some(&mut dgact), grads, &l.down, Some(&l.downb));
            let mut du = vec![0f32; t * f];
            par_gelu_backward(pool, &la.u, &dgact, &mut du);
            // u = x1 Win^T + bin; x1 also feeds r2 directly.
            let mut dx1 = vec![0f32; t * d];
            par_linear_backward(pool, la.input(2, &la.x1), self.w(&l.up), &du, (t, d, f), Some(&mut dx1), grads, &l.up, Some(&l.upb));
            dx1.iter_mut().zip(&dr2).for_each(|(a, b)| *a += *b);
            // x1 = LayerNorm(r1), r1 = x + A Wo^T + bo
            let mut dr1 = vec![0f32; t * d];
            let (dg, db) = pair_mut(grads, &l.ln1.0, &l.ln1.1);
            layernorm_backward(&la.r1, self.w(&l.ln1.0), &la.s1, &dx1, d, &mut dr1, dg, db);
            let mut datt = vec![0f32; t * qw];
            par_linear_backward(pool, la.input(1, &la.att), self.w(&l.o), &dr1, (t, qw, d), Some(&mut datt), grads, &l.o, Some(&l.ob));
            let (dq, dk, dv) = par_attention_backward(pool, (&la.q, &la.k, &la.v), &la.probs, &datt, &a.starts, Heads { q: self.heads[li], kv: self.heads[li], dim: hd });
            // Q, K, V = x W^T + b; x also feeds r1 directly.
            dx = dr1;
            let mut tmp = vec![0f32; t * d];
            for (dy, w, b) in [(&dq, &l.q, &l.qb), (&dk, &l.k, &l.kb), (&dv, &l.v, &l.vb)] {
                par_linear_backward(pool, la.input(0, &la.x), self.w(w), dy, (t, d, qw), Some(&mut tmp), grads, w, Some(b));
                dx.iter_mut().zip(&tmp).for_each(|(a, b)| *a += *b);
            }
        }
        if self.trained_from > 0 {
            return Ok(());
        }
        // x_0 = LayerNorm(word[id] + position[i] + token_type[0])
        let mut de = vec![0f32; t * d];
        let (dg, db) = pair_mut(grads, &self.ln_emb.0, &self.ln_emb.1);
        layernorm_backward(&a.emb, self.w(&self.ln_emb.0), &a.emb_stats, &dx, d, &mut de, dg, db);
        embedding_backward(&a.ids, &de, d, &mut grads[self.word.clone()]);
        let positions: Vec<u32> = a.starts.windows(2).flat_map(|s| 0..(s[1] - s[0]) as u32).collect();
        embedding_backward(&positions, &de, d, &mut grads[self.position.clone()]);
        embedding_backward(&vec![0u32; t], &de, d, &mut grads[self.token_type.clone()]);
        Ok(())
    }
}
