//! Sentence embeddings with a BERT-family encoder, as sentence-transformers computes them:
//! tokenize, truncate to `max_seq_length`, run the encoder, pool (mean, CLS or max, from
//! `1_Pooling/config.json`), L2-normalize when the model's modules include `Normalize`.
//!
//! Batching wastes nothing: texts are sorted by length and packed into batches of at most
//! `batch_size` texts and `batch_tokens` tokens, with no padding (the encoder packs sequences);
//! results come back in the input order. Long texts can instead be split into overlapping
//! windows whose embeddings are averaged (weighted by their token counts) before normalizing.

use std::path::Path;

use serde_json::Value;
use smelt_formats::hf_config::load_pooling;
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;

use crate::bert::{Bert, BertBuffers};
use crate::tokenizer::wordpiece::WordPiece;
use crate::ModelError;

/// How token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over all tokens (`[CLS]` and `[SEP]` included, as sentence-transformers does).
    Mean,
    /// The `[CLS]` token's state.
    Cls,
    /// Element-wise maximum over tokens.
    Max,
}

/// Splitting long texts into overlapping windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Tokens per window, `[CLS]` and `[SEP]` included.
    pub size: usize,
    /// Tokens between the starts of consecutive windows.
    pub stride: usize,
}

#[derive(Clone, Debug)]
pub struct EmbedOptions {
    pub batch_size: usize,
    pub batch_tokens: usize,
    /// `None`: truncate to the model's maximum length, as sentence-transformers does.
    pub window: Option<Window>,
    /// Override the model's normalization.
    pub normalize: Option<bool>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions { batch_size: 32, batch_tokens: 16384, window: None, normalize: None }
    }
}

/// From this many batches per thread on, [`Encoder::embed`] gives each thread whole batches.
pub const BATCHES_PER_THREAD: usize = 2;

/// An encoder with its tokenizer and pooling.
pub struct Encoder {
    pub model: Bert,
    pub tok: WordPiece,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per sequence, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

impl Encoder {
    /// Loads an encoder: a sentence-transformers / HF directory (config.json, model.safetensors,
    /// tokenizer.json, optional 1_Pooling/config.json, sentence_bert_config.json, modules.json),
    /// or an ONNX export (the `.onnx` file, or a directory holding one) with a tokenizer.json
    /// beside it.
    pub fn load(path: &Path, as_type: Option<GgmlType>) -> Result<Encoder, ModelError> {
        let (dir, onnx) = if path.is_dir() {
            let onnx = if path.join("model.safetensors").exists() {
                None
            } else {
                std::fs::read_dir(path).ok().and_then(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "onnx")))
            };
            (path.to_path_buf(), onnx)
        } else {
            (path.parent().unwrap_or(Path::new(".")).to_path_buf(), Some(path.to_path_buf()))
        };
        let model = match &onnx {
            Some(file) => crate::bert_onnx::load(file, as_type)?,
            None => Bert::from_hf_dir(&dir, as_type)?,
        };
        let tok = WordPiece::from_hf_json(&dir.join("tokenizer.json"))?;
        Self::with_model(&dir, model, tok)
    }

    /// Wraps a model with the pooling and limits a sentence-transformers directory describes
    /// (defaults: mean pooling, not normalized; length: `max_seq_length` of
    /// sentence_bert_config.json, else the tokenizer.json's truncation, else the model's
    /// position limit).
    pub fn with_model(dir: &Path, model: Bert, tok: WordPiece) -> Result<Encoder, ModelError> {
        let pooling = match load_pooling(&dir.join("1_Pooling/config.json")) {
            Ok(p) if p.pooling_mode_cls_token => Pooling::Cls,
            Ok(p) if p.pooling_mode_max_tokens => Pooling::Max,
            _ => Pooling::Mean,
        };
        let normalize = match read_json(&dir.join("modules.json")) {
            Some(Value::Array(mods)) => mods.iter().any(|m| m.get("type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with("Normalize"))),
            // A plain HF model: sentence-transformers adds mean pooling, no normalization.
            _ => false,
        };
        let limit = model.cfg.max_position_embeddings;
        let max_len = read_json(&dir.join("sentence_bert_config.json"))
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()))
            .map(|m| m as usize)
            .or(tok.truncation)
            .map_or(limit, |m| m.min(limit))
            .max(2);
        Ok(Encoder { model, tok, pooling, normalize, max_len })
    }

    /// Switches the selected matrices to int8, smoothed with activation maxima measured on
    /// `calibration` texts (default: [`crate::int8::DEFAULT_CALIBRATION`]); returns how many
    /// matrices were converted.
    pub fn quantize_int8(&mut self, pool: &ThreadPool, spec: &crate::Int8Spec, calibration: Option<&[&str]>) -> Result<usize, ModelError> {
        let texts = calibration.unwrap_or(crate::int8::DEFAULT_CALIBRATION);
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| self.tok.encode(t, self.max_len)).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let calib = self.model.calibrate(pool, &refs)?;
        self.model.quantize_int8(spec, Some(&calib))
    }

    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// Pools the states of one sequence (`n` rows of `d`).
    fn pool(&self, states: &[f32], n: usize, out: &mut [f32]) {
        let d = self.dim();
        match self.pooling {
            Pooling::Cls => out.copy_from_slice(&states[..d]),
            Pooling::Mean => {
                out.fill(0.0);
                for r in 0..n {
                    crate::ops::add_assign(out, &states[r * d..(r + 1) * d]);
                }
                out.iter_mut().for_each(|v| *v /= n as f32);
            }
            Pooling::Max => {
                out.fill(f32::NEG_INFINITY);
                for r in 0..n {
                    for (o, &v) in out.iter_mut().zip(&states[r * d..(r + 1) * d]) {
                        *o = o.max(v);
                    }
                }
            }
        }
    }

    /// The sequences of one text: one truncated sequence, or overlapping windows.
    fn sequences(&self, text: &str, window: Option<Window>) -> Vec<Vec<u32>> {
        let words = self.tok.encode_words(text);
        let frame = |w: &[u32]| {
            let mut v = Vec::with_capacity(w.len() + 2);
            v.push(self.tok.cls);
            v.extend_from_slice(w);
            v.push(self.tok.sep);
            v
        };
        let body = self.max_len - 2;
        match window {
            Some(w) if words.len() > body => {
                let size = w.size.clamp(3, self.max_len) - 2;
                let stride = w.stride.clamp(1, size);
                let mut out = Vec::new();
                let mut start = 0;
                loop {
                    let end = (start + size).min(words.len());
                    out.push(frame(&words[start..end]));
                    if end == words.len() {
                        break out;
                    }
                    start += stride;
                }
            }
            _ => vec![frame(&words[..words.len().min(body)])],
        }
    }

    /// Embeddings of `texts`, in order (`texts.len()` vectors of `dim()` values).
    ///
    /// With at least [`BATCHES_PER_THREAD`] batches per thread (throughput work), whole batches
    /// are the pool's tasks: each thread runs the encoder on its own batches with its own
    /// buffers, with no synchronisation inside a batch. With fewer (one request, low latency),
    /// batches run one after another and every matrix product is split across the threads.
    pub fn embed(&self, pool: &ThreadPool, texts: &[&str], opts: &EmbedOptions) -> Result<Vec<Vec<f32>>, ModelError> {
        let d = self.dim();
        // (text index, sequence) for every sequence to run.
        let mut jobs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            for s in self.sequences(t, opts.window) {
                jobs.push((i, s));
            }
        }
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].1.len()));
        // Batches: ranges of `order`, longest sequences first.
        let mut batches = Vec::new();
        let mut at = 0;
        while at < order.len() {
            let mut end = at;
            let mut tokens = 0;
            while end < order.len() && end - at < opts.batch_size.max(1) && (end == at || tokens + jobs[order[end]].1.len() <= opts.batch_tokens) {
                tokens += jobs[order[end]].1.len();
                end += 1;
            }
            batches.push(at..end);
            at = end;
        }
        // Runs one batch; returns the pooled vector of each of its sequences, in batch order.
        let run = |range: &std::ops::Range<usize>, pool: &ThreadPool, bufs: &mut BertBuffers| -> Result<Vec<f32>, ModelError> {
            let batch: Vec<&[u32]> = order[range.clone()].iter().map(|&j| jobs[j].1.as_slice()).collect();
            let states = self.model.forward(pool, &batch, bufs)?;
            let mut pooled = vec![0f32; batch.len() * d];
            let mut row = 0;
            for (seq, out) in batch.iter().zip(pooled.chunks_exact_mut(d)) {
                self.pool(&states[row * d..(row + seq.len()) * d], seq.len(), out);
                row += seq.len();
            }
            Ok(pooled)
        };
        let results: Vec<Result<Vec<f32>, ModelError>> = if batches.len() >= BATCHES_PER_THREAD * pool.n_threads() && pool.n_threads() > 1 {
            type Slot = std::sync::Mutex<Option<Result<Vec<f32>, ModelError>>>;
            let slots: Vec<Slot> = batches.iter().map(|_| Default::default()).collect();
            let spare: std::sync::Mutex<Vec<BertBuffers>> = Default::default();
            pool.run(batches.len(), &|b| {
                let mut bufs = spare.lock().map(|mut s| s.pop()).ok().flatten().unwrap_or_default();
                // Inside a pool task, `forward`'s own parallel loops run inline on this thread.
                let r = run(&batches[b], pool, &mut bufs);
                if let Ok(mut s) = spare.lock() {
                    s.push(bufs);
                }
                if let Ok(mut slot) = slots[b].lock() {
                    *slot = Some(r);
                }
            });
            slots.into_iter().map(|s| s.into_inner().ok().flatten().unwrap_or_else(|| Err(ModelError::Config("a batch did not run".into())))).collect()
        } else {
            let mut bufs = BertBuffers::default();
            batches.iter().map(|r| run(r, pool, &mut bufs)).collect()
        };
        let mut sums = vec![vec![0f32; d]; texts.len()];
        let mut weights = vec![0f32; texts.len()];
        for (range, pooled) in batches.iter().zip(results) {
            for (&j, v) in order[range.clone()].iter().zip(pooled?.chunks_exact(d)) {
                let (i, w) = (jobs[j].0, jobs[j].1.len() as f32);
                if opts.window.is_some() {
                    crate::ops::axpy(w, v, &mut sums[i]);
                    weights[i] += w;
                } else {
                    sums[i].copy_from_slice(v);
                    weights[i] = 1.0;
                }
            }
        }
        let normalize = opts.normalize.unwrap_or(self.normalize);
        for (v, &w) in sums.iter_mut().zip(&weights) {
            if w != 1.0 && w > 0.0 {
                v.iter_mut().for_each(|x| *x /= w);
            }
            if normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
        }
        Ok(sums)
    }
}
