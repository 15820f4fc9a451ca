//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), as PyTorch's
//! `torch.optim.AdamW` computes it, a linear warm-up then cosine learning-rate schedule, and
//! clipping by the global gradient norm.
//!
//! One step `t` (from 1) with gradient `g`, for every parameter `p`:
//! ```text
//! p = p - lr wd p                       (decoupled decay; only tensors marked for decay)
//! m = b1 m + (1 - b1) g
//! v = b2 v + (1 - b2) g^2
//! p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```

use std::ops::Range;

/// AdamW's settings and its two moments.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// First and second moments, one per parameter.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far.
    pub t: u64,
    /// Threads the update is split over (elementwise, so the result does not depend on it).
    pub threads: usize,
}

impl AdamW {
    /// PyTorch's defaults (`betas = (0.9, 0.999)`, `eps = 1e-8`) with `weight_decay`, for `n`
    /// parameters.
    pub fn new(n: usize, weight_decay: f32) -> AdamW {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, m: vec![0.0; n], v: vec![0.0; n], t: 0, threads: 1 }
    }

    /// One update of `params` by `grads` at learning rate `lr`; weight decay applies to the
    /// parameters in `decay` (by convention the matrices, not the biases and norms).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32, decay: &[Range<usize>]) {
        assert!(params.len() == grads.len() && params.len() == self.m.len(), "AdamW: {} parameters, {} gradients, {} moments", params.len(), grads.len(), self.m.len());
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - (b1 as f64).powi(self.t.min(i32::MAX as u64) as i32);
        let c2 = 1.0 - (b2 as f64).powi(self.t.min(i32::MAX as u64) as i32);
        let (step, c2) = ((lr as f64 / c1) as f32, c2 as f32);
        let shrink = 1.0 - lr * self.weight_decay;
        for r in decay {
            params[r.clone()].iter_mut().for_each(|p| *p *= shrink);
        }
        let (eps, n) = (self.eps, params.len());
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step * *m / ((*v / c2).sqrt() + eps);
            }
        };
        // Chunks of at least 64k parameters per thread; scoped threads, joined before returning.
        let chunk = n.div_ceil(self.threads.max(1)).max(1 << 16);
        std::thread::scope(|s| {
            let parts = params.chunks_mut(chunk).zip(grads.chunks(chunk)).zip(self.m.chunks_mut(chunk)).zip(self.v.chunks_mut(chunk));
            let mut first = None;
            for (((p, g), m), v) in parts {
                if first.is_none() {
                    first = Some((p, g, m, v));
                } else {
                    s.spawn(move || update(p, g, m, v));
                }
            }
            if let Some((p, g, m, v)) = first {
                update(p, g, m, v);
            }
        });
    }
}

/// Learning rate by step: linear warm-up from `peak / warmup` to `peak` over `warmup` steps,
/// then a half cosine down to `peak * min_ratio` at step `total`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub peak: f32,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f32,
}

impl Schedule {
    /// The learning rate of step `step` (from 0).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.peak * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cos as f32)
    }
}

/// Scales `grads` so that their global L2 norm is at most `max` (when `max > 0`); returns the
/// norm before clipping (computed in f64).
pub fn clip_global_norm(grads: &mut [f32], max: f32) -> f64 {
    let norm = grads.iter().map(|g| (*g as f64) * (*g as f64)).sum::<f64>().sqrt();
    if max > 0.0 && norm > max as f64 {
        let s = (max as f64 / (norm + 1e-6)) as f32;
        grads.iter_mut().for_each(|g| *g *= s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam's first step moves every parameter by `lr` against its gradient's sign (the bias
    /// corrections make `m / sqrt(v) = g / |g|`), whatever the gradient's size; decay shrinks
    /// only the marked range, by `lr wd p`, before the Adam move.
    #[test]
    fn first_step_moves_by_lr_against_the_sign() {
        let mut p = vec![1.0f32, -2.0, 3.0, 0.5];
        let g = [1e-3f32, -50.0, 2.0, -1e-2];
        let mut opt = AdamW::new(4, 0.1);
        let decayed = std::iter::once(0..2).collect::<Vec<_>>();
        opt.step(&mut p, &g, 0.01, &decayed);
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01, 3.0 - 0.01, 0.5 + 0.01];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{p:?} vs {want:?}");
        }
    }

    /// Two steps against the recurrence written out by hand in f64.
    #[test]
    fn second_step_follows_the_moments() {
        let (g1, g2, lr) = (0.3f64, -0.1f64, 0.05f64);
        let mut p = vec![0.7f32];
        let mut opt = AdamW::new(1, 0.0);
        opt.step(&mut p, &[g1 as f32], lr as f32, &[]);
        opt.step(&mut p, &[g2 as f32], lr as f32, &[]);
        let (m1, v1) = (0.1 * g1, 0.001 * g1 * g1);
        let p1 = 0.7 - lr * (m1 / 0.1) / ((v1 / 0.001).sqrt() + 1e-8);
        let (m2, v2) = (0.9 * m1 + 0.1 * g2, 0.999 * v1 + 0.001 * g2 * g2);
        let p2 = p1 - lr * (m2 / (1.0 - 0.81)) / ((v2 / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        assert!((p[0] as f64 - p2).abs() < 1e-6, "{} vs {p2}", p[0]);
    }

    /// Split over threads, the update is the same to the bit.
    #[test]
    fn threads_do_not_change_the_update() {
        let n = 300_000;
        let g: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let run = |threads| {
            let mut p: Vec<f32> = (0..n).map(|i| (i % 13) as f32 / 13.0).collect();
            let mut opt = AdamW { threads, ..AdamW::new(n, 0.01) };
            let decayed: Vec<_> = std::iter::once(0..n / 2).collect();
            for _ in 0..3 {
                opt.step(&mut p, &g, 1e-3, &decayed);
            }
            p.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule { peak: 1.0, warmup: 10, total: 110, min_ratio: 0.1 };
        assert!((s.lr(0) - 0.1).abs() < 1e-6 && (s.lr(9) - 1.0).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(60) - 0.55).abs() < 1e-5, "{}", s.lr(60));
        assert!((s.lr(110) - 0.1).abs() < 1e-6 && (s.lr(500) - 0.1).abs() < 1e-6);
        let w = Schedule { peak: 2.0, warmup: 0, total: 4, min_ratio: 0.0 };
        assert!((w.lr(0) - 2.0).abs() < 1e-6 && w.lr(4).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        let mut g = vec![0.3f32, 0.4];
        clip_global_norm(&mut g, 1.0);
        assert_eq!(g, vec![0.3, 0.4]);
    }
}
