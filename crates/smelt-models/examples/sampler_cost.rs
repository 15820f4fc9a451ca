//! Time per token of the sampler on a model's own logits, for the sampling settings clients
//! use: OpenAI's defaults (no cut), llama.cpp's (top-k 40, top-p 0.95, min-p 0.05), and top-p
//! alone. The logits are 64 steps of the model continuing a fixed prompt (greedy, temperature
//! 0.8 samples), so their spread is a language model's, not a synthetic one.
//!
//! `cargo run --release -p smelt-models --example sampler_cost -- MODEL.gguf`

use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, LoadOptions, Sampler, SamplerConfig};
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: sampler_cost MODEL.gguf");
    let model = Llama::open(std::path::Path::new(&path), LoadOptions::default()).expect("loading the model");
    let pool = ThreadPool::new(2);
    let mut sess = model.session(256);
    let prompt: Vec<u32> = (0..32).map(|i| 100 + i as u32 * 7).collect();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut greedy = Sampler::new(SamplerConfig { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() });
    let mut next = model.forward(&pool, &mut sess, &prompt, false).expect("prompt").to_vec();
    for _ in 0..64 {
        let id = greedy.sample(&next);
        rows.push(std::mem::take(&mut next));
        next = model.forward(&pool, &mut sess, &[id], false).expect("step").to_vec();
    }
    let settings = [
        ("no cut (OpenAI's defaults)", SamplerConfig { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() }),
        ("top-k 40, top-p 0.95, min-p 0.05 (llama.cpp's)", SamplerConfig::default()),
        ("top-p 0.95 alone", SamplerConfig { top_k: 0, top_p: 0.95, min_p: 0.0, ..Default::default() }),
        ("top-p 0.95, repeat penalty 1.1", SamplerConfig { top_k: 0, top_p: 0.95, min_p: 0.0, repeat_penalty: 1.1, ..Default::default() }),
    ];
    for (name, cfg) in settings {
        let mut s = Sampler::new(cfg);
        for t in 0..64 {
            s.accept(t * 11);
        }
        let reps = 20;
        let t = Instant::now();
        let mut check = 0u64;
        for _ in 0..reps {
            for r in &rows {
                check = check.wrapping_add(s.sample(r) as u64);
            }
        }
        let us = t.elapsed().as_secs_f64() / (reps * rows.len()) as f64 * 1e6;
        println!("{name:48} {us:8.1} us a token  (checksum {check})");
    }
}
