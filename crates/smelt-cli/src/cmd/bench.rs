//! `smelt bench`: prompt processing (ppN) and generation (tgN) speed, as llama-bench measures
//! them: random tokens, a fresh context per repetition, the prompt in one batch, generation one
//! token at a time with logits every step. Mean +- standard deviation over repetitions after
//! one warm-up run; table, JSON or CSV from one record.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, LoadOptions};

use crate::cli::{BenchArgs, BenchFormat, Global};

#[derive(Serialize)]
struct Record {
    model: String,
    model_bytes: u64,
    parameters: u64,
    weight_type: String,
    threads: usize,
    cpu: String,
    isa: String,
    test: String,
    tokens: usize,
    repetitions: usize,
    tokens_per_second: f64,
    stddev: f64,
    samples: Vec<f64>,
    peak_rss_bytes: Option<u64>,
}

struct Rng(u64);

impl Rng {
    fn token(&mut self, vocab: usize) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % vocab as u64) as u32
    }
}

/// A session of `depth + n + 1` tokens holding `depth` random tokens (not timed), and them.
fn context(model: &Llama, pool: &ThreadPool, depth: usize, n: usize, rng: &mut Rng) -> Result<(smelt_models::Session, Vec<u32>)> {
    let mut sess = model.session(depth + n + 1);
    let earlier: Vec<u32> = (0..depth).map(|_| rng.token(model.cfg.vocab)).collect();
    if depth > 0 {
        smelt_models::generate::prefill(model, pool, &mut sess, &earlier)?;
    }
    Ok((sess, earlier))
}

fn prompt(model: &Llama, pool: &ThreadPool, n: usize, depth: usize, rng: &mut Rng) -> Result<f64> {
    let (mut sess, mut tokens) = context(model, pool, depth, n, rng)?;
    tokens.extend((0..n).map(|_| rng.token(model.cfg.vocab)));
    let t = Instant::now();
    smelt_models::generate::prefill(model, pool, &mut sess, &tokens)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn generate(model: &Llama, pool: &ThreadPool, n: usize, depth: usize, rng: &mut Rng) -> Result<f64> {
    let (mut sess, _) = context(model, pool, depth, n, rng)?;
    let t = Instant::now();
    for _ in 0..n {
        let tok = rng.token(model.cfg.vocab);
        model.forward(pool, &mut sess, &[tok], false)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Mean and sample standard deviation.
pub(super) fn stats(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (mean, var.sqrt())
}

pub fn run(args: &BenchArgs, global: &Global) -> Result<()> {
    check_output(args)?;
    let path = crate::resolve_model(&args.model, global.quiet)?;
    if super::bench_encoder::is_encoder(&path) {
        if args.depth > 0 {
            bail!("--depth is for decoders (tokens already in the context); {} is an encoder", path.display());
        }
        return super::bench_encoder::run(args, global, &path);
    }
    let model = smelt_models::load(&path, LoadOptions { weight_type: args.as_type }).with_context(|| format!("loading {}", path.display()))?.model;
    let threads = global.n_threads();
    let pool = ThreadPool::new(threads);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let params = model.n_params();
    let weight_type = model.layers.first().map(|l| l.wq.ty.name().to_string()).unwrap_or_default();
    let model_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut tests: Vec<(String, usize, bool)> = Vec::new();
    let at = if args.depth > 0 { format!(" @ d{}", args.depth) } else { String::new() };
    tests.extend(args.prompt.iter().filter(|&&n| n > 0).map(|&n| (format!("pp{n}{at}"), n, true)));
    tests.extend(args.gen.iter().filter(|&&n| n > 0).map(|&n| (format!("tg{n}{at}"), n, false)));
    let depth = args.depth;
    let mut records = Vec::new();
    for (name, n, is_prompt) in tests {
        let once = |rng: &mut Rng| if is_prompt { prompt(&model, &pool, n, depth, rng) } else { generate(&model, &pool, n, depth, rng) };
        once(&mut rng)?; // warm-up
        let mut samples = Vec::with_capacity(args.repetitions);
        for _ in 0..args.repetitions.max(1) {
            samples.push(once(&mut rng)?);
        }
        let (mean, sd) = stats(&samples);
        if !global.quiet && args.format == BenchFormat::Table {
            eprintln!("{name}: {mean:.1} +- {sd:.1} t/s");
        }
        records.push(Record {
            model: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            model_bytes,
            parameters: params,
            weight_type: weight_type.clone(),
            threads,
            cpu: crate::sys::cpu_name(),
            isa: smelt_kernels::cpu::level_name().into(),
            test: name,
            tokens: n,
            repetitions: samples.len(),
            tokens_per_second: mean,
            stddev: sd,
            samples,
            peak_rss_bytes: None,
        });
    }
    let rss = crate::sys::peak_rss();
    for r in &mut records {
        r.peak_rss_bytes = rss;
    }
    emit(args, |format| {
        let mut out = String::new();
        match format {
            BenchFormat::Json => out = serde_json::to_string_pretty(&records)? + "\n",
            BenchFormat::Csv => {
                writeln!(out, "model,model_bytes,parameters,weight_type,threads,isa,test,tokens,repetitions,tokens_per_second,stddev,peak_rss_bytes")?;
                for r in &records {
                    writeln!(out, "{},{},{},{},{},{},{},{},{},{:.3},{:.3},{}", r.model, r.model_bytes, r.parameters, r.weight_type, r.threads, r.isa, r.test, r.tokens, r.repetitions, r.tokens_per_second, r.stddev, r.peak_rss_bytes.unwrap_or(0))?;
                }
            }
            BenchFormat::Table => {
                writeln!(out, "| model | size | params | type | threads | isa | test | t/s | peak RSS |")?;
                writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
                for r in &records {
                    writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.2} +- {:.2} | {} |",
                        r.model,
                        crate::fmt::bytes(r.model_bytes),
                        crate::fmt::count(r.parameters),
                        r.weight_type,
                        r.threads,
                        r.isa,
                        r.test,
                        r.tokens_per_second,
                        r.stddev,
                        r.peak_rss_bytes.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "?".into())
                    )?;
                }
            }
        }
        Ok(out)
    })
}

/// The format a results file is written in: from its extension, else (a device or a pipe)
/// `--format`'s.
fn format_of(p: &Path, args: &BenchArgs) -> Result<BenchFormat> {
    Ok(match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("json") => BenchFormat::Json,
        Some("csv") => BenchFormat::Csv,
        Some("md" | "txt") => BenchFormat::Table,
        _ if smelt_formats::fsutil::is_stream(p) => args.format,
        _ if ["json", "csv", "table"].contains(&p.to_string_lossy().as_ref()) => {
            bail!("-o names a file; to choose what is printed, use --format {}", p.display())
        }
        _ => bail!("{}: say the results format with the extension .json, .csv, .md or .txt", p.display()),
    })
}

/// Checks `-o` before the measurements start, so a bad path fails in the first second.
pub(super) fn check_output(args: &BenchArgs) -> Result<()> {
    if let Some(p) = &args.output {
        smelt_formats::fsutil::check_output(p).with_context(|| format!("cannot write {}", p.display()))?;
        format_of(p, args)?;
    }
    Ok(())
}

/// Writes `-o` (atomically) and prints `--format` on stdout, both rendered by `render`.
pub(super) fn emit(args: &BenchArgs, render: impl Fn(BenchFormat) -> Result<String>) -> Result<()> {
    if let Some(p) = &args.output {
        let text = render(format_of(p, args)?)?;
        smelt_formats::fsutil::write_atomic_io(p, |w| w.write_all(text.as_bytes())).with_context(|| format!("writing {}", p.display()))?;
    }
    std::io::stdout().lock().write_all(render(args.format)?.as_bytes())?;
    Ok(())
}
