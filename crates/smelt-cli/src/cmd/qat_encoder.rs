//! `smelt qat ENCODER --to int8 --data TEXT -o DIR`: quantization-aware training of a sentence
//! encoder for smelt's int8 path (`smelt_compress::qat_encoder`); writes a sentence-transformers
//! directory of the master weights (run it with `--int8`), a JSON summary and an HTML report.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::distill::encoder::{EncoderDistill, EncoderLoss};
use smelt_compress::distill::write_encoder_student;
use smelt_compress::encoder_dir::check_new_dir;
use smelt_compress::qat_encoder::EncoderQat;
use smelt_eval::energy::{Meter, PowerModel};
use smelt_models::backward::BertTrain;
use smelt_models::int8::{DEFAULT_CALIBRATION, KINDS};
use smelt_models::Encoder;
use smelt_train::Stop;

use super::distill::{hold_out, texts_of, train_config, train_decoder, write_report};
use crate::cli::{Global, QatArgs};
use crate::progress::Progress;

pub fn run(args: &QatArgs, g: &Global, dir: &Path) -> Result<i32> {
    let started = Instant::now();
    if args.embed_type.is_some() || args.output_type.is_some() || args.imatrix.is_some() || args.ce_weight != 0.0 || args.ctx != 256 {
        anyhow::bail!("--embed-type, --output-type, --imatrix, --ce-weight and --ctx are for decoders (GGUF); a sentence encoder's int8 QAT takes --int8 SPEC to choose the matrices");
    }
    if dir.extension().is_some_and(|e| e == "onnx") {
        anyhow::bail!("{}: QAT trains a sentence-transformers directory (config.json + model.safetensors), not an ONNX file", dir.display());
    }
    check_new_dir(&args.output)?;
    let meter = Meter::start(&PowerModel::default());
    let pool = g.pool();
    let original = Encoder::load(dir, None).with_context(|| format!("loading {}", dir.display()))?;

    // Sentences: every 50th (at most 1000) held out, as `smelt distill` does.
    let mut texts = Vec::new();
    for f in &args.data {
        texts.extend(texts_of(f, false)?);
    }
    let (train, val) = hold_out(texts.iter().map(|t| original.tok.encode(t, original.max_len)));
    let batch = args.train.batch_or(32);
    if train.len() < batch {
        anyhow::bail!("the data holds {} training sentences, fewer than a batch of {batch}: give more text or a smaller --batch", train.len());
    }
    let calib: Vec<Vec<u32>> = DEFAULT_CALIBRATION.iter().map(|t| original.tok.encode(t, original.max_len)).collect();
    let mut student = BertTrain::from_dir(dir).with_context(|| format!("{} cannot be trained", dir.display()))?;
    student.recompute = args.train.recompute;
    let mut bar = Progress::new("original's vectors", (train.len() + val.len()) as u64, false, g.quiet);
    let inner = EncoderDistill::new(&original, student, train, val, EncoderLoss::default(), &pool, &mut |d, _| {
        let n = (d as u64).saturating_sub(bar.done());
        bar.inc(n, "");
    })?;
    bar.finish();
    let mut obj = EncoderQat::new(inner, &args.int8, calib, &pool)?;
    let (n_train, n_val) = obj.inner.sizes();
    let lr = args.train.lr_or(1e-5);
    let (tcfg, checkpoint, log_path) = train_config(&args.train, &args.output, (batch, lr), g, n_train)?;
    let steps = tcfg.steps;
    let before = if args.train.resume || n_val == 0 { None } else { Some(obj.val_gap()?) };
    if !g.quiet {
        eprintln!(
            "qat: {} matrices in int8 (of {}); {n_train} training and {n_val} validation sentences; {steps} steps of {batch} x {}{}",
            obj.quantized.len(),
            KINDS.len() * obj.inner.student.heads.len(),
            args.train.accumulate,
            before.map(|v| format!("; validation 1 - cos of the post-training int8 model {v:.5}")).unwrap_or_default()
        );
    }
    let Some(outcome) = train_decoder(("qat", "val gap"), tcfg, &args.train, &log_path, &checkpoint, &mut obj, g)? else {
        return Ok(130);
    };
    let after = if n_val == 0 { None } else { Some(obj.val_gap()?) };
    write_encoder_student(&obj.master_model(), dir, &args.output)?;
    if !args.train.keep_checkpoint && outcome.stop != Stop::TimeLimit {
        std::fs::remove_file(&checkpoint).ok();
    }
    let energy = meter.stop();
    let quantized: Vec<String> = obj.quantized.iter().map(|&(l, k)| format!("{l}.{}", KINDS[k])).collect();
    let report = json!({
        "model": args.model,
        "to": "int8",
        "int8_matrices": quantized,
        "train_sentences": n_train, "val_sentences": n_val,
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": batch, "accumulate": args.train.accumulate, "lr": lr, "seed": args.train.seed,
        "val_gap_before": before,
        "val_gap_after": after,
        "best_val_gap": outcome.best_val,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "cpu_seconds": energy.cpu_seconds,
        "energy_joules": energy.joules, "energy_method": energy.method, "co2e_g": energy.co2e_g,
        "peak_rss_bytes": crate::sys::peak_rss(),
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
        "run_with": "--int8 (the same SPEC), or OUT:int8 for every matrix",
    });
    let summary_path = args.output.join("smelt_qat.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", summary_path.display()))?;
    write_report("smelt qat (int8 encoder)", &args.output.join("training.html"), &report, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let gap = |v: Option<f64>| v.map(|v| format!("{v:.5}")).unwrap_or("-".into());
        writeln!(out, "quantized  {} matrices to int8 (weights per channel, inputs per row)", obj.quantized.len())?;
        writeln!(out, "trained    {} steps on {n_train} sentences, {:.0} s, {:.0} tokens/s{}", outcome.steps, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9), if outcome.stop == Stop::TimeLimit { " (time limit)" } else { "" })?;
        writeln!(out, "val gap    1 - cos to the original on {n_val} held-out sentences: {} (post-training int8) -> {}", if args.train.resume { "(resumed)".into() } else { gap(before) }, gap(after))?;
        writeln!(out, "cost       {:.0} CPU s, {:.0} J ({})", energy.cpu_seconds, energy.joules, energy.method)?;
        writeln!(out, "wrote      {} (run it with --int8)", args.output.display())?;
    }
    Ok(0)
}
