//! Structured pruning of a BERT sentence encoder (all-MiniLM-L6-v2 and its kin): FFN channels
//! removed by the OBS step of [`super::columns`] on each layer's FFN output projection
//! (`encoder.layer.L.output.dense`, whose input is the GELU of `intermediate.dense`), refitted on
//! the Hessian of that input over calibration sentences, its bias absorbing the removed
//! channels' mean. Channel `c` is row `c` (and bias `c`) of `intermediate.dense` and column `c`
//! of `output.dense`.
//!
//! Every layer keeps the same number (a multiple of 32), so the result is a standard HF BERT
//! with a smaller `intermediate_size`: `config.json` and an F32 `model.safetensors` in a copy of
//! the sentence-transformers directory (tokenizer, pooling and the rest copied as they are),
//! which sentence-transformers and smelt load as they load the original.

use std::collections::HashMap;
use std::path::Path;

use smelt_formats::safetensors::{serialize_f32, SafetensorsFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::embed::Encoder;
use smelt_models::observe::MatrixInput;

use super::columns::{remove_column_groups, remove_columns_at_once, with_bias_column, with_constant_input, ColumnGroups};
use super::width::FFN_MULTIPLE;
use crate::calib::Collector;
use crate::CompressError;

/// What to remove.
#[derive(Clone, Copy, Debug)]
pub struct EncoderPrune {
    /// Fraction of every layer's FFN channels to remove, `[0, 1)`.
    pub ffn: f64,
    pub damp: f64,
    /// Compensate the removed channels' mean in the output projection's bias.
    pub bias: bool,
    /// Sentences per calibration batch.
    pub batch: usize,
}

/// What encoder pruning did.
#[derive(Clone, Debug)]
pub struct EncoderReport {
    pub ffn_before: usize,
    pub ffn_after: usize,
    /// Parameters of the encoder (embeddings included) before and after.
    pub params: (u64, u64),
    pub sentences: usize,
    pub tokens: u64,
    pub bytes: u64,
}

fn bad(msg: impl Into<String>) -> CompressError {
    CompressError::Fit(msg.into())
}

/// Prunes the encoder in `dir` (loaded as `enc`), calibrated on `sentences`, into the new
/// directory `out` (which must not exist yet or be empty). `progress(done, total, what)`.
pub fn prune_encoder(dir: &Path, enc: &Encoder, sentences: &[&str], p: &EncoderPrune, out: &Path, pool: &ThreadPool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<EncoderReport, CompressError> {
    if !(0.0..1.0).contains(&p.ffn) || p.ffn == 0.0 {
        return Err(bad(format!("the FFN fraction {} is outside (0, 1)", p.ffn)));
    }
    if sentences.is_empty() {
        return Err(bad("encoder pruning needs calibration sentences (give --calib)"));
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(bad(format!("{} exists and is not an empty directory: give a new directory", out.display())));
    }
    let st = SafetensorsFile::open(dir.join("model.safetensors")).map_err(|e| bad(format!("reading {}: {e}", dir.join("model.safetensors").display())))?;
    let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
    let cfg = &enc.model.cfg;
    let (d, ffn, n_layers) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers);

    // Calibration: the inputs of every FFN output projection, with their Hessians.
    let mut c = Collector::new(pool).hessians_for(0..n_layers);
    let seqs: Vec<Vec<u32>> = sentences.iter().map(|t| enc.tok.encode(t, enc.max_len)).collect();
    let tokens: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    let mut bufs = Default::default();
    let batches = seqs.len().div_ceil(p.batch.max(1));
    for (i, batch) in seqs.chunks(p.batch.max(1)).enumerate() {
        let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        enc.model.forward_observed(pool, &refs, &mut bufs, Some(&mut c))?;
        progress(i, batches, "calibration batch");
    }
    let stats = c.finish().map_err(smelt_models::ModelError::from)?;

    let keep_n = (((ffn as f64 * (1.0 - p.ffn)) / FFN_MULTIPLE as f64).round() as usize * FFN_MULTIPLE).clamp(FFN_MULTIPLE.min(ffn), ffn);
    let mut replaced: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for l in 0..n_layers {
        progress(l, n_layers, "pruning layer");
        let name = |s: &str| format!("{prefix}encoder.layer.{l}.{s}");
        let f32_of = |n: &str| st.tensor_f32(n, None).map_err(|e| bad(format!("{n}: {e}")));
        let st_in = stats.get(&(l, MatrixInput::FfnDown)).filter(|s| s.cols == ffn && s.hessian.is_some()).ok_or_else(|| bad(format!("no calibration statistics for layer {l}'s FFN")))?;
        let h = with_constant_input(st_in.hessian.as_deref().unwrap_or(&[]), &st_in.sum, st_in.rows, ffn);
        let down = f32_of(&name("output.dense.weight"))?;
        let down_b = f32_of(&name("output.dense.bias"))?;
        if down.len() != d * ffn || down_b.len() != d {
            return Err(bad(format!("{} is not {d} x {ffn}", name("output.dense.weight"))));
        }
        // The greedy removal leaves `[W | b]` refitted, bias included.
        let mut w = with_bias_column(&down, d, ffn, Some(&down_b));
        let spec = ColumnGroups { group: 1, n_groups: ffn, n_remove: ffn - keep_n, damp: p.damp };
        let order = remove_column_groups(pool, &mut w, d, ffn + 1, &h, spec).map_err(|source| CompressError::Prune { tensor: name("output.dense.weight"), source })?;
        let gone: Vec<usize> = order.iter().map(|r| r.group).collect();
        if !p.bias {
            // Without the bias: refit with the constant input's row and column taken out.
            let hn: Vec<f64> = (0..ffn * ffn).map(|k| h[(k / ffn) * (ffn + 1) + k % ffn]).collect();
            let mut wn = down.clone();
            remove_columns_at_once(pool, &mut wn, d, ffn, &hn, &gone, p.damp).map_err(|source| CompressError::Prune { tensor: name("output.dense.weight"), source })?;
            w = with_bias_column(&wn, d, ffn, Some(&down_b));
        }
        let gone_set: std::collections::BTreeSet<usize> = gone.into_iter().collect();
        let keep: Vec<usize> = (0..ffn).filter(|c| !gone_set.contains(c)).collect();
        let c1 = ffn + 1;
        let down_new: Vec<f32> = (0..d).flat_map(|r| keep.iter().map(move |&j| (r, j))).map(|(r, j)| w[r * c1 + j]).collect();
        let bias_new: Vec<f32> = (0..d).map(|r| w[r * c1 + ffn]).collect();
        let up = f32_of(&name("intermediate.dense.weight"))?;
        let up_b = f32_of(&name("intermediate.dense.bias"))?;
        let up_new: Vec<f32> = keep.iter().flat_map(|&r| up[r * d..(r + 1) * d].iter().copied()).collect();
        let up_b_new: Vec<f32> = keep.iter().map(|&r| up_b[r]).collect();
        replaced.insert(name("output.dense.weight"), (vec![d, keep_n], down_new));
        replaced.insert(name("output.dense.bias"), (vec![d], bias_new));
        replaced.insert(name("intermediate.dense.weight"), (vec![keep_n, d], up_new));
        replaced.insert(name("intermediate.dense.bias"), (vec![keep_n], up_b_new));
    }

    // The new directory: every side file copied, config.json's width changed, F32 weights.
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let (mut before, mut after) = (0u64, 0u64);
    for t in st.tensors() {
        before += t.n_elements() as u64;
        let (shape, values) = match replaced.remove(&t.name) {
            Some(v) => v,
            None => (t.shape.clone(), st.tensor_f32(&t.name, None).map_err(|e| bad(format!("{}: {e}", t.name)))?),
        };
        after += values.len() as u64;
        tensors.push((t.name.clone(), shape, values));
    }
    let bytes = serialize_f32(&tensors).map_err(|e| bad(e.to_string()))?;
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).map_err(|e| bad(format!("config.json: {e}")))?).map_err(|e| bad(format!("config.json: {e}")))?;
    config["intermediate_size"] = serde_json::json!(keep_n);
    // Written into a temporary directory beside `out`, renamed into place when complete.
    let tmp = out.with_file_name(format!(".{}.smelt-tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("pruned")));
    std::fs::remove_dir_all(&tmp).ok();
    let write = || -> std::io::Result<()> {
        copy_dir(dir, &tmp)?;
        std::fs::write(tmp.join("model.safetensors"), &bytes)?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?)?;
        if out.exists() {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out)
    };
    if let Err(e) = write() {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(bad(format!("writing {}: {e}", out.display())));
    }
    Ok(EncoderReport { ffn_before: ffn, ffn_after: keep_n, params: (before, after), sentences: sentences.len(), tokens, bytes: bytes.len() as u64 })
}

/// Copies the regular files of `from` (and of its subdirectories) into `to`, skipping checksum
/// side files and ONNX exports (they describe the original weights).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (path, name) = (e.path(), e.file_name());
        let n = name.to_string_lossy();
        if n.ends_with(".sha256") || n.ends_with(".onnx") || n == "model.safetensors" || n == "onnx" {
            continue;
        }
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_dir(&path, &to.join(&name))?;
        } else if ty.is_file() {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}
