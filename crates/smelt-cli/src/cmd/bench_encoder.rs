//! `smelt bench` for encoders: sentences/s and tokens/s over a set of texts at each batch size,
//! tokenization, pooling and normalization included (the whole `embed` call), after one
//! warm-up pass. Batch 1 is the low-latency mode (one text per call, as a server answers a
//! single request); larger batches are the throughput mode (sorted by length and packed).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{EmbedOptions, Encoder};

use super::bench::stats;
use crate::cli::{BenchArgs, BenchFormat, Global};

#[derive(Serialize)]
struct Record {
    model: String,
    parameters: u64,
    weight_type: String,
    threads: usize,
    cpu: String,
    isa: String,
    test: String,
    batch: usize,
    texts: usize,
    tokens: usize,
    repetitions: usize,
    sentences_per_second: f64,
    tokens_per_second: f64,
    stddev: f64,
    samples: Vec<f64>,
    peak_rss_bytes: Option<u64>,
}

/// Whether `path` holds an encoder (an ONNX file, or a directory whose config.json is BERT-like).
pub fn is_encoder(path: &Path) -> bool {
    use smelt_formats::hf_config::{load_config, HfConfig};
    if path.extension().is_some_and(|e| e == "onnx") {
        return true;
    }
    if !path.is_dir() {
        return false;
    }
    if path.join("config.json").exists() {
        return matches!(load_config(&path.join("config.json")), Ok(HfConfig::Bert(_)));
    }
    // An ONNX export's folder (config-less): an .onnx file inside.
    std::fs::read_dir(path).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "onnx"))))
}

/// Sentences of 8-60 words drawn from the tokenizer's whole-word vocabulary (a fixed seed).
fn generated_texts(enc: &Encoder) -> Vec<String> {
    let words: Vec<&str> = enc.tok.vocab_words().filter(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_lowercase())).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..512)
        .map(|_| {
            let n = 8 + next(53);
            let mut s: Vec<&str> = (0..n).map(|_| words[next(words.len())]).collect();
            s[n - 1] = "end.";
            s.join(" ")
        })
        .collect()
}

pub fn run(args: &BenchArgs, global: &Global, path: &Path) -> Result<()> {
    let mut enc = Encoder::load(path, args.as_type).with_context(|| format!("loading {}", path.display()))?;
    if let Some(spec) = &args.int8 {
        enc.quantize_int8(&global.pool(), spec, None)?;
    }
    let texts: Vec<String> = match &args.texts {
        Some(p) => {
            let s = std::fs::read_to_string(p).with_context(|| format!("reading {} (UTF-8 text, one text per line)", p.display()))?;
            s.lines().map(str::to_string).collect()
        }
        None => generated_texts(&enc),
    };
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    if args.batches.contains(&0) {
        bail!("--batch sizes must be at least 1");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = refs.iter().map(|t| enc.tok.encode(t, enc.max_len).len()).sum();
    let threads = global.n_threads();
    let pool = ThreadPool::new(threads);
    let mut records = Vec::new();
    for &batch in &args.batches {
        let opts = EmbedOptions { batch_size: batch, ..EmbedOptions::default() };
        let once = || -> Result<f64> {
            let t = Instant::now();
            if batch == 1 {
                for text in &refs {
                    enc.embed(&pool, std::slice::from_ref(text), &opts)?;
                }
            } else {
                enc.embed(&pool, &refs, &opts)?;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        once()?; // warm-up
        let mut secs = Vec::with_capacity(args.repetitions.max(1));
        for _ in 0..args.repetitions.max(1) {
            secs.push(once()?);
        }
        let samples: Vec<f64> = secs.iter().map(|s| texts.len() as f64 / s).collect();
        let (mean, sd) = stats(&samples);
        let mean_secs = secs.iter().sum::<f64>() / secs.len() as f64;
        if !global.quiet && args.format == BenchFormat::Table {
            eprintln!("batch {batch}: {mean:.1} +- {sd:.1} sentences/s");
        }
        records.push(Record {
            model: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            parameters: enc.model.n_params(),
            weight_type: enc.model.weight_type(),
            threads,
            cpu: crate::sys::cpu_name(),
            isa: smelt_kernels::cpu::level_name().into(),
            test: format!("embed b{batch}"),
            batch,
            texts: texts.len(),
            tokens,
            repetitions: samples.len(),
            sentences_per_second: mean,
            tokens_per_second: tokens as f64 / mean_secs,
            stddev: sd,
            samples,
            peak_rss_bytes: None,
        });
    }
    let rss = crate::sys::peak_rss();
    for r in &mut records {
        r.peak_rss_bytes = rss;
    }
    super::bench::emit(args, |format| {
        use std::fmt::Write;
        let mut out = String::new();
        match format {
            BenchFormat::Json => out = serde_json::to_string_pretty(&records)? + "\n",
            BenchFormat::Csv => {
                writeln!(out, "model,parameters,weight_type,threads,isa,test,batch,texts,tokens,repetitions,sentences_per_second,tokens_per_second,stddev,peak_rss_bytes")?;
                for r in &records {
                    writeln!(out, "{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{}", r.model, r.parameters, r.weight_type, r.threads, r.isa, r.test, r.batch, r.texts, r.tokens, r.repetitions, r.sentences_per_second, r.tokens_per_second, r.stddev, r.peak_rss_bytes.unwrap_or(0))?;
                }
            }
            BenchFormat::Table => {
                writeln!(out, "| model | params | type | threads | isa | test | texts | sentences/s | tokens/s | peak RSS |")?;
                writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
                for r in &records {
                    writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.1} +- {:.1} | {:.0} | {} |",
                        r.model,
                        crate::fmt::count(r.parameters),
                        r.weight_type,
                        r.threads,
                        r.isa,
                        r.test,
                        r.texts,
                        r.sentences_per_second,
                        r.stddev,
                        r.tokens_per_second,
                        r.peak_rss_bytes.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "?".into())
                    )?;
                }
            }
        }
        Ok(out)
    })
}
