//! Structured width pruning of a decoder: FFN channels and attention head groups removed, the
//! matrices that read them refitted ([`super::columns`]), the layers left with their own widths.
//!
//! - **FFN channel** `c` of layer `l` is row `c` of `ffn_gate` and `ffn_up` and column `c` of
//!   `ffn_down`; its removal is scored and compensated on `ffn_down` with the Hessian of
//!   `ffn_down`'s input.
//! - **A head group** is one key/value head and the `n_heads / n_kv_heads` query heads that read
//!   it (grouped-query attention cannot drop a key/value head alone): its rows of `attn_q`,
//!   `attn_k`, `attn_v` and its `group * head_dim` columns of `attn_output`, scored and
//!   compensated on `attn_output` with the Hessian of its input. Every layer keeps one group.
//!
//! The compensation includes a bias (`ffn_down.bias`, `attn_output.bias`, which llama.cpp reads)
//! standing in for the removed inputs' mean, unless `bias: false`.
//!
//! How many go from each layer: the same fraction everywhere ([`Allocation::Uniform`], the
//! better of the two on SmolLM2 as measured), or ([`Allocation::Global`]) the cheapest removals of the whole model by their cost relative to
//! the layer's output energy `tr(W H W^T)`, the running maximum of each layer's greedy costs
//! keeping every layer's choice a prefix of its own order. FFN widths stay multiples of 32 (the
//! ggml block), so that the refitted `ffn_down` rows quantize in the source type.
//!
//! The file keeps the source's weight types: kept rows are copied byte for byte, refitted
//! matrices quantized again (importance-weighted). Layers that differ are written as llama.cpp's
//! `deci` (per-layer arrays; see [`smelt_models::llama`]), otherwise as `llama`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use smelt_formats::gguf::{GgufArray, GgufValue, TensorSpec};
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::llama::{LayerShape, PER_LAYER_ARCH};
use smelt_models::observe::MatrixInput;
use smelt_models::Llama;

use super::columns::{remove_column_groups, remove_columns_at_once, with_bias_column, with_constant_input, ColumnGroups, Removal};

/// A matrix refitted, `rows x (cols + 1)` with the bias column.
struct Refit {
    w: Vec<f32>,
}
use super::model::Source;
use super::write_gguf;
use crate::calib::{run_decoder_tokens, CalibOptions, Collector, InputStats};
use crate::CompressError;

/// FFN widths stay multiples of this (the ggml block of 32 weights).
pub const FFN_MULTIPLE: usize = 32;

/// How the removals are spread over the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    Uniform,
    Global,
}

/// What to remove.
#[derive(Clone, Copy, Debug)]
pub struct WidthPrune {
    /// Fraction of all FFN channels to remove, `[0, 1)`.
    pub ffn: f64,
    /// Fraction of all key/value head groups to remove, `[0, 1)`.
    pub heads: f64,
    pub allocation: Allocation,
    pub calib: CalibOptions,
    pub damp: f64,
    /// Compensate the removed inputs' mean with a bias.
    pub bias: bool,
}

/// What one layer keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerKeep {
    pub before: LayerShape,
    pub after: LayerShape,
}

/// What width pruning did.
#[derive(Clone, Debug)]
pub struct WidthReport {
    pub layers: Vec<LayerKeep>,
    /// Parameters of the blocks' matrices before and after.
    pub block_params: (u64, u64),
    pub file_bytes: u64,
    pub chunks: usize,
}

/// The Hessian (with a constant input appended) and `[W | b]` of the matrix reading `input` in
/// layer `l`.
fn problem(file: &GgufFile, stats: &BTreeMap<(usize, MatrixInput), InputStats>, l: usize, input: MatrixInput, tensor: &str) -> Result<(Vec<f64>, Vec<f32>, usize, usize), CompressError> {
    let st = stats.get(&(l, input)).and_then(|s| s.hessian.as_ref().map(|h| (s, h))).ok_or_else(|| CompressError::Fit(format!("no calibration Hessian for {tensor}")))?;
    let name = format!("blk.{l}.{tensor}.weight");
    let t = file.tensor(&name).ok_or_else(|| CompressError::Fit(format!("the file has no tensor {name:?}")))?;
    let (rows, cols) = (t.n_rows() as usize, t.row_len() as usize);
    if cols != st.0.cols {
        return Err(CompressError::Fit(format!("{name} reads {cols} inputs but calibration saw {}", st.0.cols)));
    }
    let w = file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
    let bias = match file.tensor(&format!("blk.{l}.{tensor}.bias")) {
        Some(b) => Some(file.tensor_f32(b).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?),
        None => None,
    };
    Ok((with_constant_input(st.1, &st.0.sum, st.0.rows, cols), with_bias_column(&w, rows, cols, bias.as_deref()), rows, cols))
}

/// The greedy order of removal of `n_remove` groups of `group` columns (each with its cost), and
/// the output energy `tr(W H W^T)`.
fn greedy(pool: &ThreadPool, (h, w, rows, cols): &(Vec<f64>, Vec<f32>, usize, usize), group: usize, n_remove: usize, damp: f64) -> Result<(Vec<Removal>, f64), CompressError> {
    let (rows, cols) = (*rows, *cols);
    let c1 = cols + 1;
    let mut energy = 0.0;
    for r in 0..rows {
        let wr = &w[r * c1..(r + 1) * c1];
        for i in 0..c1 {
            let hi = &h[i * c1..(i + 1) * c1];
            energy += wr[i] as f64 * wr.iter().zip(hi).map(|(&a, &b)| a as f64 * b).sum::<f64>();
        }
    }
    let mut w = w.to_vec();
    let spec = ColumnGroups { group, n_groups: cols / group, n_remove, damp };
    let removed = remove_column_groups(pool, &mut w, rows, c1, h, spec).map_err(|source| CompressError::Prune { tensor: format!("({rows} x {cols})"), source })?;
    Ok((removed, energy.max(f64::MIN_POSITIVE)))
}

/// Per layer, how many of `n[l]` groups go, for `target` in all: the cheapest removals by cost
/// over energy, each layer's costs made non-decreasing (so that its choice is a prefix).
fn allocate_global(curves: &[(Vec<f64>, f64)], target: usize) -> Vec<usize> {
    let mut steps: Vec<(f64, usize, usize)> = Vec::new();
    for (l, (costs, energy)) in curves.iter().enumerate() {
        let mut run = 0f64;
        for (k, c) in costs.iter().enumerate() {
            run = run.max(c / energy);
            steps.push((run, k, l));
        }
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut counts = vec![0; curves.len()];
    for &(_, _, l) in steps.iter().take(target) {
        counts[l] += 1;
    }
    counts
}

/// `frac` of the total of `n`, rounded.
fn fraction_of(n: impl Iterator<Item = usize>, frac: f64) -> usize {
    (n.sum::<usize>() as f64 * frac).round() as usize
}

/// Channels of `ffn` to remove for a fraction `frac`, keeping a multiple of [`FFN_MULTIPLE`].
fn ffn_removal(ffn: usize, frac: f64) -> usize {
    let keep = ((ffn as f64 * (1.0 - frac)) / FFN_MULTIPLE as f64).round() as usize * FFN_MULTIPLE;
    ffn - keep.clamp(FFN_MULTIPLE.min(ffn), ffn)
}

/// Prunes `model` (loaded from `src.file`) as `p` says, calibrated on `src.text`, and writes the
/// result to `out` atomically. `progress(done, total, what)`.
pub fn prune_width(src: &Source, model: &Llama, p: &WidthPrune, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<WidthReport, CompressError> {
    let Source { file, tok, text } = *src;
    for (what, v) in [("FFN", p.ffn), ("head", p.heads)] {
        if !(0.0..1.0).contains(&v) {
            return Err(CompressError::Fit(format!("the {what} fraction {v} is outside [0, 1)")));
        }
    }
    let text = text.ok_or_else(|| CompressError::Fit("width pruning needs a calibration text (give --calib)".into()))?;
    let cfg = &model.cfg;
    let n_layers = cfg.n_layers;
    let mut c = Collector::new(pool).hessians_for(0..n_layers);
    let chunks = run_decoder_tokens(model, tok, pool, &tok.encode(text, false), p.calib, &mut c, &mut |d, t| progress(d, t, "calibration chunk"))?;
    let stats = c.finish().map_err(smelt_models::ModelError::from)?;

    // How many go from each layer.
    let hd = cfg.head_dim;
    let ffn_target: Vec<usize> = cfg.shapes.iter().map(|s| ffn_removal(s.ffn_dim, p.ffn)).collect();
    let head_target: Vec<usize> = cfg.shapes.iter().map(|s| ((s.n_kv_heads as f64 * p.heads).round() as usize).min(s.n_kv_heads - 1)).collect();
    let global = p.allocation == Allocation::Global;
    // Each layer's greedy order (FFN channels, head groups), run as far as any choice can reach.
    let (mut ffn_curves, mut head_curves) = (Vec::new(), Vec::new());
    for (l, s) in cfg.shapes.iter().enumerate() {
        progress(l, n_layers, "scoring layer");
        if p.ffn > 0.0 {
            let reach = if global { s.ffn_dim.saturating_sub(FFN_MULTIPLE).min(ffn_removal(s.ffn_dim, (2.0 * p.ffn + 0.1).min(0.95))) } else { ffn_target[l] };
            ffn_curves.push(greedy(pool, &problem(file, &stats, l, MatrixInput::FfnDown, "ffn_down")?, 1, reach, p.damp)?);
        }
        if p.heads > 0.0 {
            let reach = if global { s.n_kv_heads - 1 } else { head_target[l] };
            head_curves.push(greedy(pool, &problem(file, &stats, l, MatrixInput::AttnOutput, "attn_output")?, s.n_heads / s.n_kv_heads * hd, reach, p.damp)?);
        }
    }
    let costs = |c: &[(Vec<Removal>, f64)]| -> Vec<(Vec<f64>, f64)> { c.iter().map(|(r, e)| (r.iter().map(|x| x.cost).collect(), *e)).collect() };
    let (ffn_counts, head_counts): (Vec<usize>, Vec<usize>) = match (p.allocation, p.ffn > 0.0, p.heads > 0.0) {
        (Allocation::Uniform, ..) => (if p.ffn > 0.0 { ffn_target } else { vec![0; n_layers] }, if p.heads > 0.0 { head_target } else { vec![0; n_layers] }),
        (Allocation::Global, f, h) => (
            // Whole blocks: each layer's count rounded to keep a multiple of 32.
            if f { cfg.shapes.iter().zip(allocate_global(&costs(&ffn_curves), fraction_of(cfg.shapes.iter().map(|s| s.ffn_dim), p.ffn))).map(|(s, k)| ffn_removal(s.ffn_dim, k as f64 / s.ffn_dim as f64)).collect() } else { vec![0; n_layers] },
            if h { allocate_global(&costs(&head_curves), fraction_of(cfg.shapes.iter().map(|s| s.n_kv_heads), p.heads)) } else { vec![0; n_layers] },
        ),
    };

    // Refit each layer with its counts and note what it keeps.
    let mut new_data: BTreeMap<String, (Vec<u64>, GgmlType, Vec<u8>)> = BTreeMap::new();
    let mut layers = Vec::with_capacity(n_layers);
    let (mut before, mut after) = (0u64, 0u64);
    for (l, s) in cfg.shapes.iter().enumerate() {
        progress(l, n_layers, "pruning layer");
        let group_q = s.n_heads / s.n_kv_heads;
        let mut kept_kv: Vec<usize> = (0..s.n_kv_heads).collect();
        let mut kept_ffn: Vec<usize> = (0..s.ffn_dim).collect();
        let order = |c: &[(Vec<Removal>, f64)], n: usize| -> Vec<usize> { c.get(l).map_or(Vec::new(), |(r, _)| r.iter().take(n).map(|x| x.group).collect()) };
        for (input, tensor, group, gone) in [(MatrixInput::AttnOutput, "attn_output", group_q * hd, order(&head_curves, head_counts[l])), (MatrixInput::FfnDown, "ffn_down", 1, order(&ffn_curves, ffn_counts[l]))] {
            if gone.is_empty() {
                continue;
            }
            let (h, mut w, rows, cols) = problem(file, &stats, l, input, tensor)?;
            let gone_cols: Vec<usize> = gone.iter().flat_map(|&g| g * group..(g + 1) * group).collect();
            remove_columns_at_once(pool, &mut w, rows, cols + 1, &h, &gone_cols, p.damp).map_err(|source| CompressError::Prune { tensor: format!("blk.{l}.{tensor}.weight"), source })?;
            let r = Refit { w };
            let gone: std::collections::BTreeSet<usize> = gone.into_iter().collect();
            let keep: Vec<usize> = (0..cols / group).filter(|g| !gone.contains(g)).collect();
            let keep_cols: Vec<usize> = keep.iter().flat_map(|&g| g * group..(g + 1) * group).collect();
            let c1 = cols + 1;
            let sub: Vec<f32> = (0..rows).flat_map(|row| keep_cols.iter().map(move |&j| (row, j))).map(|(row, j)| r.w[row * c1 + j]).collect();
            let bias: Vec<f32> = (0..rows).map(|row| r.w[row * c1 + cols]).collect();
            let st = &stats[&(l, input)];
            let imp: Vec<f32> = (0..rows).flat_map(|_| keep_cols.iter().map(|&j| (st.sum2[j] / st.rows.max(1) as f64) as f32)).collect();
            let name = format!("blk.{l}.{tensor}.weight");
            let src_ty = file.tensor(&name).map_or(GgmlType::F32, |t| t.ty);
            let ty = src_ty.fallback_for_row(keep_cols.len() as u64).unwrap_or(src_ty);
            let mut bytes = vec![0u8; sub.len() / ty.block_elems() * ty.block_bytes()];
            smelt_formats::quant::quantize_weighted(ty, &sub, &imp, &mut bytes).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
            new_data.insert(name, (vec![keep_cols.len() as u64, rows as u64], ty, bytes));
            if p.bias {
                new_data.insert(format!("blk.{l}.{tensor}.bias"), (vec![rows as u64], GgmlType::F32, bytemuck::cast_slice(&bias).to_vec()));
            }
            match input {
                MatrixInput::AttnOutput => kept_kv = keep,
                _ => kept_ffn = keep,
            }
        }
        let kept_q: Vec<usize> = kept_kv.iter().flat_map(|&g| g * group_q..(g + 1) * group_q).collect();
        let rows_of = |heads: &[usize]| -> Vec<usize> { heads.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect() };
        for (tensor, rows) in [("attn_q", rows_of(&kept_q)), ("attn_k", rows_of(&kept_kv)), ("attn_v", rows_of(&kept_kv)), ("ffn_gate", kept_ffn.clone()), ("ffn_up", kept_ffn.clone())] {
            for suffix in ["weight", "bias"] {
                let name = format!("blk.{l}.{tensor}.{suffix}");
                if let Some(t) = file.tensor(&name) {
                    let data = file.tensor_data(t);
                    let row = data.len() / t.n_rows().max(1) as usize;
                    let bytes: Vec<u8> = rows.iter().flat_map(|&r| data[r * row..(r + 1) * row].iter().copied()).collect();
                    let mut dims = t.dims.clone();
                    *dims.last_mut().unwrap_or(&mut 0) = rows.len() as u64;
                    new_data.insert(name, (dims, t.ty, bytes));
                }
            }
        }
        let after_shape = LayerShape { n_heads: kept_q.len(), n_kv_heads: kept_kv.len(), ffn_dim: kept_ffn.len() };
        let params = |s: &LayerShape| (cfg.dim * hd * (2 * s.n_heads + 2 * s.n_kv_heads) + 3 * cfg.dim * s.ffn_dim) as u64;
        before += params(s);
        after += params(&after_shape);
        layers.push(LayerKeep { before: *s, after: after_shape });
    }

    // Metadata: the per-layer widths (arrays under `deci` when layers differ).
    let shapes: Vec<LayerShape> = layers.iter().map(|k| k.after).collect();
    let meta = width_metadata(file, &shapes, hd)?;
    let mut tensors: Vec<(TensorSpec, Cow<[u8]>)> = Vec::new();
    for t in file.tensors() {
        match new_data.remove(&t.name) {
            Some((dims, ty, bytes)) => tensors.push((TensorSpec { name: t.name.clone(), dims, ty }, bytes.into())),
            None => tensors.push((TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }, file.tensor_data(t).into())),
        }
        // A new bias goes right after its matrix.
        if let Some(stem) = t.name.strip_suffix(".weight") {
            let b = format!("{stem}.bias");
            if file.tensor(&b).is_none() {
                if let Some((dims, ty, bytes)) = new_data.remove(&b) {
                    tensors.push((TensorSpec { name: b, dims, ty }, bytes.into()));
                }
            }
        }
    }
    let file_bytes = write_gguf(file, &meta, tensors, out)?;
    Ok(WidthReport { layers, block_params: (before, after), file_bytes, chunks })
}

/// The source's metadata with `shapes` as its per-layer widths: scalars under the source's
/// architecture when every layer is alike, else arrays under [`PER_LAYER_ARCH`] (every
/// `{arch}.*` key renamed). The head size is written explicitly (`key_length`, `value_length`):
/// llama.cpp would otherwise divide the width by layer 0's new head count.
pub fn width_metadata(file: &GgufFile, shapes: &[LayerShape], head_dim: usize) -> Result<smelt_formats::gguf::Metadata, CompressError> {
    let arch = file.header.architecture().unwrap_or("llama").to_string();
    let uniform = shapes.windows(2).all(|w| w[0] == w[1]);
    let new_arch = if uniform { arch.clone() } else { PER_LAYER_ARCH.to_string() };
    let mut meta = smelt_formats::gguf::Metadata::new();
    let prefix = format!("{arch}.");
    for (k, v) in file.header.metadata.iter() {
        match k.strip_prefix(&prefix) {
            Some(rest) => meta.set(format!("{new_arch}.{rest}"), v.clone()),
            None => meta.set(k, v.clone()),
        }
    }
    meta.set("general.architecture", GgufValue::String(new_arch.clone()));
    let per_layer = |f: fn(&LayerShape) -> usize| -> GgufValue {
        if uniform {
            GgufValue::U32(shapes.first().map_or(0, f) as u32)
        } else {
            GgufValue::Array(GgufArray::U32(shapes.iter().map(|s| f(s) as u32).collect()))
        }
    };
    meta.set(format!("{new_arch}.attention.head_count"), per_layer(|s| s.n_heads));
    meta.set(format!("{new_arch}.attention.head_count_kv"), per_layer(|s| s.n_kv_heads));
    meta.set(format!("{new_arch}.feed_forward_length"), per_layer(|s| s.ffn_dim));
    meta.set(format!("{new_arch}.attention.key_length"), GgufValue::U32(head_dim as u32));
    meta.set(format!("{new_arch}.attention.value_length"), GgufValue::U32(head_dim as u32));
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_takes_the_cheapest_prefixes() {
        // Layer 0's second step is cheap but follows an expensive one: the running max keeps it
        // behind layer 1's steps.
        let curves = vec![(vec![0.5, 0.1, 0.9], 1.0), (vec![0.2, 0.3, 0.4], 1.0)];
        assert_eq!(allocate_global(&curves, 3), vec![0, 3]);
        assert_eq!(allocate_global(&curves, 5), vec![2, 3]);
        // Energy normalises: the same cost matters less in a layer of more output.
        let curves = vec![(vec![1.0], 10.0), (vec![0.5], 1.0)];
        assert_eq!(allocate_global(&curves, 1), vec![1, 0]);
    }

    #[test]
    fn ffn_counts_keep_whole_blocks() {
        assert_eq!(ffn_removal(1536, 0.3), 1536 - 1088);
        assert_eq!(ffn_removal(1536, 0.0), 0);
        assert_eq!(ffn_removal(1536, 0.999), 1536 - 32);
        assert_eq!(ffn_removal(64, 0.5), 32);
    }
}
