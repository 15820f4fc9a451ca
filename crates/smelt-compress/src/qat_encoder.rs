//! Quantization-aware training of a sentence encoder for smelt's int8 path, by
//! self-distillation: the student is the encoder run as `--int8` runs it, trained to give the
//! original (f32) encoder's sentence vectors ([`EncoderDistill`]'s `1 - cos` loss).
//!
//! The int8 path ([`smelt_models::int8`]) quantizes every selected matrix when the model is
//! loaded: SmoothQuant factors `f_c` from the per-channel maxima of its input on the calibration
//! sentences, then per output channel `q = round(W f / s)` in `[-64, 64]`; at run time each row
//! of the input is quantized to unsigned 8 bits with its own range. Both are simulated here, on
//! master weights `W` (f32, the optimizer's parameters) refreshed before every step:
//! ```text
//! amax  = input maxima of the model with weights W on the calibration sentences
//! W_e   = s q / f                     (the quantized matrix, in W's scale)
//! x_e   = ((a - z) t) / (1 / f)       (each input row's round trip)
//! y     = x_e W_e^T + b               backward: dL/dW := dL/dW_e,  dL/dx := dL/dx_e
//! ```
//! (straight-through estimator for both roundings). Because the calibration, the smoothing and
//! the weight quantizer are the ones `--int8` applies at load time, the written directory (the
//! master weights, f32, a plain sentence-transformers model) loaded with `:int8` runs the model
//! the last step trained, up to f32 rounding; loaded without, it is a close f32 model.

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{ActQuant, BertTrain};
use smelt_models::int8::{fake_weights, quantize_weights, KINDS};
use smelt_models::Int8Spec;
use smelt_train::{Objective, StepStats, TrainError};

use crate::distill::encoder::EncoderDistill;
use crate::CompressError;

/// Self-distillation of an encoder through the int8 path's fake quantization: the
/// [`Objective`]. The optimizer updates the master weights; the student inside holds their
/// quantized values and quantizes its matrices' inputs.
pub struct EncoderQat<'a> {
    pub inner: EncoderDistill<'a>,
    master: Vec<f32>,
    /// The calibration sentences (framed token ids) the int8 path's smoothing is measured on.
    calib: Vec<Vec<u32>>,
    /// `(layer, kind)` of every quantized matrix (kind indexes [`KINDS`]).
    pub quantized: Vec<(usize, usize)>,
    pool: &'a ThreadPool,
    /// The master weights may have changed since the student last got their int8 view.
    stale: bool,
}

impl<'a> EncoderQat<'a> {
    /// `inner`'s student holds the original weights; `spec` selects the matrices (as `--int8`
    /// does); `calib` are the calibration sentences the int8 path will use at load time (its
    /// default is [`smelt_models::int8::DEFAULT_CALIBRATION`]), tokenized as the encoder frames
    /// them.
    pub fn new(inner: EncoderDistill<'a>, spec: &Int8Spec, calib: Vec<Vec<u32>>, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        if calib.is_empty() {
            return Err(CompressError::Distill("no calibration sentences: the int8 path's smoothing is measured on some".into()));
        }
        let layers = inner.student.heads.len();
        let quantized: Vec<(usize, usize)> = (0..layers).flat_map(|l| (0..KINDS.len()).map(move |k| (l, k))).filter(|&(l, k)| spec.selects(l, k)).collect();
        if quantized.is_empty() {
            return Err(CompressError::Distill(format!("the int8 selection names none of the {layers} layers' matrices: nothing to train for")));
        }
        let master = inner.student.params.data.clone();
        let mut q = EncoderQat { inner, master, calib, quantized, pool, stale: true };
        q.refresh()?;
        Ok(q)
    }

    /// Puts the int8 path's view of the master weights into the student: calibration maxima
    /// measured with the master weights, every selected matrix replaced by its fake-quantized
    /// value, and its input quantization switched on (nothing to do when the master weights are
    /// unchanged since the last time).
    pub fn refresh(&mut self) -> Result<(), CompressError> {
        if !self.stale {
            return Ok(());
        }
        let s = &mut self.inner.student;
        s.params.data.copy_from_slice(&self.master);
        let refs: Vec<&[u32]> = self.calib.iter().map(Vec::as_slice).collect();
        let calib = s.input_maxima(self.pool, &refs)?;
        let mut aq: Vec<[Option<ActQuant>; 4]> = vec![Default::default(); s.heads.len()];
        for &(l, kind) in &self.quantized {
            let (ranges, rows, cols) = s.matrix_ranges(l, kind).ok_or_else(|| CompressError::Distill(format!("layer {l} has no matrix {}", KINDS[kind])))?;
            let w: Vec<f32> = ranges.iter().flat_map(|r| self.master[r.clone()].iter().copied()).collect();
            let q = quantize_weights(&w, rows, cols, calib.get(l, kind))?;
            let fake = fake_weights(&q);
            let mut off = 0;
            for r in ranges {
                s.params.data[r.clone()].copy_from_slice(&fake[off..off + r.len()]);
                off += r.len();
            }
            aq[l][kind] = Some(ActQuant { smooth: q.smooth });
        }
        s.act_quant = aq;
        self.stale = false;
        Ok(())
    }

    /// The encoder with the master weights and no fake quantization: what is written.
    pub fn master_model(&self) -> BertTrain {
        let mut m = self.inner.student.clone();
        m.params.data.copy_from_slice(&self.master);
        m.act_quant.clear();
        m
    }

    /// Validation `1 - cos` to the original of the int8 model as it stands.
    pub fn val_gap(&mut self) -> Result<f64, CompressError> {
        self.refresh()?;
        self.inner.val_gap()
    }
}

impl Objective for EncoderQat<'_> {
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
