//! Outlier-weighted layerwise sparsity (OWL; Yin et al. 2023, "Outlier Weighed Layerwise
//! Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity").
//!
//! Layers differ in how many weights matter far more than the rest, and the layers with the most
//! such outliers lose the most when pruned as hard as the others. OWL measures each layer's
//! outlier ratio on Wanda's scores `A_ij = |w_ij| * ||X_j||_2` over all of the layer's block
//! matrices together:
//!
//! `D_l = #{ A_ij > M * mean(A) } / #A`   (the paper's `M`: 5 for LLaMA)
//!
//! and gives each layer a sparsity within `[S - lambda, S + lambda]` around the target `S`,
//! lower where `D_l` is higher: the ratios are scaled to `[0, 2 lambda]`,
//! `r_l = 2 lambda (D_l - min D) / (max D - min D)`, centred on the target density,
//! `density_l = r_l - mean(r) + (1 - S)`, so `sparsity_l = 1 - density_l` and the mean
//! sparsity over the layers is `S` (each layer has the same parameter count in a uniform model).

use super::PruneError;

/// OWL's two settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Owl {
    /// An outlier scores more than this many times its layer's mean score (`M`).
    pub threshold: f64,
    /// Layer sparsities lie within the target plus or minus this (`lambda`).
    pub lambda: f64,
}

impl Default for Owl {
    /// The paper's settings for LLaMA: `M = 5`, `lambda = 0.08`.
    fn default() -> Owl {
        Owl { threshold: 5.0, lambda: 0.08 }
    }
}

/// One of a layer's matrices: its weights (`rows x cols`, row-major) and the column sums of
/// squares of its input over the calibration text (`cols`).
#[derive(Clone, Copy)]
pub struct ScoredMatrix<'a> {
    pub w: &'a [f32],
    pub cols: usize,
    pub sum2: &'a [f64],
}

/// A layer's outlier ratio `D_l`: the fraction of its Wanda scores above `threshold` times
/// their mean (over every matrix given).
pub fn outlier_ratio(matrices: &[ScoredMatrix], threshold: f64) -> Result<f64, PruneError> {
    let mut norms = Vec::with_capacity(matrices.len());
    for m in matrices {
        if m.sum2.len() != m.cols {
            return Err(PruneError::StatsShape { found: m.sum2.len(), expected: m.cols });
        }
        if m.cols == 0 || m.w.len() % m.cols != 0 {
            return Err(PruneError::Shape { found: m.w.len(), rows: m.w.len() / m.cols.max(1), cols: m.cols });
        }
        norms.push(m.sum2.iter().map(|s| s.max(0.0).sqrt()).collect::<Vec<f64>>());
    }
    let (mut sum, mut count) = (0.0, 0usize);
    for (m, n) in matrices.iter().zip(&norms) {
        sum += scores(m, n).sum::<f64>();
        count += m.w.len();
    }
    if count == 0 {
        return Ok(0.0);
    }
    let cut = threshold * sum / count as f64;
    let above: usize = matrices.iter().zip(&norms).map(|(m, n)| scores(m, n).filter(|a| *a > cut).count()).sum();
    Ok(above as f64 / count as f64)
}

/// The Wanda scores `|w_ij| * ||X_j||` of one matrix, row by row (`norms`: `||X_j||`).
fn scores<'a>(m: &ScoredMatrix<'a>, norms: &'a [f64]) -> impl Iterator<Item = f64> + 'a {
    m.w.chunks_exact(m.cols).flat_map(move |row| row.iter().zip(norms).map(|(w, n)| (*w as f64).abs() * n))
}

/// Each layer's sparsity from the layers' outlier ratios, around the target `sparsity` (see the
/// module's formula). Errors when a layer's sparsity would leave `[0, 1)`.
pub fn layer_sparsities(ratios: &[f64], sparsity: f64, owl: Owl) -> Result<Vec<f64>, PruneError> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(PruneError::Sparsity(sparsity));
    }
    if !(owl.lambda >= 0.0 && sparsity - owl.lambda >= 0.0 && sparsity + owl.lambda < 1.0 && owl.threshold > 0.0 && owl.threshold.is_finite()) {
        return Err(PruneError::Owl { sparsity, lambda: owl.lambda, threshold: owl.threshold });
    }
    if ratios.is_empty() {
        return Ok(Vec::new());
    }
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        return Ok(vec![sparsity; ratios.len()]);
    }
    let scaled: Vec<f64> = ratios.iter().map(|r| 2.0 * owl.lambda * (r - lo) / (hi - lo)).collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    // Rounding may put an end a hair outside [S - lambda, S + lambda]; keep it inside [0, 1).
    Ok(scaled.iter().map(|r| (1.0 - (r - mean + 1.0 - sparsity)).clamp(0.0, sparsity + owl.lambda)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsities_average_to_the_target_and_spare_outlier_layers() {
        let s = layer_sparsities(&[0.01, 0.03, 0.02, 0.01], 0.5, Owl { threshold: 5.0, lambda: 0.1 }).unwrap();
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-12, "{s:?}");
        // The layer with the most outliers is pruned least, by 2 lambda less than the fewest's.
        assert!(s[1] < s[2] && s[2] < s[0] && s[0] == s[3], "{s:?}");
        assert!((s[0] - s[1] - 0.2).abs() < 1e-12, "{s:?}");
        assert_eq!(layer_sparsities(&[0.02; 3], 0.5, Owl::default()).unwrap(), vec![0.5; 3]);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(matches!(layer_sparsities(&[0.1, 0.2], 0.95, Owl::default()), Err(PruneError::Owl { .. })));
        assert!(matches!(layer_sparsities(&[0.1, 0.2], 0.05, Owl::default()), Err(PruneError::Owl { .. })));
        assert!(matches!(layer_sparsities(&[0.1, 0.2], 0.5, Owl { threshold: 0.0, lambda: 0.1 }), Err(PruneError::Owl { .. })));
        assert!(matches!(layer_sparsities(&[0.1], 1.0, Owl::default()), Err(PruneError::Sparsity(_))));
    }

    #[test]
    fn outlier_ratio_counts_scores_above_the_threshold() {
        // Scores |w| * sqrt(s): row 0: 1*1, 2*2; row 1: 10*1, 1*2 -> mean 4.25; above 2x = 8.5: one of four.
        let w = [1.0, -2.0, -10.0, 1.0];
        let sum2 = [1.0, 4.0];
        let r = outlier_ratio(&[ScoredMatrix { w: &w, cols: 2, sum2: &sum2 }], 2.0).unwrap();
        assert_eq!(r, 0.25);
        assert!(outlier_ratio(&[ScoredMatrix { w: &w, cols: 2, sum2: &[1.0] }], 2.0).is_err());
    }
}
