//! Efficiency as a user sees it: latency percentiles per request and per token, time to first
//! token, throughput, and the energy of the whole measured stretch.
//!
//! Decoders: each request is a prompt of `prompt` tokens from a fresh context followed by `gen`
//! greedy tokens (end-of-generation ignored, so every request does the same work). Time to first
//! token = prefill + the first sampled token; per-token latency = each later decode step.
//! Encoders: every text alone (batch 1, the low-latency mode), then all texts in packed batches
//! (throughput mode); tokenization included in both.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use smelt_kernels::pool::ThreadPool;
use smelt_models::{EmbedOptions, Encoder, Llama};

use crate::energy::{Energy, Meter, PowerModel};
use crate::stats::Summary;
use crate::EvalError;

/// Decoder speed and energy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DecoderSpeed {
    pub requests: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Milliseconds from the request to its first generated token.
    pub ttft_ms: Summary,
    /// Milliseconds per generated token after the first.
    pub token_ms: Summary,
    /// Milliseconds per whole request.
    pub request_ms: Summary,
    /// Prompt tokens per second during prefill, generated tokens per second during decode.
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub energy: Energy,
    /// Energy of a whole request (prefill included) per generated token, and per request.
    pub joules_per_token: f64,
    pub joules_per_request: f64,
}

fn argmax(z: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs one request per prompt with `gen` greedy tokens each (after one unmeasured warm-up).
pub fn decoder_speed(model: &Llama, pool: &ThreadPool, prompts: &[Vec<u32>], gen: usize, power: &PowerModel) -> Result<DecoderSpeed, EvalError> {
    if prompts.is_empty() || gen == 0 || prompts.iter().any(|p| p.is_empty()) {
        return Err(EvalError::BadOption("speed needs at least one non-empty prompt and one generated token".into()));
    }
    let run = |prompt: &[u32], times: &mut Vec<f64>| -> Result<(f64, f64), EvalError> {
        let mut sess = model.session(prompt.len() + gen);
        let t0 = Instant::now();
        let mut next = argmax(model.forward(pool, &mut sess, prompt, false)?);
        let prefill = t0.elapsed().as_secs_f64();
        let mut last = Instant::now();
        for _ in 1..gen {
            next = argmax(model.forward(pool, &mut sess, &[next], false)?);
            times.push(last.elapsed().as_secs_f64() * 1e3);
            last = Instant::now();
        }
        Ok((prefill, t0.elapsed().as_secs_f64()))
    };
    run(&prompts[0][..prompts[0].len().min(16)], &mut Vec::new())?; // warm-up: pages, caches
    let meter = Meter::start(power);
    let (mut ttft, mut req, mut tok) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prefill_s, mut decode_s) = (0.0, 0.0);
    for p in prompts {
        let before = tok.len();
        let (prefill, total) = run(p, &mut tok)?;
        let decode: f64 = tok[before..].iter().sum::<f64>() / 1e3;
        ttft.push((total - decode) * 1e3);
        req.push(total * 1e3);
        prefill_s += prefill;
        decode_s += decode;
    }
    let energy = meter.stop();
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    let gen_tokens = prompts.len() * gen;
    Ok(DecoderSpeed {
        requests: prompts.len(),
        prompt_tokens,
        gen_tokens,
        ttft_ms: Summary::of(&mut ttft),
        token_ms: Summary::of(&mut tok),
        request_ms: Summary::of(&mut req),
        prefill_tps: prompt_tokens as f64 / prefill_s.max(1e-12),
        decode_tps: (gen_tokens - prompts.len()) as f64 / decode_s.max(1e-12),
        joules_per_token: energy.joules / gen_tokens as f64,
        joules_per_request: energy.joules / prompts.len() as f64,
        energy,
    })
}

/// Encoder speed and energy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EncoderSpeed {
    pub texts: usize,
    pub tokens: usize,
    /// Milliseconds per text embedded alone.
    pub request_ms: Summary,
    /// Milliseconds per token embedded alone (request time / its tokens).
    pub token_ms: Summary,
    /// Texts per second in packed batches of `batch`.
    pub batch: usize,
    pub throughput: f64,
    pub tokens_per_s: f64,
    /// Energy of the batched pass, per text.
    pub energy: Energy,
    pub joules_per_text: f64,
}

/// Embeds each text alone, then all of them in batches of `batch`.
pub fn encoder_speed(enc: &Encoder, pool: &ThreadPool, texts: &[&str], batch: usize, power: &PowerModel) -> Result<EncoderSpeed, EvalError> {
    if texts.is_empty() {
        return Err(EvalError::BadOption("speed needs at least one text".into()));
    }
    let opts = EmbedOptions { batch_size: batch.max(1), ..Default::default() };
    let single = EmbedOptions { batch_size: 1, ..Default::default() };
    enc.embed(pool, &texts[..texts.len().min(8)], &opts)?; // warm-up
    let lens: Vec<usize> = texts.iter().map(|t| enc.tok.encode(t, enc.max_len).len()).collect();
    let (mut req, mut per_tok) = (Vec::new(), Vec::new());
    for (t, &n) in texts.iter().zip(&lens) {
        let t0 = Instant::now();
        enc.embed(pool, &[t], &single)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        req.push(ms);
        per_tok.push(ms / n as f64);
    }
    let meter = Meter::start(power);
    enc.embed(pool, texts, &opts)?;
    let energy = meter.stop();
    let tokens: usize = lens.iter().sum();
    Ok(EncoderSpeed {
        texts: texts.len(),
        tokens,
        request_ms: Summary::of(&mut req),
        token_ms: Summary::of(&mut per_tok),
        batch: opts.batch_size,
        throughput: texts.len() as f64 / energy.wall_seconds.max(1e-12),
        tokens_per_s: tokens as f64 / energy.wall_seconds.max(1e-12),
        joules_per_text: energy.joules / texts.len() as f64,
        energy,
    })
}
