//! `smelt qat MODEL --to TYPE -o OUT --data TEXT`: quantization-aware training by
//! self-distillation (`smelt_compress::qat`); writes a plain GGUF of the type, with a JSON summary
//! and an HTML training report.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::distill::decoder::{chunks, DecoderDistill, DecoderLoss};
use smelt_compress::imatrix::Imatrix;
use smelt_compress::qat::Qat;
use smelt_compress::{plan, QuantizeConfig};
use smelt_eval::energy::{Meter, PowerModel};
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::backward::LlamaTrain;
use smelt_models::LoadOptions;
use smelt_train::Stop;

use super::distill::{beside, train_config, train_decoder, write_report};
use crate::cli::{Global, QatArgs, QatTarget};
use crate::progress::Progress;

pub fn run(args: &QatArgs, g: &Global) -> Result<i32> {
    let started = Instant::now();
    let path = crate::resolve_model(&args.model, g.quiet)?;
    let encoder = super::bench_encoder::is_encoder(&path);
    let to = match (args.to, encoder) {
        (Some(QatTarget::Int8), true) => return super::qat_encoder::run(args, g, &path),
        (Some(QatTarget::Ggml(t)), false) => Some(t),
        (None, false) => None,
        (Some(QatTarget::Int8), false) => anyhow::bail!("--to int8 is the int8 path of sentence encoders; {} is a decoder: give a ggml type (q4_0, q4_k, q8_0 ...)", path.display()),
        (_, true) => anyhow::bail!("{} is a sentence encoder: its quantized path is int8 (--to int8)", path.display()),
    };
    let meter = Meter::start(&PowerModel::default());
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let source = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    // The plan: every tensor to --to, or, with --like, every tensor in its type in that file.
    let like = args.like.as_deref().map(|p| GgufFile::open(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
    if let Some(l) = &like {
        check_like(&source, l, args.like.as_deref().unwrap_or(Path::new("")), &path)?;
    }
    let file = like.as_ref().unwrap_or(&source);
    let cfg = match to {
        Some(to) => QuantizeConfig { to, embed_type: args.embed_type, output_type: args.output_type, keep: Vec::new() },
        None => QuantizeConfig { to: GgmlType::F32, embed_type: None, output_type: None, keep: vec!["*".into()] },
    };
    let plans = plan(file, &cfg)?;
    let to = to.unwrap_or_else(|| smelt_compress::plan::main_type(&plans));
    let imatrix = args.imatrix.as_deref().map(|p| Imatrix::read(p).with_context(|| format!("reading the importance matrix {}", p.display()))).transpose()?;
    let loaded = smelt_models::load(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).with_context(|| format!("loading {}", path.display()))?;
    let (original, tok) = (&loaded.model, &loaded.tok);
    if args.ctx < 2 || args.ctx > original.cfg.ctx_train {
        anyhow::bail!("--ctx {}: give 2 to {} tokens (the model's trained context)", args.ctx, original.cfg.ctx_train);
    }
    let mut text = String::new();
    for f in &args.data {
        text.push_str(&super::read_utf8(f)?);
        text.push('\n');
    }
    let (train, val) = chunks(&tok.encode(&text, false), args.ctx, 8);
    let batch = args.train.batch_or(4);
    if train.len() < batch {
        anyhow::bail!("the data holds {} chunks of {} tokens, fewer than a batch of {batch}: give more text, a smaller --ctx or --batch", train.len(), args.ctx);
    }
    let pool = g.pool();
    let start = match &args.like {
        Some(p) => Some(smelt_models::load(p, LoadOptions { weight_type: Some(GgmlType::F32) }).with_context(|| format!("loading {}", p.display()))?),
        None => None,
    };
    let mut student = LlamaTrain::from_llama(start.as_ref().map_or(original, |s| &s.model)).with_context(|| format!("{} cannot be trained", path.display()))?;
    student.recompute = args.train.recompute;
    let loss = DecoderLoss { kl: 1.0, temperature: 1.0, ce: args.ce_weight };
    let inner = DecoderDistill::new(original, student, train, val, loss, &pool)?;
    let mut obj = Qat::new(inner, &plans, imatrix.as_ref(), &pool)?;
    let (n_train, n_val) = obj.inner.sizes();
    let lr = args.train.lr_or(1e-5);
    let (tcfg, checkpoint, log_path) = train_config(&args.train, &args.output, (batch, lr), g, n_train)?;
    let steps = tcfg.steps;
    let before = if args.train.resume || n_val == 0 { None } else { Some(obj.val_kl()?) };
    let types: std::collections::BTreeSet<&str> = obj.fake.iter().map(|f| f.ty.name()).collect();
    if !g.quiet {
        eprintln!(
            "qat: {} matrices fake-quantized ({}){}; {n_train} training and {n_val} validation chunks of {} tokens; {steps} steps of {batch} x {}{}",
            obj.fake.len(),
            types.iter().copied().collect::<Vec<_>>().join(", "),
            if imatrix.is_some() { ", importance-weighted" } else { "" },
            args.ctx,
            args.train.accumulate,
            before.map(|v| format!("; validation KL of the post-training quantization {v:.4}")).unwrap_or_default()
        );
    }
    let Some(outcome) = train_decoder(("qat", "val KL"), tcfg, &args.train, &log_path, &checkpoint, &mut obj, g)? else {
        return Ok(130);
    };
    let after = if n_val == 0 { None } else { Some(obj.val_kl()?) };
    let total: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let mut bar = Progress::new("write", total, true, g.quiet);
    let summary = obj.write(file, &plans, to, imatrix.as_ref(), &args.output, &mut |p| bar.inc(p.t.n_bytes, &p.t.name))?;
    bar.finish();
    if !args.train.keep_checkpoint && outcome.stop != Stop::TimeLimit {
        std::fs::remove_file(&checkpoint).ok();
    }
    let energy = meter.stop();
    let out_types: serde_json::Map<String, serde_json::Value> = summary.types.iter().map(|(t, s)| (t.name().to_string(), json!({"tensors": s.tensors, "params": s.params, "bytes": s.bytes}))).collect();
    let report = json!({
        "model": args.model,
        "to": to.name(),
        "like": args.like.as_ref().map(|p| p.display().to_string()),
        "types": out_types,
        "imatrix": args.imatrix.as_ref().map(|p| p.display().to_string()),
        "fake_quantized_tensors": obj.fake.len(),
        "train_chunks": n_train, "val_chunks": n_val, "ctx": args.ctx,
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": batch, "accumulate": args.train.accumulate, "lr": lr, "seed": args.train.seed,
        "ce_weight": args.ce_weight,
        "val_kl_before": before,
        "val_kl_after": after,
        "best_val_kl": outcome.best_val,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "cpu_seconds": energy.cpu_seconds,
        "energy_joules": energy.joules, "energy_method": energy.method, "co2e_g": energy.co2e_g,
        "peak_rss_bytes": crate::sys::peak_rss(),
        "output_bytes": summary.file_bytes,
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
    });
    let summary_path = beside(&args.output, ".qat.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", summary_path.display()))?;
    write_report("smelt qat", &beside(&args.output, ".training.html"), &report, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let kl = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        writeln!(out, "quantized  {} matrices to {}{}", obj.fake.len(), types.iter().copied().collect::<Vec<_>>().join(", "), if imatrix.is_some() { " (importance-weighted)" } else { "" })?;
        writeln!(out, "trained    {} steps on {n_train} chunks of {} tokens, {:.0} s, {:.0} tokens/s{}", outcome.steps, args.ctx, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9), if outcome.stop == Stop::TimeLimit { " (time limit)" } else { "" })?;
        writeln!(out, "val KL     to the original on {n_val} held-out chunks: {} (post-training) -> {}", if args.train.resume { "(resumed)".into() } else { kl(before) }, kl(after))?;
        writeln!(out, "cost       {:.0} CPU s, {:.0} J ({})", energy.cpu_seconds, energy.joules, energy.method)?;
        writeln!(out, "wrote      {} ({:.1} MB)", args.output.display(), summary.file_bytes as f64 / 1e6)?;
    }
    Ok(0)
}

/// Refuses a --like file that is not a quantization of the model: other tensor names or shapes.
fn check_like(source: &GgufFile, like: &GgufFile, like_path: &Path, path: &Path) -> Result<()> {
    let shapes = |f: &GgufFile| -> std::collections::BTreeMap<String, Vec<u64>> { f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect() };
    let (a, b) = (shapes(source), shapes(like));
    if let Some((name, dims)) = b.iter().find(|(n, d)| a.get(*n) != Some(d)) {
        anyhow::bail!("{} is not a quantization of {}: its tensor {name} {dims:?} is {} there", like_path.display(), path.display(), a.get(name).map_or("missing".to_string(), |d| format!("{d:?}")));
    }
    if let Some(name) = a.keys().find(|n| !b.contains_key(*n)) {
        anyhow::bail!("{} is not a quantization of {}: it has no tensor {name}", like_path.display(), path.display());
    }
    Ok(())
}

