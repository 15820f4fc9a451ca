//! `smelt finetune`: LoRA adapters trained over a decoder's frozen weights on text or chat data
//! (`smelt_compress::finetune`); writes llama.cpp's adapter GGUF with a JSON summary and an HTML
//! training report.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::finetune::{chat_example, parse_chat_line, text_examples, Example, Finetune};
use smelt_eval::energy::{Meter, PowerModel};
use smelt_models::backward::{LlamaTrain, LoraSpec};
use smelt_models::lora::LoraAdapter;
use smelt_models::{ChatTemplate, LoadOptions, Tokenizer};
use smelt_train::order::SplitMix64;
use smelt_train::Stop;

use super::distill::{beside, train_config, train_decoder, write_report};
use crate::cli::{FinetuneArgs, Global};

/// Examples of one data file: chat JSON lines (`.jsonl`, one conversation per line, every 50th
/// held out unless `hold_out` is false) or text (chunks of `ctx`).
pub(crate) fn read_examples(path: &Path, tok: &Tokenizer, template: &ChatTemplate, ctx: usize, hold_out: bool) -> Result<(Vec<Example>, Vec<Example>)> {
    let text = super::read_utf8(path)?;
    let is_chat = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if !is_chat {
        let (mut train, val) = text_examples(&tok.encode(&text, false), ctx, if hold_out { 8 } else { 0 });
        if !hold_out {
            train.extend(val);
            return Ok((train, Vec::new()));
        }
        return Ok((train, val));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let messages = parse_chat_line(line).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        let ex = chat_example(&messages, template, tok, ctx).with_context(at)?;
        if hold_out && (train.len() + val.len()) % 50 == 49 {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    Ok((train, val))
}

pub fn run(args: &FinetuneArgs, g: &Global) -> Result<i32> {
    if args.pairs.is_some() {
        let dir = crate::resolve_model(&args.model, g.quiet)?;
        return super::finetune_pairs::run(args, g, &dir);
    }
    let started = Instant::now();
    let meter = Meter::start(&PowerModel::default());
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let init = args.init_adapter.as_deref().map(|a| LoraAdapter::open(a).with_context(|| format!("reading {}", a.display()))).transpose()?;
    // Continuing an adapter keeps its alpha unless told otherwise.
    let alpha = args.lora_alpha.or(init.as_ref().map(|a| a.alpha)).unwrap_or(args.lora_rank as f32);
    let spec = LoraSpec { rank: args.lora_rank, alpha, targets: args.lora_targets.clone() };
    spec.check()?;
    let path = crate::resolve_model(&args.model, g.quiet)?;
    if path.is_dir() {
        anyhow::bail!("{} is a sentence encoder: fine-tune it on pairs with --pairs FILE (LoRA on text or chat is for GGUF decoders)", path.display());
    }
    let loaded = smelt_models::load(&path, LoadOptions::default()).with_context(|| format!("loading {}", path.display()))?;
    let (base, tok, template) = (&loaded.model, &loaded.tok, &loaded.template);
    if args.ctx < 2 || args.ctx > base.cfg.ctx_train {
        anyhow::bail!("--ctx {}: give 2 to {} tokens (the model's trained context)", args.ctx, base.cfg.ctx_train);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for f in &args.data {
        let (t, v) = read_examples(f, tok, template, args.ctx, args.val.is_none())?;
        train.extend(t);
        val.extend(v);
    }
    if let Some(v) = &args.val {
        val = read_examples(v, tok, template, args.ctx, false)?.0;
    }
    let mut rng = SplitMix64(args.train.seed ^ 0x10_4A);
    let mut model = LlamaTrain::lora(base, &spec, &mut || (2.0 * rng.unit() - 1.0) as f32)?;
    if let (Some(a), Some(path)) = (&init, &args.init_adapter) {
        model.load_adapter(a).with_context(|| format!("continuing from {}", path.display()))?;
    }
    model.recompute = args.train.recompute;
    let pool = g.pool();
    let mut obj = Finetune::new(model, train, val, &pool)?;
    let (n_train, n_val) = (obj.train.len(), obj.val.len());
    let trained_tokens: usize = obj.train.iter().map(Example::trained_tokens).sum();
    let (batch, lr) = (args.train.batch_or(4), args.train.lr_or(1e-3));
    let (cfg, checkpoint, log_path) = train_config(&args.train, &args.output, (batch, lr), g, n_train)?;
    let steps = cfg.steps;
    let n_params = obj.model.params.len();
    let before = if args.train.resume || n_val == 0 { None } else { Some(obj.val_loss()?) };
    if !g.quiet {
        eprintln!(
            "finetune: rank-{} adapters on {} ({} parameters, base {} kept frozen); {n_train} training examples ({trained_tokens} trained tokens), {n_val} held out; {steps} steps of {batch} x {}{}",
            args.lora_rank,
            args.lora_targets.join(","),
            n_params,
            super::eval::type_mix(base),
            args.train.accumulate,
            before.map(|v| format!("; validation loss before {v:.4} (perplexity {:.2})", v.exp())).unwrap_or_default()
        );
    }
    let Some(outcome) = train_decoder(("finetune", "val"), cfg, &args.train, &log_path, &checkpoint, &mut obj, g)? else {
        return Ok(130);
    };
    let after = if n_val == 0 { None } else { Some(obj.val_loss()?) };
    let adapter = obj.model.adapter(alpha)?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let bytes = adapter.save(&args.output, name.as_deref())?;
    if !args.train.keep_checkpoint && outcome.stop != Stop::TimeLimit {
        std::fs::remove_file(&checkpoint).ok();
    }
    let energy = meter.stop();
    let summary = json!({
        "model": args.model,
        "base_types": super::eval::type_mix(base),
        "lora": {"rank": args.lora_rank, "alpha": alpha, "targets": args.lora_targets, "params": n_params},
        "train_examples": n_train, "val_examples": n_val, "trained_tokens": trained_tokens, "ctx": args.ctx,
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": batch, "accumulate": args.train.accumulate, "lr": lr, "seed": args.train.seed,
        "val_loss_before": before, "val_ppl_before": before.map(f64::exp),
        "val_loss_after": after, "val_ppl_after": after.map(f64::exp),
        "best_val_loss": outcome.best_val,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "cpu_seconds": energy.cpu_seconds,
        "energy_joules": energy.joules, "energy_method": energy.method, "co2e_g": energy.co2e_g,
        "peak_rss_bytes": crate::sys::peak_rss(),
        "output_bytes": bytes,
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
    });
    let summary_path = beside(&args.output, ".finetune.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", summary_path.display()))?;
    write_report("smelt finetune", &beside(&args.output, ".training.html"), &summary, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        let ppl = |v: Option<f64>| v.map(|v| format!("{v:.4} (perplexity {:.2})", v.exp())).unwrap_or("-".into());
        writeln!(out, "adapter    rank {} on {}: {n_params} parameters", args.lora_rank, args.lora_targets.join(","))?;
        writeln!(out, "trained    {} steps on {n_train} examples, {:.0} s, {:.0} tokens/s{}", outcome.steps, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9), if outcome.stop == Stop::TimeLimit { " (time limit)" } else { "" })?;
        writeln!(out, "val loss   on {n_val} held-out examples: {} -> {}", if args.train.resume { "(resumed)".into() } else { ppl(before) }, ppl(after))?;
        writeln!(out, "cost       {:.0} CPU s, {:.0} J ({})", energy.cpu_seconds, energy.joules, energy.method)?;
        writeln!(out, "wrote      {} ({:.1} MB; run it with `smelt run --lora` or `llama-cli --lora`)", args.output.display(), bytes as f64 / 1e6)?;
    }
    Ok(0)
}
