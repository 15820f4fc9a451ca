//! Decode-step time of N sequences decoded together ([`Llama::forward_batch`]), the server's
//! inner loop: each sequence holds a 128-token prompt, then every step feeds one token per
//! sequence. Prints ms per step and tokens/s for each N.
//!
//! `cargo run --release -p smelt-models --example batch_decode -- MODEL.gguf [THREADS] [N...]`

use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, LoadOptions, Scratch, Step};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: batch_decode MODEL.gguf [THREADS] [N...]");
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let ns: Vec<usize> = if args.len() > 3 { args[3..].iter().filter_map(|s| s.parse().ok()).collect() } else { vec![1, 2, 4, 8, 16] };
    let model = Llama::open(std::path::Path::new(path), LoadOptions::default()).expect("loading the model");
    let pool = ThreadPool::new(threads);
    let mut scratch = Scratch::default();
    for &n in &ns {
        let mut sessions: Vec<_> = (0..n).map(|_| model.session(512)).collect();
        let prompt: Vec<u32> = (0..128).map(|i| 100 + i as u32 * 7).collect();
        for s in sessions.iter_mut() {
            model.forward(&pool, s, &prompt, false).expect("prompt");
        }
        let steps: usize = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
        let t = std::time::Instant::now();
        for k in 0..steps {
            let toks: Vec<[u32; 1]> = (0..n).map(|i| [(300 + k * 13 + i) as u32]).collect();
            let mut batch: Vec<Step> = sessions.iter_mut().zip(&toks).map(|(s, t)| Step { sess: s, tokens: t }).collect();
            model.forward_batch(&pool, &mut scratch, &mut batch).expect("step");
        }
        let s = t.elapsed().as_secs_f64() / steps as f64;
        println!("n={n:3}  {:7.2} ms/step  {:7.1} tokens/s", s * 1e3, n as f64 / s);
    }
}
