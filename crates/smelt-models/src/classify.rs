//! Text classification on frozen sentence embeddings: multinomial logistic regression with L2,
//! a versioned head file, and the metrics to judge it.
//!
//! For an embedding `x` (`d` values) and classes `1..C`:
//! ```text
//! z_c = w_c . x + b_c,    p_c = softmax(z)_c
//! loss(W, b) = -1/N sum_n log p_{y_n}(x_n) + l2/2 |W|^2          (the bias is not penalized)
//! dloss/dw_c = 1/N sum_n (p_c(x_n) - [y_n = c]) x_n + l2 w_c,   dloss/db_c = 1/N sum_n (p_c - [y_n = c])
//! ```
//! The loss is convex and `L`-smooth with `L <= max_n (|x_n|^2 + 1) / 2 + l2`, so full-batch
//! gradient descent with Nesterov momentum and step `1/L` converges without tuning; training
//! stops when the gradient's norm falls below `tol` or after `max_iter` steps.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The head file's format name and version (bumped on any incompatible change).
pub const HEAD_FORMAT: &str = "smelt-classifier-head";
pub const HEAD_VERSION: u32 = 1;

/// A trained linear head, as saved to disk (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Head {
    pub format: String,
    pub version: u32,
    /// The encoder the embeddings came from (name or path, for the user's reference).
    pub encoder: String,
    /// Whether the encoder ran its int8 path when the head was trained.
    #[serde(default)]
    pub int8: bool,
    pub dim: usize,
    pub labels: Vec<String>,
    /// `labels.len()` rows of `dim` weights.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
    pub l2: f32,
    pub train_examples: usize,
    pub iterations: usize,
    pub final_loss: f64,
}

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    pub l2: f32,
    pub max_iter: usize,
    pub tol: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { l2: 1e-3, max_iter: 2000, tol: 1e-5 }
    }
}

#[allow(clippy::too_many_arguments)]
/// Mean loss and its gradient (`gw`: `C x d` row-major, `gb`: `C`) at (`w`, `b`).
pub fn loss_grad(x: &[Vec<f32>], y: &[usize], c: usize, w: &[f64], b: &[f64], l2: f64, gw: &mut [f64], gb: &mut [f64]) -> f64 {
    let d = w.len() / c;
    gw.fill(0.0);
    gb.fill(0.0);
    let mut loss = 0.0;
    let mut z = vec![0f64; c];
    for (xn, &yn) in x.iter().zip(y) {
        for (k, zk) in z.iter_mut().enumerate() {
            *zk = b[k] + w[k * d..(k + 1) * d].iter().zip(xn).map(|(a, &v)| a * v as f64).sum::<f64>();
        }
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        loss += max + sum.ln() - z[yn];
        for k in 0..c {
            let g = (z[k] - max).exp() / sum - if k == yn { 1.0 } else { 0.0 };
            gb[k] += g;
            for (o, &v) in gw[k * d..(k + 1) * d].iter_mut().zip(xn) {
                *o += g * v as f64;
            }
        }
    }
    let n = x.len().max(1) as f64;
    gw.iter_mut().for_each(|g| *g /= n);
    gb.iter_mut().for_each(|g| *g /= n);
    for (g, &wv) in gw.iter_mut().zip(w) {
        *g += l2 * wv;
    }
    loss / n + 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>()
}

/// Fits a head on embeddings `x` with labels `y` (indices into `labels`).
pub fn train(x: &[Vec<f32>], y: &[usize], labels: &[String], opts: TrainOptions, mut progress: impl FnMut(usize, f64)) -> Result<Head, ModelError> {
    let c = labels.len();
    let d = x.first().map_or(0, Vec::len);
    if x.is_empty() || x.len() != y.len() {
        return Err(ModelError::Config(format!("{} embeddings for {} labels", x.len(), y.len())));
    }
    if c < 2 {
        return Err(ModelError::Config("a classifier needs at least two labels".into()));
    }
    if x.iter().any(|v| v.len() != d) || y.iter().any(|&k| k >= c) {
        return Err(ModelError::Config("embeddings of different sizes, or a label index out of range".into()));
    }
    let l2 = opts.l2 as f64;
    let lip = x.iter().map(|v| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() + 1.0).fold(0.0, f64::max) / 2.0 + l2;
    let step = 1.0 / lip;
    let (mut w, mut b) = (vec![0f64; c * d], vec![0f64; c]);
    let (mut wp, mut bp) = (w.clone(), b.clone());
    let (mut gw, mut gb) = (vec![0f64; c * d], vec![0f64; c]);
    let (mut iterations, mut loss) = (0, f64::NAN);
    for it in 1..=opts.max_iter {
        // Nesterov: look ahead along the last step, take a gradient step from there.
        let mom = (it - 1) as f64 / (it + 2) as f64;
        let yw: Vec<f64> = w.iter().zip(&wp).map(|(a, p)| a + mom * (a - p)).collect();
        let yb: Vec<f64> = b.iter().zip(&bp).map(|(a, p)| a + mom * (a - p)).collect();
        loss = loss_grad(x, y, c, &yw, &yb, l2, &mut gw, &mut gb);
        let gnorm = gw.iter().chain(&gb).map(|g| g * g).sum::<f64>().sqrt();
        wp = std::mem::replace(&mut w, yw.iter().zip(&gw).map(|(a, g)| a - step * g).collect());
        bp = std::mem::replace(&mut b, yb.iter().zip(&gb).map(|(a, g)| a - step * g).collect());
        iterations = it;
        progress(it, loss);
        if gnorm < opts.tol {
            break;
        }
    }
    Ok(Head {
        format: HEAD_FORMAT.into(),
        version: HEAD_VERSION,
        encoder: String::new(),
        int8: false,
        dim: d,
        labels: labels.to_vec(),
        weights: w.chunks(d).map(|r| r.iter().map(|&v| v as f32).collect()).collect(),
        bias: b.iter().map(|&v| v as f32).collect(),
        l2: opts.l2,
        train_examples: x.len(),
        iterations,
        final_loss: loss,
    })
}

/// Largest weight or bias a head file may hold (trained heads stay far below: L2 keeps them near 1).
pub const MAX_WEIGHT: f32 = 1e6;

impl Head {
    /// Checks a head read from a file.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format != HEAD_FORMAT {
            return Err(ModelError::Config(format!("not a smelt classifier head (format {:?})", self.format)));
        }
        if self.version != HEAD_VERSION {
            return Err(ModelError::Config(format!("classifier head version {} is not supported (this smelt reads version {HEAD_VERSION})", self.version)));
        }
        let c = self.labels.len();
        if c < 2 || self.weights.len() != c || self.bias.len() != c || self.weights.iter().any(|r| r.len() != self.dim) {
            return Err(ModelError::Config(format!("classifier head shapes disagree: {c} labels, {} weight rows, {} biases, dim {}", self.weights.len(), self.bias.len(), self.dim)));
        }
        // Finite and of a size training can produce, so that scores cannot overflow.
        let values = self.weights.iter().flatten().chain(&self.bias);
        if let Some(v) = values.copied().find(|v| !v.is_finite() || v.abs() > MAX_WEIGHT) {
            return Err(ModelError::Config(format!("classifier head holds the weight {v:e}: weights and biases must be finite numbers of magnitude at most {MAX_WEIGHT} (train the head again)")));
        }
        Ok(())
    }

    /// Class probabilities for one embedding.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        let mut z: Vec<f32> = self.weights.iter().zip(&self.bias).map(|(w, b)| b + w.iter().zip(x).map(|(a, v)| a * v).sum::<f32>()).collect();
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = z.iter_mut().map(|v| {
            *v = (*v - max).exp();
            *v
        }).sum();
        z.iter_mut().for_each(|v| *v /= sum);
        z
    }

    /// The most probable class index.
    pub fn predict(&self, x: &[f32]) -> usize {
        let p = self.probabilities(x);
        (0..p.len()).fold(0, |best, k| if p[k] > p[best] { k } else { best })
    }
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Accuracy, per-class and macro-averaged precision/recall/F1, and the confusion matrix
/// (`confusion[true][predicted]`). A class never predicted has precision 0 (as scikit-learn
/// reports with `zero_division=0`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub classes: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<usize>>,
}

pub fn metrics(truth: &[usize], pred: &[usize], labels: &[String]) -> Metrics {
    let c = labels.len();
    let mut confusion = vec![vec![0usize; c]; c];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let classes: Vec<ClassMetrics> = (0..c)
        .map(|k| {
            let tp = confusion[k][k];
            let predicted: usize = (0..c).map(|t| confusion[t][k]).sum();
            let support: usize = confusion[k].iter().sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassMetrics { label: labels[k].clone(), precision, recall, f1, support }
        })
        .collect();
    let mean = |f: fn(&ClassMetrics) -> f64| classes.iter().map(f).sum::<f64>() / c.max(1) as f64;
    Metrics {
        examples: truth.len(),
        accuracy: ratio((0..c).map(|k| confusion[k][k]).sum(), truth.len()),
        macro_precision: mean(|m| m.precision),
        macro_recall: mean(|m| m.recall),
        macro_f1: mean(|m| m.f1),
        classes,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(seed: u64, n: usize, d: usize) -> Vec<Vec<f32>> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (c, d) = (3, 4);
        let x = points(1, 20, d);
        let y: Vec<usize> = (0..20).map(|i| i % c).collect();
        let w: Vec<f64> = (0..c * d).map(|i| (i as f64 * 0.37).sin()).collect();
        let b = vec![0.1, -0.2, 0.3];
        let (mut gw, mut gb) = (vec![0.0; c * d], vec![0.0; c]);
        loss_grad(&x, &y, c, &w, &b, 0.01, &mut gw, &mut gb);
        let h = 1e-6;
        let (mut tw, mut tb) = (vec![0.0; c * d], vec![0.0; c]);
        for i in 0..c * d {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss_grad(&x, &y, c, &p, &b, 0.01, &mut tw, &mut tb) - loss_grad(&x, &y, c, &m, &b, 0.01, &mut tw, &mut tb)) / (2.0 * h);
            assert!((fd - gw[i]).abs() < 1e-7, "dW[{i}]: finite difference {fd} vs {}", gw[i]);
        }
        for i in 0..c {
            let (mut p, mut m) = (b.clone(), b.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss_grad(&x, &y, c, &w, &p, 0.01, &mut tw, &mut tb) - loss_grad(&x, &y, c, &w, &m, 0.01, &mut tw, &mut tb)) / (2.0 * h);
            assert!((fd - gb[i]).abs() < 1e-7, "db[{i}]: finite difference {fd} vs {}", gb[i]);
        }
    }

    #[test]
    fn training_separates_separable_classes_and_reaches_a_stationary_point() {
        // Labels from a fixed linear rule: the head must recover it on the training points.
        let x = points(2, 300, 8);
        let y: Vec<usize> = x.iter().map(|v| if v[0] + 0.5 * v[3] > 0.1 { 1 } else if v[2] > 0.0 { 0 } else { 2 }).collect();
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let head = train(&x, &y, &labels, TrainOptions { l2: 1e-4, max_iter: 20_000, tol: 1e-6 }, |_, _| {}).unwrap();
        head.validate().unwrap();
        let pred: Vec<usize> = x.iter().map(|v| head.predict(v)).collect();
        let m = metrics(&y, &pred, &labels);
        assert!(m.accuracy > 0.97, "training accuracy {}", m.accuracy);
        // At the returned point the gradient is (nearly) zero.
        let w: Vec<f64> = head.weights.iter().flatten().map(|&v| v as f64).collect();
        let b: Vec<f64> = head.bias.iter().map(|&v| v as f64).collect();
        let (mut gw, mut gb) = (vec![0.0; w.len()], vec![0.0; 3]);
        loss_grad(&x, &y, 3, &w, &b, 1e-4, &mut gw, &mut gb);
        let g = gw.iter().chain(&gb).map(|v| v * v).sum::<f64>().sqrt();
        assert!(g < 1e-4, "gradient norm {g} after {} iterations", head.iterations);
    }

    #[test]
    fn metrics_by_hand() {
        // truth: a a a b b c ; predicted: a a b b c c
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let m = metrics(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], &labels);
        assert_eq!(m.confusion, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // a: P 2/2 R 2/3; b: P 1/2 R 1/2; c: P 1/2 R 1/1.
        let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
        let want = [(1.0, 2.0 / 3.0), (0.5, 0.5), (0.5, 1.0)];
        for (c, (p, r)) in m.classes.iter().zip(want) {
            assert!((c.precision - p).abs() < 1e-12 && (c.recall - r).abs() < 1e-12 && (c.f1 - f1(p, r)).abs() < 1e-12, "{c:?}");
        }
        assert!((m.macro_f1 - want.iter().map(|&(p, r)| f1(p, r)).sum::<f64>() / 3.0).abs() < 1e-12);
    }

    #[test]
    fn heads_with_wrong_version_or_shapes_are_refused() {
        let labels: Vec<String> = ["x", "y"].map(String::from).to_vec();
        let head = train(&points(3, 10, 2), &[0, 1, 0, 1, 0, 1, 0, 1, 0, 1], &labels, TrainOptions::default(), |_, _| {}).unwrap();
        head.validate().unwrap();
        let mut h = head.clone();
        h.version = 99;
        assert!(h.validate().is_err());
        let mut h = head.clone();
        h.weights[1].pop();
        assert!(h.validate().is_err());
        assert!(train(&points(3, 3, 2), &[0, 1, 5], &labels, TrainOptions::default(), |_, _| {}).is_err());
    }
}
