//! Mixed precision to a budget: a type per tensor that minimizes the predicted loss of the whole
//! model under a size (or the smallest model under a loss).
//!
//! For every weight matrix `t` and every candidate type `c` (each registry type whose blocks
//! divide the rows and which is smaller than the source; "keep as is" always, at zero loss):
//! 1. the matrix is quantized to `c` with its importance vector `s` (the mean square of each
//!    input column over the calibration text), and the importance-weighted error
//!    `E(t, c) = sum_ij s_j (w_ij - q_ij)^2` is measured (the diagonal of the layer-wise
//!    Hessian, cheap for every candidate);
//! 2. once per matrix, with its smallest candidate `p` swapped into the model alone, the mean
//!    KL divergence `D(t, p)` of the model's next-token distribution from the source model's is
//!    measured on held calibration chunks;
//! 3. the loss of any candidate is predicted as `L(t, c) = D(t, p) E(t, c) / E(t, p)`: the
//!    measured KLD says how much a unit of weighted error in this matrix costs at the output
//!    (layers and roles differ by orders of magnitude there, which `E` alone cannot see), `E`
//!    says how the candidates of one matrix compare;
//! 4. losses are taken as additive over matrices, and [`solve`] picks one candidate per matrix.
//!
//! The output head (the tied embedding when there is no `output.weight`) also gets GPTQ
//! candidates ([`head_gptq_candidates`], with the Hessian of the head's input); its candidates'
//! weighted errors then do not compare, so each of them is measured alone instead of step 3.
//!
//! The prediction is checked by measuring the chosen mix (the report prints both).

pub mod run;
pub mod solve;

use smelt_eval::lm::RefLogprobs;
use smelt_formats::{GgmlType, GgufFile, TensorInfo};
use smelt_kernels::pool::ThreadPool;
use smelt_models::linear::Linear;
use smelt_models::Llama;

use crate::awq::{Factors, Scaling};
use crate::imatrix::Imatrix;
use crate::{convert, round_trip, CompressError};

pub use run::{analyze, fit, write_mix, Analysis, CalibStats, FitAwq, FitReport, FitSettings, FrontPoint, Goal, Source, Stage};
pub use solve::{front, solve_budget, solve_loss, Mix};

/// One way to store one matrix.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub ty: GgmlType,
    /// Bytes of the tensor's data in this type.
    pub bytes: u64,
    /// `E(t, c)`: importance-weighted squared error against the source (0 when kept).
    pub werr: f64,
    /// `L(t, c)`: predicted KLD when only this matrix takes this candidate.
    pub loss: f64,
    /// The tensor as it is (the source type, no loss).
    pub kept: bool,
    /// The quantized bytes (empty when kept), to measure mixes without quantizing again.
    pub data: Vec<u8>,
    /// Made by GPTQ with the matrix's input Hessian (see [`head_gptq_candidates`]) rather than
    /// by the importance-weighted search.
    pub gptq: bool,
}

/// Every candidate of one matrix, and the probe that scaled them.
#[derive(Clone, Debug)]
pub struct TensorChoices {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub source: GgmlType,
    /// Sorted by bytes, smallest first.
    pub candidates: Vec<Candidate>,
    /// The candidate measured alone in the model and the KLD it gave (the smallest one when
    /// `probe_all` measured them all).
    pub probe: Option<(GgmlType, f64)>,
    /// Every candidate is measured alone (its loss is its own KLD, not scaled from one probe):
    /// for a matrix whose candidates' weighted errors do not compare (GPTQ beside weighted
    /// rounding).
    pub probe_all: bool,
    /// AWQ factors the candidates were quantized under (their data holds the scaled matrix;
    /// the model gets it unscaled, in F32, for measuring).
    pub factors: Option<Factors>,
}

/// The candidate types of a matrix of `t`'s shape among `types`: whole blocks per row, smaller
/// than the source (a larger type cannot beat keeping the source, which loses nothing), never
/// the source itself (that is the kept candidate).
pub fn candidate_types(t: &TensorInfo, types: &[GgmlType]) -> Vec<GgmlType> {
    let cols = t.row_len();
    let source_bytes = t.ty.bytes_for(cols);
    let mut out: Vec<GgmlType> = types
        .iter()
        .copied()
        .filter(|&ty| ty != t.ty && !ty.is_float())
        .filter(|ty| match (ty.bytes_for(cols), source_bytes) {
            (Some(b), Some(s)) => b < s,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect();
    out.sort_by_key(|ty| ty.bytes_for(cols));
    out.dedup();
    out
}

/// The quantized types `smelt fit` chooses among by default: every producible dense block type
/// (the 2:4 sparse ones would prune).
pub fn default_types() -> Vec<GgmlType> {
    GgmlType::weight_targets()
        .filter(|t| !t.is_float() && !t.is_sparse())
        .collect()
}

/// Progress of [`analyze`]: `(done, total, what)`, once per step.
pub type OnStep<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// The weight matrices of `model` that `file` holds and that can be re-quantized.
pub fn matrices<'f>(file: &'f GgufFile, model: &mut Llama) -> Vec<&'f TensorInfo> {
    file.tensors()
        .iter()
        .filter(|t| {
            t.dims.len() == 2 && t.ty.can_dequantize() && model.linear_mut(&t.name).is_some()
        })
        .collect()
}

/// The candidate types of a matrix that AWQ scales: every one of `types` with whole blocks per
/// row, its source type included (the scaled matrix cannot be kept as it is).
pub fn scaled_candidate_types(t: &TensorInfo, types: &[GgmlType]) -> Vec<GgmlType> {
    let cols = t.row_len();
    let mut out: Vec<GgmlType> = types.iter().copied().chain(t.ty.can_quantize().then_some(t.ty)).filter(|ty| !ty.is_float() && ty.bytes_for(cols).is_some()).collect();
    out.sort_by_key(|ty| ty.bytes_for(cols));
    out.dedup();
    out
}

/// Quantizes each of `tensors` (matrices of `file`, see [`matrices`]) to each of its candidate
/// types, weighted by `imatrix` where it has an entry, and returns the candidates with their
/// weighted errors (losses not yet predicted: see [`probe`]). A matrix `scaling` has factors for
/// is scaled first (its importance with it) and has no kept candidate.
pub fn quantize_candidates(
    file: &GgufFile,
    tensors: &[&TensorInfo],
    imatrix: Option<&Imatrix>,
    scaling: Option<&Scaling>,
    types: &[GgmlType],
    pool: &ThreadPool,
    on_step: OnStep,
) -> Result<Vec<TensorChoices>, CompressError> {
    if let Some(m) = imatrix {
        // An imatrix that names none of the matrices was made for another model.
        if let Some(t) = tensors
            .first()
            .filter(|_| !tensors.iter().any(|t| m.entries.contains_key(&t.name)))
        {
            return Err(crate::imatrix::ImatrixError::Missing {
                tensor: t.name.clone(),
                n: m.entries.len(),
                example: m.entries.keys().next().cloned().unwrap_or_default(),
            }
            .into());
        }
    }
    let factors = |t: &TensorInfo| scaling.and_then(|sc| sc.get(&t.name)).cloned();
    let kinds = |t: &TensorInfo| match factors(t) {
        Some(_) => scaled_candidate_types(t, types),
        None => candidate_types(t, types),
    };
    let total: usize = tensors.iter().map(|t| kinds(t).len()).sum();
    let mut done = 0;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let imp = match imatrix {
            Some(m) if m.entries.contains_key(&t.name) => {
                Some(m.importance_for(&t.name, t.row_len() as usize)?)
            }
            _ => None,
        };
        let f = factors(t);
        let mut candidates = Vec::new();
        if f.is_none() {
            candidates.push(Candidate { ty: t.ty, bytes: t.n_bytes, werr: 0.0, loss: 0.0, kept: true, data: Vec::new(), gptq: false });
        }
        // A scaled matrix: its values scaled once, its importance with them.
        let scaled = match &f {
            Some(f) => {
                let mut w = file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: t.name.clone(), source })?;
                f.apply(&mut w, t.row_len() as usize);
                Some((w, imp.as_deref().map(|imp| f.importance(imp))))
            }
            None => None,
        };
        for ty in kinds(t) {
            let c = match &scaled {
                Some((w, imp)) => round_trip(pool, &t.name, w, t.row_len() as usize, ty, imp.as_deref())?.0,
                None => convert(pool, t, file.tensor_data(t), ty, imp.as_deref())?,
            };
            candidates.push(Candidate {
                ty,
                bytes: c.bytes.len() as u64,
                werr: c.werr2,
                loss: 0.0,
                kept: false,
                data: c.bytes,
                gptq: false,
            });
            done += 1;
            on_step(done, total, &format!("{} -> {ty}", t.name));
        }
        candidates.sort_by_key(|c| c.bytes);
        out.push(TensorChoices {
            name: t.name.clone(),
            rows: t.n_rows() as usize,
            cols: t.row_len() as usize,
            source: t.ty,
            candidates,
            probe: None,
            probe_all: false,
            factors: f,
        });
    }
    Ok(out)
}

/// GPTQ candidates for one matrix `t` of `file` (the output head: the tied embedding on
/// SmolLM2): each of `types` that has a block grid and whole blocks per row, smaller than the
/// source, quantized by GPTQ with `h`, the Hessian of the head's input over the calibration
/// text (`cols x cols`), block grids decided with the importance `imp`.
///
/// Why the head only: on SmolLM2-135M (docs/BENCHMARKS.md) GPTQ of the tied embedding into
/// Q4_1, with the Hessian of the final hidden states on an Austen novel, cut the KLD that the
/// embedding alone causes by 3x on another Austen novel and by 21% on WikiText-2, while GPTQ of
/// the blocks' matrices fits the calibration text's domain and loses to weighted rounding on
/// WikiText. The weighted errors of GPTQ and weighted-rounding candidates do not compare (GPTQ
/// spends weight error where the head's input does not look), so the matrix's candidates are
/// all measured ([`TensorChoices::probe_all`]).
#[allow(clippy::too_many_arguments)]
pub fn head_gptq_candidates(file: &GgufFile, t: &TensorInfo, h: &[f64], imp: Option<&[f32]>, types: &[GgmlType], opts: crate::gptq::GptqOptions, pool: &ThreadPool, on_step: OnStep) -> Result<Vec<Candidate>, CompressError> {
    let kinds: Vec<GgmlType> = candidate_types(t, types).into_iter().filter(|&ty| smelt_formats::quant::grid::supports_grid(ty)).collect();
    let mut out = Vec::with_capacity(kinds.len());
    for (i, &ty) in kinds.iter().enumerate() {
        let plan = crate::TensorPlan { t, target: ty, note: None };
        let c = crate::pipeline::gptq_tensor(pool, &plan, file, h, imp, opts)?;
        out.push(Candidate { ty, bytes: c.bytes.len() as u64, werr: c.werr2, loss: 0.0, kept: false, data: c.bytes, gptq: true });
        on_step(i + 1, kinds.len(), &format!("{} -> {ty} (GPTQ)", t.name));
    }
    Ok(out)
}

/// Swaps candidate `c` of `tc` in for its matrix in `model`, returning the matrix it replaced.
/// A scaled candidate goes in unscaled, as F32 (the model's norms are not scaled).
fn swap(model: &mut Llama, tc: &TensorChoices, c: &Candidate) -> Result<Linear, CompressError> {
    let name = &tc.name;
    let new = match &tc.factors {
        Some(f) => {
            let mut w = smelt_formats::quant::dequantize_to_vec(c.ty, &c.data).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
            f.unapply(&mut w, tc.cols);
            Linear::owned(name, GgmlType::F32, tc.rows, tc.cols, bytemuck::cast_slice(&w).to_vec())?
        }
        None => Linear::owned(name, c.ty, tc.rows, tc.cols, c.data.clone())?,
    };
    let slot = model
        .linear_mut(name)
        .ok_or_else(|| CompressError::Fit(format!("the model has no matrix {name:?}")))?;
    Ok(std::mem::replace(slot, new))
}

/// Puts back a matrix [`swap`] took out (under its own name, which the model has).
fn restore(model: &mut Llama, old: Linear) {
    if let Some(slot) = model.linear_mut(&old.name) {
        *slot = old;
    }
}

/// Measures, for each matrix, the KLD of the model with only its smallest candidate swapped in,
/// and predicts every candidate's loss from it (`L = D E / E_probe`).
pub fn probe(
    model: &mut Llama,
    choices: &mut [TensorChoices],
    reference: &RefLogprobs,
    pool: &ThreadPool,
    on_step: OnStep,
) -> Result<(), CompressError> {
    let total = choices.len();
    for (i, tc) in choices.iter_mut().enumerate() {
        if tc.probe_all {
            probe_each(model, tc, reference, pool)?;
        } else if let Some(p) = tc.candidates.iter().position(|c| !c.kept) {
            let c = &tc.candidates[p];
            let old = swap(model, tc, c)?;
            // Layers before the matrix's own run as in the reference: start from its residuals.
            let layer = layer_of(&tc.name);
            let kld = reference.kld_from(pool, model, layer);
            restore(model, old);
            let kld = kld?;
            let e = c.werr;
            tc.probe = Some((c.ty, kld));
            for c in tc.candidates.iter_mut().filter(|c| !c.kept) {
                c.loss = if e > 0.0 { kld * c.werr / e } else { 0.0 };
            }
        }
        on_step(i + 1, total, &tc.name);
    }
    Ok(())
}

/// The block a matrix belongs to (`blk.L.…`), 0 for the embedding and the head: a probe's pass
/// starts there from the reference's residual stream.
fn layer_of(name: &str) -> usize {
    name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|l| l.parse().ok()).unwrap_or(0)
}

/// Measures every candidate of `tc` alone in the model (its loss is the KLD it gives), then
/// orders them by size and, at equal size, by loss (the solver starts from the first).
fn probe_each(model: &mut Llama, tc: &mut TensorChoices, reference: &RefLogprobs, pool: &ThreadPool) -> Result<(), CompressError> {
    let layer = layer_of(&tc.name);
    for k in 0..tc.candidates.len() {
        if tc.candidates[k].kept {
            continue;
        }
        let old = swap(model, tc, &tc.candidates[k])?;
        let kld = reference.kld_from(pool, model, layer);
        restore(model, old);
        tc.candidates[k].loss = kld?;
    }
    tc.candidates.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.loss.total_cmp(&b.loss)));
    tc.probe = tc.candidates.iter().find(|c| !c.kept).map(|c| (c.ty, c.loss));
    Ok(())
}

/// Measures the KLD of a whole mix (`mix.choice[i]` indexes `choices[i].candidates`): every
/// matrix swapped in, measured, swapped back.
pub fn measure(
    model: &mut Llama,
    choices: &[TensorChoices],
    mix: &Mix,
    reference: &RefLogprobs,
    pool: &ThreadPool,
) -> Result<f64, CompressError> {
    let mut old: Vec<Linear> = Vec::new();
    let mut result = Ok(());
    for (tc, &k) in choices.iter().zip(&mix.choice) {
        let c = &tc.candidates[k];
        if c.kept {
            continue;
        }
        match swap(model, tc, c) {
            Ok(prev) => old.push(prev),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let kld = result.and_then(|()| reference.kld(pool, model).map_err(CompressError::from));
    for prev in old {
        restore(model, prev);
    }
    kld
}
