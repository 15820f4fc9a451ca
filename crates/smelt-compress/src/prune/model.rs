//! A whole decoder pruned: its inputs' statistics gathered on a calibration text, every block
//! matrix (Q, K, V, output, gate, up, down of every layer; not the embedding or the head, as the
//! papers do) pruned by [`prune_matrix`], the file written with the pruned values.
//!
//! One-shot by default: every layer's statistics come from one pass of the unpruned model.
//! Sequential (`sequential: true`, as Wanda's and SparseGPT's own code do): layer `l`'s
//! statistics come from a pass in which layers `0..l` are already pruned, so each layer is pruned
//! for the inputs it will see; it costs one calibration pass per layer.

use std::collections::BTreeMap;
use std::path::Path;

use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::linear::Linear;
use smelt_models::observe::MatrixInput;
use smelt_models::{Llama, Tokenizer};

use super::{prune_matrix, InputView, PruneError, PruneOptions};
use crate::calib::{decoder_imatrix, run_decoder_tokens, CalibOptions, Collector, InputStats};
use crate::{quantize_file, Calib, CompressError, Summary, TensorPlan};

/// How a decoder is pruned.
#[derive(Clone, Copy, Debug)]
pub struct DecoderPrune {
    pub opts: PruneOptions,
    pub calib: CalibOptions,
    pub sequential: bool,
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
    let wants_calibration = method.needs_norms() || method.needs_hessian();
    let tokens = match (wants_calibration, text) {
        (true, Some(t)) => tok.encode(t, false),
        (true, None) => return Err(CompressError::Prune { tensor: "(every matrix)".into(), source: PruneError::NoCalibration(if method.needs_hessian() { "SparseGPT" } else { "Wanda" }) }),
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
    for l in 0..n_layers {
        if wants_calibration && settings.sequential {
            let (s, n) = calibrate(model, tok, &tokens, settings.calib, method.needs_hessian().then_some(&[l][..]), pool, &mut |d, t| progress(PruneStage::Calibrate, d, t, &format!("layer {l}")))?;
            stats = s;
            (chunks, passes) = (n, passes + 1);
        }
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
                let zeros = prune_matrix(pool, &mut w, rows, cols, view, &settings.opts).map_err(|source| CompressError::Prune { tensor: name.clone(), source })?;
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
    Ok(PruneReport { matrices, summary, chunks, passes })
}
