//! `smelt distill`: a smaller sentence encoder learns a teacher's sentence vectors
//! (`smelt_compress::distill`, trained by `smelt_train`); progress, Ctrl-C and the summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::distill::encoder::{EncoderDistill, EncoderLoss};
use smelt_compress::distill::student::student_from_config;
use smelt_compress::distill::write_encoder_student;
use smelt_compress::encoder_dir::check_new_dir;
use smelt_compress::prune::encoder::{prune_encoder, EncoderPrune};
use smelt_compress::prune::layers::LayerScore;
use smelt_formats::hf_config::HfConfig;
use smelt_formats::texts::{parse_lines, sentences};
use smelt_models::backward::BertTrain;
use smelt_models::Encoder;
use smelt_train::{Stop, TrainConfig, Trainer};

use super::lm::{cancel_flag, Generating};
use super::prune::StageBars;
use crate::cli::{DistillArgs, Global, TrainFlags};
use crate::progress::Progress;

/// The teacher layer each of `n` student layers stands for (the default hidden-state map of a
/// student not cut from the teacher): the last of each of `n` equal spans of the teacher's.
fn spread(n: usize, n_teacher: usize) -> Vec<usize> {
    let n = n.max(1);
    (0..n).map(|i| (i * n_teacher / n + n_teacher / n).saturating_sub(1).min(n_teacher - 1)).collect()
}

/// The config a `--student` path gives when it holds no weights: a `.json` file, or a
/// directory with `config.json` and no `model.safetensors`.
fn config_only(student: &Path) -> Option<PathBuf> {
    if student.is_file() && student.extension().is_some_and(|e| e == "json") {
        Some(student.to_path_buf())
    } else if student.is_dir() && student.join("config.json").is_file() && !student.join("model.safetensors").exists() {
        Some(student.join("config.json"))
    } else {
        None
    }
}

/// "3 layers of 12 heads, FFN 1536, 17.2 M parameters".
fn describe(s: &BertTrain) -> String {
    format!("{} layers of {} heads, FFN {}, {:.1} M parameters", s.cfg.num_hidden_layers, s.cfg.num_attention_heads, s.cfg.intermediate_size, s.params.len() as f64 / 1e6)
}

/// The texts of one data file: JSON lines (.jsonl), one per line (`lines`), or prose split into
/// sentences.
pub(super) fn texts_of(path: &Path, lines: bool) -> Result<Vec<String>> {
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let out: Vec<String> = if jsonl {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        parse_lines(&bytes, true).with_context(|| format!("{}", path.display()))?.into_iter().map(|t| t.text).filter(|t| !t.trim().is_empty()).collect()
    } else {
        let text = super::read_utf8(path)?;
        if lines {
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        } else {
            sentences(&text, usize::MAX)
        }
    };
    if out.is_empty() {
        anyhow::bail!("{} holds no texts{}", path.display(), if lines || jsonl { "" } else { " (no sentences of 4 words or more; give --lines for one text per line)" });
    }
    Ok(out)
}

/// Every 50th item (at most 1,000) held out for validation: `(train, val)`.
pub(super) fn hold_out<T>(items: impl IntoIterator<Item = T>) -> (Vec<T>, Vec<T>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, t) in items.into_iter().enumerate() {
        if i % 50 == 49 && val.len() < 1000 {
            val.push(t);
        } else {
            train.push(t);
        }
    }
    (train, val)
}

/// `STUDENT:TEACHER` pairs.
fn layer_map(pairs: &[String]) -> Result<Vec<(usize, usize)>> {
    pairs
        .iter()
        .map(|p| {
            let (s, t) = p.split_once(':').with_context(|| format!("--layer-map {p:?}: give STUDENT:TEACHER pairs such as 0:1,1:3"))?;
            Ok((s.trim().parse().with_context(|| format!("--layer-map {p:?}"))?, t.trim().parse().with_context(|| format!("--layer-map {p:?}"))?))
        })
        .collect()
}

/// The HTML page of the run: the summary and the loss curves read back from the log.
pub(super) fn write_report(title: &str, path: &Path, summary: &serde_json::Value, log: &Path) -> Result<()> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let step = v["step"].as_f64().unwrap_or(f64::NAN);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        } else if let Some(l) = v["val_loss"].as_f64() {
            val.push((step, l));
        }
    }
    let rows: Vec<(String, String)> = summary.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()).unwrap_or_default();
    let page = smelt_eval::report::training_html(title, &rows, &train, &val);
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// The loop's settings from the arguments, with the checkpoint and log paths (beside the
/// output unless given), checked against `n_train` examples.
pub(super) fn train_config(t: &TrainFlags, output: &Path, (batch, lr): (usize, f32), g: &Global, n_train: usize) -> Result<(TrainConfig, PathBuf, PathBuf)> {
    let per_epoch = (n_train / batch.max(1) / t.accumulate.max(1)).max(1) as u64;
    let steps = t.steps.unwrap_or(per_epoch * t.epochs as u64);
    let checkpoint = t.checkpoint.clone().unwrap_or_else(|| beside(output, ".ckpt"));
    let log_path = t.log.clone().unwrap_or_else(|| beside(output, ".train.jsonl"));
    let cfg = TrainConfig {
        steps,
        batch,
        accumulate: t.accumulate,
        lr,
        warmup: (t.warmup * steps as f64).round() as u64,
        min_lr_ratio: 0.1,
        weight_decay: t.weight_decay,
        clip: t.clip,
        seed: t.seed,
        eval_every: if t.eval_every == 0 { steps } else { t.eval_every },
        patience: t.patience as u32,
        checkpoint_every: t.checkpoint_every,
        checkpoint: Some(checkpoint.clone()),
        resume: t.resume,
        threads: g.n_threads(),
        max_seconds: t.max_minutes.map(|m| m * 60.0),
    };
    cfg.check(n_train)?;
    Ok((cfg, checkpoint, log_path))
}

/// The JSON-lines log: appended to on `--resume`, else started afresh.
pub(super) fn open_log(t: &TrainFlags, path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(t.resume).write(true).truncate(!t.resume).open(path).with_context(|| format!("opening the log {}", path.display()))
}

/// Runs the loop for a decoder command: the JSON-lines log, Ctrl-C, a progress bar whose
/// validation figure is called `val`. `None` when interrupted (after saying how to resume).
pub(super) fn train_decoder((label, val): (&str, &str), cfg: TrainConfig, t: &TrainFlags, log_path: &Path, checkpoint: &Path, obj: &mut dyn smelt_train::Objective, g: &Global) -> Result<Option<smelt_train::Outcome>> {
    let steps = cfg.steps;
    let mut log = open_log(t, log_path)?;
    let stop = super::lm::cancel_flag();
    let generating = super::lm::Generating::start();
    let mut bar = Progress::new(label, steps, false, g.quiet);
    let outcome = smelt_train::Trainer { cfg, log: Some(&mut log), stop: Some(stop) }.run(obj, &mut |p| {
        let n = p.step.saturating_sub(bar.done());
        bar.inc(n, &format!("loss {:.4}{} {:.0} tok/s", p.loss, p.val.map(|v| format!(" {val} {v:.4}")).unwrap_or_default(), p.tokens_per_s));
    });
    bar.finish();
    drop(generating);
    let outcome = outcome?;
    if outcome.stop == smelt_train::Stop::Interrupted {
        eprintln!("interrupted after step {} of {steps}: the checkpoint is {}; run the same command with --resume to continue", outcome.steps, checkpoint.display());
        return Ok(None);
    }
    Ok(Some(outcome))
}

/// A sibling path of `out` with `suffix` appended to its name.
pub(super) fn beside(out: &Path, suffix: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "student".into());
    out.with_file_name(format!("{name}{suffix}"))
}

pub fn run(args: &DistillArgs, g: &Global) -> Result<i32> {
    let started = Instant::now();
    let teacher_dir = crate::resolve_model(&args.teacher, g.quiet)?;
    if !teacher_dir.is_dir() {
        return super::distill_decoder::run(args, g, &teacher_dir);
    }
    if args.kl_weight != 1.0 || args.ce_weight != 0.0 || args.temperature != 1.0 || args.ctx != 256 {
        anyhow::bail!("a sentence encoder is distilled on its sentence vectors: --cos-weight, --mse-weight and --hidden-weight set the loss; --kl-weight, --ce-weight, --temperature and --ctx are for decoders (GGUF teachers)");
    }
    check_new_dir(&args.output)?;
    let pool = g.pool();
    let teacher = Encoder::load(&teacher_dir, None).with_context(|| format!("loading the teacher {}", teacher_dir.display()))?;
    let max_len = args.max_length.min(teacher.max_len);

    // Data: training sentences, and validation ones held out.
    let mut texts = Vec::new();
    for f in &args.data {
        texts.extend(texts_of(f, args.lines)?);
    }
    let (train_texts, val_texts): (Vec<String>, Vec<String>) = match &args.val {
        Some(v) => (texts, texts_of(v, args.lines)?),
        None => hold_out(texts),
    };
    let mut train: Vec<Vec<u32>> = train_texts.iter().map(|t| teacher.tok.encode(t, max_len)).collect();
    if let Some(m) = args.max_sentences.filter(|&m| m < train.len()) {
        // An evenly spaced subset, so that every data file is represented.
        let n = train.len();
        train = (0..m).map(|i| std::mem::take(&mut train[i * n / m])).collect();
    }
    let val: Vec<Vec<u32>> = val_texts.iter().map(|t| teacher.tok.encode(t, max_len)).collect();

    // The student, and the directory its side files come from.
    let n_teacher = teacher.model.cfg.num_hidden_layers;
    let scratch = beside(&args.output, ".smelt-student");
    let (mut student, source, kept): (BertTrain, PathBuf, Vec<usize>) = if let Some(config) = args.student.as_ref().and_then(|s| config_only(s)) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?).with_context(|| format!("{} is not JSON", config.display()))?;
        let cfg = match smelt_formats::hf_config::parse_config(&v).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))? {
            HfConfig::Bert(c) => c,
            _ => anyhow::bail!("{}: the student config of a sentence encoder must be a BERT config (\"model_type\": \"bert\")", config.display()),
        };
        let kept = spread(cfg.num_hidden_layers, n_teacher);
        let range = v.get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02);
        let s = student_from_config(cfg, range, &BertTrain::from_dir(&teacher_dir)?, args.train.seed)?;
        if !g.quiet {
            eprintln!("student: {} from {} (embeddings from the teacher, layers initialized at random, std {range})", describe(&s), config.display());
        }
        (s, teacher_dir.clone(), kept)
    } else if let Some(dir) = &args.student {
        let s = BertTrain::from_dir(dir).with_context(|| format!("loading the student {}", dir.display()))?;
        let kept = spread(s.cfg.num_hidden_layers, n_teacher);
        let same_tok = std::fs::read(dir.join("tokenizer.json")).ok() == std::fs::read(teacher_dir.join("tokenizer.json")).ok() || std::fs::read(dir.join("vocab.txt")).ok() == std::fs::read(teacher_dir.join("vocab.txt")).ok();
        if !same_tok {
            anyhow::bail!("the student {} and the teacher tokenize differently (their tokenizer.json and vocab.txt differ): distillation needs the same tokenizer", dir.display());
        }
        (s, dir.clone(), kept)
    } else if !args.keep_layers.is_empty() {
        let full = BertTrain::from_dir(&teacher_dir)?;
        (full.keep_layers(&args.keep_layers)?, teacher_dir.clone(), args.keep_layers.clone())
    } else if let Some(n) = args.layers {
        if n == 0 || n >= n_teacher {
            anyhow::bail!("--layers {n}: the student needs 1 to {} of the teacher's {n_teacher} layers", n_teacher - 1);
        }
        std::fs::remove_dir_all(&scratch).ok();
        let calib: Vec<&str> = train_texts.iter().take(512).map(String::as_str).collect();
        let p = EncoderPrune { ffn: 0.0, heads: 0.0, layers: n_teacher - n, layer_score: LayerScore::Angular, damp: 0.01, bias: true, batch: 32 };
        let mut bars = StageBars::new(g.quiet);
        let r = prune_encoder(&teacher_dir, &teacher, &calib, &p, &scratch, &pool, &mut |d, t, w| bars.step(d, t, w))?;
        bars.finish();
        let kept: Vec<usize> = (0..n_teacher).filter(|l| !r.removed_layers.contains(l)).collect();
        if !g.quiet {
            eprintln!("student: teacher layers {kept:?} (removed {:?} by angular distance)", r.removed_layers);
        }
        (BertTrain::from_dir(&scratch)?, scratch.clone(), kept)
    } else {
        anyhow::bail!("say where the student comes from: --keep-layers 0,2,4, --layers N, or --student DIR");
    };
    student.recompute = args.train.recompute;
    let mut map = layer_map(&args.layer_map)?;
    if map.is_empty() && args.hidden_weight > 0.0 {
        map = kept.iter().enumerate().map(|(s, &t)| (s, t)).collect();
    }
    let loss = EncoderLoss { cos: args.cos_weight, mse: args.mse_weight, hidden: args.hidden_weight, layer_map: map.clone() };

    let mut bar = Progress::new("teacher vectors", (train.len() + val.len()) as u64, false, g.quiet);
    let mut obj = EncoderDistill::new(&teacher, student, train, val, loss, &pool, &mut |d, _| {
        let n = (d as u64).saturating_sub(bar.done());
        bar.inc(n, "");
    })?;
    bar.finish();
    let (n_train, n_val) = obj.sizes();
    let (cfg, checkpoint, log_path) = train_config(&args.train, &args.output, (args.train.batch_or(32), args.train.lr_or(1e-4)), g, n_train)?;
    let steps = cfg.steps;
    let gap_before = if args.train.resume { None } else { Some(obj.val_gap()?) };
    if !g.quiet {
        eprintln!(
            "distill: {n_train} training and {n_val} validation sentences; {steps} steps of {} x {}; teacher vectors cached in memory ({:.1} MB){}",
            args.train.batch_or(32),
            args.train.accumulate,
            obj.cache_bytes() as f64 / 1e6,
            gap_before.map(|v| format!("; validation gap before training {v:.5}")).unwrap_or_default()
        );
    }
    let mut log = open_log(&args.train, &log_path)?;
    let stop = cancel_flag();
    let _generating = Generating::start();
    let mut bar = Progress::new("distill", steps, false, g.quiet);
    let mut trainer = Trainer { cfg, log: Some(&mut log), stop: Some(stop) };
    let outcome = trainer.run(&mut obj, &mut |p| {
        let n = p.step.saturating_sub(bar.done());
        bar.inc(n, &format!("loss {:.5}{} {:.0} tok/s", p.loss, p.val.map(|v| format!(" val {v:.5}")).unwrap_or_default(), p.tokens_per_s));
    });
    bar.finish();
    drop(_generating);
    let outcome = outcome?;
    if outcome.stop == Stop::Interrupted {
        eprintln!("interrupted after step {} of {steps}: the checkpoint is {}; run the same command with --resume to continue", outcome.steps, checkpoint.display());
        std::fs::remove_dir_all(&scratch).ok();
        return Ok(130);
    }
    let gap_after = obj.val_gap()?;
    write_encoder_student(&obj.student, &source, &args.output)?;
    std::fs::remove_dir_all(&scratch).ok();
    if !args.train.keep_checkpoint {
        std::fs::remove_file(&checkpoint).ok();
    }
    let summary = json!({
        "teacher": args.teacher,
        "student_layers": obj.student.cfg.num_hidden_layers,
        "student_from_teacher_layers": kept,
        "student_params": obj.student.params.len(),
        "teacher_params": teacher.model.n_params(),
        "train_sentences": n_train,
        "val_sentences": n_val,
        "steps": outcome.steps,
        "stopped": format!("{:?}", outcome.stop).to_lowercase(),
        "batch": args.train.batch_or(32), "accumulate": args.train.accumulate, "lr": args.train.lr_or(1e-4), "seed": args.train.seed,
        "loss": {"cos": args.cos_weight, "mse": args.mse_weight, "hidden": args.hidden_weight, "layer_map": map},
        "val_gap_before": gap_before,
        "val_gap_after": gap_after,
        "best_val_gap": outcome.best_val,
        "tokens": outcome.tokens,
        "train_seconds": outcome.seconds,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "wall_seconds": started.elapsed().as_secs_f64(),
        "peak_rss_bytes": crate::sys::peak_rss(),
        "teacher_cache_bytes": obj.cache_bytes(),
        "log": log_path.display().to_string(),
        "output": args.output.display().to_string(),
    });
    std::fs::write(args.output.join("smelt_distill.json"), serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", args.output.join("smelt_distill.json").display()))?;
    write_report("smelt distill", &args.output.join("training.html"), &summary, &log_path)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(out, "student    {} layers (teacher layers {:?}), {} parameters (teacher {})", obj.student.cfg.num_hidden_layers, kept, obj.student.params.len(), teacher.model.n_params())?;
        writeln!(out, "trained    {} steps on {n_train} sentences, {:.0} s, {:.0} tokens/s", outcome.steps, outcome.seconds, outcome.tokens as f64 / outcome.seconds.max(1e-9))?;
        writeln!(out, "val gap    1 - cos to the teacher on {n_val} held-out sentences: {} -> {gap_after:.5}", gap_before.map(|v| format!("{v:.5}")).unwrap_or("(resumed)".into()))?;
        writeln!(out, "wrote      {} (log {})", args.output.display(), log_path.display())?;
    }
    Ok(0)
}
