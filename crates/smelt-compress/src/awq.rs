//! AWQ-style scaling, after Lin, Tang, Tang, Yang, Dang, Gan and Han 2023, "AWQ:
//! Activation-aware Weight Quantization for LLM Compression and Acceleration", folded into the
//! model so that the file stays a plain Llama GGUF.
//!
//! A group of matrices `W_k` (`rows_k x n`) reads one input `x` (`n` wide). For any positive
//! per-channel scale `s`, `W_k x = (W_k diag(s)) (diag(s)^-1 x)`: every `W_k`'s columns are
//! multiplied by `s` and the operation that makes `x` divides it, exactly:
//! - Q, K and V read `rmsnorm(h) * g`: the attention norm's weight `g` is divided by `s`; gate and
//!   up read the FFN norm's output in the same way;
//! - down reads `silu(gate x) * (up x)`, linear in up's output: up's rows are divided by `s`;
//! - the output projection reads the attention's mix of V's rows: V's rows are divided by `s`.
//!   With grouped-query attention one V row serves `n_heads / n_kv_heads` query heads, so the
//!   scales of those channels are tied (their geometric mean).
//!
//! Channels with large inputs get scales above one, so their weights use more of their blocks'
//! grids and are rounded relatively finer, at the cost of the others.
//!
//! The scale is searched per group as the paper does: `s_j = a_j^alpha` with `a_j` the RMS of
//! input channel `j` over the calibration text, divided by `sqrt(max s * min s)`, for `alpha` on
//! the grid `0, 1/G, ..., (G-1)/G`; the chosen `alpha` minimizes the group's output error over the
//! whole calibration text
//!
//! `L(alpha) = sum_k tr(E_k H E_k^T)`, `E_k = Q(W_k diag(s)) diag(s)^-1 - W_k`,
//!
//! with `H = X^T X` the Hessian of the group's input gathered by [`crate::calib::Collector`]
//! (`n x n`). `Q` is the quantizer the file is written with: the matrix's target type, weighted
//! by the importance of the scaled input (`imp_j / s_j^2`) unless told otherwise. `alpha = 0` is
//! the identity (`s = 1`): the chosen scaling never has a larger calibration error than none.
//!
//! A group is left unscaled when one of its matrices, or the matrix its scale would fold into,
//! is kept in its source type (scaling would force a lossy re-quantization of it).

use std::collections::BTreeMap;

use smelt_formats::GgmlType;
use smelt_kernels::matmul::{gemm, QMatrix};
use smelt_kernels::pool::ThreadPool;
use smelt_models::observe::MatrixInput;

use crate::calib::InputStats;
use crate::convert::round_trip;
use crate::CompressError;

/// AWQ's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwqOptions {
    /// Points of the `alpha` grid (`alpha = i / grid`).
    pub grid: usize,
    /// Weight the quantizer by the scaled input's importance (as the file will be written);
    /// off: round-to-nearest, as the paper's search does.
    pub weighted: bool,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions { grid: 20, weighted: true }
    }
}

/// Where a group's scale is folded besides its matrices' columns.
#[derive(Clone, Debug, PartialEq)]
pub enum Fold {
    /// A norm's weight (one value per channel) is divided by the scale.
    Norm(String),
    /// A matrix's rows are divided by the scale. Input channel `c` is row
    /// `(c / head_dim / tie) * head_dim + c % head_dim` of it: `tie` consecutive heads of
    /// `head_dim` channels share one head of rows (`tie = 1`, `head_dim = 1`: channel `c` is row `c`).
    Rows { tensor: String, tie: usize, head_dim: usize },
}

impl Fold {
    fn row_of(&self, c: usize) -> usize {
        match self {
            Fold::Norm(_) => c,
            Fold::Rows { tie, head_dim, .. } => (c / head_dim / tie) * head_dim + c % head_dim,
        }
    }
}

/// Matrices that read one input, and where their scale folds.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub layer: usize,
    pub input: MatrixInput,
    pub fold: Fold,
    pub matrices: Vec<String>,
}

/// The groups of a Llama decoder under llama.cpp's tensor names, in search order: within a
/// layer the output projection and down come first, so that the row scales they put on V and up
/// are in place when Q/K/V and gate/up are searched. Each layer's own head counts tie V's rows.
pub fn llama_groups(shapes: &[smelt_models::llama::LayerShape], head_dim: usize) -> Vec<Group> {
    let mut out = Vec::new();
    for (l, s) in shapes.iter().enumerate() {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        let tie = (s.n_heads / s.n_kv_heads.max(1)).max(1);
        out.push(Group { layer: l, input: MatrixInput::AttnOutput, fold: Fold::Rows { tensor: b("attn_v"), tie, head_dim }, matrices: vec![b("attn_output")] });
        out.push(Group { layer: l, input: MatrixInput::FfnDown, fold: Fold::Rows { tensor: b("ffn_up"), tie: 1, head_dim: 1 }, matrices: vec![b("ffn_down")] });
        out.push(Group { layer: l, input: MatrixInput::AttnQkv, fold: Fold::Norm(b("attn_norm")), matrices: MatrixInput::AttnQkv.llama_tensors(l) });
        out.push(Group { layer: l, input: MatrixInput::FfnUp, fold: Fold::Norm(b("ffn_norm")), matrices: MatrixInput::FfnUp.llama_tensors(l) });
    }
    out
}

/// The factors of one tensor: `w_ij -> w_ij * cols_j * rows_i` (a 1-D tensor is one row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Factors {
    pub cols: Option<Vec<f32>>,
    pub rows: Option<Vec<f32>>,
}

impl Factors {
    fn factor(&self, i: usize, j: usize) -> f32 {
        self.cols.as_ref().map_or(1.0, |c| c[j]) * self.rows.as_ref().map_or(1.0, |r| r[i])
    }

    /// Scales `w` (`rows x cols`, row-major) in place.
    pub fn apply(&self, w: &mut [f32], cols: usize) {
        for (i, row) in w.chunks_exact_mut(cols).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v *= self.factor(i, j);
            }
        }
    }

    /// Undoes [`Factors::apply`].
    pub fn unapply(&self, w: &mut [f32], cols: usize) {
        for (i, row) in w.chunks_exact_mut(cols).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= self.factor(i, j);
            }
        }
    }

    /// The importance of the scaled input: `imp_j / cols_j^2`.
    pub fn importance(&self, imp: &[f32]) -> Vec<f32> {
        match &self.cols {
            Some(c) => imp.iter().zip(c).map(|(v, s)| v / (s * s)).collect(),
            None => imp.to_vec(),
        }
    }

    /// The Hessian of the scaled input: `H_ij / (cols_i cols_j)`.
    pub fn hessian(&self, h: &[f64]) -> Vec<f64> {
        match &self.cols {
            Some(c) => {
                let n = c.len();
                h.iter().enumerate().map(|(k, v)| v / (c[k / n] as f64 * c[k % n] as f64)).collect()
            }
            None => h.to_vec(),
        }
    }
}

/// What the search found for one group.
#[derive(Clone, Debug)]
pub struct GroupScale {
    pub layer: usize,
    pub input: MatrixInput,
    /// The chosen `alpha` (`None`: left unscaled, see `skipped`).
    pub alpha: Option<f32>,
    /// `L(alpha)` for every grid point (`alpha = i / grid`).
    pub losses: Vec<f64>,
    pub skipped: Option<String>,
}

/// The scales of a whole model: factors per tensor name, and what each group's search found.
#[derive(Clone, Debug, Default)]
pub struct Scaling {
    pub factors: BTreeMap<String, Factors>,
    pub groups: Vec<GroupScale>,
}

impl Scaling {
    pub fn get(&self, tensor: &str) -> Option<&Factors> {
        self.factors.get(tensor)
    }

    /// What the search did, in short.
    pub fn summary(&self) -> AwqSummary {
        let scaled: Vec<f64> = self.groups.iter().filter_map(|g| g.alpha).map(f64::from).collect();
        let (best, base) = self.groups.iter().filter(|g| !g.losses.is_empty()).fold((0.0, 0.0), |(b, o), g| (b + g.losses.iter().cloned().fold(f64::INFINITY, f64::min), o + g.losses[0]));
        AwqSummary {
            groups: self.groups.len(),
            scaled: scaled.len(),
            mean_alpha: if scaled.is_empty() { 0.0 } else { scaled.iter().sum::<f64>() / scaled.len() as f64 },
            error_ratio: if base > 0.0 { best / base } else { 1.0 },
        }
    }
}

/// [`Scaling::summary`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwqSummary {
    pub groups: usize,
    /// Groups whose chosen `alpha` is above 0.
    pub scaled: usize,
    /// Mean `alpha` of the scaled groups.
    pub mean_alpha: f64,
    /// Sum over the groups of the chosen output error, over the sum without scaling.
    pub error_ratio: f64,
}

/// `s_j = max(a_j, eps)^alpha / sqrt(max s * min s)`, tied across the channels that share a row
/// of the fold's matrix (geometric mean).
pub fn scales(rms: &[f64], alpha: f64, fold: &Fold) -> Vec<f32> {
    let mut log_s: Vec<f64> = rms.iter().map(|&a| alpha * a.max(1e-4).ln()).collect();
    if let Fold::Rows { tie, .. } = fold {
        if *tie > 1 {
            let mut sum: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
            for (c, v) in log_s.iter().enumerate() {
                let e = sum.entry(fold.row_of(c)).or_default();
                (e.0, e.1) = (e.0 + v, e.1 + 1);
            }
            for (c, v) in log_s.iter_mut().enumerate() {
                let (s, n) = sum[&fold.row_of(c)];
                *v = s / n as f64;
            }
        }
    }
    let (lo, hi) = log_s.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let mid = if lo.is_finite() { (lo + hi) / 2.0 } else { 0.0 };
    log_s.iter().map(|v| (v - mid).exp() as f32).collect()
}

/// One matrix of a group: its original values, the type it is written in, and row factors put
/// on it by an earlier group.
struct Member {
    name: String,
    w: Vec<f32>,
    ty: GgmlType,
    rows: Option<Vec<f32>>,
}

/// `sum_k tr(E_k H E_k^T)` for the scale `s`.
fn group_loss(pool: &ThreadPool, members: &[Member], s: &[f32], h: &QMatrix, imp: Option<&[f32]>, scratch: &mut Vec<u8>) -> Result<f64, CompressError> {
    let n = s.len();
    let imp_s: Option<Vec<f32>> = imp.map(|imp| imp.iter().zip(s).map(|(v, s)| v / (s * s)).collect());
    let mut loss = 0.0;
    for m in members {
        let f = Factors { cols: Some(s.to_vec()), rows: m.rows.clone() };
        let mut x = m.w.clone();
        f.apply(&mut x, n);
        let (_, mut e) = round_trip(pool, &m.name, &x, n, m.ty, imp_s.as_deref())?;
        f.unapply(&mut e, n);
        for (v, w) in e.iter_mut().zip(&m.w) {
            *v -= w;
        }
        let rows = e.len() / n;
        let mut eh = vec![0f32; rows * n];
        gemm(pool, h, &e, rows, &mut eh, scratch).map_err(|e| CompressError::Fit(format!("AWQ error product: {e}")))?;
        loss += e.iter().zip(&eh).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
    }
    Ok(loss)
}

/// Searches every group's scale (see the module's doc). `weights(name)` gives a tensor's original
/// values in f32, `target(name)` the type a matrix will be written in (`None`: kept in its source
/// type); `stats` must hold each group's input with its Hessian. `on_group(done, total, name)` is
/// called after each group.
pub fn search(
    pool: &ThreadPool,
    groups: &[Group],
    stats: &BTreeMap<(usize, MatrixInput), InputStats>,
    weights: &dyn Fn(&str) -> Result<Vec<f32>, CompressError>,
    target: &dyn Fn(&str) -> Option<GgmlType>,
    opts: AwqOptions,
    on_group: &mut dyn FnMut(usize, usize, &str),
) -> Result<Scaling, CompressError> {
    let mut out = Scaling::default();
    let mut scratch = Vec::new();
    let grid = opts.grid.max(1);
    for (gi, g) in groups.iter().enumerate() {
        let skip = |why: String| GroupScale { layer: g.layer, input: g.input, alpha: None, losses: Vec::new(), skipped: Some(why) };
        let kept = g.matrices.iter().chain(match &g.fold {
            Fold::Rows { tensor, .. } => Some(tensor),
            Fold::Norm(_) => None,
        });
        if let Some(k) = kept.into_iter().find(|m| target(m).is_none()) {
            out.groups.push(skip(format!("{k} is kept in its source type")));
            on_group(gi + 1, groups.len(), &g.matrices[0]);
            continue;
        }
        let st = stats.get(&(g.layer, g.input)).ok_or_else(|| CompressError::Fit(format!("AWQ: no calibration statistics for layer {} {:?}", g.layer, g.input)))?;
        let hess = st.hessian.as_ref().ok_or_else(|| CompressError::Fit(format!("AWQ: no Hessian gathered for layer {} {:?}", g.layer, g.input)))?;
        let n = st.cols;
        let h32: Vec<f32> = hess.iter().map(|&v| v as f32).collect();
        let h = QMatrix::new(GgmlType::F32, n, n, bytemuck::cast_slice(&h32)).map_err(|e| CompressError::Fit(format!("AWQ: {e}")))?;
        let imp = st.importance();
        let rms: Vec<f64> = imp.iter().map(|&v| (v as f64).sqrt()).collect();
        let mut members = Vec::new();
        for name in &g.matrices {
            let w = weights(name)?;
            if w.len() % n != 0 {
                return Err(CompressError::Fit(format!("AWQ: {name} has {} values, not rows of its input's {n}", w.len())));
            }
            let ty = target(name).unwrap_or(GgmlType::F32);
            members.push(Member { name: name.clone(), w, ty, rows: out.factors.get(name).and_then(|f| f.rows.clone()) });
        }
        let mut losses = Vec::with_capacity(grid);
        for i in 0..grid {
            let s = scales(&rms, i as f64 / grid as f64, &g.fold);
            losses.push(group_loss(pool, &members, &s, &h, opts.weighted.then_some(imp.as_slice()), &mut scratch)?);
        }
        let best = (0..grid).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap_or(0);
        if best > 0 {
            let alpha = best as f64 / grid as f64;
            let s = scales(&rms, alpha, &g.fold);
            for name in &g.matrices {
                out.factors.entry(name.clone()).or_default().cols = Some(s.clone());
            }
            match &g.fold {
                Fold::Norm(norm) => out.factors.entry(norm.clone()).or_default().cols = Some(s.iter().map(|v| 1.0 / v).collect()),
                Fold::Rows { tensor, .. } => {
                    let rows = (0..n).map(|c| g.fold.row_of(c) + 1).max().unwrap_or(0);
                    let mut inv = vec![1.0f32; rows];
                    for (c, v) in s.iter().enumerate() {
                        if let Some(slot) = inv.get_mut(g.fold.row_of(c)) {
                            *slot = 1.0 / v;
                        }
                    }
                    out.factors.entry(tensor.clone()).or_default().rows = Some(inv);
                }
            }
        }
        out.groups.push(GroupScale { layer: g.layer, input: g.input, alpha: (best > 0).then_some(best as f32 / grid as f32), losses, skipped: None });
        on_group(gi + 1, groups.len(), &g.matrices[0]);
    }
    Ok(out)
}

/// [`search`] over every block of a Llama decoder stored in `file` (`cfg` its shape), reading
/// the original weights from the file.
pub fn search_decoder(
    pool: &ThreadPool,
    file: &smelt_formats::GgufFile,
    cfg: &smelt_models::LlamaConfig,
    stats: &BTreeMap<(usize, MatrixInput), InputStats>,
    target: &dyn Fn(&str) -> Option<GgmlType>,
    opts: AwqOptions,
    on_group: &mut dyn FnMut(usize, usize, &str),
) -> Result<Scaling, CompressError> {
    let groups = llama_groups(&cfg.shapes, cfg.head_dim);
    let weights = |name: &str| -> Result<Vec<f32>, CompressError> {
        let t = file.tensor(name).ok_or_else(|| CompressError::Fit(format!("AWQ: the file has no tensor {name:?}")))?;
        file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: name.to_string(), source })
    };
    search(pool, &groups, stats, &weights, target, opts, on_group)
}
