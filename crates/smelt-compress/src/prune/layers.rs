//! Whole layers removed (structured pruning): the model keeps its shape per layer, so the result
//! is a plain GGUF with fewer blocks that llama.cpp runs, and every removed layer is compute and
//! memory saved.
//!
//! Which layers matter least is read from the residual stream `x_l` (`tokens x d`, the input of
//! layer `l`; `x_L` is the last layer's output) over a calibration text, per token `t`:
//!
//! - **angular distance** of a block of `n` consecutive layers (Gromov, Tirumala, Shapourian,
//!   Glorioso and Roberts 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
//!   `d(l, n) = mean_t arccos(cos(x_l[t], x_{l+n}[t])) / pi`; the block `l .. l+n` with the least
//!   distance changes its input least, and is removed;
//! - **block influence** of one layer (Men et al. 2024, "ShortGPT"):
//!   `BI_l = 1 - mean_t cos(x_l[t], x_{l+1}[t])`; the `n` layers of least influence are removed
//!   (not necessarily consecutive).
//!
//! Position 0 of each chunk (the beginning of text, whose residual is dominated by a few huge
//! channels in most LLMs) is left out of the means.

use std::collections::BTreeSet;
use std::path::Path;

use smelt_formats::gguf::{GgufValue, TensorSpec};
use smelt_formats::GgufFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, Tokenizer};

use super::model::Source;
use super::write_gguf;
use crate::calib::CalibOptions;
use crate::CompressError;

/// How layers are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerScore {
    Angular,
    Influence,
}

/// What calibration measured of the layers.
#[derive(Clone, Debug)]
pub struct LayerScores {
    /// `BI_l` per layer.
    pub influence: Vec<f64>,
    /// `d(l, n)` per start `l` (`0 ..= L - n`) for the block length `n` asked.
    pub angular: Vec<f64>,
    pub block: usize,
    pub chunks: usize,
    pub tokens: u64,
}

impl LayerScores {
    /// The layers to remove, in ascending order.
    pub fn choose(&self, how: LayerScore) -> Vec<usize> {
        let n = self.block;
        match how {
            LayerScore::Angular => {
                let start = (0..self.angular.len()).min_by(|&a, &b| self.angular[a].total_cmp(&self.angular[b]).then(a.cmp(&b))).unwrap_or(0);
                (start..start + n).collect()
            }
            LayerScore::Influence => {
                let mut idx: Vec<usize> = (0..self.influence.len()).collect();
                idx.sort_by(|&a, &b| self.influence[a].total_cmp(&self.influence[b]).then(a.cmp(&b)));
                let mut out: Vec<usize> = idx.into_iter().take(n).collect();
                out.sort_unstable();
                out
            }
        }
    }
}

/// The cosine of two residual rows, clamped into `acos`'s domain.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    smelt_models::stats::cosine(a, b).clamp(-1.0, 1.0)
}

/// Runs the calibration `tokens` through `model` in chunks and scores its layers for removing
/// a block of `n` (`1 <= n < L`). `on_chunk(done, total)`.
pub fn score_layers(model: &Llama, tok: &Tokenizer, tokens: &[u32], opts: CalibOptions, n: usize, pool: &ThreadPool, on_chunk: &mut dyn FnMut(usize, usize)) -> Result<LayerScores, CompressError> {
    let layers = model.layers.len();
    if n == 0 || n >= layers {
        return Err(CompressError::Fit(format!("cannot remove {n} of {layers} layers: remove at least one and keep at least one")));
    }
    let ctx = opts.ctx.min(model.cfg.ctx_train);
    let available = tokens.len() / ctx.max(1);
    if ctx < 2 || available == 0 {
        return Err(CompressError::CalibrationTooShort { tokens: tokens.len(), ctx });
    }
    let chunks = opts.max_chunks.map_or(available, |m| m.min(available));
    let d = model.cfg.dim;
    let (mut influence, mut angular) = (vec![0f64; layers], vec![0f64; layers - n + 1]);
    let mut counted = 0u64;
    let mut res = Vec::new();
    for i in 0..chunks {
        let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
        if let (true, Some(bos)) = (tok.add_bos, tok.bos) {
            chunk[0] = bos;
        }
        let mut sess = model.session(ctx);
        model.forward_capture(pool, &mut sess, &chunk, false, &mut res)?;
        for t in 1..ctx {
            let row = |l: usize| &res[l][t * d..(t + 1) * d];
            for (l, v) in influence.iter_mut().enumerate() {
                *v += 1.0 - cosine(row(l), row(l + 1));
            }
            for (l, v) in angular.iter_mut().enumerate() {
                *v += cosine(row(l), row(l + n)).acos() / std::f64::consts::PI;
            }
            counted += 1;
        }
        on_chunk(i + 1, chunks);
    }
    let c = counted.max(1) as f64;
    influence.iter_mut().chain(angular.iter_mut()).for_each(|v| *v /= c);
    Ok(LayerScores { influence, angular, block: n, chunks, tokens: counted })
}

/// `blk.N.rest` -> `(N, rest)`.
fn block_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// Writes `file` without the blocks in `removed` (the others renumbered in order, the block
/// count lowered), every tensor copied as it is; atomically. Returns the bytes written.
pub fn write_without_layers(file: &GgufFile, removed: &BTreeSet<usize>, out: &Path) -> Result<u64, CompressError> {
    let arch = file.header.architecture().unwrap_or("llama").to_string();
    let key = format!("{arch}.block_count");
    let layers = file.header.get_u64(&key).map_err(|e| CompressError::Fit(format!("{key}: {e}")))? as usize;
    if removed.is_empty() || removed.len() >= layers || removed.iter().any(|&l| l >= layers) {
        return Err(CompressError::Fit(format!("cannot remove layers {removed:?} of {layers}: keep at least one, remove only existing ones")));
    }
    let new_index = |l: usize| l - removed.range(..l).count();
    let mut meta = file.header.metadata.clone();
    meta.set(key, GgufValue::U32((layers - removed.len()) as u32));
    let mut tensors = Vec::new();
    for t in file.tensors() {
        let name = match block_of(&t.name) {
            Some((l, _)) if removed.contains(&l) => continue,
            Some((l, rest)) => format!("blk.{}.{rest}", new_index(l)),
            None => t.name.clone(),
        };
        tensors.push((TensorSpec { name, dims: t.dims.clone(), ty: t.ty }, file.tensor_data(t).into()));
    }
    write_gguf(file, &meta, tensors, out)
}

/// What removing layers did.
#[derive(Clone, Debug)]
pub struct LayerReport {
    pub scores: LayerScores,
    /// The removed layers (their indices in the source).
    pub removed: Vec<usize>,
    pub layers_before: usize,
    /// Parameters of the source's blocks and of the removed ones.
    pub block_params: u64,
    pub removed_params: u64,
    pub file_bytes: u64,
}

/// Which layers to remove, and how to find them.
#[derive(Clone, Copy, Debug)]
pub struct LayerRemoval {
    pub n: usize,
    pub how: LayerScore,
    pub calib: CalibOptions,
}

/// Scores the layers of `model` (loaded from `src.file`) on `src.text`, removes the `r.n` that
/// `r.how` chooses and writes the rest to `out`. `on_chunk(done, total)`.
pub fn remove_layers(src: &Source, model: &Llama, r: LayerRemoval, out: &Path, pool: &ThreadPool, on_chunk: &mut dyn FnMut(usize, usize)) -> Result<LayerReport, CompressError> {
    let Source { file, tok, text } = *src;
    let text = text.ok_or_else(|| CompressError::Fit("removing layers needs a calibration text to score them".into()))?;
    let (n, how) = (r.n, r.how);
    let scores = score_layers(model, tok, &tok.encode(text, false), r.calib, n, pool, on_chunk)?;
    let removed = scores.choose(how);
    let set: BTreeSet<usize> = removed.iter().copied().collect();
    let (mut block_params, mut removed_params) = (0u64, 0u64);
    for t in file.tensors() {
        if let Some((l, _)) = block_of(&t.name) {
            block_params += t.n_elements;
            if set.contains(&l) {
                removed_params += t.n_elements;
            }
        }
    }
    let file_bytes = write_without_layers(file, &set, out)?;
    Ok(LayerReport { scores, removed, layers_before: model.layers.len(), block_params, removed_params, file_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices() {
        let s = LayerScores { influence: vec![0.5, 0.1, 0.3, 0.1, 0.9], angular: vec![0.4, 0.2, 0.2, 0.3], block: 2, chunks: 1, tokens: 1 };
        assert_eq!(s.choose(LayerScore::Angular), vec![1, 2]);
        assert_eq!(s.choose(LayerScore::Influence), vec![1, 3]);
        assert_eq!(block_of("blk.12.attn_q.weight"), Some((12, "attn_q.weight")));
        assert_eq!(block_of("token_embd.weight"), None);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-12);
    }
}
