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
use crate::settings::Bound;
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

/// Tokens per sequence, `[CLS]` and `[SEP]` included: the same range for `--max-length` and for
/// `max_seq_length` in sentence_bert_config.json (capped by the model's position table).
pub const MAX_LENGTH: Bound = Bound::int("max length", 2, 1 << 20);

impl Window {
    /// Windows of `size` tokens (`[CLS]` and `[SEP]` included) starting every `stride` tokens;
    /// the size must fit the encoder (`max_len`) and hold a token besides the two markers, and
    /// the stride must be at least 1 and at most the tokens a window holds (`size - 2`: a
    /// larger one would skip text).
    pub fn new(size: usize, stride: Option<usize>, max_len: usize) -> Result<Window, ModelError> {
        let size = Bound::int("--window", 3, max_len as u64).check(size as f64)? as usize;
        let stride = stride.unwrap_or((size * 3 / 4).clamp(1, size - 2));
        let stride = Bound::int("--stride", 1, (size - 2) as u64).check(stride as f64)? as usize;
        Ok(Window { size, stride })
    }
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
    /// position limit). A side file that is present but unreadable or invalid is an error.
    pub fn with_model(dir: &Path, model: Bert, tok: WordPiece) -> Result<Encoder, ModelError> {
        let limit = model.cfg.max_position_embeddings;
        crate::check_vocab(&model.word.name, model.word.rows, tok.vocab_size(), tok.max_id())?;
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling = if pooling_path.exists() {
            let p = load_pooling(&pooling_path)?;
            let side = |reason: String| ModelError::SideFile { path: pooling_path.clone(), reason };
            if p.word_embedding_dimension != 0 && p.word_embedding_dimension != model.dim() {
                return Err(side(format!("word_embedding_dimension is {}, but the model's hidden size is {}", p.word_embedding_dimension, model.dim())));
            }
            match (p.pooling_mode_cls_token, p.pooling_mode_mean_tokens, p.pooling_mode_max_tokens, p.pooling_mode_mean_sqrt_len_tokens) {
                (true, false, false, false) => Pooling::Cls,
                (false, true, false, false) => Pooling::Mean,
                (false, false, true, false) => Pooling::Max,
                _ => return Err(side("exactly one of pooling_mode_cls_token, pooling_mode_mean_tokens, pooling_mode_max_tokens must be true (smelt pools one way; mean_sqrt_len is not supported)".into())),
            }
        } else {
            Pooling::Mean
        };
        let modules_path = dir.join("modules.json");
        let normalize = match crate::read_side_file(&modules_path)? {
            Some(Value::Array(mods)) => {
                let mut normalize = false;
                for (i, m) in mods.iter().enumerate() {
                    match m.get("type").and_then(|t| t.as_str()) {
                        Some(t) => normalize |= t.ends_with("Normalize"),
                        None => return Err(ModelError::SideFile { path: modules_path, reason: format!("module #{i} has no \"type\" string") }),
                    }
                }
                normalize
            }
            Some(_) => return Err(ModelError::SideFile { path: modules_path, reason: "expected a JSON array of modules".into() }),
            // A plain HF model: sentence-transformers adds mean pooling, no normalization.
            None => false,
        };
        let st_path = dir.join("sentence_bert_config.json");
        let max_len = match crate::read_side_file(&st_path)?.as_ref().and_then(|v| v.get("max_seq_length")) {
            Some(Value::Number(n)) => {
                let name = format!("max_seq_length in {}", st_path.display());
                MAX_LENGTH.at_most(limit as f64).check_as(n.as_f64().unwrap_or(f64::NAN), &name)? as usize
            }
            Some(Value::Null) | None => tok.truncation.map_or(limit, |m| m.clamp(2, limit)),
            Some(other) => return Err(ModelError::SideFile { path: st_path, reason: format!("max_seq_length is {other}, expected a number") }),
        };
        Ok(Encoder { model, tok, pooling, normalize, max_len })
    }

    /// Sets the tokens per sequence (`[CLS]` and `[SEP]` included), checked as
    /// `max_seq_length` is: at least 2, at most the model's position table.
    pub fn set_max_len(&mut self, m: usize) -> Result<(), ModelError> {
        self.max_len = MAX_LENGTH.named("--max-length").at_most(self.model.cfg.max_position_embeddings as f64).check(m as f64)? as usize;
        Ok(())
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

    /// The token ranges `[start, end)` of one text's `n` tokens to run: the first `max_len - 2`
    /// (truncation), or overlapping windows covering all of them.
    fn spans(&self, n: usize, window: Option<Window>, out: &mut Vec<(usize, usize)>) {
        let body = self.max_len - 2;
        match window {
            Some(w) if n > body => {
                let size = w.size.clamp(3, self.max_len) - 2;
                let stride = w.stride.clamp(1, size);
                let mut start = 0;
                loop {
                    let end = (start + size).min(n);
                    out.push((start, end));
                    if end == n {
                        break;
                    }
                    start += stride;
                }
            }
            _ => out.push((0, n.min(body))),
        }
    }

    /// Embeddings of `texts`, in order (`texts.len()` vectors of `dim()` values).
    ///
    /// Every text is tokenized once; its sequences (the truncated text, or its windows) are
    /// token ranges, framed by `[CLS]`/`[SEP]` only when their batch runs, and each batch's
    /// pooled vectors are folded into the texts' sums as soon as a wave of batches ends. Memory is
    /// the texts' tokens plus one wave of batches, however many windows a text has.
    ///
    /// With at least [`BATCHES_PER_THREAD`] batches per thread (throughput work), whole batches
    /// are the pool's tasks: each thread runs the encoder on its own batches with its own
    /// buffers, with no synchronisation inside a batch. With fewer (one request, low latency),
    /// batches run one after another and every matrix product is split across the threads.
    pub fn embed(&self, pool: &ThreadPool, texts: &[&str], opts: &EmbedOptions) -> Result<Vec<Vec<f32>>, ModelError> {
        let d = self.dim();
        let words: Vec<Vec<u32>> = texts.iter().map(|t| self.tok.encode_words(t)).collect();
        // (text index, token range) of every sequence to run.
        let mut jobs: Vec<(usize, usize, usize)> = Vec::new();
        let mut spans = Vec::new();
        for (i, w) in words.iter().enumerate() {
            spans.clear();
            self.spans(w.len(), opts.window, &mut spans);
            jobs.extend(spans.iter().map(|&(a, b)| (i, a, b)));
        }
        let seq_len = |j: usize| jobs[j].2 - jobs[j].1 + 2;
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&j| std::cmp::Reverse(seq_len(j)));
        // Batches: ranges of `order`, longest sequences first.
        let mut batches = Vec::new();
        let mut at = 0;
        while at < order.len() {
            let mut end = at;
            let mut tokens = 0;
            while end < order.len() && end - at < opts.batch_size.max(1) && (end == at || tokens + seq_len(order[end]) <= opts.batch_tokens) {
                tokens += seq_len(order[end]);
                end += 1;
            }
            batches.push(at..end);
            at = end;
        }
        // Runs one batch; returns the pooled vector of each of its sequences, in batch order.
        let run = |range: &std::ops::Range<usize>, pool: &ThreadPool, bufs: &mut BertBuffers| -> Result<Vec<f32>, ModelError> {
            let seqs: Vec<Vec<u32>> = order[range.clone()]
                .iter()
                .map(|&j| {
                    let (i, a, b) = jobs[j];
                    let mut v = Vec::with_capacity(b - a + 2);
                    v.push(self.tok.cls);
                    v.extend_from_slice(&words[i][a..b]);
                    v.push(self.tok.sep);
                    v
                })
                .collect();
            let batch: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            let states = self.model.forward(pool, &batch, bufs)?;
            let mut pooled = vec![0f32; batch.len() * d];
            let mut row = 0;
            for (seq, out) in batch.iter().zip(pooled.chunks_exact_mut(d)) {
                self.pool(&states[row * d..(row + seq.len()) * d], seq.len(), out);
                row += seq.len();
            }
            Ok(pooled)
        };
        let threads = pool.n_threads();
        let parallel = threads > 1 && batches.len() >= BATCHES_PER_THREAD * threads;
        let wave = if parallel { 16 * threads } else { 1 };
        let mut sums = vec![vec![0f32; d]; texts.len()];
        let mut weights = vec![0f32; texts.len()];
        let mut bufs = BertBuffers::default();
        let spare: std::sync::Mutex<Vec<BertBuffers>> = Default::default();
        for wave_batches in batches.chunks(wave) {
            let results: Vec<Result<Vec<f32>, ModelError>> = if parallel {
                type Slot = std::sync::Mutex<Option<Result<Vec<f32>, ModelError>>>;
                let slots: Vec<Slot> = wave_batches.iter().map(|_| Default::default()).collect();
                pool.run(wave_batches.len(), &|b| {
                    let mut bufs = spare.lock().map(|mut s| s.pop()).ok().flatten().unwrap_or_default();
                    // Inside a pool task, `forward`'s own parallel loops run inline on this thread.
                    let r = run(&wave_batches[b], pool, &mut bufs);
                    if let Ok(mut s) = spare.lock() {
                        s.push(bufs);
                    }
                    if let Ok(mut slot) = slots[b].lock() {
                        *slot = Some(r);
                    }
                });
                slots.into_iter().map(|s| s.into_inner().ok().flatten().unwrap_or_else(|| Err(ModelError::Config("an embedding batch did not run (a worker thread failed)".into())))).collect()
            } else {
                wave_batches.iter().map(|r| run(r, pool, &mut bufs)).collect()
            };
            // Folded in batch order, so the sums do not depend on the threads' timing.
            for (range, pooled) in wave_batches.iter().zip(results) {
                for (&j, v) in order[range.clone()].iter().zip(pooled?.chunks_exact(d)) {
                    let i = jobs[j].0;
                    if opts.window.is_some() {
                        let w = seq_len(j) as f32;
                        crate::ops::axpy(w, v, &mut sums[i]);
                        weights[i] += w;
                    } else {
                        sums[i].copy_from_slice(v);
                        weights[i] = 1.0;
                    }
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
