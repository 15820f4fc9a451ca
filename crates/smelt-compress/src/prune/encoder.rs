//! Structured pruning of a BERT sentence encoder (all-MiniLM-L6-v2 and its kin): FFN channels,
//! attention heads and whole layers.
//!
//! - **FFN channels** are removed by the OBS step of [`super::columns`] on each layer's FFN
//!   output projection (`encoder.layer.L.output.dense`, whose input is the GELU of
//!   `intermediate.dense`), refitted on the Hessian of that input over calibration sentences,
//!   its bias absorbing the removed channels' mean. Channel `c` is row `c` (and bias `c`) of
//!   `intermediate.dense` and column `c` of `output.dense`.
//! - **Heads** likewise, in groups of `d_head` columns of `attention.output.dense` (head `h`'s
//!   mixed values); head `h` is rows `h d_head .. (h+1) d_head` of the query, key and value
//!   matrices and biases.
//! - **Layers** by the residual stream's change over the calibration sentences, as
//!   [`super::layers`] scores decoder layers (block influence or angular distance, every token
//!   counted), the rest renumbered.
//!
//! Every layer keeps the same number of FFN channels (a multiple of 32), so the result is a
//! standard HF BERT with a smaller `intermediate_size` and `num_hidden_layers`: `config.json`
//! and an F32 `model.safetensors` in a copy of the sentence-transformers directory (tokenizer,
//! pooling and the rest copied as they are). Removed heads are listed in HF's `pruned_heads`
//! (numbered as in the original layer), which smelt and `transformers` 4.x read (transformers 5
//! dropped head pruning and cannot load such a file).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use smelt_formats::safetensors::{serialize_f32, SafetensorsFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::bert::layer_heads;
use smelt_models::embed::Encoder;
use smelt_models::observe::{MatrixInput, Observer};

use super::columns::{remove_column_groups, remove_columns_at_once, with_bias_column, with_constant_input, ColumnGroups};
use super::layers::{LayerScore, LayerScores};
use super::width::FFN_MULTIPLE;
use crate::calib::{Collector, InputStats};
use crate::encoder_dir::{check_new_dir, write_encoder_dir};
use crate::CompressError;

/// What to remove.
#[derive(Clone, Copy, Debug)]
pub struct EncoderPrune {
    /// Fraction of every layer's FFN channels to remove, `[0, 1)`.
    pub ffn: f64,
    /// Fraction of every layer's attention heads to remove, `[0, 1)` (at least one stays).
    pub heads: f64,
    /// Whole layers to remove (fewer than the encoder has), chosen by `layer_score`.
    pub layers: usize,
    pub layer_score: LayerScore,
    pub damp: f64,
    /// Compensate the removed inputs' mean in the output projections' biases.
    pub bias: bool,
    /// Sentences per calibration batch.
    pub batch: usize,
}

/// What encoder pruning did.
#[derive(Clone, Debug)]
pub struct EncoderReport {
    pub ffn_before: usize,
    pub ffn_after: usize,
    /// Heads of each layer before (of the source's layers) and after (of the kept layers).
    pub heads_before: Vec<usize>,
    pub heads_after: Vec<usize>,
    /// Source layers removed, ascending, and the scores they were chosen by.
    pub removed_layers: Vec<usize>,
    pub scores: Option<LayerScores>,
    /// Parameters of the encoder (embeddings included) before and after.
    pub params: (u64, u64),
    pub sentences: usize,
    pub tokens: u64,
    pub bytes: u64,
}

fn bad(msg: impl Into<String>) -> CompressError {
    CompressError::Fit(msg.into())
}

/// The calibration observer: the collector's statistics, and each layer's input (the residual
/// stream) of the current batch for the layer scores.
struct Capture<'a, 'p> {
    c: &'a mut Collector<'p>,
    states: Vec<Vec<f32>>,
    keep_states: bool,
}

impl Observer for Capture<'_, '_> {
    fn observe(&mut self, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize) {
        self.c.observe(layer, input, x, rows, cols);
        if self.keep_states && input == MatrixInput::AttnQkv {
            if self.states.len() <= layer {
                self.states.resize(layer + 1, Vec::new());
            }
            self.states[layer].clear();
            self.states[layer].extend_from_slice(x);
        }
    }
}

/// Adds one batch's layer scores: `states[l]` is layer `l`'s input, `last` the last output.
fn add_scores(states: &[Vec<f32>], last: &[f32], d: usize, infl: &mut [f64], ang: &mut [f64], n: usize) -> u64 {
    let row = |l: usize, t: usize| if l < states.len() { &states[l][t * d..(t + 1) * d] } else { &last[t * d..(t + 1) * d] };
    let tokens = last.len() / d;
    for t in 0..tokens {
        for (l, v) in infl.iter_mut().enumerate() {
            *v += 1.0 - smelt_models::stats::cosine(row(l, t), row(l + 1, t)).clamp(-1.0, 1.0);
        }
        for (l, v) in ang.iter_mut().enumerate() {
            *v += smelt_models::stats::cosine(row(l, t), row(l + n, t)).clamp(-1.0, 1.0).acos() / std::f64::consts::PI;
        }
    }
    tokens as u64
}

/// An output projection after [`remove_inputs`]: the removed groups (ascending), the kept
/// columns' weights (`rows x kept`) and the new bias.
type Refit = (Vec<usize>, Vec<f32>, Vec<f32>);

/// An output projection with some of its inputs removed: `n_remove` of the `n_groups` groups of
/// `group` columns of `w` (`rows x cols`, bias `b`) chosen greedily and refitted on `st` (see
/// [`super::columns`]).
#[allow(clippy::too_many_arguments)]
fn remove_inputs(pool: &ThreadPool, name: &str, w: &[f32], b: &[f32], (rows, cols): (usize, usize), st: &InputStats, group: usize, n_remove: usize, p: &EncoderPrune) -> Result<Refit, CompressError> {
    let err = |source| CompressError::Prune { tensor: name.to_string(), source };
    if w.len() != rows * cols || b.len() != rows || st.cols != cols || st.hessian.is_none() {
        return Err(bad(format!("{name} is not {rows} x {cols}, or its input has no calibration statistics")));
    }
    let h = with_constant_input(st.hessian.as_deref().unwrap_or(&[]), &st.sum, st.rows, cols);
    // The greedy removal leaves `[W | b]` refitted, bias included.
    let mut wb = with_bias_column(w, rows, cols, Some(b));
    let spec = ColumnGroups { group, n_groups: cols / group, n_remove, damp: p.damp };
    let order = remove_column_groups(pool, &mut wb, rows, cols + 1, &h, spec).map_err(err)?;
    let gone: BTreeSet<usize> = order.iter().map(|r| r.group).collect();
    if !p.bias {
        // Without the bias: refit with the constant input's row and column taken out.
        let hn: Vec<f64> = (0..cols * cols).map(|k| h[(k / cols) * (cols + 1) + k % cols]).collect();
        let gone_cols: Vec<usize> = gone.iter().flat_map(|g| g * group..(g + 1) * group).collect();
        let mut wn = w.to_vec();
        remove_columns_at_once(pool, &mut wn, rows, cols, &hn, &gone_cols, p.damp).map_err(err)?;
        wb = with_bias_column(&wn, rows, cols, Some(b));
    }
    let keep: Vec<usize> = (0..cols).filter(|c| !gone.contains(&(c / group))).collect();
    let c1 = cols + 1;
    let w_new = (0..rows).flat_map(|r| keep.iter().map(move |&j| (r, j))).map(|(r, j)| wb[r * c1 + j]).collect();
    let b_new = (0..rows).map(|r| wb[r * c1 + cols]).collect();
    Ok((gone.into_iter().collect(), w_new, b_new))
}

/// `rows` of a row-major matrix of rows `width` wide, in order.
fn take_rows(m: &[f32], width: usize, rows: impl Iterator<Item = usize>) -> Vec<f32> {
    rows.flat_map(|r| m[r * width..(r + 1) * width].iter().copied()).collect()
}

/// Prunes the encoder in `dir` (loaded as `enc`), calibrated on `sentences`, into the new
/// directory `out` (which must not exist yet or be empty). `progress(done, total, what)`.
pub fn prune_encoder(dir: &Path, enc: &Encoder, sentences: &[&str], p: &EncoderPrune, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<EncoderReport, CompressError> {
    let cfg = &enc.model.cfg;
    let (d, ffn, n_layers, n_heads) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads);
    for (what, v) in [("FFN", p.ffn), ("head", p.heads)] {
        if !(0.0..1.0).contains(&v) {
            return Err(bad(format!("the {what} fraction {v} is outside [0, 1)")));
        }
    }
    if p.layers >= n_layers {
        return Err(bad(format!("cannot remove {} of the encoder's {n_layers} layers: keep at least one", p.layers)));
    }
    if p.ffn == 0.0 && p.heads == 0.0 && p.layers == 0 {
        return Err(bad("nothing to remove: give an FFN or head fraction above 0, or layers to remove"));
    }
    if sentences.is_empty() {
        return Err(bad("encoder pruning needs calibration sentences (give --calib)"));
    }
    check_new_dir(out)?;
    let st = SafetensorsFile::open(dir.join("model.safetensors")).map_err(|e| bad(format!("reading {}: {e}", dir.join("model.safetensors").display())))?;
    let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
    let heads_before = layer_heads(cfg)?;
    let hd = d / n_heads;
    for (l, &h) in heads_before.iter().enumerate() {
        let drop = (h as f64 * p.heads).round() as usize;
        if drop >= h {
            return Err(bad(format!("removing {drop} of layer {l}'s {h} heads leaves it none: give a smaller head fraction (or remove the layer)")));
        }
    }

    // Calibration: the inputs of every output projection, with their Hessians, and the
    // residual stream for the layer scores.
    let mut c = Collector::new(pool).hessians_for(0..n_layers);
    let seqs: Vec<Vec<u32>> = sentences.iter().map(|t| enc.tok.encode(t, enc.max_len)).collect();
    let tokens: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    let mut bufs = Default::default();
    let batches = seqs.len().div_ceil(p.batch.max(1));
    let block = p.layers.max(1);
    let (mut infl, mut ang, mut counted) = (vec![0f64; n_layers], vec![0f64; n_layers + 1 - block], 0u64);
    {
        let mut cap = Capture { c: &mut c, states: Vec::new(), keep_states: p.layers > 0 };
        for (i, batch) in seqs.chunks(p.batch.max(1)).enumerate() {
            let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
            let last = enc.model.forward_observed(pool, &refs, &mut bufs, Some(&mut cap))?;
            if p.layers > 0 {
                counted += add_scores(&cap.states, &last, d, &mut infl, &mut ang, block);
            }
            progress(i, batches, "calibration batch");
        }
    }
    let stats = c.finish().map_err(smelt_models::ModelError::from)?;
    let scores = (p.layers > 0).then(|| {
        let n = counted.max(1) as f64;
        infl.iter_mut().chain(ang.iter_mut()).for_each(|v| *v /= n);
        LayerScores { influence: infl, angular: ang, block, chunks: batches, tokens: counted }
    });
    let removed: BTreeSet<usize> = scores.as_ref().map(|s| s.choose(p.layer_score).into_iter().collect()).unwrap_or_default();

    let keep_ffn = if p.ffn > 0.0 { (((ffn as f64 * (1.0 - p.ffn)) / FFN_MULTIPLE as f64).round() as usize * FFN_MULTIPLE).clamp(FFN_MULTIPLE.min(ffn), ffn) } else { ffn };
    let mut replaced: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut pruned_heads: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (layer, gone) in &cfg.pruned_heads {
        if let Ok(l) = layer.parse::<usize>() {
            pruned_heads.entry(l).or_default().extend(gone.iter().copied());
        }
    }
    for l in (0..n_layers).filter(|l| !removed.contains(l)) {
        progress(l, n_layers, "pruning layer");
        let name = |s: &str| format!("{prefix}encoder.layer.{l}.{s}");
        let f32_of = |n: &str| st.tensor_f32(&name(n), None).map_err(|e| bad(format!("{}: {e}", name(n))));
        let stats_of = |input| stats.get(&(l, input)).ok_or_else(|| bad(format!("no calibration statistics for layer {l}'s {input:?} input")));
        let h = heads_before[l];
        let drop_heads = (h as f64 * p.heads).round() as usize;
        if drop_heads > 0 {
            let q = h * hd;
            let (gone, o, o_b) = remove_inputs(pool, &name("attention.output.dense.weight"), &f32_of("attention.output.dense.weight")?, &f32_of("attention.output.dense.bias")?, (d, q), stats_of(MatrixInput::AttnOutput)?, hd, drop_heads, p)?;
            let kept: Vec<usize> = (0..h).filter(|g| !gone.contains(g)).collect();
            let kept_rows = || kept.iter().flat_map(|g| g * hd..(g + 1) * hd);
            for m in ["query", "key", "value"] {
                let (w, b) = (f32_of(&format!("attention.self.{m}.weight"))?, f32_of(&format!("attention.self.{m}.bias"))?);
                replaced.insert(name(&format!("attention.self.{m}.weight")), (vec![kept.len() * hd, d], take_rows(&w, d, kept_rows())));
                replaced.insert(name(&format!("attention.self.{m}.bias")), (vec![kept.len() * hd], take_rows(&b, 1, kept_rows())));
            }
            replaced.insert(name("attention.output.dense.weight"), (vec![d, kept.len() * hd], o));
            replaced.insert(name("attention.output.dense.bias"), (vec![d], o_b));
            // HF numbers pruned heads as in the unpruned layer.
            let original = pruned_heads.entry(l).or_default();
            let alive: Vec<usize> = (0..n_heads).filter(|x| !original.contains(x)).collect();
            original.extend(gone.iter().map(|&g| alive[g]));
        }
        if keep_ffn < ffn {
            let (gone, down, down_b) = remove_inputs(pool, &name("output.dense.weight"), &f32_of("output.dense.weight")?, &f32_of("output.dense.bias")?, (d, ffn), stats_of(MatrixInput::FfnDown)?, 1, ffn - keep_ffn, p)?;
            let keep = || (0..ffn).filter(|c| gone.binary_search(c).is_err());
            replaced.insert(name("output.dense.weight"), (vec![d, keep_ffn], down));
            replaced.insert(name("output.dense.bias"), (vec![d], down_b));
            replaced.insert(name("intermediate.dense.weight"), (vec![keep_ffn, d], take_rows(&f32_of("intermediate.dense.weight")?, d, keep())));
            replaced.insert(name("intermediate.dense.bias"), (vec![keep_ffn], take_rows(&f32_of("intermediate.dense.bias")?, 1, keep())));
        }
    }

    // The new directory: every side file copied, config.json's shape changed, F32 weights.
    let new_index = |l: usize| l - removed.range(..l).count();
    let layer_prefix = format!("{prefix}encoder.layer.");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let (mut before, mut after) = (0u64, 0u64);
    for t in st.tensors() {
        before += t.n_elements() as u64;
        let renamed = match t.name.strip_prefix(&layer_prefix).and_then(|r| r.split_once('.')).and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest))) {
            Some((l, _)) if removed.contains(&l) => continue,
            Some((l, rest)) => format!("{layer_prefix}{}.{rest}", new_index(l)),
            None => t.name.clone(),
        };
        let (shape, values) = match replaced.remove(&t.name) {
            Some(v) => v,
            None => (t.shape.clone(), st.tensor_f32(&t.name, None).map_err(|e| bad(format!("{}: {e}", t.name)))?),
        };
        after += values.len() as u64;
        tensors.push((renamed, shape, values));
    }
    let bytes = serialize_f32(&tensors).map_err(|e| bad(e.to_string()))?;
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).map_err(|e| bad(format!("config.json: {e}")))?).map_err(|e| bad(format!("config.json: {e}")))?;
    config["intermediate_size"] = serde_json::json!(keep_ffn);
    config["num_hidden_layers"] = serde_json::json!(n_layers - removed.len());
    let kept_heads: BTreeMap<String, Vec<usize>> = pruned_heads.iter().filter(|(l, g)| !removed.contains(l) && !g.is_empty()).map(|(l, g)| (new_index(*l).to_string(), g.iter().copied().collect())).collect();
    if kept_heads.is_empty() {
        if let Some(o) = config.as_object_mut() {
            o.remove("pruned_heads");
        }
    } else {
        config["pruned_heads"] = serde_json::json!(kept_heads);
    }
    let heads_after = (0..n_layers).filter(|l| !removed.contains(l)).map(|l| n_heads - pruned_heads.get(&l).map_or(0, BTreeSet::len)).collect();
    write_encoder_dir(dir, &config, &bytes, out)?;
    Ok(EncoderReport { ffn_before: ffn, ffn_after: keep_ffn, heads_before, heads_after, removed_layers: removed.into_iter().collect(), scores, params: (before, after), sentences: sentences.len(), tokens, bytes: bytes.len() as u64 })
}
