//! A whole decoder pruned: its inputs' statistics gathered on a calibration text, every block
//! matrix (Q, K, V, output, gate, up, down of every layer; not the embedding or the head, as the
//! papers do) pruned by [`prune_matrix`], the file written with the pruned values.
//!
//! One-shot by default: every layer's statistics come from one pass of the unpruned model.
//! Sequential (`sequential: true`, as Wanda's and SparseGPT's own code do): layer `l`'s
//! statistics come from a pass in which layers `0..l` are already pruned, so each layer is pruned
//! for the inputs it will see; it costs one calibration pass per layer.
//!
//! With OWL ([`super::owl`]) each layer gets its own sparsity, from the outlier ratios of the
//! unpruned model's Wanda scores (the first calibration pass, before anything is pruned).

use std::collections::BTreeMap;
use std::path::Path;

use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::linear::Linear;
use smelt_models::observe::MatrixInput;
use smelt_models::{Llama, Tokenizer};

use super::owl::{layer_sparsities, outlier_ratio, Owl, ScoredMatrix};
use super::{prune_matrix, InputView, Pattern, PruneError, PruneOptions};
use crate::calib::{decoder_imatrix, run_decoder_tokens, CalibOptions, Collector, InputStats};
use crate::{quantize_file, Calib, CompressError, Summary, TensorPlan};

/// How a decoder is pruned.
#[derive(Clone, Copy, Debug)]
pub struct DecoderPrune {
    pub opts: PruneOptions,
    pub calib: CalibOptions,
    pub sequential: bool,
    /// Outlier-weighted layer sparsities (unstructured patterns only); `None`: every layer at
    /// the pattern's sparsity.
    pub owl: Option<Owl>,
    /// The type the pruned matrices are written in: F32 keeps them exactly; another type is
    /// quantized from them (importance-weighted when there was calibration).
    pub write_type: GgmlType,
}

/// A long step, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneStage {
    Calibrate,
    Prune,
    Write,
}

/// One pruned matrix.
#[derive(Clone, Debug)]
pub struct PrunedMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Zero entries after pruning (the source's own zeros included).
    pub zeros: usize,
}

/// What pruning did.
#[derive(Debug)]
pub struct PruneReport {
    pub matrices: Vec<PrunedMatrix>,
    pub summary: Summary,
    /// Calibration chunks per pass (0 without calibration), and passes run.
    pub chunks: usize,
    pub passes: usize,
    /// Each layer's sparsity when OWL chose them (empty otherwise).
    pub layer_sparsity: Vec<f64>,
}

impl PruneReport {
    /// Entries of the pruned matrices, and how many of them are zero.
    pub fn totals(&self) -> (u64, u64) {
        self.matrices.iter().fold((0, 0), |(n, z), m| (n + (m.rows * m.cols) as u64, z + m.zeros as u64))
    }
}

/// What pruning starts from: the model's file (the model itself is loaded from it), its
/// tokenizer, and the calibration text (needed by every method but magnitude).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a GgufFile,
    pub tok: &'a Tokenizer,
    pub text: Option<&'a str>,
}

/// Statistics of the calibration run per (layer, input).
type Stats = BTreeMap<(usize, MatrixInput), InputStats>;

/// Runs the calibration text once, gathering the Hessians of `layers` when `hessians`.
fn calibrate(model: &Llama, tok: &Tokenizer, tokens: &[u32], opts: CalibOptions, hessians: Option<&[usize]>, pool: &ThreadPool, on_chunk: &mut dyn FnMut(usize, usize)) -> Result<(Stats, usize), CompressError> {
    let mut c = Collector::new(pool);
    if let Some(layers) = hessians {
        c = c.hessians_for(layers.iter().copied());
    }
    let n = run_decoder_tokens(model, tok, pool, tokens, opts, &mut c, on_chunk)?;
    Ok((c.finish().map_err(smelt_models::ModelError::from)?, n))
}

/// Prunes every block matrix of `model` (loaded from `src.file`) as `settings` say, calibrated
/// on `src.text`, and writes the result to `out` atomically.
/// `progress(stage, done, total, what)`.
pub fn prune_decoder(src: &Source, model: &mut Llama, settings: &DecoderPrune, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(PruneStage, usize, usize, &str)) -> Result<PruneReport, CompressError> {
    let Source { file, tok, text } = *src;
    let method = settings.opts.method;
    let wants_calibration = method.needs_norms() || method.needs_hessian() || settings.owl.is_some();
    let all_err = |source| CompressError::Prune { tensor: "(every matrix)".into(), source };
    let owl_target = match (settings.owl, settings.opts.pattern) {
        (None, _) => None,
        (Some(owl), Pattern::Unstructured(p)) => {
            // Refuse settings out of range before the calibration run.
            layer_sparsities(&[0.0, 1.0], p, owl).map_err(all_err)?;
            Some((owl, p))
        }
        (Some(_), Pattern::NM { .. }) => return Err(all_err(PruneError::OwlPattern)),
    };
    if settings.write_type.is_sparse() && settings.opts.pattern != (Pattern::NM { n: 2, m: 4 }) {
        let ty = settings.write_type;
        return Err(all_err(PruneError::SparseTypeNeeds24 { ty, dense: ty.dense_twin() }));
    }
    let tokens = match (wants_calibration, text) {
        (true, Some(t)) => tok.encode(t, false),
        (true, None) => return Err(all_err(PruneError::NoCalibration(if method.needs_hessian() { "SparseGPT" } else if method.needs_norms() { "Wanda" } else { "OWL" }))),
        (false, _) => Vec::new(),
    };
    let n_layers = model.layers.len();
    let total = 7 * n_layers;
    let (mut stats, mut chunks, mut passes): (Stats, usize, usize) = (BTreeMap::new(), 0, 0);
    let one_shot = wants_calibration && !settings.sequential;
    if one_shot {
        let all: Vec<usize> = (0..n_layers).collect();
        let (s, n) = calibrate(model, tok, &tokens, settings.calib, method.needs_hessian().then_some(&all[..]), pool, &mut |d, t| progress(PruneStage::Calibrate, d, t, "chunk"))?;
        (stats, chunks, passes) = (s, n, 1);
    }
    let mut overrides: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut matrices = Vec::with_capacity(total);
    // The importance of every matrix's input as first gathered (weights a later quantization).
    let mut importance: Stats = BTreeMap::new();
    let mut layer_sparsity = Vec::new();
    for l in 0..n_layers {
        if wants_calibration && settings.sequential {
            let (s, n) = calibrate(model, tok, &tokens, settings.calib, method.needs_hessian().then_some(&[l][..]), pool, &mut |d, t| progress(PruneStage::Calibrate, d, t, &format!("layer {l}")))?;
            stats = s;
            (chunks, passes) = (n, passes + 1);
        }
        if let (0, Some((owl, target))) = (l, owl_target) {
            // Nothing is pruned yet: these are the unpruned model's statistics in either mode.
            layer_sparsity = owl_sparsities(file, &stats, n_layers, target, owl)?;
        }
        let opts = match layer_sparsity.get(l) {
            Some(&p) => PruneOptions { pattern: Pattern::Unstructured(p), ..settings.opts },
            None => settings.opts,
        };
        for input in MatrixInput::BLOCK {
            let st = stats.get(&(l, input));
            if let Some(st) = st {
                importance.entry((l, input)).or_insert_with(|| InputStats { cols: st.cols, rows: st.rows, sum2: st.sum2.clone(), sum: st.sum.clone(), hessian: None });
            }
            for name in input.llama_tensors(l) {
                let t = file.tensor(&name).ok_or_else(|| CompressError::Fit(format!("the file has no tensor {name:?}")))?;
                let (rows, cols) = (t.n_rows() as usize, t.row_len() as usize);
                let mut w = file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
                let view = InputView { sum2: st.map(|s| s.sum2.as_slice()), hessian: st.and_then(|s| s.hessian.as_deref()) };
                let zeros = prune_matrix(pool, &mut w, rows, cols, view, &opts).map_err(|source| CompressError::Prune { tensor: name.clone(), source })?;
                if settings.sequential {
                    // The next passes see this matrix pruned.
                    let lin = Linear::from_f32(&name, rows, cols, w.clone(), None)?;
                    if let Some(slot) = model.linear_mut(&name) {
                        *slot = lin;
                    }
                }
                matrices.push(PrunedMatrix { name: name.clone(), rows, cols, zeros });
                overrides.insert(name.clone(), w);
                progress(PruneStage::Prune, matrices.len(), total, &name);
            }
        }
    }
    let imatrix = (!importance.is_empty()).then(|| decoder_imatrix(model, &importance, "calibration text", chunks, settings.calib));
    let plans: Vec<TensorPlan> = file.tensors().iter().map(|t| TensorPlan { t, target: if overrides.contains_key(&t.name) { settings.write_type } else { t.ty }, note: None }).collect();
    let calib = Calib { imatrix: imatrix.as_ref(), overrides, ..Default::default() };
    let total_bytes: u64 = plans.iter().map(|p| p.t.n_bytes).sum();
    let mut done = 0;
    let summary = quantize_file(file, &plans, settings.write_type, &calib, out, pool, &mut |p| {
        done += p.t.n_bytes;
        progress(PruneStage::Write, done as usize, total_bytes as usize, &p.t.name);
    })?;
    Ok(PruneReport { matrices, summary, chunks, passes, layer_sparsity })
}

/// OWL's sparsity of each layer: the outlier ratio of the Wanda scores of its block matrices
/// (the source file's weights, `stats` of the unpruned model) turned into sparsities around
/// `target`.
fn owl_sparsities(file: &GgufFile, stats: &Stats, n_layers: usize, target: f64, owl: Owl) -> Result<Vec<f64>, CompressError> {
    let mut ratios = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let mut weights = Vec::new();
        for input in MatrixInput::BLOCK {
            let st = stats.get(&(l, input)).ok_or_else(|| CompressError::Fit(format!("no calibration statistics for layer {l}'s {input:?} input")))?;
            for name in input.llama_tensors(l) {
                let t = file.tensor(&name).ok_or_else(|| CompressError::Fit(format!("the file has no tensor {name:?}")))?;
                let w = file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
                weights.push((w, t.row_len() as usize, &st.sum2));
            }
        }
        let scored: Vec<ScoredMatrix> = weights.iter().map(|(w, cols, sum2)| ScoredMatrix { w, cols: *cols, sum2 }).collect();
        ratios.push(outlier_ratio(&scored, owl.threshold).map_err(|source| CompressError::Prune { tensor: format!("blk.{l}"), source })?);
    }
    layer_sparsities(&ratios, target, owl).map_err(|source| CompressError::Prune { tensor: "(every matrix)".into(), source })
}
