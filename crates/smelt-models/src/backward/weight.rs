//! The weights of a model being trained: each matrix either trained in f32 (full training,
//! distillation) or frozen in its own ggml type with an optional low-rank adapter trained beside
//! it (LoRA, QLoRA: a 4-bit base plus f32 adapters); each norm vector trained or frozen.
//!
//! For a matrix `W` (`o x i`) and `t` input rows `x` (`t x i`):
//! ```text
//! trained:  y = x W^T                      dx = dy W,  dW += dy^T x
//! frozen:   y = x W^T + s u B^T,  u = x A^T (t x r, kept)
//!           dB += s dy^T u  (o x r),   du = s dy B  (t x r),
//!           dA += du^T x    (r x i),   dx = dy W + du A
//! ```
//! `dy W` for a frozen `W` goes through [`super::frozen_linear_backward`] (a tile of rows widened
//! at a time); the forward is the inference product ([`Linear::forward_batch`]).

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;

use super::frozen::frozen_linear_backward;
use super::par::{par_linear, par_linear_backward};
use super::matmul;
use crate::linear::Linear;
use crate::ModelError;

/// Where an adapter's two matrices lie in the parameters.
#[derive(Clone, Debug)]
pub(crate) struct LoraSlots {
    pub a: Range<usize>, // (r, i)
    pub b: Range<usize>, // (o, r)
    pub rank: usize,
    pub scale: f32,
}

/// A weight matrix of a model in training.
#[derive(Clone, Debug)]
pub(crate) enum Mat {
    /// Trained: f32 values in the parameters.
    Train(Range<usize>),
    /// Frozen in its own type, with an adapter trained in the parameters or none.
    Frozen { w: Linear, lora: Option<LoraSlots> },
}

/// A norm's gain vector of a model in training.
#[derive(Clone, Debug)]
pub(crate) enum Vector {
    Train(Range<usize>),
    Frozen(Vec<f32>),
}

impl Vector {
    pub fn get<'a>(&'a self, params: &'a [f32]) -> &'a [f32] {
        match self {
            Vector::Train(r) => &params[r.clone()],
            Vector::Frozen(v) => v,
        }
    }

    /// Where its gradient goes: its range of `grads`, or `scratch` (discarded) when frozen.
    pub fn grad<'g>(&self, grads: &'g mut [f32], scratch: &'g mut Vec<f32>) -> &'g mut [f32] {
        match self {
            Vector::Train(r) => &mut grads[r.clone()],
            Vector::Frozen(v) => {
                scratch.clear();
                scratch.resize(v.len(), 0.0);
                scratch
            }
        }
    }
}

impl Mat {
    /// The trained parameter ranges (the matrix, or its adapter's two).
    pub fn trained(&self) -> Vec<Range<usize>> {
        match self {
            Mat::Train(r) => vec![r.clone()],
            Mat::Frozen { lora: Some(l), .. } => vec![l.a.clone(), l.b.clone()],
            Mat::Frozen { lora: None, .. } => Vec::new(),
        }
    }

    /// `y (t x o) = x (t x i) W^T` (plus the adapter's term); `u` receives `x A^T` when there is
    /// an adapter (what the backward needs).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&self, pool: &ThreadPool, params: &[f32], x: &[f32], (t, i, o): (usize, usize, usize), y: &mut [f32], u: &mut Vec<f32>) -> Result<(), ModelError> {
        match self {
            Mat::Train(r) => par_linear(pool, x, &params[r.clone()], None, (t, i, o), y),
            Mat::Frozen { w, lora } => {
                let mut scratch = Vec::new();
                w.forward_batch(pool, &x[..t * i], t, &mut y[..t * o], &mut scratch)?;
                if let Some(l) = lora {
                    *u = vec![0f32; t * l.rank];
                    par_linear(pool, x, &params[l.a.clone()], None, (t, i, l.rank), u);
                    let su: Vec<f32> = u.iter().map(|v| v * l.scale).collect();
                    matmul(y, &su, &params[l.b.clone()], (t, o, l.rank), false, true, true);
                }
            }
        }
        Ok(())
    }

    /// The backward of [`Mat::forward`]: `dx` written (when asked), parameter gradients
    /// accumulated into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(&self, pool: &ThreadPool, params: &[f32], x: &[f32], u: &[f32], dy: &[f32], (t, i, o): (usize, usize, usize), dx: Option<&mut [f32]>, grads: &mut [f32]) -> Result<(), ModelError> {
        match self {
            Mat::Train(r) => par_linear_backward(pool, x, &params[r.clone()], dy, (t, i, o), dx, grads, r, None),
            Mat::Frozen { w, lora } => {
                let mut dx = dx;
                if let Some(dx) = dx.as_deref_mut() {
                    frozen_linear_backward(pool, w, dy, t, dx, false)?;
                }
                if let Some(l) = lora {
                    // u = x A^T, y += s u B^T: du = s dy B, dB += s dy^T u.
                    let sdy: Vec<f32> = dy.iter().map(|v| v * l.scale).collect();
                    let mut du = vec![0f32; t * l.rank];
                    par_linear_backward(pool, u, &params[l.b.clone()], &sdy, (t, l.rank, o), Some(&mut du), grads, &l.b, None);
                    // dx += du A, dA += du^T x.
                    let mut dxa = dx.as_ref().map(|_| vec![0f32; t * i]);
                    par_linear_backward(pool, x, &params[l.a.clone()], &du, (t, i, l.rank), dxa.as_deref_mut(), grads, &l.a, None);
                    if let (Some(dx), Some(add)) = (dx, dxa) {
                        dx.iter_mut().zip(&add).for_each(|(a, b)| *a += *b);
                    }
                }
            }
        }
        Ok(())
    }
}
