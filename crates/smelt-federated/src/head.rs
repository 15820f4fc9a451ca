//! The classification head on frozen sentence embeddings as a [`Trainable`]: the multinomial
//! logistic regression of `smelt classify` (`smelt_models::classify`), trained locally by
//! mini-batch gradient descent.
//!
//! Parameters on the wire: `weights` (`C x d`, float32) then `bias` (`C`), with `C` the number
//! of labels in the order every client of the federation is given.
//!
//! One local fit, for `E` epochs over the `n` local examples in batches `B` (a seeded
//! permutation per epoch), from the server's `w0`:
//! ```text
//! g = grad loss_B(w) + mu (w - w0)        (loss_B: mean cross-entropy on the batch + l2/2 |W|^2)
//! w <- w - lr g,     lr = 1 / (L + mu) unless the server sends `lr`
//! ```
//! where `L = max_n (|x_n|^2 + 1) / 2 + l2` bounds the loss's smoothness, so the default step
//! never diverges.
//!
//! With example-level privacy ([`DpSgd`], DP-SGD of Abadi et al. 2016) each step instead draws
//! its batch by Poisson sampling (every example with probability `q = B / n`; `n / B` steps per
//! epoch), clips each example's gradient of the cross-entropy to norm `C`, and adds Gaussian
//! noise before averaging:
//! ```text
//! g = (sum_{i in batch} clip_C(grad loss_i(w)) + N(0, (sigma C)^2 I)) / (q n) + l2 W + mu (w - w0)
//! ```
//! so each local example is protected by the sampled Gaussian mechanism, accounted over every
//! step this client takes ([`crate::privacy::epsilon`]).

use smelt_models::classify::{loss_grad, Head, HEAD_FORMAT, HEAD_VERSION};
use smelt_train::order::{permutation, SplitMix64};

use crate::config::FitConfig;
use crate::npy::Tensor;
use crate::trainable::{Outcome, Trainable};
use crate::FedError;

/// Embeddings and label indices.
#[derive(Clone, Debug, Default)]
pub struct Examples {
    pub x: Vec<Vec<f32>>,
    pub y: Vec<usize>,
}

/// Example-level differential privacy of the local training (DP-SGD).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DpSgd {
    /// Per-example gradient clipping norm `C`.
    pub clip: f64,
    /// Noise multiplier `sigma`.
    pub noise_multiplier: f64,
}

/// A head being trained by a federation.
pub struct HeadTask {
    labels: Vec<String>,
    dim: usize,
    train: Examples,
    eval: Option<Examples>,
    l2: f64,
    w: Vec<f64>,
    b: Vec<f64>,
    dp: Option<DpSgd>,
    /// (sampling rate, noised steps taken) for the accountant.
    dp_steps: (f64, u64),
}

impl HeadTask {
    /// A zero head over `labels` for `dim`-wide embeddings, trained on `train` and evaluated on
    /// `eval` (or on `train` when there is none).
    pub fn new(labels: Vec<String>, dim: usize, train: Examples, eval: Option<Examples>, l2: f64) -> Result<HeadTask, FedError> {
        let c = labels.len();
        if c < 2 {
            return Err(FedError::Data(format!("a classifier needs at least two labels, {c} given")));
        }
        if dim == 0 {
            return Err(FedError::Data("the embeddings are empty".into()));
        }
        for (what, set) in std::iter::once(("local training", &train)).chain(eval.as_ref().map(|e| ("evaluation", e))) {
            if set.x.is_empty() {
                return Err(FedError::Data(format!("the {what} data holds no examples")));
            }
            if set.x.len() != set.y.len() || set.x.iter().any(|v| v.len() != dim) || set.y.iter().any(|&k| k >= c) {
                return Err(FedError::Data(format!("the {what} data has embeddings of another width than {dim} or labels outside the {c} given")));
            }
            if set.x.iter().flatten().any(|v| !v.is_finite()) {
                return Err(FedError::Data(format!("the {what} data has a non-finite embedding value")));
            }
        }
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(FedError::Settings(format!("l2 must be a finite number >= 0, not {l2}")));
        }
        Ok(HeadTask { labels, dim, train, eval, l2, w: vec![0.0; c * dim], b: vec![0.0; c], dp: None, dp_steps: (0.0, 0) })
    }

    /// Trains with DP-SGD from now on.
    pub fn with_dp_sgd(mut self, dp: Option<DpSgd>) -> HeadTask {
        self.dp = dp;
        self
    }

    pub fn dp_sgd(&self) -> Option<DpSgd> {
        self.dp
    }

    /// The sampling rate DP-SGD uses with batches of `batch_size` on this client's data.
    pub fn sampling_rate(&self, batch_size: usize) -> f64 {
        (batch_size as f64 / self.train.x.len() as f64).min(1.0)
    }

    /// The noised mean gradient of one Poisson-sampled batch (see the module doc), penalty
    /// included, into `gw`, `gb`.
    fn private_grad(&self, dp: DpSgd, q: f64, rng: &mut SplitMix64, gw: &mut [f64], gb: &mut [f64]) {
        let c = self.labels.len();
        let (mut pw, mut pb) = (vec![0f64; gw.len()], vec![0f64; c]);
        gw.fill(0.0);
        gb.fill(0.0);
        for (x, &y) in self.train.x.iter().zip(&self.train.y) {
            if rng.unit() >= q {
                continue;
            }
            loss_grad(std::slice::from_ref(x), &[y], c, &self.w, &self.b, 0.0, &mut pw, &mut pb);
            let norm = pw.iter().chain(&pb).map(|g| g * g).sum::<f64>().sqrt();
            let scale = if norm > dp.clip { dp.clip / norm } else { 1.0 };
            gw.iter_mut().zip(&pw).for_each(|(g, p)| *g += scale * p);
            gb.iter_mut().zip(&pb).for_each(|(g, p)| *g += scale * p);
        }
        let std = dp.noise_multiplier * dp.clip;
        let expected = q * self.train.x.len() as f64;
        for g in gw.iter_mut().chain(gb.iter_mut()) {
            *g = (*g + std * rng.normal()) / expected;
        }
        gw.iter_mut().zip(&self.w).for_each(|(g, w)| *g += self.l2 * w);
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The smoothness bound `L` of the local loss (see the module doc).
    fn smoothness(&self) -> f64 {
        self.train.x.iter().map(|v| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() + 1.0).fold(0.0, f64::max) / 2.0 + self.l2
    }

    /// The current parameters as a `smelt classify` head file.
    pub fn head(&self, encoder: &str, int8: bool, iterations: usize, final_loss: f64) -> Head {
        Head {
            format: HEAD_FORMAT.into(),
            version: HEAD_VERSION,
            encoder: encoder.into(),
            int8,
            dim: self.dim,
            labels: self.labels.clone(),
            weights: self.w.chunks(self.dim).map(|r| r.iter().map(|&v| v as f32).collect()).collect(),
            bias: self.b.iter().map(|&v| v as f32).collect(),
            l2: self.l2 as f32,
            train_examples: self.train.x.len(),
            iterations,
            final_loss,
        }
    }

    /// Mean cross-entropy (no penalty) and accuracy of the current parameters on `set`.
    pub fn score(&self, set: &Examples) -> (f64, f64) {
        let (c, d) = (self.labels.len(), self.dim);
        let (mut loss, mut right) = (0.0, 0usize);
        let mut z = vec![0f64; c];
        for (x, &y) in set.x.iter().zip(&set.y) {
            for (k, zk) in z.iter_mut().enumerate() {
                *zk = self.b[k] + self.w[k * d..(k + 1) * d].iter().zip(x).map(|(a, &v)| a * v as f64).sum::<f64>();
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            loss += max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - z[y];
            let best = (0..c).fold(0, |b, k| if z[k] > z[b] { k } else { b });
            right += usize::from(best == y);
        }
        let n = set.x.len().max(1) as f64;
        (loss / n, right as f64 / n)
    }
}

impl Trainable for HeadTask {
    fn describe(&self) -> String {
        format!("classification head, {} labels x {} dims, {} local examples", self.labels.len(), self.dim, self.train.x.len())
    }

    fn shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.labels.len(), self.dim], vec![self.labels.len()]]
    }

    fn get(&self) -> Vec<Tensor> {
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect();
        vec![Tensor::new(vec![self.labels.len(), self.dim], f(&self.w)), Tensor::new(vec![self.labels.len()], f(&self.b))]
    }

    fn set(&mut self, params: &[Tensor]) {
        self.w = params[0].data.iter().map(|&a| a as f64).collect();
        self.b = params[1].data.iter().map(|&a| a as f64).collect();
    }

    fn fit(&mut self, cfg: &FitConfig, seed: u64) -> Result<Outcome, FedError> {
        let c = self.labels.len();
        let mu = cfg.proximal_mu;
        let lr = cfg.lr.unwrap_or(1.0 / (self.smoothness() + mu));
        let (w0, b0) = (self.w.clone(), self.b.clone());
        let (mut gw, mut gb) = (vec![0f64; self.w.len()], vec![0f64; c]);
        let n = self.train.x.len();
        let step = |w: &mut Vec<f64>, b: &mut Vec<f64>, gw: &[f64], gb: &[f64]| {
            for ((w, g), w0) in w.iter_mut().zip(gw).zip(&w0) {
                *w -= lr * (g + mu * (*w - w0));
            }
            for ((b, g), b0) in b.iter_mut().zip(gb).zip(&b0) {
                *b -= lr * (g + mu * (*b - b0));
            }
        };
        if let Some(dp) = self.dp {
            let q = self.sampling_rate(cfg.batch_size);
            let steps = cfg.epochs * ((1.0 / q).round() as usize).max(1);
            let mut rng = SplitMix64(seed ^ 0xD95_6D00);
            for _ in 0..steps {
                self.private_grad(dp, q, &mut rng, &mut gw, &mut gb);
                step(&mut self.w, &mut self.b, &gw, &gb);
            }
            self.dp_steps = (q, self.dp_steps.1 + steps as u64);
        } else {
            for epoch in 0..cfg.epochs {
                for batch in permutation(n, seed, epoch as u64).chunks(cfg.batch_size.max(1)) {
                    let x: Vec<Vec<f32>> = batch.iter().map(|&i| self.train.x[i].clone()).collect();
                    let y: Vec<usize> = batch.iter().map(|&i| self.train.y[i]).collect();
                    loss_grad(&x, &y, c, &self.w, &self.b, self.l2, &mut gw, &mut gb);
                    step(&mut self.w, &mut self.b, &gw, &gb);
                }
            }
        }
        if self.w.iter().chain(&self.b).any(|v| !v.is_finite()) {
            (self.w, self.b) = (w0, b0);
            return Err(FedError::Settings(format!("local training diverged with step {lr}: send a smaller `lr`, or none for the safe default")));
        }
        let (loss, accuracy) = self.score(&self.train);
        Ok(Outcome { num_examples: n, loss, metrics: vec![("loss".into(), loss), ("accuracy".into(), accuracy)] })
    }

    fn epsilon(&self, delta: f64) -> Option<f64> {
        self.dp.map(|dp| crate::privacy::epsilon(self.dp_steps.0, dp.noise_multiplier, self.dp_steps.1, delta).0)
    }

    fn evaluate(&self) -> Result<Outcome, FedError> {
        let set = self.eval.as_ref().unwrap_or(&self.train);
        let (loss, accuracy) = self.score(set);
        Ok(Outcome { num_examples: set.x.len(), loss, metrics: vec![("accuracy".into(), accuracy)] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable blobs in 3 dimensions.
    fn blobs(n: usize) -> Examples {
        let mut e = Examples::default();
        for i in 0..n {
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            let j = (i as f32 * 0.37).sin() * 0.2;
            e.x.push(vec![s * 0.8 + j, 0.3 - j, s * 0.1]);
            e.y.push(i % 2);
        }
        e
    }

    fn task() -> HeadTask {
        HeadTask::new(vec!["a".into(), "b".into()], 3, blobs(40), None, 1e-3).unwrap()
    }

    #[test]
    fn a_fit_lowers_the_loss_and_learns_the_blobs() {
        let mut t = task();
        let before = t.evaluate().unwrap().loss;
        let cfg = FitConfig { epochs: 20, batch_size: 8, ..FitConfig::default() };
        let out = t.fit(&cfg, 1).unwrap();
        assert_eq!(out.num_examples, 40);
        assert!(out.loss < before * 0.5, "{} -> {}", before, out.loss);
        assert_eq!(t.evaluate().unwrap().metrics[0], ("accuracy".to_string(), 1.0));
    }

    /// FedProx with a huge `mu` keeps the fit at the start point; with `mu = 0` a full-batch
    /// epoch is one plain gradient step, checked against `loss_grad` directly.
    #[test]
    fn the_proximal_term_pulls_towards_the_start() {
        let mut far = task();
        far.fit(&FitConfig { epochs: 5, batch_size: 40, proximal_mu: 0.0, ..FitConfig::default() }, 3).unwrap();
        let mut near = task();
        near.fit(&FitConfig { epochs: 5, batch_size: 40, proximal_mu: 1e4, ..FitConfig::default() }, 3).unwrap();
        let norm = |t: &HeadTask| t.w.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm(&near) < norm(&far) * 1e-2, "{} vs {}", norm(&near), norm(&far));

        let mut one = task();
        let lr = 0.5;
        one.fit(&FitConfig { epochs: 1, batch_size: 40, lr: Some(lr), ..FitConfig::default() }, 3).unwrap();
        let data = blobs(40);
        let (mut gw, mut gb) = (vec![0.0; 6], vec![0.0; 2]);
        loss_grad(&data.x, &data.y, 2, &[0.0; 6], &[0.0; 2], 1e-3, &mut gw, &mut gb);
        for (w, g) in one.w.iter().zip(&gw) {
            assert!((w + lr * g).abs() < 1e-12);
        }
    }

    /// With every example sampled, no clipping and no noise, the private gradient is the plain
    /// one; with a tiny clip every example's share is bounded by it.
    #[test]
    fn dp_sgd_gradient_is_the_clipped_mean() {
        let mut t = task();
        t.fit(&FitConfig { epochs: 2, batch_size: 8, ..FitConfig::default() }, 1).unwrap();
        let data = blobs(40);
        let (mut want_w, mut want_b) = (vec![0.0; 6], vec![0.0; 2]);
        loss_grad(&data.x, &data.y, 2, &t.w, &t.b, 1e-3, &mut want_w, &mut want_b);
        let (mut gw, mut gb) = (vec![0.0; 6], vec![0.0; 2]);
        let mut rng = SplitMix64(1);
        t.private_grad(DpSgd { clip: 1e9, noise_multiplier: 0.0 }, 1.0, &mut rng, &mut gw, &mut gb);
        for (a, b) in gw.iter().chain(&gb).zip(want_w.iter().chain(&want_b)) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let clip = 1e-3;
        t.private_grad(DpSgd { clip, noise_multiplier: 0.0 }, 1.0, &mut rng, &mut gw, &mut gb);
        let penalty: Vec<f64> = t.w.iter().map(|w| 1e-3 * w).collect();
        let data_part = gw.iter().zip(&penalty).map(|(g, p)| (g - p).powi(2)).chain(gb.iter().map(|g| g * g)).sum::<f64>().sqrt();
        assert!(data_part <= clip * (1.0 + 1e-9), "{data_part}");
    }

    /// DP-SGD learns the blobs with moderate noise, and its accountant grows with every fit.
    #[test]
    fn dp_sgd_trains_and_accounts() {
        let mut t = task().with_dp_sgd(Some(DpSgd { clip: 1.0, noise_multiplier: 1.0 }));
        let cfg = FitConfig { epochs: 10, batch_size: 8, ..FitConfig::default() };
        t.fit(&cfg, 1).unwrap();
        let e1 = t.epsilon(1e-5).unwrap();
        t.fit(&cfg, 2).unwrap();
        let e2 = t.epsilon(1e-5).unwrap();
        assert!(e1 > 0.0 && e2 > e1, "{e1} then {e2}");
        let steps = 2 * 10 * 5;
        assert!((e2 - crate::privacy::epsilon(0.2, 1.0, steps, 1e-5).0).abs() < 1e-9);
        assert!(t.evaluate().unwrap().metrics[0].1 > 0.9);
    }

    #[test]
    fn bad_local_data_is_refused() {
        let labels = vec!["a".to_string(), "b".to_string()];
        assert!(HeadTask::new(labels.clone(), 3, Examples::default(), None, 0.0).is_err());
        let mut bad = blobs(4);
        bad.y[0] = 2;
        assert!(HeadTask::new(labels.clone(), 3, bad, None, 0.0).is_err());
        let mut nan = blobs(4);
        nan.x[1][0] = f32::NAN;
        assert!(HeadTask::new(labels, 3, nan, None, 0.0).is_err());
    }
}
