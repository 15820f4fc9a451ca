//! `smelt classify`: a logistic-regression head on frozen sentence embeddings: train, predict,
//! eval.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use smelt_kernels::pool::ThreadPool;
use smelt_models::classify::{self, Head, TrainOptions};
use smelt_models::{EmbedOptions, Encoder, Int8Spec};

use smelt_formats::texts::Labelled;

use super::embed::{input_name, parse_all, read_all};
use crate::cli::{ClassifyArgs, ClassifyCommand, ClassifyEvalArgs, ClassifyPredictArgs, ClassifyTrainArgs, EmbedInput, Global};
use crate::progress::Progress;

/// Reads labelled JSON lines ({"text", "label"}) from a file or `-` (stdin).
pub(crate) fn read_labelled(path: &Path) -> Result<Vec<Labelled>> {
    let input = Some(path).filter(|p| p.as_os_str() != "-");
    smelt_formats::texts::parse_labelled(&read_all(input)?).with_context(|| format!("reading {}", input_name(input)))
}

/// The distinct labels of a labelled set, sorted (a head's label order).
pub(crate) fn labels_of(data: &[Labelled]) -> Vec<String> {
    let mut labels: Vec<String> = data.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

fn pool(global: &Global) -> ThreadPool {
    global.pool()
}

pub(crate) fn load_encoder(model: &str, int8: Option<&Int8Spec>, pool: &ThreadPool, quiet: bool) -> Result<Encoder> {
    let path = crate::resolve_model(model, quiet)?;
    let mut enc = Encoder::load(&path, None).with_context(|| format!("loading {}", path.display()))?;
    if let Some(spec) = int8 {
        enc.quantize_int8(pool, spec, None)?;
    }
    Ok(enc)
}

/// Embeddings of `texts` with a progress bar.
pub(crate) fn embed(enc: &Encoder, pool: &ThreadPool, texts: &[&str], quiet: bool) -> Result<Vec<Vec<f32>>> {
    let mut bar = Progress::new("embedding", texts.len() as u64, false, quiet);
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(512) {
        out.extend(enc.embed(pool, chunk, &EmbedOptions::default())?);
        bar.inc(chunk.len() as u64, "");
    }
    bar.finish();
    Ok(out)
}

pub(crate) fn read_head(path: &Path) -> Result<Head> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let head: Head = serde_json::from_str(&text).with_context(|| format!("{} is not a smelt classifier head", path.display()))?;
    head.validate().with_context(|| path.display().to_string())?;
    Ok(head)
}

/// The encoder a head was trained with (or `model` instead), checked against the head's size.
fn head_encoder(head: &Head, model: Option<&str>, pool: &ThreadPool, quiet: bool) -> Result<Encoder> {
    let spec = head.int8.then(Int8Spec::all);
    let enc = load_encoder(model.unwrap_or(&head.encoder), spec.as_ref(), pool, quiet)?;
    if enc.dim() != head.dim {
        bail!("the head expects {}-dimensional embeddings, the encoder gives {}", head.dim, enc.dim());
    }
    Ok(enc)
}

fn train(a: &ClassifyTrainArgs, global: &Global) -> Result<()> {
    smelt_formats::fsutil::check_output(&a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    if a.int8.as_ref().is_some_and(|s| *s != Int8Spec::all()) {
        bail!("heads record only whether the whole encoder ran in int8: use --int8 or --int8 all");
    }
    let data = read_labelled(&a.data)?;
    let labels = labels_of(&data);
    if labels.len() < 2 {
        bail!("{}: every example has the label {:?}; a classifier needs at least two", a.data.display(), labels[0]);
    }
    let y: Vec<usize> = data.iter().map(|e| labels.binary_search(&e.label).unwrap_or(0)).collect();
    let pool = pool(global);
    let enc = load_encoder(&a.model, a.int8.as_ref(), &pool, global.quiet)?;
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let x = embed(&enc, &pool, &texts, global.quiet)?;
    let mut bar = Progress::new("training", a.max_iter as u64, false, global.quiet);
    let opts = TrainOptions { l2: a.l2, max_iter: a.max_iter, ..TrainOptions::default() };
    let mut head = classify::train(&x, &y, &labels, opts, |_, loss| bar.inc(1, &format!("loss {loss:.4}")))?;
    bar.finish();
    head.encoder = a.model.clone();
    head.int8 = a.int8.is_some();
    if a.finetune {
        return finetune(a, global, &enc, head, &data, &y);
    }
    let pred: Vec<usize> = x.iter().map(|v| head.predict(v)).collect();
    let m = classify::metrics(&y, &pred, &labels);
    let json = serde_json::to_string_pretty(&head)?;
    smelt_formats::fsutil::write_atomic_io(&a.output, |w| w.write_all(json.as_bytes())).with_context(|| format!("writing {}", a.output.display()))?;
    if !global.quiet {
        eprintln!(
            "trained on {} examples, {} labels, {} iterations (loss {:.4}); training accuracy {:.4}; wrote {}",
            head.train_examples,
            labels.len(),
            head.iterations,
            head.final_loss,
            m.accuracy,
            a.output.display()
        );
    }
    Ok(())
}

fn predict(a: &ClassifyPredictArgs, global: &Global) -> Result<()> {
    let head = read_head(&a.head)?;
    let input = a.input.as_deref().filter(|p| p.as_os_str() != "-");
    if input.is_none() && std::io::stdin().is_terminal() && !global.quiet {
        eprintln!("reading texts from the terminal, one per line; end with Ctrl-D");
    }
    let jsonl = match a.input_kind {
        Some(k) => k == EmbedInput::Jsonl,
        None => input.is_some_and(|p| p.extension().is_some_and(|e| e == "jsonl")),
    };
    let items = parse_all(&read_all(input)?, jsonl, &input_name(input))?;
    let pool = pool(global);
    let enc = head_encoder(&head, a.model.as_deref(), &pool, global.quiet)?;
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let x = embed(&enc, &pool, &texts, global.quiet)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, (item, v)) in items.iter().zip(&x).enumerate() {
        let p = head.probabilities(v);
        let best = (0..p.len()).fold(0, |b, k| if p[k] > p[b] { k } else { b });
        let probs: Map<String, Value> = head.labels.iter().zip(&p).map(|(l, &v)| (l.clone(), json!(v))).collect();
        let mut rec = json!({"index": i, "label": head.labels[best], "probabilities": probs});
        if let Some(id) = &item.id {
            rec["id"] = id.clone();
        }
        serde_json::to_writer(&mut out, &rec)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn eval(a: &ClassifyEvalArgs, global: &Global) -> Result<()> {
    let head = read_head(&a.head)?;
    let data = read_labelled(&a.data)?;
    if let Some(e) = data.iter().find(|e| !head.labels.contains(&e.label)) {
        bail!("{}: label {:?} is not one of the head's labels ({})", a.data.display(), e.label, head.labels.join(", "));
    }
    let pool = pool(global);
    let enc = head_encoder(&head, a.model.as_deref(), &pool, global.quiet)?;
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let x = embed(&enc, &pool, &texts, global.quiet)?;
    let y: Vec<usize> = data.iter().map(|e| head.labels.iter().position(|l| *l == e.label).unwrap_or(0)).collect();
    let pred: Vec<usize> = x.iter().map(|v| head.predict(v)).collect();
    let m = classify::metrics(&y, &pred, &head.labels);
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &m)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{} examples: accuracy {:.4}, macro precision {:.4}, macro recall {:.4}, macro F1 {:.4}\n", m.examples, m.accuracy, m.macro_precision, m.macro_recall, m.macro_f1)?;
    writeln!(out, "| label | precision | recall | F1 | support |\n|---|---|---|---|---|")?;
    for c in &m.classes {
        writeln!(out, "| {} | {:.4} | {:.4} | {:.4} | {} |", c.label, c.precision, c.recall, c.f1, c.support)?;
    }
    writeln!(out, "\nconfusion (rows: true label, columns: predicted, in the order above):")?;
    for row in &m.confusion {
        writeln!(out, "  {}", row.iter().map(|v| format!("{v:5}")).collect::<String>())?;
    }
    Ok(())
}

pub fn run(a: &ClassifyArgs, global: &Global) -> Result<()> {
    match &a.command {
        ClassifyCommand::Train(t) => train(t, global),
        ClassifyCommand::Predict(p) => predict(p, global),
        ClassifyCommand::Eval(e) => eval(e, global),
    }
}

/// `classify train --finetune`: the encoder's last layers and the head trained together on the
/// data (every 20th example held out to pick the best step), written as `HEAD.encoder/` and
/// `HEAD`.
fn finetune(a: &ClassifyTrainArgs, global: &Global, enc: &Encoder, head: Head, data: &[Labelled], y: &[usize]) -> Result<()> {
    use smelt_compress::classify_tune::EncoderClassifier;
    use smelt_train::{TrainConfig, Trainer};
    let dir = crate::resolve_model(&a.model, global.quiet)?;
    if !dir.is_dir() {
        bail!("--finetune trains a sentence-transformers directory (safetensors); {} is not one", dir.display());
    }
    let out_dir = a.output.with_file_name(format!("{}.encoder", a.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    if out_dir.exists() {
        bail!("{} exists: remove it or write the head elsewhere", out_dir.display());
    }
    let model = smelt_models::backward::BertTrain::from_dir(&dir)?;
    let max_len = a.max_length.min(enc.max_len);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, (e, &label)) in data.iter().zip(y).enumerate() {
        let ex = (enc.tok.encode(&e.text, max_len), label as u32);
        if i % 20 == 19 {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    let pool = pool(global);
    let mut obj = EncoderClassifier::new(model, &head, train, val, a.train_layers, &pool)?;
    let n = obj.train.len();
    let steps = ((n / a.batch.max(1)).max(1) * a.epochs) as u64;
    let cfg = TrainConfig {
        steps,
        batch: a.batch,
        accumulate: 1,
        lr: a.lr,
        warmup: steps / 10,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        clip: 1.0,
        seed: a.seed,
        eval_every: (steps / 8).max(1),
        patience: 0,
        checkpoint_every: 0,
        checkpoint: None,
        resume: false,
        threads: global.n_threads(),
        max_seconds: None,
    };
    let before = obj.accuracy(&obj.val)?;
    let mut bar = Progress::new("fine-tuning", steps, false, global.quiet);
    let outcome = Trainer { cfg, log: None, stop: None }.run(&mut obj, &mut |p| {
        let k = p.step.saturating_sub(bar.done());
        bar.inc(k, &format!("loss {:.4}{}", p.loss, p.val.map(|v| format!(" held-out accuracy {:.4}", 1.0 - v)).unwrap_or_default()));
    })?;
    bar.finish();
    let after = obj.accuracy(&obj.val)?;
    let mut tuned = obj.head(&head);
    tuned.encoder = out_dir.display().to_string();
    smelt_compress::distill::write_encoder_student(&obj.encoder(), &dir, &out_dir)?;
    let json = serde_json::to_string_pretty(&tuned)?;
    smelt_formats::fsutil::write_atomic_io(&a.output, |w| w.write_all(json.as_bytes())).with_context(|| format!("writing {}", a.output.display()))?;
    if !global.quiet {
        eprintln!(
            "fine-tuned the last {} layers and the head: {} steps of {} on {} examples ({:.0} s); held-out accuracy {before:.4} -> {after:.4}; wrote {} and {}",
            a.train_layers,
            outcome.steps,
            a.batch,
            n,
            outcome.seconds,
            out_dir.display(),
            a.output.display()
        );
    }
    Ok(())
}
