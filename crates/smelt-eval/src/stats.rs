//! Summary statistics shared by every measurement: percentiles, mean with its standard error,
//! and the distribution summary that reports print.
//!
//! Percentiles interpolate linearly between order statistics: for sorted `v` of length `n` and
//! fraction `q`, `h = q (n - 1)`, `p = v[floor h] + (h - floor h) (v[floor h + 1] - v[floor h])`.
//! That is numpy's default (`method="linear"`) and what llama-perplexity prints, so our KLD
//! percentiles are comparable with both.

use serde::{Deserialize, Serialize};

/// The `q`-quantile (`0 <= q <= 1`) of ascending `sorted` values; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = (h.floor() as usize).min(n - 1);
            let f = h - i as f64;
            let j = (i + 1).min(n - 1);
            sorted[i] + f * (sorted[j] - sorted[i])
        }
    }
}

/// Mean and standard error of the mean from running sums, as llama-perplexity computes them:
/// `mean = s1/n`, `stderr = sqrt((s2/n - mean^2) / (n - 1))` (0 when `n < 2`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Running {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Running {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }

    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let m = self.mean();
        let var = (self.sum_sq / self.n as f64 - m * m).max(0.0);
        (var / (self.n - 1) as f64).sqrt()
    }
}

/// A distribution in a few numbers: count, mean, min, median, p90, p95, p99, p99.9, max.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `values` (sorted in place; NaNs sort last and are counted).
    pub fn of(values: &mut [f64]) -> Summary {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n == 0 {
            return Summary { n, mean: f64::NAN, min: f64::NAN, p50: f64::NAN, p90: f64::NAN, p95: f64::NAN, p99: f64::NAN, p999: f64::NAN, max: f64::NAN };
        }
        let p = |q| percentile(values, q);
        Summary {
            n,
            mean: values.iter().sum::<f64>() / n as f64,
            min: values[0],
            p50: p(0.5),
            p90: p(0.9),
            p95: p(0.95),
            p99: p(0.99),
            p999: p(0.999),
            max: values[n - 1],
        }
    }

    /// The low tail instead of the high one (for cosines, where the worst are the smallest):
    /// the returned `p90`, `p95`, `p99`, `p999` are the 10th, 5th, 1st and 0.1th percentiles.
    pub fn low_tail(values: &mut [f64]) -> Summary {
        let mut s = Summary::of(values);
        if s.n > 0 {
            s.p90 = percentile(values, 0.1);
            s.p95 = percentile(values, 0.05);
            s.p99 = percentile(values, 0.01);
            s.p999 = percentile(values, 0.001);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_order_statistics() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 8.0);
        // h = 0.5 * 3 = 1.5: halfway between 2 and 4.
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(percentile(&[7.0], 0.9), 7.0);
    }

    #[test]
    fn running_stderr_matches_the_two_pass_formula() {
        let xs = [0.5, 1.5, 2.0, 4.0, 7.5];
        let mut r = Running::default();
        xs.iter().for_each(|&x| r.push(x));
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        let var_pop = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        assert!((r.mean() - m).abs() < 1e-12);
        assert!((r.stderr() - (var_pop / (n - 1.0)).sqrt()).abs() < 1e-12);
        assert_eq!(Running::default().stderr(), 0.0);
    }
}
