//! `smelt distill` for decoders: a GGUF student (the teacher with blocks removed, or a given
//! file) learns the teacher's next-token distributions on chunks of text
//! (`smelt_compress::distill::decoder`); written as an F32 GGUF.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::calib::CalibOptions;
use smelt_compress::distill::decoder::{chunks, DecoderDistill, DecoderLoss};
use smelt_compress::distill::write_decoder_student;
use smelt_compress::prune::layers::{remove_layers, write_without_layers, LayerRemoval, LayerScore};
use smelt_compress::prune::model::Source;
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::backward::LlamaTrain;
use smelt_models::{Llama, LoadOptions};

use super::distill::{beside, train_config, train_decoder, write_report};
use crate::cli::{DistillArgs, Global};
use crate::progress::Progress;

pub fn run(args: &DistillArgs, g: &Global, teacher_path: &Path) -> Result<i32> {
    let started = Instant::now();
    if args.hidden_weight != 0.0 || args.mse_weight != 0.0 || args.cos_weight != 1.0 || !args.layer_map.is_empty() || args.lines || args.max_sentences.is_some() || args.val.is_some() {
        anyhow::bail!("a decoder is distilled on its next-token distributions: --kl-weight, --ce-weight and --temperature set the loss; --cos-weight, --mse-weight, --hidden-weight, --layer-map, --lines, --max-sentences and --val are for sentence encoders (a decoder holds out every 50th chunk)");
    }
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let pool = g.pool();
    let loaded = smelt_models::load(teacher_path, LoadOptions { weight_type: Some(GgmlType::F32) }).with_context(|| format!("loading the teacher {}", teacher_path.display()))?;
    let (teacher, tok) = (&loaded.model, &loaded.tok);
    let mut text = String::new();
    for f in &args.data {
        text.push_str(&super::read_utf8(f)?);
        text.push('\n');
    }
    let tokens = tok.encode(&text, false);
    let (train, val) = chunks(&tokens, args.ctx, 8);
    if train.len() < args.train.batch_or(32) {
        anyhow::bail!("the data holds {} chunks of {} tokens, fewer than a batch of {}: give more text, a smaller --ctx or --batch", train.len(), args.ctx, args.train.batch_or(32));
    }

    // The student: blocks removed from the teacher's file, or a given file.
    let src = GgufFile::open(teacher_path).with_context(|| format!("reading {}", teacher_path.display()))?;
    let n_teacher = teacher.cfg.n_layers;
    let scratch = beside(&args.output, ".smelt-student.gguf");
    let mut removed_blocks: Vec<usize> = Vec::new();
    let student_path = if let Some(s) = &args.student {
        s.clone()
    } else {
        let removed: BTreeSet<usize> = if !args.keep_layers.is_empty() {
            if args.keep_layers.windows(2).any(|w| w[0] >= w[1]) || args.keep_layers.iter().any(|&l| l >= n_teacher) {
                anyhow::bail!("--keep-layers {:?}: give distinct layers in ascending order, each below {n_teacher}", args.keep_layers);
            }
            (0..n_teacher).filter(|l| !args.keep_layers.contains(l)).collect()
        } else if let Some(n) = args.layers {
            if n == 0 || n >= n_teacher {
                anyhow::bail!("--layers {n}: the student needs 1 to {} of the teacher's {n_teacher} layers", n_teacher - 1);
            }
            let calib_text: String = text.chars().take(200_000).collect();
            let source = Source { file: &src, tok, text: Some(&calib_text) };
            let mut bar = Progress::new("layer scores", 32, false, g.quiet);
            let r = remove_layers(&source, teacher, LayerRemoval { n: n_teacher - n, how: LayerScore::Angular, calib: CalibOptions { ctx: 256, max_chunks: Some(32), process_output: false } }, &scratch, &pool, &mut |d, _| {
                let k = (d as u64).saturating_sub(bar.done());
                bar.inc(k, "");
            })?;
            bar.finish();
            if !g.quiet {
                eprintln!("student: removed blocks {:?} by angular distance", r.removed);
            }
            removed_blocks = r.removed.clone();
            BTreeSet::new()
        } else {
            anyhow::bail!("say where the student comes from: --keep-layers 0,1,..., --layers N, or --student FILE");
        };
        if !removed.is_empty() {
            write_without_layers(&src, &removed, &scratch)?;
            removed_blocks = removed.into_iter().collect();
        }
        scratch.clone()
    };
    let student_file = Arc::new(GgufFile::open(&student_path).with_context(|| format!("reading the student {}", student_path.display()))?);
    let mut student = LlamaTrain::from_llama(&Llama::from_gguf(student_file.clone(), LoadOptions::default())?).with_context(|| format!("the student {} cannot be trained (a student from `smelt prune --method ffn|heads|width` must be pruned with --no-bias: block biases are not trained yet)", student_path.display()))?;
    student.recompute = args.train.recompute;
    let kept_layers = student.cfg.n_layers;
    let loss = DecoderLoss { kl: args.kl_weight, temperature: args.temperature, ce: args.ce_weight };
    let mut obj = DecoderDistill::new(teacher, student, train, val, loss, &pool)?;
    let (n_train, n_val) = obj.sizes();
    let (cfg, checkpoint, log_path) = train_config(&args.train, &args.output, (args.train.batch_or(32), args.train.lr_or(1e-4)), g, n_train)?;
    let steps = cfg.steps;
    let kl_before = if args.train.resume { None } else { Some(obj.val_kl()?) };
    if !g.quiet {
        eprintln!("distill: {kept_layers} of {n_teacher} blocks; {n_train} training and {n_val} validation chunks of {} tokens; {steps} steps of {} x {}{}", args.ctx, args.train.batch_or(32), args.train.accumulate, kl_before.map(|v| format!("; validation KL before training {v:.4}")).unwrap_or_default());
    }
    let Some(outcome) = train_decoder(("distill", "val KL"), cfg, &args.train, &log_path, &checkpoint, &mut obj, g)? else {
        return Ok(130);
    };
    let kl_after = obj.val_kl()?;
    let bytes = write_decoder_student(&obj.student, &student_file, &args.output)?;
    if student_path == scratch {
        std::fs::remove_file(&scratch).ok();
    }
    if !args.train.keep_checkpoint {
        std::fs::remove_file(&checkpoint).ok();
    }
    let summary = json!({
        "teacher": args.teacher,
        "student_layers": kept_layers,
        "removed_blocks": removed_blocks,
        "teacher_layers": n_teacher,
        "student_params": obj.student.params.len(),
        "train_chunks": n_train, "val_chunks": n_val, "ctx": args.ctx,
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": args.train.batch_or(32), "accumulate": args.train.accumulate, "lr": args.train.lr_or(1e-4), "seed": args.train.seed,
        "loss": {"kl": args.kl_weight, "temperature": args.temperature, "ce": args.ce_weight},
        "val_kl_before": kl_before,
        "val_kl_after": kl_after,
        "best_val_kl": outcome.best_val,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "peak_rss_bytes": crate::sys::peak_rss(),
        "output_bytes": bytes,
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
    });
    let summary_path = beside(&args.output, ".distill.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", summary_path.display()))?;
    write_report("smelt distill", &beside(&args.output, ".training.html"), &summary, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(out, "student    {kept_layers} of {n_teacher} blocks, {} parameters", obj.student.params.len())?;
        writeln!(out, "trained    {} steps on {n_train} chunks of {} tokens, {:.0} s, {:.0} tokens/s", outcome.steps, args.ctx, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9))?;
        writeln!(out, "val KL     to the teacher on {n_val} held-out chunks: {} -> {kl_after:.4}", kl_before.map(|v| format!("{v:.4}")).unwrap_or("(resumed)".into()))?;
        writeln!(out, "wrote      {} (F32, {:.1} MB; log {})", args.output.display(), bytes as f64 / 1e6, log_path.display())?;
    }
    Ok(0)
}
