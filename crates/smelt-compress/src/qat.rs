//! Quantization-aware training (QAT) of a decoder by self-distillation: the student is the model
//! itself with its weights fake-quantized, trained to match the original's next-token
//! distributions (Hinton et al. 2015's KL; LLM-QAT, Liu et al. 2023, distils from the
//! full-precision model the same way).
//!
//! Every matrix `W` (f32 "master" values, the optimizer's parameters) is used in the forward and
//! backward as `Q(W)`, the exact round trip of the target ggml type: the block quantizer the
//! file is written with, then its dequantizer (scales recomputed from the current values at
//! every step). The rounding has no useful derivative, so the backward passes straight through
//! it (the straight-through estimator, Bengio et al. 2013):
//! ```text
//! forward:  y = x Q(W)^T                     backward:  dL/dW := dL/dQ(W)
//! ```
//! The gradient is the model's gradient at the quantized point, applied to the master weights;
//! when they cross a rounding boundary the quantized model changes. The written file is `Q(W)`
//! of the final master weights, through the same quantizer ([`crate::quantize_file`] with the
//! master weights as overrides), so it holds exactly the weights the last step trained.
//!
//! Norms stay in f32 in the file and are trained as they are. The importance-weighted block
//! search (an imatrix) may be the quantizer: its output is still a deterministic function of the
//! master weights, so the estimator and the identity of the written file hold.

use std::collections::BTreeMap;
use std::ops::Range;

use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_train::{Objective, StepStats, TrainError};

use crate::distill::decoder::DecoderDistill;
use crate::imatrix::Imatrix;
use crate::{quantize_file, round_trip, Calib, CompressError, Summary, TensorPlan};

/// One fake-quantized tensor of the student.
#[derive(Clone, Debug)]
pub struct FakeTensor {
    pub name: String,
    pub range: Range<usize>,
    pub cols: usize,
    pub ty: GgmlType,
    /// The imatrix entry weighting its block search, if any.
    pub importance: Option<Vec<f32>>,
}

/// Self-distillation with fake-quantized weights: the [`Objective`]. The optimizer updates the
/// master weights ([`Objective::params`]); the student inside holds their quantized values.
pub struct Qat<'a> {
    pub inner: DecoderDistill<'a>,
    master: Vec<f32>,
    pub fake: Vec<FakeTensor>,
    pool: &'a ThreadPool,
    /// The master weights may have changed since the student last got `Q(master)`.
    stale: bool,
}

impl<'a> Qat<'a> {
    /// `inner`'s student holds the original weights (f32); `plans` says the type each tensor of
    /// the model's file becomes (the student's parameters carry the file's names). Tensors
    /// planned as F32 are trained as they are. An imatrix weights the block search of the
    /// tensors it has entries for, as `smelt quantize --imatrix` does.
    pub fn new(inner: DecoderDistill<'a>, plans: &[TensorPlan], imatrix: Option<&Imatrix>, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        let mut fake = Vec::new();
        for slot in &inner.student.params.slots {
            let Some(p) = plans.iter().find(|p| p.t.name == slot.name) else {
                return Err(CompressError::Distill(format!("the model's file has no tensor {}: QAT needs the file the model was loaded from", slot.name)));
            };
            if p.target == GgmlType::F32 || slot.shape.len() < 2 {
                continue;
            }
            let cols = *slot.shape.last().unwrap_or(&1);
            let importance = match imatrix {
                Some(m) if m.entries.contains_key(&slot.name) => Some(m.importance_for(&slot.name, cols)?),
                _ => None,
            };
            fake.push(FakeTensor { name: slot.name.clone(), range: slot.range.clone(), cols, ty: p.target, importance });
        }
        let master = inner.student.params.data.clone();
        let mut q = Qat { inner, master, fake, pool, stale: true };
        q.refresh()?;
        Ok(q)
    }

    /// Puts `Q(master)` into the student (plain copies for the tensors not quantized), unless
    /// the master weights are unchanged since the last time.
    pub fn refresh(&mut self) -> Result<(), CompressError> {
        if !self.stale {
            return Ok(());
        }
        let params = &mut self.inner.student.params;
        for slot in &params.slots {
            let r = slot.range.clone();
            match self.fake.iter().find(|f| f.range == r) {
                Some(f) => {
                    let (_, back) = round_trip(self.pool, &f.name, &self.master[r.clone()], f.cols, f.ty, f.importance.as_deref())?;
                    params.data[r].copy_from_slice(&back);
                }
                None => params.data[r.clone()].copy_from_slice(&self.master[r]),
            }
        }
        self.stale = false;
        Ok(())
    }

    /// The master (unquantized) value of every tensor, by name.
    pub fn master_tensors(&self) -> BTreeMap<String, Vec<f32>> {
        self.inner.student.params.slots.iter().map(|s| (s.name.clone(), self.master[s.range.clone()].to_vec())).collect()
    }

    /// Mean KL divergence of the quantized student to the original on the held-out chunks.
    pub fn val_kl(&mut self) -> Result<f64, CompressError> {
        self.refresh()?;
        self.inner.val_kl()
    }

    /// Writes the quantized model: `file` (the original) with every trained tensor replaced by
    /// its master values, quantized by `plans` with the same quantizer as in training.
    pub fn write(&self, file: &GgufFile, plans: &[TensorPlan], file_type: GgmlType, imatrix: Option<&Imatrix>, out: &std::path::Path, on_tensor: &mut dyn FnMut(&TensorPlan)) -> Result<Summary, CompressError> {
        let calib = Calib { imatrix, overrides: self.master_tensors(), ..Default::default() };
        quantize_file(file, plans, file_type, &calib, out, self.pool, on_tensor)
    }
}

impl Objective for Qat<'_> {
    fn examples(&self) -> usize {
        self.inner.examples()
    }
    fn params(&self) -> &[f32] {
        &self.master
    }
    fn params_mut(&mut self) -> &mut [f32] {
        self.stale = true;
        &mut self.master
    }
    /// No weight decay: the weights are to stay near where the original put them.
    fn decay(&self) -> Vec<Range<usize>> {
        Vec::new()
    }
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
        self.refresh().map_err(|e| TrainError::Objective(e.to_string()))?;
        self.inner.grad(batch, grads)
    }
    fn validate(&mut self) -> Result<f64, TrainError> {
        self.refresh().map_err(|e| TrainError::Objective(e.to_string()))?;
        self.inner.validate()
    }
}
