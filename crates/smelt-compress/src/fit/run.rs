//! `smelt fit` as one call: calibrate, quantize the candidates, measure the sensitivities, solve,
//! check the prediction on a few points of the front, write the chosen mix.

use std::path::Path;

use smelt_eval::lm::RefLogprobs;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, Tokenizer};

use super::{measure, probe, quantize_candidates, solve_budget, solve_loss, Mix, TensorChoices};
use crate::calib::{decoder_imatrix, run_decoder_tokens, CalibOptions, Collector};
use crate::awq::Scaling;
use crate::gptq::GptqOptions;
use crate::imatrix::Imatrix;
use crate::{quantize_file, Calib, CompressError, Summary, TensorPlan};

/// What the mix must meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// The whole file at most this many bytes.
    MaxBytes(u64),
    /// At most this many bits per weight over the whole file (its bytes over its parameters).
    MaxBpw(f64),
    /// The smallest file whose predicted mean KLD is at most this.
    MaxKld(f64),
}

/// How `fit` runs.
#[derive(Clone, Debug)]
pub struct FitSettings {
    pub goal: Goal,
    /// Candidate types (each matrix also has "as it is").
    pub types: Vec<GgmlType>,
    /// The calibration run for the importance vectors (its output head included).
    pub calib: CalibOptions,
    /// Chunks of the calibration text, taken from its end and not used for the importance
    /// vectors, on which the KL divergences are measured.
    pub probe_chunks: usize,
    /// Positions of each probe chunk before this one are not scored.
    pub probe_first: usize,
    /// Points of the front (besides the chosen mix) whose KLD is measured for the report.
    pub front_checks: usize,
    /// AWQ scales searched for one type before the candidates are made (`None`: no scaling).
    pub awq: Option<FitAwq>,
    /// GPTQ candidates for the output head (the tied embedding), beside its weighted ones, with
    /// the Hessian of the head's input gathered on the calibration text (`None`: weighted only).
    /// See [`super::head_gptq_candidates`].
    pub head_gptq: Option<GptqOptions>,
}

/// AWQ in a fit, in one of two ways:
/// - `ty: None` (after the mix): the mix is chosen unscaled; then the groups whose matrices
///   (and the matrix their scale folds into) the mix re-quantizes all are searched, each matrix
///   for its chosen type, their candidates made again from the scaled matrices and probed, the
///   mix chosen again, and the scaled mix kept only if its measured KLD on the probe chunks is
///   lower. A matrix the mix keeps as it is stays so.
/// - `ty: Some(t)` (first): the scales are searched once before any choice, with every matrix
///   quantized to `t`, and every candidate of a scaled matrix is made from the scaled matrix (no
///   matrix of a scaled group can be kept as it is).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitAwq {
    pub ty: Option<GgmlType>,
    pub opts: crate::awq::AwqOptions,
}

/// A long step of the run, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Calibrate,
    Awq,
    Candidates,
    Reference,
    Probe,
    Check,
    Write,
}

/// One point of the front as reported.
#[derive(Clone, Debug)]
pub struct FrontPoint {
    pub file_bytes: u64,
    pub predicted_kld: f64,
    pub measured_kld: Option<f64>,
}

/// What `fit` did.
#[derive(Debug)]
pub struct FitReport {
    pub choices: Vec<TensorChoices>,
    pub chosen: Mix,
    /// Bytes of everything that is not a chosen matrix (header, metadata, 1-D tensors, padding
    /// allowance), added to a mix's bytes for the file's size.
    pub fixed_bytes: u64,
    pub measured_kld: f64,
    pub front: Vec<FrontPoint>,
    pub summary: Summary,
    pub params: u64,
    pub imatrix_chunks: usize,
    pub probe_tokens: usize,
    /// The AWQ scales the file was written with.
    pub scaling: Option<Scaling>,
    /// AWQ after the mix: the measured KLD of the unscaled mix and of the scaled one (the
    /// lower was written).
    pub awq_check: Option<(f64, f64)>,
}

/// Bytes a file of `file`'s metadata takes beside its matrices: the header (with room for the
/// keys `quantize_file` adds), the tensors that are not among `matrices`, and one alignment
/// padding per tensor.
fn fixed_bytes(file: &GgufFile, matrices: &[TensorChoices]) -> u64 {
    let names: std::collections::BTreeSet<&str> =
        matrices.iter().map(|c| c.name.as_str()).collect();
    let others: u64 = file
        .tensors()
        .iter()
        .filter(|t| !names.contains(t.name.as_str()))
        .map(|t| t.n_bytes)
        .sum();
    file.header.data_offset + 256 + others + file.tensors().len() as u64 * file.header.alignment
}

/// What a fit starts from: the model's file (the model itself is loaded from it), its
/// tokenizer, the calibration text, and optionally importance vectors to use instead of
/// gathering them (an entry for the output head, from `--process-output`, weighs the tied
/// embedding).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a GgufFile,
    pub tok: &'a Tokenizer,
    pub text: &'a str,
    pub imatrix: Option<&'a Imatrix>,
}

/// What the analysis of one model found: every matrix's candidates with their predicted losses,
/// and what is needed to measure and write mixes of them.
pub struct Analysis {
    pub choices: Vec<TensorChoices>,
    /// The importance vectors the candidates were weighted with (written files use them too).
    pub imatrix: Imatrix,
    pub imatrix_chunks: usize,
    /// The source model's log-probabilities on the probe chunks.
    pub reference: RefLogprobs,
    /// Bytes of a file beside its chosen matrices (see [`fixed_bytes`]).
    pub fixed_bytes: u64,
    pub params: u64,
    /// The AWQ scales the candidates were made under.
    pub scaling: Option<Scaling>,
    /// The calibration statistics with every layer's Hessians, kept for AWQ after the mix.
    pub stats: Option<CalibStats>,
    /// The output head's name and input Hessian, with the GPTQ settings its GPTQ candidates
    /// were made with (a chosen one is written by GPTQ again, which gives the same bytes).
    pub head_gptq: Option<(String, Vec<f64>, GptqOptions)>,
}

/// Statistics of the calibration run per (layer, input).
pub type CalibStats = std::collections::BTreeMap<(usize, smelt_models::observe::MatrixInput), crate::calib::InputStats>;

impl Analysis {
    /// The largest file a goal allows (`None` for a quality goal).
    pub fn limit(&self, goal: Goal) -> Option<u64> {
        match goal {
            Goal::MaxBytes(b) => Some(b),
            Goal::MaxBpw(bpw) => Some((bpw * self.params as f64 / 8.0) as u64),
            Goal::MaxKld(_) => None,
        }
    }

    /// The mix that meets `goal` with the least predicted loss (or, for a quality goal, the
    /// smallest one within it).
    pub fn choose(&self, goal: Goal) -> Result<Mix, CompressError> {
        let mix = match (goal, self.limit(goal)) {
            (Goal::MaxKld(k), _) => solve_loss(&self.choices, k),
            (_, Some(limit)) => solve_budget(&self.choices, limit.saturating_sub(self.fixed_bytes)),
            (_, None) => None,
        };
        let smallest: u64 = self.choices.iter().map(|c| c.candidates[0].bytes).sum::<u64>() + self.fixed_bytes;
        mix.ok_or(CompressError::BudgetTooSmall { smallest, smallest_bpw: 8.0 * smallest as f64 / self.params.max(1) as f64 })
    }
}

/// Calibrates, quantizes every candidate and measures every matrix's sensitivity: the work
/// every goal shares. `progress(stage, done, total, what)`.
pub fn analyze(src: &Source, model: &mut Llama, settings: &FitSettings, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<Analysis, CompressError> {
    let Source { file, tok, text, imatrix } = *src;
    let ctx = settings.calib.ctx.min(model.cfg.ctx_train);
    let tokens = tok.encode(text, false);
    let available = tokens.len() / ctx.max(1);
    let need = settings.probe_chunks + usize::from(imatrix.is_none());
    if ctx <= settings.probe_first + 2 || available < need {
        return Err(CompressError::CalibrationTooShort { tokens: tokens.len(), ctx: ctx * need });
    }
    let chunk = |i: usize| {
        let mut c = tokens[i * ctx..(i + 1) * ctx].to_vec();
        if let (true, Some(bos)) = (tok.add_bos, tok.bos) {
            c[0] = bos;
        }
        c
    };
    let probes: Vec<Vec<u32>> = (available - settings.probe_chunks..available).map(chunk).collect();
    // 1. Importance vectors (and, for AWQ, Hessians) on the chunks the probes do not use.
    let mut scaling = None;
    let mut kept_stats = None;
    let mut head_h = None;
    let (imatrix, imatrix_chunks) = match (imatrix, settings.awq) {
        // A given imatrix saves the calibration run unless a Hessian is wanted.
        (Some(m), None) if settings.head_gptq.is_none() => (m.clone(), m.chunk_count as usize),
        (given, awq) => {
            let opts = CalibOptions { ctx, max_chunks: settings.calib.max_chunks, process_output: true };
            let n = model.layers.len();
            // Every block's input Hessians for AWQ; the head's (layer n) for its GPTQ.
            let layers = (0..n).filter(|_| awq.is_some()).chain(Some(n).filter(|_| settings.head_gptq.is_some()));
            let mut collector = Collector::new(pool).hessians_for(layers);
            let calib_tokens = &tokens[..(available - settings.probe_chunks) * ctx];
            let n = run_decoder_tokens(model, tok, pool, calib_tokens, opts, &mut collector, &mut |d, t| progress(Stage::Calibrate, d, t, "chunk"))?;
            let stats = collector.finish().map_err(smelt_models::ModelError::from)?;
            head_h = crate::calib::head_hessian(model, &stats).map(|(name, h)| (name, h.to_vec()));
            if let Some(FitAwq { ty: Some(ty), opts }) = awq {
                let names: std::collections::BTreeSet<String> = super::matrices(file, model).iter().map(|t| t.name.clone()).collect();
                scaling = Some(search_awq(file, model, &stats, &|name| names.contains(name).then_some(ty), opts, pool, progress)?);
            }
            let found = match given {
                Some(m) => (m.clone(), m.chunk_count as usize),
                None => (decoder_imatrix(model, &stats, "calibration text", n, opts), n),
            };
            // AWQ after the mix searches with these Hessians later: kept, not copied.
            if matches!(awq, Some(FitAwq { ty: None, .. })) {
                kept_stats = Some(stats);
            }
            found
        }
    };
    // 2. Every candidate of every matrix.
    let mut choices = quantize_candidates(file, &super::matrices(file, model), Some(&imatrix), scaling.as_ref(), &settings.types, pool, &mut |d, t, w| progress(Stage::Candidates, d, t, w))?;
    if choices.is_empty() {
        return Err(CompressError::Fit("the model has no weight matrix smelt can re-quantize".into()));
    }
    let head_gptq = match (head_h, settings.head_gptq) {
        (Some((name, h)), Some(opts)) => {
            add_head_gptq(file, &imatrix, &mut choices, &name, &h, &settings.types, opts, pool, progress)?;
            Some((name, h, opts))
        }
        _ => None,
    };
    // 3. The source model's log-probabilities on the probe chunks, then one probe per matrix.
    progress(Stage::Reference, 0, 1, "reference");
    let reference = RefLogprobs::new(pool, model, probes, settings.probe_first)?;
    progress(Stage::Reference, 1, 1, "reference");
    probe(model, &mut choices, &reference, pool, &mut |d, t, w| progress(Stage::Probe, d, t, w))?;
    let fixed_bytes = fixed_bytes(file, &choices);
    Ok(Analysis { choices, imatrix, imatrix_chunks, reference, fixed_bytes, params: file.header.n_params(), scaling, stats: kept_stats, head_gptq })
}

/// Adds the head's GPTQ candidates to its choices (which then have every candidate measured).
#[allow(clippy::too_many_arguments)]
fn add_head_gptq(file: &GgufFile, imatrix: &Imatrix, choices: &mut [TensorChoices], name: &str, h: &[f64], types: &[GgmlType], opts: GptqOptions, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<(), CompressError> {
    let (Some(tc), Some(t)) = (choices.iter_mut().find(|c| c.name == name), file.tensors().iter().find(|t| t.name == name)) else {
        return Ok(());
    };
    if tc.factors.is_some() || h.len() != tc.cols * tc.cols {
        return Ok(());
    }
    let imp = match imatrix.entries.contains_key(name) {
        true => Some(imatrix.importance_for(name, tc.cols)?),
        false => None,
    };
    let extra = super::head_gptq_candidates(file, t, h, imp.as_deref(), types, opts, pool, &mut |d, n, w| progress(Stage::Candidates, d, n, w))?;
    if !extra.is_empty() {
        tc.candidates.extend(extra);
        tc.candidates.sort_by_key(|c| c.bytes);
        tc.probe_all = true;
    }
    Ok(())
}

/// The AWQ scales of every block's matrix groups, each matrix quantized to `target(name)`
/// (`None`: kept, its groups left unscaled).
fn search_awq(file: &GgufFile, model: &Llama, stats: &CalibStats, target: &dyn Fn(&str) -> Option<GgmlType>, opts: crate::awq::AwqOptions, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<Scaling, CompressError> {
    crate::awq::search_decoder(pool, file, &model.cfg, stats, target, opts, &mut |d, t, w| progress(Stage::Awq, d, t, w))
}

/// AWQ after the mix (see [`FitAwq`]): scales the groups `mix` re-quantizes whole, remakes and
/// probes their matrices' candidates in `analysis`, and returns the matrices' unscaled choices
/// (index, choices) so that the caller can put them back. Nothing changes when no group gains.
fn rescale(src: &Source, model: &mut Llama, analysis: &mut Analysis, mix: &Mix, settings: &FitSettings, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<Vec<(usize, TensorChoices)>, CompressError> {
    let opts = settings.awq.map(|a| a.opts).unwrap_or_default();
    let stats = analysis.stats.as_ref().ok_or_else(|| CompressError::Fit("AWQ after the mix needs the calibration run's Hessians".into()))?;
    let chosen: std::collections::BTreeMap<&str, GgmlType> = analysis.choices.iter().zip(&mix.choice).filter(|(c, &k)| !c.candidates[k].kept).map(|(c, &k)| (c.name.as_str(), c.candidates[k].ty)).collect();
    let scaling = search_awq(src.file, model, stats, &|name| chosen.get(name).copied(), opts, pool, progress)?;
    if scaling.factors.is_empty() {
        return Ok(Vec::new());
    }
    let mut scaled = super::matrices(src.file, model);
    scaled.retain(|t| scaling.get(&t.name).is_some());
    let mut fresh = quantize_candidates(src.file, &scaled, Some(&analysis.imatrix), Some(&scaling), &settings.types, pool, &mut |d, t, w| progress(Stage::Candidates, d, t, w))?;
    probe(model, &mut fresh, &analysis.reference, pool, &mut |d, t, w| progress(Stage::Probe, d, t, w))?;
    let mut old = Vec::with_capacity(fresh.len());
    for tc in fresh {
        if let Some(i) = analysis.choices.iter().position(|c| c.name == tc.name) {
            old.push((i, std::mem::replace(&mut analysis.choices[i], tc)));
        }
    }
    analysis.scaling = Some(scaling);
    Ok(old)
}

/// Writes `mix` of `analysis` as a GGUF file at `out` (atomically) and checks it against the
/// goal's size limit.
pub fn write_mix(file: &GgufFile, analysis: &Analysis, mix: &Mix, limit: Option<u64>, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<Summary, CompressError> {
    let choices = &analysis.choices;
    let plans: Vec<TensorPlan> = file
        .tensors()
        .iter()
        .map(|t| {
            let target = choices.iter().zip(&mix.choice).find(|(c, _)| c.name == t.name).map_or(t.ty, |(c, &k)| c.candidates[k].ty);
            TensorPlan { t, target, note: None }
        })
        .collect();
    let mut calib = Calib { imatrix: Some(&analysis.imatrix), scaling: analysis.scaling.as_ref(), ..Default::default() };
    // A chosen GPTQ candidate of the head: written by GPTQ again (deterministic: the same bytes).
    if let Some((name, h, opts)) = &analysis.head_gptq {
        if choices.iter().zip(&mix.choice).any(|(c, &k)| &c.name == name && c.candidates[k].gptq) {
            calib.hessians.insert(name.clone(), h.as_slice());
            calib.gptq = *opts;
        }
    }
    let total: u64 = plans.iter().map(|p| p.t.n_bytes).sum();
    let mut done = 0;
    let summary = quantize_file(file, &plans, main_type(choices, mix), &calib, out, pool, &mut |p| {
        done += p.t.n_bytes;
        progress(Stage::Write, done as usize, total as usize, &p.t.name);
    })?;
    if let Some(limit) = limit.filter(|&l| summary.file_bytes > l) {
        // `fixed_bytes` bounds the header and padding from above, so this cannot happen; if it
        // did, the budget is a promise: say so rather than exit 0.
        return Err(CompressError::Fit(format!("the written file has {} bytes, over the budget of {limit}; ask for a slightly smaller size", summary.file_bytes)));
    }
    Ok(summary)
}

/// The whole fit of `model` (loaded from `file`) to one goal: [`analyze`], choose, measure the
/// chosen mix and `settings.front_checks` points of the front, write the mix to `out`.
pub fn fit(src: &Source, model: &mut Llama, settings: &FitSettings, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(Stage, usize, usize, &str)) -> Result<FitReport, CompressError> {
    let mut analysis = analyze(src, model, settings, pool, progress)?;
    let file = src.file;
    let mut chosen = analysis.choose(settings.goal)?;
    let mut awq_check = None;
    // The chosen mix's KLD when the AWQ check already measured it (same mix, same choices).
    let mut known = None;
    if let Some(FitAwq { ty: None, .. }) = settings.awq {
        let mut other = rescale(src, model, &mut analysis, &chosen, settings, pool, progress)?;
        if !other.is_empty() {
            // `other` holds the unscaled choices of the scaled matrices; swapping exchanges them
            // with the scaled ones in the analysis.
            let swap = |analysis: &mut Analysis, other: &mut Vec<(usize, TensorChoices)>| other.iter_mut().for_each(|(i, tc)| std::mem::swap(&mut analysis.choices[*i], tc));
            let scaled_mix = analysis.choose(settings.goal)?;
            progress(Stage::Check, 0, 2, "awq: scaled mix");
            let with = measure(model, &analysis.choices, &scaled_mix, &analysis.reference, pool)?;
            swap(&mut analysis, &mut other);
            progress(Stage::Check, 1, 2, "awq: unscaled mix");
            let without = measure(model, &analysis.choices, &chosen, &analysis.reference, pool)?;
            awq_check = Some((without, with));
            if with < without {
                swap(&mut analysis, &mut other);
                chosen = scaled_mix;
                known = Some(with);
            } else {
                analysis.scaling = None;
                known = Some(without);
            }
        }
    }
    let (choices, reference, fixed) = (&analysis.choices, &analysis.reference, analysis.fixed_bytes);
    // The prediction checked: the chosen mix and a few points spread over the front (by
    // position, the lossless end left out: its KLD is 0).
    let all = super::front(choices);
    let mut picks: Vec<usize> = (0..settings.front_checks).map(|i| i * (all.len() - 1) / settings.front_checks).collect();
    picks.dedup();
    let total = picks.len() + 1;
    progress(Stage::Check, 0, total, "chosen mix");
    let measured_kld = match known {
        Some(k) => k,
        None => measure(model, choices, &chosen, reference, pool)?,
    };
    let mut front: Vec<FrontPoint> = all.iter().map(|m| FrontPoint { file_bytes: m.bytes + fixed, predicted_kld: m.loss, measured_kld: None }).collect();
    for (i, &k) in picks.iter().enumerate() {
        progress(Stage::Check, i + 1, total, "front");
        if front[k].measured_kld.is_none() {
            front[k].measured_kld = Some(measure(model, choices, &all[k], reference, pool)?);
        }
    }
    progress(Stage::Check, total, total, "done");
    let summary = write_mix(file, &analysis, &chosen, analysis.limit(settings.goal), out, pool, progress)?;
    let probe_tokens = reference.tokens();
    Ok(FitReport { chosen, fixed_bytes: fixed, measured_kld, front, summary, params: analysis.params, imatrix_chunks: analysis.imatrix_chunks, probe_tokens, scaling: analysis.scaling, choices: analysis.choices, awq_check })
}

/// The type holding most parameters of the mix (for `general.file_type`).
fn main_type(choices: &[TensorChoices], mix: &Mix) -> GgmlType {
    let mut by: std::collections::BTreeMap<GgmlType, u64> = Default::default();
    for (c, &k) in choices.iter().zip(&mix.choice) {
        *by.entry(c.candidates[k].ty).or_default() += (c.rows * c.cols) as u64;
    }
    by.into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(GgmlType::F32, |(t, _)| t)
}
