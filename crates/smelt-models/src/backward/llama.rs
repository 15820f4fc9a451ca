//! The Llama decoder's training pass: the forward of [`crate::llama`] in f32 keeping every
//! activation its backward needs, and that backward (llm.c's way, for a pre-RMSNorm decoder with
//! RoPE, causal grouped-query attention and a SwiGLU FFN).
//!
//! For the `t` packed tokens of a batch (`starts` delimits the sequences; positions restart at 0
//! in each; `d` hidden, a layer's `q = h d_head` and `kv = h_kv d_head`, FFN width `f`):
//! ```text
//! x_0 = E[id]                                                   (t x d)
//! per layer, input x (kept):
//!   h1 = rmsnorm(x) g_attn                                      (t x d)   kept, with 1/rms
//!   Q = rope(h1 Wq^T), K = rope(h1 Wk^T), V = h1 Wv^T           (t x q, t x kv) kept, P per head
//!   A = causal attention(Q, K, V) per sequence                  (t x q)   kept
//!   r = x + A Wo^T                                              (t x d)   kept
//!   h2 = rmsnorm(r) g_ffn                                       (t x d)   kept, with 1/rms
//!   a = h2 Wgate^T, u = h2 Wup^T, s = silu(a) u                 (t x f)   kept
//!   x' = r + s Wdown^T
//! logits = rmsnorm(x_L) g_out E'^T   (E' = output.weight, or E when tied)   (t x vocab)
//! ```
//! Parameters carry llama.cpp's GGUF names (`token_embd.weight`, `blk.N.attn_q.weight`, ...).
//! RoPE is llama.cpp's `llama` layout (interleaved pairs; the GGUF converter permuted Q and K).

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;

use super::params::Params;
use super::par::{par_attention, par_attention_backward};
use super::weight::{Mat, Vector};
use super::{embedding_backward, rmsnorm, rmsnorm_backward, swiglu, swiglu_backward, Heads};
use crate::error::check_activations;
use crate::llama::{Llama, LlamaConfig};
use crate::ops::{Rope, RopeStyle};
use crate::ModelError;

/// One block's weights: trained (ranges of [`Params::data`]) or frozen with adapters.
#[derive(Clone, Debug)]
pub(crate) struct BlockSlots {
    pub attn_norm: Vector, // (d)
    pub q: Mat,            // (q, d)
    pub k: Mat,            // (kv, d)
    pub v: Mat,            // (kv, d)
    pub o: Mat,            // (d, q)
    pub ffn_norm: Vector,  // (d)
    pub gate: Mat,         // (f, d)
    pub up: Mat,           // (f, d)
    pub down: Mat,         // (d, f)
}

impl BlockSlots {
    /// The seven matrices in GGUF order with their names (`attn_q`, ...).
    pub fn mats(&self) -> [(&'static str, &Mat); 7] {
        [("attn_q", &self.q), ("attn_k", &self.k), ("attn_v", &self.v), ("attn_output", &self.o), ("ffn_gate", &self.gate), ("ffn_up", &self.up), ("ffn_down", &self.down)]
    }
}

/// A Llama decoder ready for training: with f32 parameters in one buffer (every weight trained),
/// or a frozen base of any type with low-rank adapters as the parameters ([`LlamaTrain::lora`]).
#[derive(Clone, Debug)]
pub struct LlamaTrain {
    pub cfg: LlamaConfig,
    pub params: Params,
    pub(crate) rope: Rope,
    pub(crate) embed: Mat,          // (vocab, d)
    pub(crate) output: Option<Mat>, // (vocab, d); None: tied to `embed`
    pub(crate) output_norm: Vector, // (d)
    pub(crate) blocks: Vec<BlockSlots>,
    /// Keep only each block's input in the forward and recompute the rest in the backward: the
    /// activations of a block shrink from about `4d + 2q + 2kv + 3f + h n` values a token to
    /// `d`, for one more forward of the blocks (SmolLM2 distillation: 1.27x the step time).
    pub recompute: bool,
}

/// What the forward keeps of one block.
#[derive(Debug, Default)]
struct BlockActs {
    x: Vec<f32>,
    h1: Vec<f32>,
    inv1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    att: Vec<f32>,
    r: Vec<f32>,
    h2: Vec<f32>,
    inv2: Vec<f32>,
    a: Vec<f32>,
    u: Vec<f32>,
    s: Vec<f32>,
    /// `x A^T` of each adapted matrix, in [`BlockSlots::mats`] order.
    lu: [Vec<f32>; 7],
}

/// Activations of one batch, from [`LlamaTrain::forward`].
#[derive(Debug, Default)]
pub struct LlamaActs {
    pub starts: Vec<usize>,
    ids: Vec<u32>,
    positions: Vec<usize>,
    blocks: Vec<BlockActs>,
    /// The last block's output, its RMS-normalized form and `1 / rms`.
    last: Vec<f32>,
    hf: Vec<f32>,
    inv_f: Vec<f32>,
    /// `t x vocab`.
    pub logits: Vec<f32>,
}

impl LlamaActs {
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Hidden states after block `l` (`t x d`).
    pub fn hidden(&self, l: usize) -> &[f32] {
        self.blocks.get(l + 1).map_or(&self.last, |b| &b.x)
    }
}

/// Where [`LlamaTrain::from_fn`] gets a tensor: `(GGUF name, rows, cols) -> values`.
pub type TensorSource<'a> = dyn FnMut(&str, usize, usize) -> Result<Vec<f32>, ModelError> + 'a;

impl LlamaTrain {
    /// The trainable copy of a loaded model: every matrix widened to f32 (a quantized file's
    /// weights as its dequantization gives them). Refuses block biases (not trained yet).
    pub fn from_llama(m: &Llama) -> Result<LlamaTrain, ModelError> {
        let mut mats: std::collections::HashMap<String, &crate::linear::Linear> = std::collections::HashMap::new();
        mats.insert("token_embd.weight".into(), &m.embed);
        if let Some(o) = &m.output {
            mats.insert("output.weight".into(), o);
        }
        for (i, l) in m.layers.iter().enumerate() {
            for (n, lin) in [("attn_q", &l.wq), ("attn_k", &l.wk), ("attn_v", &l.wv), ("attn_output", &l.wo), ("ffn_gate", &l.gate), ("ffn_up", &l.up), ("ffn_down", &l.down)] {
                if lin.bias().is_some() {
                    return Err(ModelError::hyper(format!("blk.{i}.{n}.bias"), "present", "training a model with block biases is not supported yet"));
                }
                mats.insert(format!("blk.{i}.{n}.weight"), lin);
            }
        }
        let norms = |name: &str| -> Option<&Vec<f32>> {
            if name == "output_norm.weight" {
                return Some(&m.output_norm);
            }
            let (i, rest) = name.strip_prefix("blk.")?.split_once('.')?;
            let l = m.layers.get(i.parse::<usize>().ok()?)?;
            match rest {
                "attn_norm.weight" => Some(&l.attn_norm),
                "ffn_norm.weight" => Some(&l.ffn_norm),
                _ => None,
            }
        };
        Self::from_fn(m.cfg.clone(), m.output.is_some(), &mut |name, rows, cols| {
            if let Some(v) = norms(name) {
                return Ok(v.clone());
            }
            let lin = mats.get(name).ok_or_else(|| ModelError::MissingTensor { name: name.into(), arch: "llama".into() })?;
            let mut out = vec![0f32; rows * cols];
            for (r, row) in out.chunks_exact_mut(cols).enumerate() {
                lin.row_f32(r, row)?;
            }
            Ok(out)
        })
    }

    /// Builds the decoder of `cfg` from `get`; `untied` when it has its own `output.weight`.
    pub fn from_fn(cfg: LlamaConfig, untied: bool, get: &mut TensorSource) -> Result<LlamaTrain, ModelError> {
        if cfg.shapes.len() != cfg.n_layers || cfg.dim == 0 || cfg.vocab == 0 || cfg.head_dim == 0 || cfg.rope_dim > cfg.head_dim {
            return Err(ModelError::hyper("config", format!("{} layers, {} shapes, dim {}, head dim {}", cfg.n_layers, cfg.shapes.len(), cfg.dim, cfg.head_dim), "inconsistent shapes"));
        }
        if let Some((i, s)) = cfg.shapes.iter().enumerate().find(|(_, s)| s.n_kv_heads == 0 || s.n_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads)) {
            return Err(ModelError::hyper(format!("layer {i} heads"), format!("{} / {}", s.n_heads, s.n_kv_heads), "query heads must be a positive multiple of key/value heads"));
        }
        let d = cfg.dim;
        let mut p = Params::default();
        let mut take = |name: &str, rows: usize, cols: usize| -> Result<Range<usize>, ModelError> {
            let v = get(name, rows, cols)?;
            crate::error::check_finite(name, &v)?;
            let shape: Vec<usize> = if rows == 1 { vec![cols] } else { vec![rows, cols] };
            p.push(name, &shape, &v)
        };
        let embed = Mat::Train(take("token_embd.weight", cfg.vocab, d)?);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (q, kv, f) = (cfg.q_dim(i), cfg.kv_dim(i), cfg.shapes[i].ffn_dim);
            blocks.push(BlockSlots {
                attn_norm: Vector::Train(take(&n("attn_norm"), 1, d)?),
                q: Mat::Train(take(&n("attn_q"), q, d)?),
                k: Mat::Train(take(&n("attn_k"), kv, d)?),
                v: Mat::Train(take(&n("attn_v"), kv, d)?),
                o: Mat::Train(take(&n("attn_output"), d, q)?),
                ffn_norm: Vector::Train(take(&n("ffn_norm"), 1, d)?),
                gate: Mat::Train(take(&n("ffn_gate"), f, d)?),
                up: Mat::Train(take(&n("ffn_up"), f, d)?),
                down: Mat::Train(take(&n("ffn_down"), d, f)?),
            });
        }
        let output_norm = Vector::Train(take("output_norm.weight", 1, d)?);
        let output = if untied { Some(Mat::Train(take("output.weight", cfg.vocab, d)?)) } else { None };
        let rope = Rope::new(RopeStyle::Interleaved, cfg.rope_dim, cfg.rope_theta, cfg.rope_scale);
        Ok(LlamaTrain { cfg, params: p, rope, embed, output, output_norm, blocks, recompute: false })
    }

    fn norm<'a>(&'a self, v: &'a Vector) -> &'a [f32] {
        v.get(&self.params.data)
    }

    /// The trained ranges of the blocks' weight matrices, or of their adapters (what weight
    /// decay applies to).
    pub fn matrices(&self) -> Vec<Range<usize>> {
        self.blocks.iter().flat_map(|b| b.mats().into_iter().flat_map(|(_, m)| m.trained())).collect()
    }

    /// Rotates (or, with `inverse`, rotates back: the backward) every row of `x` (`width` wide,
    /// heads of `head_dim`) by its token's position.
    fn rope_rows(&self, x: &mut [f32], width: usize, positions: &[usize], inverse: bool) {
        let half = self.rope.dim / 2;
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        for (row, &pos) in x.chunks_exact_mut(width).zip(positions) {
            self.rope.angles(pos, &mut cos, &mut sin);
            if inverse {
                sin.iter_mut().for_each(|s| *s = -*s);
            }
            self.rope.apply(row, self.cfg.head_dim, &cos, &sin);
        }
    }

    /// Block `li` on its input `x` (`t x d`): what its backward needs, and its output.
    fn block_forward(&self, pool: &ThreadPool, li: usize, x: Vec<f32>, positions: &[usize], starts: &[usize]) -> Result<(BlockActs, Vec<f32>), ModelError> {
        let c = &self.cfg;
        let (d, eps, t, b) = (c.dim, c.norm_eps, positions.len(), &self.blocks[li]);
        let (qd, kvd, f) = (c.q_dim(li), c.kv_dim(li), c.shapes[li].ffn_dim);
        let heads = Heads { q: c.shapes[li].n_heads, kv: c.shapes[li].n_kv_heads, dim: c.head_dim };
        let p = &self.params.data;
        let mut a = BlockActs { h1: vec![0f32; t * d], ..Default::default() };
        a.inv1 = rmsnorm(&x, self.norm(&b.attn_norm), eps, d, &mut a.h1);
        a.x = x;
        let [lq, lk, lv, lo, lg, lu, ld] = &mut a.lu;
        for (w, out, width, u) in [(&b.q, &mut a.q, qd, lq), (&b.k, &mut a.k, kvd, lk), (&b.v, &mut a.v, kvd, lv)] {
            *out = vec![0f32; t * width];
            w.forward(pool, p, &a.h1, (t, d, width), out, u)?;
        }
        self.rope_rows(&mut a.q, qd, positions, false);
        self.rope_rows(&mut a.k, kvd, positions, false);
        (a.probs, a.att) = par_attention(pool, &a.q, &a.k, &a.v, starts, heads, true);
        a.r = vec![0f32; t * d];
        b.o.forward(pool, p, &a.att, (t, qd, d), &mut a.r, lo)?;
        a.r.iter_mut().zip(&a.x).for_each(|(r, x)| *r += *x);
        a.h2 = vec![0f32; t * d];
        a.inv2 = rmsnorm(&a.r, self.norm(&b.ffn_norm), eps, d, &mut a.h2);
        a.a = vec![0f32; t * f];
        a.u = vec![0f32; t * f];
        b.gate.forward(pool, p, &a.h2, (t, d, f), &mut a.a, lg)?;
        b.up.forward(pool, p, &a.h2, (t, d, f), &mut a.u, lu)?;
        a.s = vec![0f32; t * f];
        swiglu(&a.a, &a.u, &mut a.s);
        let mut out = vec![0f32; t * d];
        b.down.forward(pool, p, &a.s, (t, f, d), &mut out, ld)?;
        out.iter_mut().zip(&a.r).for_each(|(x, r)| *x += *r);
        check_activations(&out, d, || format!("block {li} (training forward)"))?;
        Ok((a, out))
    }

    /// Runs `seqs` (token sequences, each at most the training context), keeping the
    /// activations for [`LlamaTrain::backward`]; the logits of every token are in the result.
    pub fn forward(&self, pool: &ThreadPool, seqs: &[&[u32]]) -> Result<LlamaActs, ModelError> {
        let c = &self.cfg;
        let (d, eps) = (c.dim, c.norm_eps);
        let (mut starts, mut ids, mut positions) = (vec![0usize], Vec::new(), Vec::new());
        for s in seqs {
            if s.len() > c.ctx_train {
                return Err(ModelError::PromptTooLong { tokens: s.len(), context: c.ctx_train });
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(ModelError::BadToken { id: bad, vocab: c.vocab });
            }
            ids.extend_from_slice(s);
            positions.extend(0..s.len());
            starts.push(ids.len());
        }
        let t = ids.len();
        let mut x = vec![0f32; t * d];
        match &self.embed {
            Mat::Train(r) => {
                let e = &self.params.data[r.clone()];
                x.chunks_exact_mut(d).zip(&ids).for_each(|(row, &id)| row.copy_from_slice(&e[id as usize * d..(id as usize + 1) * d]));
            }
            Mat::Frozen { w, .. } => {
                for (row, &id) in x.chunks_exact_mut(d).zip(&ids) {
                    w.row_f32(id as usize, row)?;
                }
            }
        }
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for li in 0..self.blocks.len() {
            let (mut a, next) = self.block_forward(pool, li, x, &positions, &starts)?;
            if self.recompute {
                a = BlockActs { x: a.x, ..Default::default() };
            }
            blocks.push(a);
            x = next;
        }
        let mut hf = vec![0f32; t * d];
        let inv_f = rmsnorm(&x, self.norm(&self.output_norm), eps, d, &mut hf);
        let mut logits = vec![0f32; t * c.vocab];
        self.output.as_ref().unwrap_or(&self.embed).forward(pool, &self.params.data, &hf, (t, d, c.vocab), &mut logits, &mut Vec::new())?;
        Ok(LlamaActs { starts, ids, positions, blocks, last: x, hf, inv_f, logits })
    }

    /// Accumulates into `grads` the gradient of a loss whose gradient with respect to the logits
    /// is `d_logits` (`t x vocab`), plus, for each `(l, g)` of `d_hidden`, `g` with respect to
    /// the hidden states after block `l`.
    pub fn backward(&self, pool: &ThreadPool, a: &LlamaActs, d_logits: &[f32], d_hidden: &[(usize, &[f32])], grads: &mut [f32]) -> Result<(), ModelError> {
        let c = &self.cfg;
        let (d, t, v) = (c.dim, a.tokens(), c.vocab);
        if grads.len() != self.params.len() || d_logits.len() != t * v || d_hidden.iter().any(|(l, g)| *l >= self.blocks.len() || g.len() != t * d) {
            return Err(ModelError::hyper("gradient", format!("{} values", grads.len()), format!("expected {} parameters and {t} x {v} logit gradients", self.params.len())));
        }
        // logits = hf E'^T: dhf = dlogits E', dE' += dlogits^T hf.
        let p = &self.params.data;
        let mut scratch = Vec::new();
        let mut dhf = vec![0f32; t * d];
        self.output.as_ref().unwrap_or(&self.embed).backward(pool, p, &a.hf, &[], d_logits, (t, d, v), Some(&mut dhf), grads)?;
        let mut dx = vec![0f32; t * d];
        rmsnorm_backward(&a.last, self.norm(&self.output_norm), &a.inv_f, &dhf, d, &mut dx, self.output_norm.grad(grads, &mut scratch));
        for (li, (b, kept)) in self.blocks.iter().zip(&a.blocks).enumerate().rev() {
            let fresh;
            let ba = if self.recompute {
                fresh = self.block_forward(pool, li, kept.x.clone(), &a.positions, &a.starts)?.0;
                &fresh
            } else {
                kept
            };
            for (_, g) in d_hidden.iter().filter(|(k, _)| *k == li) {
                dx.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += *b);
            }
            let (qd, kvd, f) = (c.q_dim(li), c.kv_dim(li), c.shapes[li].ffn_dim);
            let heads = Heads { q: c.shapes[li].n_heads, kv: c.shapes[li].n_kv_heads, dim: c.head_dim };
            // x' = r + s Wdown^T
            let [lq, lk, lv, lo, lg, lu, ld] = &ba.lu;
            let mut ds = vec![0f32; t * f];
            b.down.backward(pool, p, &ba.s, ld, &dx, (t, f, d), Some(&mut ds), grads)?;
            let (mut da, mut du) = (vec![0f32; t * f], vec![0f32; t * f]);
            swiglu_backward(&ba.a, &ba.u, &ds, &mut da, &mut du);
            // a = h2 Wgate^T, u = h2 Wup^T
            let (mut dh2, mut tmp) = (vec![0f32; t * d], vec![0f32; t * d]);
            b.gate.backward(pool, p, &ba.h2, lg, &da, (t, d, f), Some(&mut dh2), grads)?;
            b.up.backward(pool, p, &ba.h2, lu, &du, (t, d, f), Some(&mut tmp), grads)?;
            dh2.iter_mut().zip(&tmp).for_each(|(a, b)| *a += *b);
            // h2 = rmsnorm(r) g_ffn; r also feeds x' directly.
            let mut dr = vec![0f32; t * d];
            rmsnorm_backward(&ba.r, self.norm(&b.ffn_norm), &ba.inv2, &dh2, d, &mut dr, b.ffn_norm.grad(grads, &mut scratch));
            dr.iter_mut().zip(&dx).for_each(|(a, b)| *a += *b);
            // r = x + A Wo^T
            let mut datt = vec![0f32; t * qd];
            b.o.backward(pool, p, &ba.att, lo, &dr, (t, qd, d), Some(&mut datt), grads)?;
            let (mut dq, mut dk, dv) = par_attention_backward(pool, (&ba.q, &ba.k, &ba.v), &ba.probs, &datt, &a.starts, heads);
            self.rope_rows(&mut dq, qd, &a.positions, true);
            self.rope_rows(&mut dk, kvd, &a.positions, true);
            // Q, K, V from h1; h1 = rmsnorm(x) g_attn; x also feeds r directly.
            let mut dh1 = vec![0f32; t * d];
            let mut tmp = vec![0f32; t * d];
            for (dy, w, width, u) in [(&dq, &b.q, qd, lq), (&dk, &b.k, kvd, lk), (&dv, &b.v, kvd, lv)] {
                w.backward(pool, p, &ba.h1, u, dy, (t, d, width), Some(&mut tmp), grads)?;
                dh1.iter_mut().zip(&tmp).for_each(|(a, b)| *a += *b);
            }
            dx = vec![0f32; t * d];
            rmsnorm_backward(&ba.x, self.norm(&b.attn_norm), &ba.inv1, &dh1, d, &mut dx, b.attn_norm.grad(grads, &mut scratch));
            dx.iter_mut().zip(&dr).for_each(|(a, b)| *a += *b);
        }
        if let Mat::Train(r) = &self.embed {
            embedding_backward(&a.ids, &dx, d, &mut grads[r.clone()]);
        }
        Ok(())
    }
}
