//! `smelt quantize IN OUT --to TYPE`: arguments into a `smelt_compress::QuantizeConfig`, the
//! plan and the written file from `smelt-compress`, and the summary printed (per target type,
//! the relative RMS error of the written weights against the input weights).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::calib::{decoder_hessians, decoder_imatrix, run_decoder, CalibOptions, Collector, InputStats};
use smelt_compress::awq::{AwqOptions, Scaling};
use smelt_compress::gptq::GptqOptions;
use smelt_compress::imatrix::Imatrix;
use smelt_compress::{plan, quantize_file, Calib, QuantizeConfig, Summary, TensorPlan};
use smelt_models::observe::MatrixInput;

/// What a calibration run gathered, per (layer, input).
type CalibStats = BTreeMap<(usize, MatrixInput), InputStats>;
use smelt_formats::GgufFile;

use crate::cli::{Global, QuantizeArgs};
use crate::fmt::bytes;
use crate::progress::Progress;

fn config(args: &QuantizeArgs) -> QuantizeConfig {
    QuantizeConfig { to: args.to, embed_type: args.embed_type, output_type: args.output_type, keep: args.keep.clone() }
}

pub fn run(args: &QuantizeArgs, global: &Global) -> Result<()> {
    write(args, global, true)
}

/// Writes the re-quantized file; prints the summary when `report` is set.
pub fn write(args: &QuantizeArgs, global: &Global, report: bool) -> Result<()> {
    let input = crate::resolve_model(&args.input, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let plans = plan(&file, &config(args))?;
    if args.dry_run {
        return print_plan(&plans, args.json);
    }
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let start = Instant::now();
    let pool = global.pool();
    let total: u64 = plans.iter().map(|p| p.t.n_bytes).sum();
    let mut progress = Progress::new("quantize", total, true, global.quiet);
    let (imatrix, stats) = match &args.calib {
        Some(text) => {
            let (m, stats, cfg, head) = calibrate(args, global, &input, text, &pool)?;
            (Some(m), Some((stats, cfg, head)))
        }
        None => (args.imatrix.as_deref().map(Imatrix::read).transpose()?, None),
    };
    let scaling = match (&stats, args.awq) {
        (Some((stats, cfg, _)), true) => Some(awq(args, global, &file, cfg, &plans, stats, &pool)?),
        _ => None,
    };
    let stats = stats.map(|(s, _, head)| (s, head));
    let calib = Calib {
        imatrix: imatrix.as_ref(),
        hessians: stats.as_ref().filter(|_| args.gptq).map(|(s, head)| decoder_hessians(s, head)).unwrap_or_default(),
        gptq: GptqOptions { damp: args.damp, act_order: args.act_order },
        scaling: scaling.as_ref(),
        overrides: Default::default(),
    };
    let summary = quantize_file(&file, &plans, args.to, &calib, &args.output, &pool, &mut |p| progress.inc(p.t.n_bytes, &format!("{} -> {}", p.t.name, p.target)))
        .with_context(|| format!("writing {}", args.output.display()))?;
    progress.finish();
    if !report {
        return Ok(());
    }
    print_summary(&file, &plans, &summary, &input, args, scaling.as_ref(), (start.elapsed().as_secs_f64(), pool.n_threads()))
}

/// Runs the calibration text through the model: the importance matrix, and the statistics (with
/// every layer's Hessians when GPTQ or AWQ will use them; with GPTQ, the output head's too, and
/// the head's importance: GPTQ then quantizes the head, the tied embedding included).
/// Also returns the model's shape (for AWQ's groups) and the head's tensor name.
fn calibrate(args: &QuantizeArgs, global: &Global, input: &Path, text: &Path, pool: &smelt_kernels::pool::ThreadPool) -> Result<(Imatrix, CalibStats, smelt_models::LlamaConfig, String)> {
    let text_s = super::read_utf8(text)?;
    let m = smelt_models::load(input, smelt_models::LoadOptions::default()).with_context(|| format!("loading {}", input.display()))?;
    let opts = CalibOptions { ctx: args.calib_ctx, max_chunks: args.calib_chunks, process_output: args.gptq };
    let n = m.model.layers.len();
    let mut collector = Collector::new(pool);
    if args.gptq || args.awq {
        collector = collector.hessians_for(0..n + usize::from(args.gptq));
    }
    let mut bar: Option<Progress> = None;
    let chunks = run_decoder(&m.model, &m.tok, pool, &text_s, opts, &mut collector, &mut |done, total| {
        let b = bar.get_or_insert_with(|| Progress::new("calibrate", total as u64, false, global.quiet));
        b.inc(1, &format!("chunk {done}/{total}"));
    })
    .with_context(|| format!("calibrating on {}", text.display()))?;
    if let Some(b) = bar {
        b.finish();
    }
    let stats = collector.finish()?;
    Ok((decoder_imatrix(&m.model, &stats, &text.display().to_string(), chunks, opts), stats, m.model.cfg.clone(), smelt_compress::calib::head_name(&m.model)))
}

/// Searches the AWQ scales of every layer's matrix groups for the planned target types.
fn awq(args: &QuantizeArgs, global: &Global, file: &GgufFile, cfg: &smelt_models::LlamaConfig, plans: &[TensorPlan], stats: &CalibStats, pool: &smelt_kernels::pool::ThreadPool) -> Result<Scaling> {
    let by_name: BTreeMap<&str, &TensorPlan> = plans.iter().map(|p| (p.t.name.as_str(), p)).collect();
    let target = |name: &str| by_name.get(name).filter(|p| p.target != p.t.ty).map(|p| p.target);
    let mut bar = Progress::new("awq search", 4 * cfg.n_layers as u64, false, global.quiet);
    let opts = AwqOptions { grid: args.awq_grid, weighted: true };
    let scaling = smelt_compress::awq::search_decoder(pool, file, cfg, stats, &target, opts, &mut |_, _, name| bar.inc(1, name))?;
    bar.finish();
    Ok(scaling)
}

fn print_plan(plans: &[TensorPlan], json_out: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json_out {
        let v: Vec<_> = plans.iter().map(|p| json!({"name": p.t.name, "from": p.t.ty.name(), "to": p.target.name(), "dims": p.t.dims, "note": p.note})).collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        let w = plans.iter().map(|p| p.t.name.len()).max().unwrap_or(4);
        for p in plans {
            writeln!(out, "{:<w$}  {:<6} -> {:<6} {}", p.t.name, p.t.ty.name(), p.target.name(), p.note.as_deref().unwrap_or(""))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_summary(file: &GgufFile, plans: &[TensorPlan], summary: &Summary, input: &std::path::Path, args: &QuantizeArgs, scaling: Option<&Scaling>, (secs, threads): (f64, usize)) -> Result<()> {
    let awq = scaling.map(Scaling::summary);
    let (stats, out_bytes) = (&summary.types, summary.file_bytes);
    let params = file.header.n_params();
    let in_bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let written: u64 = stats.values().map(|s| s.bytes).sum();
    let (err2, x2) = stats.values().fold((0.0, 0.0), |a, s| (a.0 + s.err2, a.1 + s.x2));
    let rel = |e: f64, x: f64| if x > 0.0 { (e / x).sqrt() } else { 0.0 };
    let fallbacks: Vec<&TensorPlan> = plans.iter().filter(|p| p.is_fallback()).collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let v = json!({
            "input": input.display().to_string(),
            "output": args.output.display().to_string(),
            "target": args.to.name(),
            "parameters": params,
            "input_tensor_bytes": in_bytes,
            "output_tensor_bytes": written,
            "output_file_bytes": out_bytes,
            "input_bits_per_weight": 8.0 * in_bytes as f64 / params as f64,
            "output_bits_per_weight": 8.0 * written as f64 / params as f64,
            "weight_relative_rms_error": rel(err2, x2),
            "seconds": secs,
            "threads": threads,
            "types": stats.iter().map(|(ty, s)| json!({
                "type": ty.name(), "tensors": s.tensors, "parameters": s.params, "bytes": s.bytes,
                "weight_relative_rms_error": s.relative_rms(),
            })).collect::<Vec<_>>(),
            "fallbacks": fallbacks.iter().map(|p| json!({"name": p.t.name, "to": p.target.name(), "why": p.note})).collect::<Vec<_>>(),
            "imatrix": args.imatrix.as_ref().or(args.calib.as_ref()).map(|p| json!({"file": p.display().to_string(), "weighted_tensors": summary.weighted, "without_entry": summary.unweighted})),
            "awq": awq.as_ref().map(|a| json!({"groups": a.groups, "scaled": a.scaled, "mean_alpha": a.mean_alpha, "calibration_error_ratio": a.error_ratio, "grid": args.awq_grid})),
            "gptq": (summary.gptq > 0).then(|| json!({"tensors": summary.gptq, "damp": args.damp, "act_order": args.act_order})),
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "wrote      {} ({})", args.output.display(), bytes(out_bytes))?;
        writeln!(out, "from       {} ({})", input.display(), bytes(file.header.file_len))?;
        writeln!(out, "size       {:.3} -> {:.3} bits per weight ({} -> {} of tensor data)", 8.0 * in_bytes as f64 / params as f64, 8.0 * written as f64 / params as f64, bytes(in_bytes), bytes(written))?;
        writeln!(out, "\n{:<8} {:>8} {:>12} {:>10}  weight error (relative RMS vs input)", "type", "tensors", "size", "bits/w")?;
        for (ty, s) in stats {
            let e = if s.x2 > 0.0 { format!("{:.4}", s.relative_rms()) } else { "unchanged".into() };
            writeln!(out, "{:<8} {:>8} {:>12} {:>10.3}  {}", ty.name(), s.tensors, bytes(s.bytes), 8.0 * s.bytes as f64 / s.params.max(1) as f64, e)?;
        }
        writeln!(out, "overall weight error {:.4}", rel(err2, x2))?;
        if !fallbacks.is_empty() {
            let mut why: BTreeMap<String, usize> = BTreeMap::new();
            for p in &fallbacks {
                *why.entry(p.note.clone().unwrap_or_default()).or_default() += 1;
            }
            for (w, n) in why {
                writeln!(out, "fallback   {n} tensors: {w}")?;
            }
        }
        if let Some(p) = args.imatrix.as_ref().or(args.calib.as_ref()) {
            writeln!(out, "imatrix    {}: {} tensors weighted, {} without an entry (round-to-nearest)", p.display(), summary.weighted, summary.unweighted.len())?;
        }
        if let Some(a) = &awq {
            writeln!(out, "awq        {} of {} matrix groups scaled (mean alpha {:.2}); their output error on the calibration text {:.3}x that without scaling", a.scaled, a.groups, a.mean_alpha, a.error_ratio)?;
        }
        if summary.gptq > 0 {
            writeln!(out, "gptq       {} tensors (damp {}, {})", summary.gptq, args.damp, if args.act_order { "act-order" } else { "column order" })?;
        }
        writeln!(out, "time       {secs:.1} s on {threads} threads")?;
    }
    out.flush()?;
    Ok(())
}

