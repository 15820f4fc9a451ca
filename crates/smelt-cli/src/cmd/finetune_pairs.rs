//! `smelt finetune ENCODER --pairs PAIRS -o DIR`: a sentence encoder fine-tuned on pairs with
//! in-batch negatives (`smelt_compress::contrastive`); writes a sentence-transformers directory.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::contrastive::{Contrastive, Pair};
use smelt_compress::distill::write_encoder_student;
use smelt_compress::encoder_dir::check_new_dir;
use smelt_eval::energy::{Meter, PowerModel};
use smelt_models::backward::BertTrain;
use smelt_models::embed::Pooling;
use smelt_models::Encoder;

use super::distill::{beside, train_config, train_decoder, write_report};
use crate::cli::{FinetuneArgs, Global};

/// The pairs of a file: tab-separated lines `anchor<TAB>positive[<TAB>negative]`, or JSON lines
/// (`.jsonl`) with "anchor", "positive" and optionally "negative". Empty lines are skipped.
fn read_pairs(path: &Path, enc: &Encoder, max_len: usize) -> Result<Vec<Pair>> {
    let text = super::read_utf8(path)?;
    let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let fields: Vec<String> = if jsonl {
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
            let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(String::from);
            let (Some(a), Some(p)) = (field("anchor"), field("positive")) else {
                anyhow::bail!("{}: give {{\"anchor\": ..., \"positive\": ...}} (and optionally \"negative\")", at());
            };
            [Some(a), Some(p), field("negative")].into_iter().flatten().collect()
        } else {
            line.split('\t').map(String::from).collect()
        };
        if !(2..=3).contains(&fields.len()) || fields.iter().any(|f| f.trim().is_empty()) {
            anyhow::bail!("{}: expected anchor<TAB>positive[<TAB>negative], non-empty; found {} field(s)", at(), fields.len());
        }
        let enc_one = |t: &str| enc.tok.encode(t, max_len);
        out.push(Pair { anchor: enc_one(&fields[0]), positive: enc_one(&fields[1]), negative: fields.get(2).map(|n| enc_one(n)) });
    }
    if out.is_empty() {
        anyhow::bail!("{} holds no pairs", path.display());
    }
    Ok(out)
}

pub fn run(args: &FinetuneArgs, g: &Global, dir: &Path) -> Result<i32> {
    let started = Instant::now();
    let meter = Meter::start(&PowerModel::default());
    let pairs_path = args.pairs.as_deref().context("--pairs")?;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a sentence encoder directory: --pairs fine-tunes sentence encoders (give a sentence-transformers directory or name such as all-minilm-l6-v2)", dir.display());
    }
    if !(args.scale.is_finite() && args.scale > 0.0) {
        anyhow::bail!("--scale {}: give a positive number", args.scale);
    }
    check_new_dir(&args.output)?;
    let enc = Encoder::load(dir, None).with_context(|| format!("loading {}", dir.display()))?;
    if enc.pooling != Pooling::Mean {
        anyhow::bail!("{} pools with {:?}: contrastive fine-tuning trains mean pooling only", dir.display(), enc.pooling);
    }
    let max_len = args.max_length.min(enc.max_len);
    let mut train = read_pairs(pairs_path, &enc, max_len)?;
    let val = match &args.val {
        Some(v) => read_pairs(v, &enc, max_len)?,
        None => {
            let mut val = Vec::new();
            let mut i = 0;
            train.retain(|p| {
                i += 1;
                let hold = i % 50 == 0 && val.len() < 1000;
                if hold {
                    val.push(p.clone());
                }
                !hold
            });
            val
        }
    };
    let pool = g.pool();
    let mut model = BertTrain::from_dir(dir).with_context(|| format!("{} cannot be trained", dir.display()))?;
    model.recompute = args.train.recompute;
    let n_params = model.params.len();
    let mut obj = Contrastive::new(model, train, val, args.scale, &pool)?;
    let (n_train, n_val) = (obj.train.len(), obj.val.len());
    let (batch, lr) = (args.train.batch_or(32), args.train.lr_or(2e-5));
    if batch < 2 {
        anyhow::bail!("--batch {batch}: in-batch negatives need at least 2 pairs a batch");
    }
    let (cfg, checkpoint, log_path) = train_config(&args.train, &args.output, (batch, lr), g, n_train)?;
    let steps = cfg.steps;
    let acc_before = if args.train.resume || n_val == 0 { None } else { Some(obj.accuracy(&obj.val)?) };
    if !g.quiet {
        eprintln!(
            "finetune: {} ({:.1} M parameters, all trained) on {n_train} pairs, {n_val} held out; {steps} steps of {batch} x {}{}",
            dir.display(),
            n_params as f64 / 1e6,
            args.train.accumulate,
            acc_before.map(|a| format!("; held-out retrieval accuracy before {a:.4}")).unwrap_or_default()
        );
    }
    let Some(outcome) = train_decoder(("finetune", "val err"), cfg, &args.train, &log_path, &checkpoint, &mut obj, g)? else {
        return Ok(130);
    };
    let acc_after = if n_val == 0 { None } else { Some(obj.accuracy(&obj.val)?) };
    write_encoder_student(&obj.model, dir, &args.output)?;
    if !args.train.keep_checkpoint {
        std::fs::remove_file(&checkpoint).ok();
    }
    let energy = meter.stop();
    let summary = json!({
        "model": args.model,
        "pairs": pairs_path.display().to_string(),
        "train_pairs": n_train, "val_pairs": n_val,
        "hard_negatives": obj.train.iter().filter(|p| p.negative.is_some()).count(),
        "params": n_params,
        "loss": {"kind": "multiple_negatives_ranking", "scale": args.scale},
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": batch, "accumulate": args.train.accumulate, "lr": lr, "seed": args.train.seed, "max_length": max_len,
        "val_retrieval_accuracy_before": acc_before,
        "val_retrieval_accuracy_after": acc_after,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "cpu_seconds": energy.cpu_seconds,
        "energy_joules": energy.joules, "energy_method": energy.method, "co2e_g": energy.co2e_g,
        "peak_rss_bytes": crate::sys::peak_rss(),
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
    });
    std::fs::write(args.output.join("smelt_finetune.json"), serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", args.output.join("smelt_finetune.json").display()))?;
    write_report("smelt finetune (pairs)", &beside(&args.output, ".training.html"), &summary, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        let acc = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        writeln!(out, "trained    {} steps on {n_train} pairs, {:.0} s, {:.0} tokens/s", outcome.steps, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9))?;
        writeln!(out, "retrieval  accuracy on {n_val} held-out pairs: {} -> {}", if args.train.resume { "(resumed)".into() } else { acc(acc_before) }, acc(acc_after))?;
        writeln!(out, "cost       {:.0} CPU s, {:.0} J ({})", energy.cpu_seconds, energy.joules, energy.method)?;
        writeln!(out, "wrote      {} (a sentence-transformers directory)", args.output.display())?;
    }
    Ok(0)
}
