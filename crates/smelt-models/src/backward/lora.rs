//! Training low-rank adapters over a frozen decoder (LoRA, Hu et al. 2021; QLoRA when the base is
//! quantized, Dettmers et al. 2023): the base's matrices stay in their own type in memory and take
//! no gradient; the parameters are only the adapters' `A` (`r x i`) and `B` (`o x r`) of the
//! chosen matrices, named `NAME.lora_a` and `NAME.lora_b` as in llama.cpp's adapter files.
//!
//! Initialization as the paper and PEFT: `A` uniform in `[-1/sqrt(i), 1/sqrt(i)]` (torch's
//! Kaiming-uniform with `a = sqrt(5)`), `B = 0`, so training starts from the base exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::llama::{BlockSlots, LlamaTrain};
use super::params::Params;
use super::weight::{LoraSlots, Mat, Vector};
use crate::llama::Llama;
use crate::lora::{LoraAdapter, LoraPair};
use crate::ops::{Rope, RopeStyle};
use crate::ModelError;

/// The matrices of a block an adapter can go on (GGUF stems).
pub const LORA_TARGETS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// Which adapters to train.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Rank `r` of every adapter (at least 1, at most the matrix's smaller side).
    pub rank: usize,
    /// `adapter.lora.alpha`: the adapters' term is scaled by `alpha / r`.
    pub alpha: f32,
    /// Matrix kinds adapted in every block (from [`LORA_TARGETS`]).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// Refuses a rank of 0, a non-finite or negative alpha and unknown targets.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::hyper("LoRA rank", 0, "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(ModelError::hyper("LoRA alpha", self.alpha, "must be a finite number >= 0"));
        }
        if self.targets.is_empty() {
            return Err(ModelError::hyper("LoRA targets", "none", format!("name at least one of {}", LORA_TARGETS.join(", "))));
        }
        if let Some(t) = self.targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            return Err(ModelError::hyper("LoRA target", t, format!("not a block matrix; choose from {}", LORA_TARGETS.join(", "))));
        }
        Ok(())
    }

    /// The scale of the adapters' term.
    pub fn scale(&self) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / self.rank as f32
        }
    }
}

impl LlamaTrain {
    /// Adapters of `spec` over the frozen weights of `m` (kept in their own types; block biases
    /// stay as they are, frozen). `uniform` draws values in `[-1, 1]` for `A`.
    pub fn lora(m: &Llama, spec: &LoraSpec, uniform: &mut dyn FnMut() -> f32) -> Result<LlamaTrain, ModelError> {
        spec.check()?;
        let mut p = Params::default();
        let s = spec.scale();
        let mut frozen = |i: usize, kind: &str, w: &crate::linear::Linear| -> Result<Mat, ModelError> {
            let w = w.clone().without_lora();
            if !spec.targets.iter().any(|t| t == kind) {
                return Ok(Mat::Frozen { w, lora: None });
            }
            let (o, n) = (w.rows, w.cols);
            let name = format!("blk.{i}.{kind}.weight");
            if spec.rank > o.min(n) {
                return Err(ModelError::hyper("LoRA rank", spec.rank, format!("larger than {name}'s smaller side ({o} x {n}): a rank-{} adapter would be a full matrix", spec.rank)));
            }
            let bound = 1.0 / (n as f32).sqrt();
            let a: Vec<f32> = (0..spec.rank * n).map(|_| uniform() * bound).collect();
            let a = p.push(&format!("{name}.lora_a"), &[spec.rank, n], &a)?;
            let b = p.push(&format!("{name}.lora_b"), &[o, spec.rank], &vec![0f32; o * spec.rank])?;
            Ok(Mat::Frozen { w, lora: Some(LoraSlots { a, b, rank: spec.rank, scale: s }) })
        };
        let mut blocks = Vec::with_capacity(m.layers.len());
        for (i, l) in m.layers.iter().enumerate() {
            blocks.push(BlockSlots {
                attn_norm: Vector::Frozen(l.attn_norm.clone()),
                q: frozen(i, "attn_q", &l.wq)?,
                k: frozen(i, "attn_k", &l.wk)?,
                v: frozen(i, "attn_v", &l.wv)?,
                o: frozen(i, "attn_output", &l.wo)?,
                ffn_norm: Vector::Frozen(l.ffn_norm.clone()),
                gate: frozen(i, "ffn_gate", &l.gate)?,
                up: frozen(i, "ffn_up", &l.up)?,
                down: frozen(i, "ffn_down", &l.down)?,
            });
        }
        let cfg = m.cfg.clone();
        let rope = Rope::new(RopeStyle::Interleaved, cfg.rope_dim, cfg.rope_theta, cfg.rope_scale);
        let output = m.output.as_ref().map(|o| Mat::Frozen { w: o.clone().without_lora(), lora: None });
        Ok(LlamaTrain { cfg, params: p, rope, embed: Mat::Frozen { w: m.embed.clone().without_lora(), lora: None }, output, output_norm: Vector::Frozen(m.output_norm.clone()), blocks, recompute: false })
    }

    /// The trained adapters as an adapter file's content (`alpha` as trained).
    pub fn adapter(&self, alpha: f32) -> Result<LoraAdapter, ModelError> {
        let mut pairs = BTreeMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (kind, m) in b.mats() {
                if let Mat::Frozen { w, lora: Some(l) } = m {
                    let d = &self.params.data;
                    let pair = LoraPair::new(l.rank, w.rows, w.cols, d[l.a.clone()].to_vec(), d[l.b.clone()].to_vec())?;
                    pairs.insert(format!("blk.{i}.{kind}.weight"), Arc::new(pair));
                }
            }
        }
        Ok(LoraAdapter { arch: "llama".into(), alpha, pairs })
    }

    /// Sets the adapters' values from `adapter` (continuing its training): every trained pair
    /// must be in it with the same rank and shape.
    pub fn load_adapter(&mut self, adapter: &LoraAdapter) -> Result<(), ModelError> {
        for (i, b) in self.blocks.iter().enumerate() {
            for (kind, m) in b.mats() {
                if let Mat::Frozen { w, lora: Some(l) } = m {
                    let name = format!("blk.{i}.{kind}.weight");
                    let pair = adapter.pairs.get(&name).ok_or_else(|| ModelError::hyper(&name, "missing", "the adapter has no pair for this matrix: give the same --lora-targets it was trained with"))?;
                    if (pair.rank, pair.rows, pair.cols) != (l.rank, w.rows, w.cols) {
                        return Err(ModelError::WrongShape { name: format!("{name} (LoRA)"), found: vec![pair.rank as u64, pair.rows as u64, pair.cols as u64], expected: vec![l.rank as u64, w.rows as u64, w.cols as u64] });
                    }
                    self.params.data[l.a.clone()].copy_from_slice(&pair.a);
                    self.params.data[l.b.clone()].copy_from_slice(&pair.b);
                }
            }
        }
        Ok(())
    }
}
