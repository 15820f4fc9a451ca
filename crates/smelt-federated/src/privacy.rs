//! Client-side differential privacy: the update is clipped and noised before it leaves, and an
//! accountant says what that is worth.
//!
//! Update privacy (client level, DP-FedAvg of McMahan et al. 2018 done on the client): with the
//! server's parameters `w0` and the locally trained `w`,
//! ```text
//! d  = w - w0
//! d' = d * min(1, C / |d|) + N(0, (sigma C)^2 I)      sent: w0 + d'
//! ```
//! so one client's data moves what it sends by at most `C` before the noise.
//!
//! Accountant: Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019, section
//! 3.3) at integer orders `a`, for sampling rate `q` and noise multiplier `sigma`:
//! ```text
//! A_a      = sum_{k=0..a} binom(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2))
//! rdp(a)   = T ln(A_a) / (a - 1)                                  (T steps composed)
//! epsilon  = min_a  rdp(a) + ln((a - 1) / a) - (ln delta + ln a) / (a - 1)
//! ```
//! (the conversion of Balle et al. 2020, Theorem 21). With `q = 1` this is the Gaussian
//! mechanism, `rdp(a) = T a / (2 sigma^2)`.

use smelt_train::order::SplitMix64;

use crate::npy::Tensor;

/// Clipping and noise of a client's update.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct UpdatePrivacy {
    /// The clipping norm `C`.
    pub clip: f64,
    /// The noise multiplier `sigma` (noise standard deviation `sigma C` per coordinate).
    pub noise_multiplier: f64,
}

impl UpdatePrivacy {
    /// Clips and noises the update from `start` to `params` in place; returns its norm before
    /// clipping.
    pub fn apply(&self, start: &[Tensor], params: &mut [Tensor], seed: u64) -> f64 {
        let norm = start.iter().zip(params.iter()).flat_map(|(a, b)| a.data.iter().zip(&b.data)).map(|(a, b)| ((b - a) as f64).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > self.clip { self.clip / norm } else { 1.0 };
        let std = self.noise_multiplier * self.clip;
        let mut rng = SplitMix64(seed ^ 0xD1FF_E4E7_1A1C_0DE5);
        for (a, b) in start.iter().zip(params.iter_mut()) {
            for (w0, w) in a.data.iter().zip(b.data.iter_mut()) {
                let d = (*w - w0) as f64 * scale + if std > 0.0 { std * rng.normal() } else { 0.0 };
                *w = (*w0 as f64 + d) as f32;
            }
        }
        norm
    }
}

/// `ln(A_a) / (a - 1)` of one step (see the module doc).
pub fn rdp_step(q: f64, sigma: f64, order: u32) -> f64 {
    let a = order as f64;
    if q >= 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    // ln binom(a, k) by the running product; terms in log space, summed by log-sum-exp.
    let mut ln_binom = 0.0;
    let terms: Vec<f64> = (0..=order)
        .map(|k| {
            let k = k as f64;
            if k > 0.0 {
                ln_binom += ((a - k + 1.0) / k).ln();
            }
            let kq = if k > 0.0 { k * q.ln() } else { 0.0 };
            let rest = if a - k > 0.0 { (a - k) * (1.0 - q).ln() } else { 0.0 };
            ln_binom + kq + rest + (k * k - k) / (2.0 * sigma * sigma)
        })
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()) / (a - 1.0)
}

/// The `(epsilon, order)` of `steps` compositions of the sampled Gaussian mechanism at `delta`;
/// infinite without noise.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> (f64, u32) {
    if sigma <= 0.0 || steps == 0 || q <= 0.0 {
        return (if steps == 0 || q <= 0.0 { 0.0 } else { f64::INFINITY }, 0);
    }
    (2..=256u32)
        .map(|order| {
            let a = order as f64;
            let rdp = steps as f64 * rdp_step(q.min(1.0), sigma, order);
            (rdp + ((a - 1.0) / a).ln() - (delta.ln() + a.ln()) / (a - 1.0), order)
        })
        .fold((f64::INFINITY, 0), |best, e| if e.0 < best.0 { e } else { best })
}

/// The smallest noise multiplier (to 0.1%) whose `epsilon` after `steps` is at most `target`.
pub fn noise_for(q: f64, steps: u64, delta: f64, target: f64) -> Option<f64> {
    if target.is_nan() || target <= 0.0 {
        return None;
    }
    let (mut lo, mut hi) = (0.05, 1000.0);
    if epsilon(q, hi, steps, delta).0 > target {
        return None;
    }
    while hi / lo > 1.001 {
        let mid = (lo * hi).sqrt();
        if epsilon(q, mid, steps, delta).0 > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sampling_is_the_gaussian_mechanism() {
        for (sigma, order) in [(1.0, 2), (3.2, 7), (0.7, 30)] {
            let general = {
                // q just below 1: the sum's k = a term dominates.
                rdp_step(1.0 - 1e-12, sigma, order)
            };
            let closed = order as f64 / (2.0 * sigma * sigma);
            assert!((general - closed).abs() < 1e-6 * closed.max(1.0), "{general} vs {closed}");
        }
    }

    #[test]
    fn more_noise_or_fewer_steps_cost_less() {
        let (e1, _) = epsilon(0.1, 1.0, 100, 1e-5);
        assert!(epsilon(0.1, 2.0, 100, 1e-5).0 < e1);
        assert!(epsilon(0.1, 1.0, 10, 1e-5).0 < e1);
        assert!(epsilon(0.05, 1.0, 100, 1e-5).0 < e1);
        let s = noise_for(0.1, 100, 1e-5, 2.0).unwrap();
        assert!(epsilon(0.1, s, 100, 1e-5).0 <= 2.0 && epsilon(0.1, s / 1.01, 100, 1e-5).0 > 2.0);
    }

    #[test]
    fn an_update_is_clipped_to_the_norm() {
        let start = vec![Tensor::new(vec![2], vec![1.0, 1.0])];
        let mut p = vec![Tensor::new(vec![2], vec![4.0, 5.0])];
        let norm = UpdatePrivacy { clip: 1.0, noise_multiplier: 0.0 }.apply(&start, &mut p, 0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((p[0].data[0] - 1.6).abs() < 1e-6 && (p[0].data[1] - 1.8).abs() < 1e-6, "{:?}", p[0].data);
    }
}
