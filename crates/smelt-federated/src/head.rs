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

use smelt_models::classify::{loss_grad, Head, HEAD_FORMAT, HEAD_VERSION};
use smelt_train::order::permutation;

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

/// A head being trained by a federation.
pub struct HeadTask {
    labels: Vec<String>,
    dim: usize,
    train: Examples,
    eval: Option<Examples>,
    l2: f64,
    w: Vec<f64>,
    b: Vec<f64>,
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
        Ok(HeadTask { labels, dim, train, eval, l2, w: vec![0.0; c * dim], b: vec![0.0; c] })
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
        for epoch in 0..cfg.epochs {
            let order = permutation(n, seed, epoch as u64);
            for batch in order.chunks(cfg.batch_size.max(1)) {
                let x: Vec<Vec<f32>> = batch.iter().map(|&i| self.train.x[i].clone()).collect();
                let y: Vec<usize> = batch.iter().map(|&i| self.train.y[i]).collect();
                loss_grad(&x, &y, c, &self.w, &self.b, self.l2, &mut gw, &mut gb);
                for ((w, g), w0) in self.w.iter_mut().zip(&gw).zip(&w0) {
                    *w -= lr * (g + mu * (*w - w0));
                }
                for ((b, g), b0) in self.b.iter_mut().zip(&gb).zip(&b0) {
                    *b -= lr * (g + mu * (*b - b0));
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
