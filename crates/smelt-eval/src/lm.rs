//! Decoder quality: perplexity over fixed-size chunks and, against a reference model, the KL
//! divergence of every scored token, top-1 agreement and the change of the correct token's
//! probability, all computed online (one chunk of reference log-probabilities in memory, never a
//! logits file).
//!
//! Scoring follows llama-perplexity so that numbers are comparable: the token stream is cut into
//! `n = len / ctx` chunks of `ctx` tokens, each chunk is run from an empty context (its first
//! token replaced by BOS when the tokenizer adds one), and only the second half is scored: for
//! `j` in `ctx/2 .. ctx-1`, the logits at `j` predict token `j + 1`, so each chunk scores
//! `ctx - 1 - ctx/2` tokens.
//!
//! Per scored token with model logits `z` (log-probs `l = z - logsumexp z`), reference log-probs
//! `b` and correct token `t`:
//! - `nll = -l[t]`; perplexity `exp(mean nll)`, its error `ppl * stderr(nll)`;
//! - `KL(P_ref || P) = sum_i exp(b_i) (b_i - l_i)`;
//! - same top: `argmax z == argmax b`;
//! - `dp = exp(l[t]) - exp(b[t])`; mean and RMS over tokens.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use smelt_kernels::pool::ThreadPool;
use smelt_models::Llama;

use crate::stats::{Running, Summary};
use crate::EvalError;

/// How the text is cut and scored.
#[derive(Clone, Copy, Debug)]
pub struct PplOptions {
    /// Tokens per chunk (llama-perplexity's `-c`, default 512).
    pub ctx: usize,
    /// Score at most this many chunks (`--chunks`).
    pub max_chunks: Option<usize>,
    /// Replace each chunk's first token by this one (the BOS token of tokenizers that add one).
    pub bos: Option<u32>,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions { ctx: 512, max_chunks: None, bos: None }
    }
}

impl PplOptions {
    /// Chunks that `n_tokens` tokens give.
    pub fn chunks(&self, n_tokens: usize) -> usize {
        let n = n_tokens / self.ctx.max(1);
        self.max_chunks.map_or(n, |m| n.min(m))
    }

    /// Tokens scored per chunk.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.ctx / 2
    }
}

/// KL divergence and agreement with the reference.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VsReference {
    /// The reference's perplexity on the same tokens.
    pub ppl_ref: f64,
    /// `ln(PPL / PPL_ref)` and its error (the correlation of the two nll series accounted for).
    pub ln_ppl_ratio: f64,
    pub ln_ppl_ratio_stderr: f64,
    /// Mean KL divergence (nats per token) and its standard error.
    pub kld_mean: f64,
    pub kld_stderr: f64,
    /// Distribution of per-token KLD (median, p90, p99, p99.9, max ...).
    pub kld: Summary,
    /// Fraction of tokens whose most likely next token equals the reference's.
    pub same_top: f64,
    pub same_top_stderr: f64,
    /// Mean and RMS of `p(correct) - p_ref(correct)`.
    pub dp_mean: f64,
    pub dp_mean_stderr: f64,
    pub dp_rms: f64,
}

/// What one model scored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LmQuality {
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: u64,
    pub ppl: f64,
    pub ppl_stderr: f64,
    /// Present when a reference was given.
    pub vs_ref: Option<VsReference>,
}

/// Running sums for one model.
#[derive(Default)]
struct Acc {
    nll: Running,
    nll_ref: Running,
    nll_cross: f64,
    kld: Running,
    kld_values: Vec<f64>,
    same_top: u64,
    dp: Running,
    dp2: Running,
}

/// One scored token.
#[derive(Clone, Copy, Default)]
struct Scored {
    nll: f64,
    nll_ref: f64,
    kld: f64,
    same_top: bool,
    dp: f64,
}

impl Acc {
    fn push(&mut self, s: Scored, with_ref: bool) {
        self.nll.push(s.nll);
        if with_ref {
            self.nll_ref.push(s.nll_ref);
            self.nll_cross += s.nll * s.nll_ref;
            self.kld.push(s.kld);
            self.kld_values.push(s.kld);
            self.same_top += s.same_top as u64;
            self.dp.push(s.dp);
            self.dp2.push(s.dp * s.dp);
        }
    }

    fn ppl(&self) -> f64 {
        self.nll.mean().exp()
    }

    fn finish(mut self, opts: &PplOptions, chunks: usize, with_ref: bool) -> LmQuality {
        let n = self.nll.n;
        let ppl = self.ppl();
        let vs_ref = with_ref.then(|| {
            let (m, mr) = (self.nll.mean(), self.nll_ref.mean());
            let (s, sr) = (self.nll.stderr(), self.nll_ref.stderr());
            // Covariance of the two means: cov(nll, nll_ref) / (n - 1).
            let cov = if n > 1 { (self.nll_cross / n as f64 - m * mr) / (n - 1) as f64 } else { 0.0 };
            let same = self.same_top as f64 / n.max(1) as f64;
            VsReference {
                ppl_ref: mr.exp(),
                ln_ppl_ratio: m - mr,
                ln_ppl_ratio_stderr: (s * s + sr * sr - 2.0 * cov).max(0.0).sqrt(),
                kld_mean: self.kld.mean(),
                kld_stderr: self.kld.stderr(),
                kld: Summary::of(&mut self.kld_values),
                same_top: same,
                same_top_stderr: if n > 1 { (same * (1.0 - same) / (n - 1) as f64).sqrt() } else { 0.0 },
                dp_mean: self.dp.mean(),
                dp_mean_stderr: self.dp.stderr(),
                dp_rms: self.dp2.mean().sqrt(),
            }
        });
        LmQuality { ctx: opts.ctx, chunks, tokens_scored: n, ppl, ppl_stderr: ppl * self.nll.stderr(), vs_ref }
    }
}

/// Progress after each model finished a chunk.
#[derive(Clone, Copy, Debug)]
pub struct ChunkDone<'a> {
    pub chunk: usize,
    pub chunks: usize,
    /// Index into `models` (`None` for the reference).
    pub model: Option<usize>,
    /// The model's running perplexity.
    pub ppl: f64,
    /// The model's raw logits at the chunk's scored positions (`scored x vocab`; empty for the
    /// reference), e.g. for [`crate::kld_base::KldBaseWriter`].
    pub logits: &'a [f32],
}

/// `logsumexp(z)` and `argmax(z)` in f64.
fn lse_argmax(z: &[f32]) -> (f64, usize) {
    let (mut imax, mut max) = (0, f32::NEG_INFINITY);
    for (i, &v) in z.iter().enumerate() {
        if v > max {
            max = v;
            imax = i;
        }
    }
    let s: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (max as f64 + s.ln(), imax)
}

/// Scores one position: logits `z`, reference log-probs `b` (if any), correct token `t`.
fn score(z: &[f32], b: Option<(&[f32], usize)>, t: usize) -> Scored {
    let (lse, top) = lse_argmax(z);
    let nll = lse - z[t] as f64;
    let Some((b, top_ref)) = b else {
        return Scored { nll, ..Default::default() };
    };
    let kld: f64 = z.iter().zip(b).map(|(&zi, &bi)| {
        let bi = bi as f64;
        let p = bi.exp();
        if p > 0.0 {
            p * (bi - (zi as f64 - lse))
        } else {
            0.0
        }
    }).sum();
    let nll_ref = -(b[t] as f64);
    Scored { nll, nll_ref, kld: kld.max(0.0), same_top: top == top_ref, dp: (-nll).exp() - (-nll_ref).exp() }
}

/// Log-softmax of `rows` rows of `vocab` logits, in place, returning each row's argmax.
fn log_softmax_rows(pool: &ThreadPool, logits: &mut [f32], vocab: usize) -> Vec<usize> {
    let rows = logits.len() / vocab;
    let tops = Mutex::new(vec![0usize; rows]);
    let chunks: Vec<Mutex<&mut [f32]>> = logits.chunks_mut(vocab).map(Mutex::new).collect();
    pool.for_chunks(rows, 8, &|r| {
        for i in r {
            let mut row = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
            let (lse, top) = lse_argmax(&row);
            row.iter_mut().for_each(|v| *v = (*v as f64 - lse) as f32);
            tops.lock().unwrap_or_else(|e| e.into_inner())[i] = top;
        }
    });
    tops.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Runs one chunk through `model` and returns the logits of the scored positions.
fn chunk_logits(model: &Llama, pool: &ThreadPool, chunk: &[u32], first: usize) -> Result<Vec<f32>, EvalError> {
    let mut sess = model.session(chunk.len());
    let v = model.cfg.vocab;
    let all = model.forward(pool, &mut sess, chunk, true)?;
    Ok(all[first * v..(chunk.len() - 1) * v].to_vec())
}

/// Scores `tokens` with every model in `models` (and the reference, if given: its log-probs are
/// what the others are compared with). Chunks are the outer loop so that only one chunk of
/// reference log-probabilities is ever held. Returns the reference's own result and one per model.
pub fn evaluate(
    pool: &ThreadPool,
    tokens: &[u32],
    opts: &PplOptions,
    reference: Option<&Llama>,
    models: &[&Llama],
    mut on_chunk: impl FnMut(ChunkDone) -> Result<(), EvalError>,
) -> Result<(Option<LmQuality>, Vec<LmQuality>), EvalError> {
    if opts.ctx < 4 {
        return Err(EvalError::BadOption(format!("context of {} tokens: at least 4 are needed", opts.ctx)));
    }
    let chunks = opts.chunks(tokens.len());
    if chunks == 0 {
        return Err(EvalError::TooFewTokens { tokens: tokens.len(), ctx: opts.ctx });
    }
    let mut vocab = None;
    for m in reference.iter().chain(models.iter()) {
        if m.cfg.ctx_train < opts.ctx {
            return Err(EvalError::BadOption(format!("context {} exceeds the model's trained context {}", opts.ctx, m.cfg.ctx_train)));
        }
        match vocab {
            None => vocab = Some(m.cfg.vocab),
            Some(v) if v != m.cfg.vocab => return Err(EvalError::VocabMismatch { a: v, b: m.cfg.vocab }),
            Some(_) => {}
        }
    }
    let vocab = vocab.unwrap_or(0);
    let first = opts.ctx / 2;
    let n_scored = opts.scored_per_chunk();
    let with_ref = reference.is_some();
    let mut ref_acc = Acc::default();
    let mut accs: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
    for c in 0..chunks {
        let mut chunk = tokens[c * opts.ctx..(c + 1) * opts.ctx].to_vec();
        if let Some(b) = opts.bos {
            chunk[0] = b;
        }
        let targets = &chunk[first + 1..];
        let base = match reference {
            Some(r) => {
                let mut lp = chunk_logits(r, pool, &chunk, first)?;
                let tops = log_softmax_rows(pool, &mut lp, vocab);
                for (j, &t) in targets.iter().enumerate() {
                    ref_acc.push(Scored { nll: -(lp[j * vocab + t as usize] as f64), ..Default::default() }, false);
                }
                on_chunk(ChunkDone { chunk: c, chunks, model: None, ppl: ref_acc.ppl(), logits: &[] })?;
                Some((lp, tops))
            }
            None => None,
        };
        for (k, m) in models.iter().enumerate() {
            let z = chunk_logits(m, pool, &chunk, first)?;
            let out = Mutex::new(vec![Scored::default(); n_scored]);
            pool.for_chunks(n_scored, 8, &|r| {
                let local: Vec<Scored> = r.clone().map(|j| {
                    let b = base.as_ref().map(|(lp, tops)| (&lp[j * vocab..(j + 1) * vocab], tops[j]));
                    score(&z[j * vocab..(j + 1) * vocab], b, targets[j] as usize)
                }).collect();
                out.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(&local);
            });
            for s in out.into_inner().unwrap_or_else(|e| e.into_inner()) {
                accs[k].push(s, with_ref);
            }
            on_chunk(ChunkDone { chunk: c, chunks, model: Some(k), ppl: accs[k].ppl(), logits: &z })?;
        }
    }
    let ref_q = reference.map(|_| ref_acc.finish(opts, chunks, false));
    Ok((ref_q, accs.into_iter().map(|a| a.finish(opts, chunks, with_ref)).collect()))
}

/// A reference's log-probabilities on a few fixed chunks, held in memory, to measure the KL
/// divergence of many variants of one model cheaply (calibration: one tensor changed at a time).
/// Positions `first .. ctx-1` of each chunk are scored; memory `chunks x (ctx - first) x vocab x 4`
/// bytes (2 chunks of 512 from 64 on a 49,152-token vocabulary: 176 MB), plus the residual
/// stream at every layer's input (`chunks x layers x ctx x dim x 4`, 35 MB a chunk on SmolLM2)
/// so that a variant changed from layer `l` on runs from there ([`RefLogprobs::kld_from`]).
pub struct RefLogprobs {
    chunks: Vec<Vec<u32>>,
    first: usize,
    vocab: usize,
    /// Per chunk: log-probs of the scored positions, and each position's argmax.
    lp: Vec<(Vec<f32>, Vec<usize>)>,
    /// Per chunk: the residual stream at each layer's input (and after the last).
    residuals: Vec<Vec<Vec<f32>>>,
}

impl RefLogprobs {
    /// Runs `reference` on `chunks` (each at least `first + 2` tokens, run from an empty context).
    pub fn new(pool: &ThreadPool, reference: &Llama, chunks: Vec<Vec<u32>>, first: usize) -> Result<RefLogprobs, EvalError> {
        let vocab = reference.cfg.vocab;
        let (mut lp, mut residuals) = (Vec::with_capacity(chunks.len()), Vec::with_capacity(chunks.len()));
        for chunk in &chunks {
            if chunk.len() < first + 2 {
                return Err(EvalError::TooFewTokens { tokens: chunk.len(), ctx: first + 2 });
            }
            let mut sess = reference.session(chunk.len());
            let mut res = Vec::new();
            let all = reference.forward_capture(pool, &mut sess, chunk, true, &mut res)?;
            let mut l = all[first * vocab..(chunk.len() - 1) * vocab].to_vec();
            let tops = log_softmax_rows(pool, &mut l, vocab);
            lp.push((l, tops));
            residuals.push(res);
        }
        Ok(RefLogprobs { chunks, first, vocab, lp, residuals })
    }

    /// Tokens scored per measurement.
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len() - 1 - self.first).sum()
    }

    /// Mean `KL(P_ref || P_model)` over the scored positions (nats per token).
    pub fn kld(&self, pool: &ThreadPool, model: &Llama) -> Result<f64, EvalError> {
        self.kld_from(pool, model, 0)
    }

    /// [`RefLogprobs::kld`] of a model that equals the reference before layer `layer`: the
    /// pass starts there, from the reference's residual stream.
    pub fn kld_from(&self, pool: &ThreadPool, model: &Llama, layer: usize) -> Result<f64, EvalError> {
        if model.cfg.vocab != self.vocab {
            return Err(EvalError::VocabMismatch { a: self.vocab, b: model.cfg.vocab });
        }
        let v = self.vocab;
        let mut total = 0.0;
        for ((chunk, (lp, tops)), res) in self.chunks.iter().zip(&self.lp).zip(&self.residuals) {
            let mut sess = model.session(chunk.len());
            let all = match res.get(layer).filter(|_| layer > 0) {
                Some(x) => model.forward_from(pool, &mut sess, chunk, true, layer, x)?,
                None => model.forward(pool, &mut sess, chunk, true)?,
            };
            let z = &all[self.first * v..(chunk.len() - 1) * v];
            let targets = &chunk[self.first + 1..];
            // Partial sums keyed by their first position and added in that order: the result
            // does not depend on which thread finished first.
            let parts = Mutex::new(Vec::new());
            pool.for_chunks(targets.len(), 8, &|r| {
                let first = r.start;
                let s: f64 = r.map(|j| score(&z[j * v..(j + 1) * v], Some((&lp[j * v..(j + 1) * v], tops[j])), targets[j] as usize).kld).sum();
                parts.lock().unwrap_or_else(|e| e.into_inner()).push((first, s));
            });
            let mut parts = parts.into_inner().unwrap_or_else(|e| e.into_inner());
            parts.sort_by_key(|&(first, _)| first);
            total += parts.iter().map(|&(_, s)| s).sum::<f64>();
        }
        Ok(total / self.tokens().max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(z: &[f32]) -> Vec<f32> {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = z.iter().map(|&v| (v as f64 - m).exp()).sum();
        z.iter().map(|&v| (v as f64 - m - s.ln()) as f32).collect()
    }

    #[test]
    fn identical_distributions_have_zero_kld_and_agree() {
        let z = [0.3f32, -1.0, 2.5, 0.0, 1.2];
        let b = log_softmax(&z);
        let s = score(&z, Some((&b, 2)), 4);
        assert!(s.kld.abs() < 1e-7, "{}", s.kld);
        assert!(s.same_top);
        assert!(s.dp.abs() < 1e-7);
        assert!((s.nll - s.nll_ref).abs() < 1e-6);
    }

    #[test]
    fn kld_matches_the_definition() {
        // Two explicit distributions: KL(P||Q) = sum p ln(p/q).
        let p = [0.5f64, 0.25, 0.125, 0.125];
        let q = [0.25f64, 0.25, 0.25, 0.25];
        let b: Vec<f32> = p.iter().map(|v| v.ln() as f32).collect();
        let z: Vec<f32> = q.iter().map(|v| (v.ln() + 3.0) as f32).collect(); // logits up to a constant
        let s = score(&z, Some((&b, 0)), 1);
        let want: f64 = p.iter().zip(&q).map(|(a, c)| a * (a / c).ln()).sum();
        assert!((s.kld - want).abs() < 1e-6, "{} vs {want}", s.kld);
        assert!((s.nll - 4f64.ln()).abs() < 1e-6);
        assert!((s.dp - (0.25 - 0.25)).abs() < 1e-7);
        let s2 = score(&z, Some((&b, 0)), 0);
        assert!((s2.dp - (0.25 - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn token_scores_match_scipy() {
        // Recorded by tests/reference/make_metric_fixtures.py (scipy.stats.entropy, log_softmax).
        let f: serde_json::Value = serde_json::from_str(include_str!("../tests/reference/metrics.json")).unwrap();
        for case in f["kld"].as_array().unwrap() {
            let v = |k: &str| case[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>();
            let (z, b) = (v("logits"), v("ref_logprobs"));
            let top_ref = (0..b.len()).fold(0, |m, i| if b[i] > b[m] { i } else { m });
            let s = score(&z, Some((&b, top_ref)), case["target"].as_u64().unwrap() as usize);
            let want = |k: &str| case[k].as_f64().unwrap();
            assert!((s.kld - want("kld")).abs() < 1e-5 * (1.0 + want("kld")), "kld {} vs {}", s.kld, want("kld"));
            assert!((s.nll - want("nll")).abs() < 1e-5 * (1.0 + want("nll")), "nll {} vs {}", s.nll, want("nll"));
            assert!((s.dp - want("dp")).abs() < 1e-6, "dp {} vs {}", s.dp, want("dp"));
            assert_eq!(s.same_top, case["same_top"].as_bool().unwrap());
        }
    }

    #[test]
    fn chunking_follows_llama_perplexity() {
        let o = PplOptions { ctx: 512, max_chunks: None, bos: None };
        assert_eq!(o.chunks(1535), 2);
        assert_eq!(o.scored_per_chunk(), 255);
        assert_eq!(PplOptions { max_chunks: Some(1), ..o }.chunks(5000), 1);
    }
}
