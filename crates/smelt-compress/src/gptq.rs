//! GPTQ into ggml block types, after Frantar, Ashkboos, Hoefler and Alistarh 2022, "GPTQ:
//! Accurate Post-Training Quantization for Generative Pre-trained Transformers" (Algorithm 1).
//!
//! For a weight matrix `W` (`rows x cols`, one row per output) whose inputs `X` gave the
//! Hessian `H = X^T X` (`cols x cols`), the layer's output error `||(W - Q) X^T||^2` is reduced by
//! quantizing the columns one at a time and moving each column's rounding error onto the columns
//! not yet quantized:
//!
//! 1. dampen: `H += lambda I`, `lambda = damp * mean(diag H)` (1% by default); a column whose input
//!    was always zero gets `H_jj = 1` and its weights zeroed (they never mattered);
//! 2. with act-order, columns run by descending `H_jj` (the most active inputs first);
//! 3. `U` = the upper Cholesky factor of `H^-1` (`H^-1 = U^T U`, via `faer`);
//! 4. column `j`: every row's element is rounded to its ggml block's grid, then the error
//!    `e = (w_j - q_j) / U_jj` updates the later columns, `w_k -= e U_jk` for `k > j`.
//!
//! A block's grid (its scales, hence the values its levels can take) is decided when its first
//! column is reached, by the type's importance-weighted quantizer on the block's current values
//! (so the scales see the error already pushed into the block); with act-order the columns of a
//! block no longer run together, so every grid is decided from the original weights first
//! ("static groups"). Rows are independent given `U`: they run in parallel, each row's columns
//! in order.

use smelt_formats::quant::grid::{supports_grid, BlockGrid};
use smelt_formats::{GgmlType, QuantError};
use smelt_kernels::pool::{Disjoint, ThreadPool};

/// GPTQ's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// `lambda = damp * mean(diag H)`.
    pub damp: f64,
    /// Columns by descending Hessian diagonal, with grids decided first.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp: 0.01, act_order: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{ty} has no block grid for GPTQ (types with one: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K to Q6_K)")]
    Unsupported { ty: GgmlType },
    #[error("the Hessian is {found} values, expected {cols} x {cols}")]
    HessianShape { found: usize, cols: usize },
    #[error("the dampened Hessian is not positive definite (damp {damp}): raise the dampening")]
    NotPositiveDefinite { damp: f64 },
}

/// `U`, the upper Cholesky factor of the inverse of the dampened `H` (row-major, f32), and the
/// columns whose input was always zero.
pub(crate) fn inverse_factor(h: &[f64], cols: usize, damp: f64) -> Result<(Vec<f32>, Vec<bool>), GptqError> {
    use faer::linalg::solvers::DenseSolveCore;
    let dead: Vec<bool> = (0..cols).map(|j| h[j * cols + j] <= 0.0).collect();
    let live = dead.iter().filter(|d| !**d).count().max(1);
    let mean_diag = (0..cols).filter(|&j| !dead[j]).map(|j| h[j * cols + j]).sum::<f64>() / live as f64;
    let lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    let hm = faer::Mat::<f64>::from_fn(cols, cols, |i, j| {
        if dead[i] || dead[j] {
            if i == j { 1.0 } else { 0.0 }
        } else {
            h[i * cols + j] + if i == j { lambda } else { 0.0 }
        }
    });
    let inv = hm.llt(faer::Side::Lower).map_err(|_| GptqError::NotPositiveDefinite { damp })?.inverse();
    let l = inv.llt(faer::Side::Lower).map_err(|_| GptqError::NotPositiveDefinite { damp })?;
    let l = l.L();
    // U = L^T: row j of U is column j of L.
    let mut u = vec![0f32; cols * cols];
    for j in 0..cols {
        for k in j..cols {
            u[j * cols + k] = l[(k, j)] as f32;
        }
    }
    Ok((u, dead))
}

/// One matrix to quantize and what calibration gave for its inputs.
#[derive(Clone, Copy, Debug)]
pub struct GptqInput<'a> {
    /// `rows x cols`, row-major (one row per output).
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// `H = X^T X`, `cols x cols`, row-major.
    pub h: &'a [f64],
    /// The columns' importance (weights the grids' searches), when known.
    pub importance: Option<&'a [f32]>,
}

/// Quantizes the matrix into `ty` with GPTQ. Returns its bytes in `ty`, rows of whole blocks as
/// every ggml reader expects.
pub fn gptq(pool: &ThreadPool, input: GptqInput, ty: GgmlType, opts: GptqOptions) -> Result<Vec<u8>, GptqError> {
    let GptqInput { w, rows, cols, h, importance } = input;
    if !supports_grid(ty) {
        return Err(GptqError::Unsupported { ty });
    }
    if h.len() != cols * cols {
        return Err(GptqError::HessianShape { found: h.len(), cols });
    }
    let be = ty.block_elems();
    if !cols.is_multiple_of(be) || w.len() != rows * cols {
        return Err(QuantError::NotBlockMultiple { ty, n: cols, block: be }.into());
    }
    let (u, dead) = inverse_factor(h, cols, opts.damp)?;
    // Processing order and, for each position, the original column.
    let mut order: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        order.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    // U in processing order (rows and columns permuted alike).
    let up: Vec<f32> = if opts.act_order { (0..cols * cols).map(|i| u[order[i / cols] * cols + order[i % cols]]).collect() } else { u };
    let nb = cols / be;
    let row_bytes = nb * ty.block_bytes();
    let mut out = vec![0u8; rows * row_bytes];
    let sink = Disjoint::new(&mut out);
    let failure = std::sync::Mutex::new(None);
    let imp_of = |b: usize| importance.map(|v| &v[b * be..(b + 1) * be]);
    pool.for_chunks(rows, 16, &|range| {
        let run = || -> Result<(), QuantError> {
            let mut wr = vec![0f32; cols];
            let mut levels = vec![0i32; cols];
            let mut grids: Vec<Option<BlockGrid>> = vec![None; nb];
            for r in range.clone() {
                let row = &w[r * cols..(r + 1) * cols];
                grids.iter_mut().for_each(|g| *g = None);
                if opts.act_order {
                    for (b, g) in grids.iter_mut().enumerate() {
                        *g = Some(BlockGrid::decide(ty, &row[b * be..(b + 1) * be], imp_of(b))?);
                    }
                }
                // The row in processing order, dead columns zeroed.
                for (p, &c) in order.iter().enumerate() {
                    wr[p] = if dead[c] { 0.0 } else { row[c] };
                }
                for p in 0..cols {
                    let c = order[p];
                    let b = c / be;
                    if grids[b].is_none() {
                        // Natural order: the block's columns are positions p..p + be.
                        grids[b] = Some(BlockGrid::decide(ty, &wr[p..p + be], imp_of(b))?);
                    }
                    let (q, v) = grids[b].as_ref().map_or((0, 0.0), |g| g.round(c % be, wr[p]));
                    levels[c] = q;
                    let e = (wr[p] - v) / up[p * cols + p];
                    let urow = &up[p * cols..(p + 1) * cols];
                    for (x, &uk) in wr[p + 1..].iter_mut().zip(&urow[p + 1..]) {
                        *x -= e * uk;
                    }
                }
                // SAFETY: each row's bytes belong to the one task that holds the row.
                let dst = unsafe { sink.slice(r * row_bytes..(r + 1) * row_bytes) };
                for (b, g) in grids.iter().enumerate() {
                    if let Some(g) = g {
                        g.encode(&levels[b * be..(b + 1) * be], &mut dst[b * ty.block_bytes()..(b + 1) * ty.block_bytes()]);
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    Ok(out)
}
