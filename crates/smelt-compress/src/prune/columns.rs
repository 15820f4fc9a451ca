//! Whole input columns of a matrix removed, the others refitted: the step under structured
//! pruning of FFN channels (columns of `ffn_down`) and attention heads (column blocks of
//! `attn_output`).
//!
//! A matrix `W` (`rows x cols`) reads inputs `x` whose calibration Hessian is `H = sum x x^T`
//! (`cols x cols`). Removing a group `G` of columns and refitting the others to keep
//! `sum ||W x - W' x||^2` least is the Optimal Brain Surgeon step (Hassibi and Stork 1993) for a
//! block of weights per row, as ZipLM (Kurtic, Frantar and Alistarh 2023) applies it to whole
//! structures. With `P = H^-1` (dampened) and `M = (P_GG)^-1` (`|G| x |G|`):
//!
//! ```text
//! cost(G) = tr(W_:G M W_:G^T)          the error the removal adds, after the refit
//! W      <- W - W_:G M P_G:             (W_:G becomes 0; the rest absorb what it did)
//! P      <- P - P_:G M P_G:             (the inverse Hessian of the columns left)
//! ```
//!
//! Greedily the cheapest group goes, then the costs are recomputed, until `n_remove` are gone.
//! A constant input 1 appended as the last column (with its Hessian row `sum x`, `N`) and a
//! bias as the matching column of `W`, never removed, lets the bias absorb the removed columns'
//! mean contribution: FLAP's bias compensation (An et al. 2024) falls out of the same step.
//! Columns past `n_groups * group` are kept fixed that way.

use smelt_kernels::pool::{Disjoint, ThreadPool};

use super::PruneError;
use crate::gptq::GptqError;

/// Which columns compete, and how many groups go.
#[derive(Clone, Copy, Debug)]
pub struct ColumnGroups {
    /// Columns per group (1 for FFN channels, `heads * head_dim` for an attention group).
    pub group: usize,
    /// Groups that may go: columns `0..n_groups * group`; later columns stay.
    pub n_groups: usize,
    pub n_remove: usize,
    /// Dampening: `lambda = damp * mean(diag H)` is added to the diagonal before inverting.
    pub damp: f64,
}

/// One removal: the group and what it cost (`tr(W_:G M W_:G^T)` when it went).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Removal {
    pub group: usize,
    pub cost: f64,
}

/// `(H + lambda I)^-1` (f64, row-major), with columns whose input was always zero (`H_jj = 0`)
/// given a unit diagonal so that they go at no cost.
pub fn dampened_inverse(h: &[f64], cols: usize, damp: f64) -> Result<Vec<f64>, PruneError> {
    use faer::linalg::solvers::DenseSolveCore;
    if h.len() != cols * cols {
        return Err(PruneError::StatsShape { found: h.len(), expected: cols * cols });
    }
    let dead: Vec<bool> = (0..cols).map(|j| h[j * cols + j] <= 0.0).collect();
    let live = dead.iter().filter(|d| !**d).count().max(1);
    let mean_diag = (0..cols).filter(|&j| !dead[j]).map(|j| h[j * cols + j]).sum::<f64>() / live as f64;
    let lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    let hm = faer::Mat::<f64>::from_fn(cols, cols, |i, j| match (dead[i] || dead[j], i == j) {
        (true, true) => 1.0,
        (true, false) => 0.0,
        (false, diag) => h[i * cols + j] + if diag { lambda } else { 0.0 },
    });
    let inv = hm.llt(faer::Side::Lower).map_err(|_| GptqError::NotPositiveDefinite { damp })?.inverse();
    Ok((0..cols * cols).map(|k| inv[(k / cols, k % cols)]).collect())
}

/// The inverse of the symmetric positive definite `a` (`n x n`, row-major).
fn small_inverse(a: &[f64], n: usize, damp: f64) -> Result<Vec<f64>, PruneError> {
    use faer::linalg::solvers::DenseSolveCore;
    if n == 1 {
        return if a[0] > 0.0 { Ok(vec![1.0 / a[0]]) } else { Err(GptqError::NotPositiveDefinite { damp }.into()) };
    }
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let inv = m.llt(faer::Side::Lower).map_err(|_| GptqError::NotPositiveDefinite { damp })?.inverse();
    Ok((0..n * n).map(|k| inv[(k / n, k % n)]).collect())
}

/// `P_GG` for the columns `g0..g0 + n`.
fn block(p: &[f64], cols: usize, g0: usize, n: usize) -> Vec<f64> {
    (0..n * n).map(|k| p[(g0 + k / n) * cols + g0 + k % n]).collect()
}

/// `x -= a_r * b_j` over rows: row `r` of `x` (`n_rows x cols`) loses
/// `sum_j a[r * k + j] * b[j * cols ..]` for the `k` rows of `b`; rows run on the pool.
fn sub_outer(pool: &ThreadPool, x: &mut [f64], cols: usize, a: &[f64], k: usize, b: &[f64]) {
    let n_rows = x.len() / cols;
    let sink = Disjoint::new(x);
    let chunk = n_rows.div_ceil(pool.n_threads().max(1) * 4).max(1);
    pool.run(n_rows.div_ceil(chunk), &|t| {
        for r in t * chunk..((t + 1) * chunk).min(n_rows) {
            // SAFETY: each task writes its own rows.
            let xr = unsafe { sink.slice(r * cols..(r + 1) * cols) };
            for (j, &aj) in a[r * k..(r + 1) * k].iter().enumerate() {
                if aj != 0.0 {
                    xr.iter_mut().zip(&b[j * cols..(j + 1) * cols]).for_each(|(x, &y)| *x -= aj * y);
                }
            }
        }
    });
}

/// `cost(G)` of every alive group: `tr(W_:G M W_:G^T)`, `M = (P_GG)^-1` (kept for the best).
fn costs(wd: &[f64], rows: usize, cols: usize, p: &[f64], spec: ColumnGroups, alive: &[bool]) -> Result<Vec<(usize, f64, Vec<f64>)>, PruneError> {
    let group = spec.group;
    if group == 1 {
        // One column: sum_r w_rj^2 / P_jj, the column sums in one row-major pass.
        let mut sq = vec![0f64; spec.n_groups];
        for r in 0..rows {
            sq.iter_mut().zip(&wd[r * cols..r * cols + spec.n_groups]).for_each(|(s, &w)| *s += w * w);
        }
        return (0..spec.n_groups)
            .filter(|&g| alive[g])
            .map(|g| {
                let d = p[g * cols + g];
                if d > 0.0 { Ok((g, sq[g] / d, vec![1.0 / d])) } else { Err(GptqError::NotPositiveDefinite { damp: spec.damp }.into()) }
            })
            .collect();
    }
    let mut out = Vec::new();
    for g in (0..spec.n_groups).filter(|&g| alive[g]) {
        let g0 = g * group;
        let m = small_inverse(&block(p, cols, g0, group), group, spec.damp)?;
        let mut cost = 0.0;
        for r in 0..rows {
            let wg = &wd[r * cols + g0..r * cols + g0 + group];
            for (i, &wi) in wg.iter().enumerate() {
                cost += wi * wg.iter().zip(&m[i * group..(i + 1) * group]).map(|(x, y)| x * y).sum::<f64>();
            }
        }
        out.push((g, cost, m));
    }
    Ok(out)
}

/// The OBS step for the columns `cols_g` (any set) with `m = (P_GG)^-1`: `W -= W_:G M P_G:`,
/// and when `p_too`, `P -= P_:G M P_G:`.
fn obs_step(pool: &ThreadPool, wd: &mut [f64], p: &mut [f64], cols: usize, cols_g: &[usize], m: &[f64], p_too: bool) {
    let k = cols_g.len();
    let rows = wd.len() / cols;
    let pg: Vec<f64> = cols_g.iter().flat_map(|&j| p[j * cols..(j + 1) * cols].iter().copied()).collect();
    let times_m = |x: &[f64], n: usize| -> Vec<f64> {
        let mut out = vec![0f64; n * k];
        for r in 0..n {
            let xg: Vec<f64> = cols_g.iter().map(|&j| x[r * cols + j]).collect();
            for (j, o) in out[r * k..(r + 1) * k].iter_mut().enumerate() {
                *o = (0..k).map(|i| xg[i] * m[i * k + j]).sum();
            }
        }
        out
    };
    let a = times_m(wd, rows);
    sub_outer(pool, wd, cols, &a, k, &pg);
    for r in 0..rows {
        for &j in cols_g {
            wd[r * cols + j] = 0.0;
        }
    }
    if p_too {
        let b = times_m(p, cols);
        sub_outer(pool, p, cols, &b, k, &pg);
    }
}

/// Removes `spec.n_remove` groups of columns from `w` (`rows x cols`, row-major) by the greedy
/// OBS step above, refitting the columns left; `h` is the inputs' Hessian (`cols x cols`).
/// Removed columns end as zeros. Returns the removals in order.
pub fn remove_column_groups(pool: &ThreadPool, w: &mut [f32], rows: usize, cols: usize, h: &[f64], spec: ColumnGroups) -> Result<Vec<Removal>, PruneError> {
    let ColumnGroups { group, n_groups, n_remove, damp } = spec;
    if w.len() != rows * cols {
        return Err(PruneError::Shape { found: w.len(), rows, cols });
    }
    if group == 0 || n_groups * group > cols || n_remove > n_groups {
        return Err(PruneError::Groups { group, n_groups, n_remove, cols });
    }
    let mut p = dampened_inverse(h, cols, damp)?;
    let mut wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut alive = vec![true; n_groups];
    let mut out = Vec::with_capacity(n_remove);
    for _ in 0..n_remove {
        // The cheapest group; among equal costs the lowest index.
        let Some((g, cost, m)) = costs(&wd, rows, cols, &p, spec, &alive)?.into_iter().min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))) else { break };
        let cols_g: Vec<usize> = (g * group..(g + 1) * group).collect();
        obs_step(pool, &mut wd, &mut p, cols, &cols_g, &m, true);
        alive[g] = false;
        out.push(Removal { group: g, cost });
    }
    // Removed columns are zero (later steps leave rounding residue in them).
    for r in 0..rows {
        for g in (0..n_groups).filter(|&g| !alive[g]) {
            wd[r * cols + g * group..r * cols + (g + 1) * group].fill(0.0);
        }
    }
    for (x, &v) in w.iter_mut().zip(&wd) {
        *x = v as f32;
    }
    Ok(out)
}

/// Removes the columns `cols_g` from `w` at once, refitting the rest: the least-squares
/// refit is unique, so this equals removing them one by one in any order (what
/// [`remove_column_groups`] does), in one step of `|G|^3`.
pub fn remove_columns_at_once(pool: &ThreadPool, w: &mut [f32], rows: usize, cols: usize, h: &[f64], cols_g: &[usize], damp: f64) -> Result<(), PruneError> {
    if w.len() != rows * cols {
        return Err(PruneError::Shape { found: w.len(), rows, cols });
    }
    if cols_g.iter().any(|&j| j >= cols) {
        return Err(PruneError::Groups { group: 1, n_groups: cols_g.len(), n_remove: cols_g.len(), cols });
    }
    if cols_g.is_empty() {
        return Ok(());
    }
    let mut p = dampened_inverse(h, cols, damp)?;
    let k = cols_g.len();
    let pgg: Vec<f64> = (0..k * k).map(|x| p[cols_g[x / k] * cols + cols_g[x % k]]).collect();
    let m = small_inverse(&pgg, k, damp)?;
    let mut wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    obs_step(pool, &mut wd, &mut p, cols, cols_g, &m, false);
    for (x, &v) in w.iter_mut().zip(&wd) {
        *x = v as f32;
    }
    Ok(())
}

/// `H` of the inputs with a constant 1 appended (`(cols + 1)^2`): `[[H, s], [s^T, n]]` with
/// `s = sum x` and `n` the rows seen, for a bias that absorbs removed columns' means.
pub fn with_constant_input(h: &[f64], sum: &[f64], rows: u64, cols: usize) -> Vec<f64> {
    let c1 = cols + 1;
    let mut out = vec![0f64; c1 * c1];
    for i in 0..cols {
        out[i * c1..i * c1 + cols].copy_from_slice(&h[i * cols..(i + 1) * cols]);
        out[i * c1 + cols] = sum[i];
        out[cols * c1 + i] = sum[i];
    }
    out[c1 * c1 - 1] = rows as f64;
    out
}

/// `[W | b]` (`rows x (cols + 1)`): `w` with `bias` (zeros if none) as a last column.
pub fn with_bias_column(w: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * (cols + 1));
    for r in 0..rows {
        out.extend_from_slice(&w[r * cols..(r + 1) * cols]);
        out.push(bias.map_or(0.0, |b| b[r]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removal with the refit never costs more than without it, and the cost reported is the
    /// error measured on the inputs.
    #[test]
    fn cost_is_the_error_after_refit() {
        // x in 3-D with correlated columns: column 2 = column 0 + small noise.
        let xs: Vec<[f64; 3]> = (0..40).map(|i| {
            let t = i as f64 * 0.37;
            [t.sin(), (1.7 * t).cos(), t.sin() + 0.01 * (5.0 * t).cos()]
        }).collect();
        let mut h = vec![0f64; 9];
        for x in &xs {
            for i in 0..3 {
                for j in 0..3 {
                    h[i * 3 + j] += x[i] * x[j];
                }
            }
        }
        let w0 = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25];
        let mut w = w0.to_vec();
        let pool = ThreadPool::new(2);
        let r = remove_column_groups(&pool, &mut w, 2, 3, &h, ColumnGroups { group: 1, n_groups: 3, n_remove: 1, damp: 0.0 }).unwrap();
        // Column 0 or 2 is nearly redundant: one of them goes, almost for free.
        assert!(r[0].group == 0 || r[0].group == 2, "{r:?}");
        let err: f64 = xs.iter().map(|x| (0..2).map(|row| {
            let y0: f64 = (0..3).map(|j| w0[row * 3 + j] as f64 * x[j]).sum();
            let y1: f64 = (0..3).map(|j| w[row * 3 + j] as f64 * x[j]).sum();
            (y0 - y1).powi(2)
        }).sum::<f64>()).sum();
        assert!((err - r[0].cost).abs() < 1e-4 * (1.0 + err), "measured {err} vs reported {}", r[0].cost);
        assert_eq!(w[r[0].group], 0.0);
        assert_eq!(w[3 + r[0].group], 0.0);
        // Removing the same column at once refits the same way.
        let mut w2 = w0.to_vec();
        remove_columns_at_once(&pool, &mut w2, 2, 3, &h, &[r[0].group], 0.0).unwrap();
        assert!(w.iter().zip(&w2).all(|(a, b)| (a - b).abs() < 1e-5), "{w:?} vs {w2:?}");
    }
}
