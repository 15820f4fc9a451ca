//! Unstructured and N:M pruning of weight matrices: magnitude, Wanda and SparseGPT.
//!
//! A matrix `W` (`rows x cols`, one row per output) reads inputs `x` (`cols` wide) whose
//! calibration statistics are the column sums of squares `s_j = sum_r x_rj^2` and, for
//! SparseGPT, the Hessian `H = X^T X` ([`crate::calib`]). Pruning sets a fraction of `W` to zero:
//!
//! - **magnitude**: the entries of least `|w_ij|` go;
//! - **Wanda** (Sun, Liu, Bair and Kolter 2023, "A Simple and Effective Pruning Approach for
//!   Large Language Models"): the entries of least `|w_ij| * ||X_j||_2`, `||X_j|| = sqrt(s_j)`,
//!   compared within each output row; no weight is updated;
//! - **SparseGPT** (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be
//!   Accurately Pruned in One-Shot", Algorithm 1): with `U` the upper Cholesky factor of the
//!   dampened `H^-1` (as GPTQ, [`crate::gptq`]), the columns run in blocks of `B` (128). At a
//!   block's start, its mask is chosen from the current weights by the score
//!   `w_ij^2 / U_jj^2`; then column by column, each pruned entry's error `e = w_ij / U_jj` is
//!   pushed onto the later columns of its row, `w_ik -= e U_jk` (`k > j`), so the kept
//!   weights absorb what the pruned ones did.
//!
//! Which entries compete: per output row ([`Scope::Row`], Wanda's choice) or the whole matrix
//! ([`Scope::Matrix`]; for SparseGPT the whole block over every row, the paper's choice). With
//! sparsity `p` exactly `floor(p n)` of each compared set of `n` entries go, the lowest scores
//! first and, among equal scores, the lower index first. **N:M** keeps `N` of every `M`
//! consecutive entries of a row (2:4 keeps 2 of 4): the `M - N` lowest scores of each group go;
//! SparseGPT chooses each group's mask when the group's first column is reached.
//!
//! [`model`] prunes every block matrix of a decoder and writes the file, at the same sparsity
//! in every layer or at [`owl`]'s outlier-weighted layer sparsities. Structured: [`layers`]
//! removes whole layers, chosen by angular distance or block influence; [`width`] removes FFN
//! channels and attention head groups ([`columns`]: the OBS step that refits what stays);
//! [`vocab`] keeps only the tokens a corpus uses.

pub mod columns;
pub mod encoder;
pub mod layers;
pub mod model;
pub mod owl;
pub mod vocab;
pub mod width;

use std::borrow::Cow;
use std::path::Path;

use smelt_formats::fsutil::write_atomic;
use smelt_formats::gguf::{GgufWriter, Metadata, TensorSpec};
use smelt_formats::{GgufError, GgufFile};
use smelt_kernels::pool::{Disjoint, ThreadPool};

use crate::gptq::{inverse_factor, GptqError};

/// How entries are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
        }
    }

    /// What a method needs from calibration: the column norms (Wanda), the Hessian (SparseGPT).
    pub fn needs_norms(self) -> bool {
        self == Method::Wanda
    }

    pub fn needs_hessian(self) -> bool {
        self == Method::SparseGpt
    }

    /// The comparison group each method's paper uses.
    pub fn default_scope(self) -> Scope {
        match self {
            Method::Magnitude | Method::SparseGpt => Scope::Matrix,
            Method::Wanda => Scope::Row,
        }
    }
}

/// Which entries go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// This fraction of each compared set, in `[0, 1)`.
    Unstructured(f64),
    /// `n` kept of every `m` consecutive entries of a row.
    NM { n: usize, m: usize },
}

impl Pattern {
    /// The fraction of entries a matrix loses.
    pub fn sparsity(self) -> f64 {
        match self {
            Pattern::Unstructured(p) => p,
            Pattern::NM { n, m } => (m - n) as f64 / m as f64,
        }
    }
}

/// Which entries compete for an unstructured pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Row,
    Matrix,
}

/// Pruning's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneOptions {
    pub method: Method,
    pub pattern: Pattern,
    pub scope: Scope,
    /// SparseGPT: `H += damp * mean(diag H) I`.
    pub damp: f64,
    /// SparseGPT: columns per mask-selection block.
    pub block: usize,
}

impl PruneOptions {
    pub fn new(method: Method, pattern: Pattern) -> PruneOptions {
        PruneOptions { method, pattern, scope: method.default_scope(), damp: 0.01, block: 128 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("sparsity {0} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5")]
    Sparsity(f64),
    #[error("the pattern {n}:{m} keeps {n} of every {m} weights: it needs 0 < {n} < {m}")]
    Pattern { n: usize, m: usize },
    #[error("the pattern {n}:{m} needs rows whose length is a multiple of {m}; this matrix's rows have {cols}")]
    PatternRows { n: usize, m: usize, cols: usize },
    #[error("{0} needs calibration statistics of the matrix's inputs (give --calib)")]
    NoCalibration(&'static str),
    #[error("the input statistics have {found} values, expected {expected} (another model's?)")]
    StatsShape { found: usize, expected: usize },
    #[error("the matrix has {found} values, not {rows} x {cols}")]
    Shape { found: usize, rows: usize, cols: usize },
    #[error(transparent)]
    Hessian(#[from] GptqError),
    #[error("OWL's layer sparsities {sparsity} +- {lambda} must lie within [0, 1) and its outlier threshold ({threshold}) be positive: lower --owl-lambda")]
    Owl { sparsity: f64, lambda: f64, threshold: f64 },
    #[error("OWL sets each layer's unstructured sparsity; it does not apply to N:M patterns")]
    OwlPattern,
    #[error("{ty} stores 2:4 sparse matrices; prune with --pattern 2:4 to write it (or write {dense}, its dense twin)")]
    SparseTypeNeeds24 { ty: smelt_formats::GgmlType, dense: smelt_formats::GgmlType },
    #[error("cannot remove {n_remove} of {n_groups} groups of {group} columns from a matrix of {cols} columns")]
    Groups { group: usize, n_groups: usize, n_remove: usize, cols: usize },
}

/// Writes a GGUF of `file`'s version with `meta` and `tensors` (in order) to `out`, atomically;
/// returns the bytes written. The structured methods' writer (they change shapes and metadata).
pub(crate) fn write_gguf(file: &GgufFile, meta: &Metadata, tensors: Vec<(TensorSpec, Cow<[u8]>)>, out: &Path) -> Result<u64, crate::CompressError> {
    let (specs, data): (Vec<TensorSpec>, Vec<Cow<[u8]>>) = tensors.into_iter().unzip();
    write_atomic(
        out,
        |w| -> Result<(), crate::CompressError> {
            let mut gw = GgufWriter::new(&mut *w, file.header.version, meta, specs)?;
            for d in &data {
                gw.write_tensor(d)?;
            }
            gw.finish()?;
            Ok(())
        },
        |path, source| crate::CompressError::Gguf(GgufError::Write { path, source }),
    )?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

/// What calibration saw of one matrix's inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct InputView<'a> {
    /// `sum_r x_rj^2` per column (Wanda).
    pub sum2: Option<&'a [f64]>,
    /// `H = X^T X` (`cols x cols`, SparseGPT).
    pub hessian: Option<&'a [f64]>,
}

/// Checks a pattern's settings on its own.
pub fn check_pattern(pattern: Pattern) -> Result<(), PruneError> {
    match pattern {
        Pattern::Unstructured(p) if !(0.0..1.0).contains(&p) => Err(PruneError::Sparsity(p)),
        Pattern::NM { n, m } if n == 0 || n >= m => Err(PruneError::Pattern { n, m }),
        _ => Ok(()),
    }
}

/// Marks in `mask` the `k` entries of `scores` that go: the lowest, the lower index first among
/// equals (`mask` and `scores` alike long).
fn lowest(scores: &[f64], k: usize, mask: &mut [bool]) {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    for &i in &idx[..k.min(idx.len())] {
        mask[i] = true;
    }
}

/// The mask of a score matrix (`rows x cols`) under an unstructured pattern or N:M.
fn select(scores: &[f64], rows: usize, cols: usize, pattern: Pattern, scope: Scope) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    match (pattern, scope) {
        (Pattern::Unstructured(p), Scope::Matrix) => lowest(scores, (p * scores.len() as f64).floor() as usize, &mut mask),
        (Pattern::Unstructured(p), Scope::Row) => {
            let k = (p * cols as f64).floor() as usize;
            for (s, m) in scores.chunks_exact(cols).zip(mask.chunks_exact_mut(cols)) {
                lowest(s, k, m);
            }
        }
        (Pattern::NM { n, m }, _) => {
            for (s, mk) in scores.chunks_exact(m).zip(mask.chunks_exact_mut(m)) {
                lowest(s, m - n, mk);
            }
        }
    }
    debug_assert_eq!(mask.len(), rows * cols);
    mask
}

/// Prunes `w` (`rows x cols`, row-major) in place as `opts` says, with `input` the statistics
/// of its inputs (what the method needs of them). Returns the number of zero entries after.
pub fn prune_matrix(pool: &ThreadPool, w: &mut [f32], rows: usize, cols: usize, input: InputView, opts: &PruneOptions) -> Result<usize, PruneError> {
    check_pattern(opts.pattern)?;
    if w.len() != rows * cols {
        return Err(PruneError::Shape { found: w.len(), rows, cols });
    }
    if let Pattern::NM { n, m } = opts.pattern {
        if !cols.is_multiple_of(m) {
            return Err(PruneError::PatternRows { n, m, cols });
        }
    }
    match opts.method {
        Method::Magnitude | Method::Wanda => {
            let norms: Option<Vec<f64>> = match (opts.method, input.sum2) {
                (Method::Magnitude, _) => None,
                (_, Some(s)) if s.len() == cols => Some(s.iter().map(|v| v.max(0.0).sqrt()).collect()),
                (_, Some(s)) => return Err(PruneError::StatsShape { found: s.len(), expected: cols }),
                (_, None) => return Err(PruneError::NoCalibration("Wanda")),
            };
            let scores: Vec<f64> = w.iter().enumerate().map(|(i, &v)| v.abs() as f64 * norms.as_ref().map_or(1.0, |n| n[i % cols])).collect();
            for (v, &gone) in w.iter_mut().zip(&select(&scores, rows, cols, opts.pattern, opts.scope)) {
                if gone {
                    *v = 0.0;
                }
            }
        }
        Method::SparseGpt => {
            let h = input.hessian.ok_or(PruneError::NoCalibration("SparseGPT"))?;
            if h.len() != cols * cols {
                return Err(PruneError::StatsShape { found: h.len(), expected: cols * cols });
            }
            sparsegpt(pool, w, rows, cols, h, opts)?;
        }
    }
    Ok(w.iter().filter(|v| **v == 0.0).count())
}

/// SparseGPT's column loop (see the module's doc), rows in parallel within each block.
fn sparsegpt(pool: &ThreadPool, w: &mut [f32], rows: usize, cols: usize, h: &[f64], opts: &PruneOptions) -> Result<(), PruneError> {
    let (u, dead) = inverse_factor(h, cols, opts.damp)?;
    for row in w.chunks_exact_mut(cols) {
        for (v, &d) in row.iter_mut().zip(&dead) {
            if d {
                *v = 0.0;
            }
        }
    }
    let diag: Vec<f64> = (0..cols).map(|j| u[j * cols + j] as f64).collect();
    let step = match opts.pattern {
        Pattern::NM { m, .. } => opts.block.max(1).div_ceil(m) * m,
        Pattern::Unstructured(_) => opts.block.max(1),
    };
    for i1 in (0..cols).step_by(step) {
        let i2 = (i1 + step).min(cols);
        let count = i2 - i1;
        // An unstructured block's mask, from the current weights of every row.
        let block_mask = match opts.pattern {
            Pattern::Unstructured(_) => {
                let scores: Vec<f64> = (0..rows * count).map(|k| {
                    let (r, j) = (k / count, i1 + k % count);
                    (w[r * cols + j] as f64 / diag[j]).powi(2)
                }).collect();
                Some(select(&scores, rows, count, opts.pattern, opts.scope))
            }
            Pattern::NM { .. } => None,
        };
        let sink = Disjoint::new(w);
        pool.for_chunks(rows, 8, &|range| {
            let mut gone = vec![false; count];
            for r in range {
                // SAFETY: each row belongs to the one task that holds it.
                let row = unsafe { sink.slice(r * cols..(r + 1) * cols) };
                if let Some(bm) = &block_mask {
                    gone.copy_from_slice(&bm[r * count..(r + 1) * count]);
                }
                for j in i1..i2 {
                    if let Pattern::NM { n, m } = opts.pattern {
                        if (j - i1) % m == 0 {
                            let scores: Vec<f64> = (j..j + m).map(|k| (row[k] as f64 / diag[k]).powi(2)).collect();
                            let mut mk = vec![false; m];
                            lowest(&scores, m - n, &mut mk);
                            gone[j - i1..j - i1 + m].copy_from_slice(&mk);
                        }
                    }
                    if !gone[j - i1] {
                        continue;
                    }
                    let e = row[j] / u[j * cols + j];
                    row[j] = 0.0;
                    let urow = &u[j * cols..(j + 1) * cols];
                    for (x, &uk) in row[j + 1..].iter_mut().zip(&urow[j + 1..]) {
                        *x -= e * uk;
                    }
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked() {
        assert!(matches!(check_pattern(Pattern::Unstructured(1.0)), Err(PruneError::Sparsity(_))));
        assert!(matches!(check_pattern(Pattern::Unstructured(-0.1)), Err(PruneError::Sparsity(_))));
        assert!(matches!(check_pattern(Pattern::Unstructured(f64::NAN)), Err(PruneError::Sparsity(_))));
        assert!(matches!(check_pattern(Pattern::NM { n: 4, m: 4 }), Err(PruneError::Pattern { .. })));
        assert!(matches!(check_pattern(Pattern::NM { n: 0, m: 4 }), Err(PruneError::Pattern { .. })));
        check_pattern(Pattern::NM { n: 2, m: 4 }).unwrap();
        let pool = ThreadPool::new(1);
        let mut w = vec![1.0f32; 2 * 6];
        let e = prune_matrix(&pool, &mut w, 2, 6, InputView::default(), &PruneOptions::new(Method::Magnitude, Pattern::NM { n: 2, m: 4 }));
        assert!(matches!(e, Err(PruneError::PatternRows { cols: 6, .. })), "{e:?}");
        let e = prune_matrix(&pool, &mut w, 2, 6, InputView::default(), &PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.5)));
        assert!(matches!(e, Err(PruneError::NoCalibration(_))), "{e:?}");
    }

    /// Exactly `floor(p n)` of each row go, the smallest first; ties by index.
    #[test]
    fn lowest_counts_and_ties() {
        let scores = [3.0, 1.0, 1.0, 2.0, 0.5];
        let mut m = [false; 5];
        lowest(&scores, 2, &mut m);
        assert_eq!(m, [false, true, false, false, true]);
        let mask = select(&[1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0], 2, 4, Pattern::NM { n: 2, m: 4 }, Scope::Row);
        assert_eq!(mask, [true, true, false, false, false, false, true, true]);
    }
}
