//! `smelt federated client`: a Flower client training, on local data, a classification head on
//! frozen embeddings (`classify`), the encoder's last layers with a head (`encoder-layers`), or
//! LoRA adapters over a decoder (`lora`). The tasks live in `smelt_federated`; this file reads
//! the data, builds the task, and prints what happened.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_federated::client::{self, ClientOptions, Summary};
use smelt_federated::head::{DpSgd, Examples, HeadTask};
use smelt_federated::privacy::{self, UpdatePrivacy};
use smelt_federated::trainable::Trainable;
use smelt_federated::tuned::{EncoderLayersTask, LocalTraining, LoraTask};
use smelt_kernels::pool::ThreadPool;

use super::classify::{embed, load_encoder, read_labelled};
use crate::cli::{FederatedClientArgs, Global};

/// Label indices of a labelled file in the federation's order, refusing unknown labels and
/// empty files.
fn label_indices(path: &Path, data: &[smelt_formats::texts::Labelled], labels: &[String]) -> Result<Vec<usize>> {
    if data.is_empty() {
        bail!("{} holds no examples: a client needs local data to train on", path.display());
    }
    data.iter()
        .enumerate()
        .map(|(i, e)| labels.iter().position(|l| *l == e.label).with_context(|| format!("{} line {}: label {:?} is not one of --labels ({})", path.display(), i + 1, e.label, labels.join(","))))
        .collect()
}

/// Embeds a labelled file, mapping its labels onto the federation's.
fn examples(path: &Path, labels: &[String], enc: &smelt_models::Encoder, pool: &ThreadPool, quiet: bool) -> Result<Examples> {
    let data = read_labelled(path)?;
    let y = label_indices(path, &data, labels)?;
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    Ok(Examples { x: embed(enc, pool, &texts, quiet)?, y })
}

/// Token ids (framed, cut to `max_len`) and label indices of a labelled file.
fn token_examples(path: &Path, labels: &[String], enc: &smelt_models::Encoder, max_len: usize) -> Result<Vec<(Vec<u32>, u32)>> {
    let data = read_labelled(path)?;
    let y = label_indices(path, &data, labels)?;
    Ok(data.iter().zip(y).map(|(e, y)| (enc.tok.encode(&e.text, max_len), y as u32)).collect())
}

fn checked_labels(a: &FederatedClientArgs) -> Result<Vec<String>> {
    let labels: Vec<String> = a.labels.iter().map(|l| l.trim().to_string()).collect();
    if labels.iter().any(String::is_empty) || labels.len() < 2 {
        bail!("--task {} needs --labels: at least two non-empty labels, comma-separated, the same on every client", a.task);
    }
    if let Some(dup) = labels.iter().enumerate().find(|(i, l)| labels[..*i].contains(l)) {
        bail!("--labels names {:?} twice", dup.1);
    }
    Ok(labels)
}

/// Refuses options that the chosen task would silently ignore.
fn check_task_options(a: &FederatedClientArgs) -> Result<()> {
    let classify = a.task != "lora";
    let misplaced = [
        (!a.labels.is_empty() && !classify, "--labels"),
        (a.head_out.is_some() && !classify, "--head-out"),
        (a.adapter_out.is_some() && a.task != "lora", "--adapter-out"),
        (a.init_head.is_some() && a.task != "encoder-layers", "--init-head"),
        (a.dp_clip.is_some() && a.dp_unit == "example" && a.task != "classify", "--dp-clip with --dp-unit example (DP-SGD trains the classify head only; use --dp-unit client)"),
    ];
    if let Some((_, what)) = misplaced.iter().find(|(bad, _)| *bad) {
        bail!("{what} does not apply to --task {}", a.task);
    }
    Ok(())
}

pub fn client(a: &FederatedClientArgs, global: &Global) -> Result<()> {
    check_task_options(a)?;
    for out in [&a.head_out, &a.adapter_out].into_iter().flatten() {
        smelt_formats::fsutil::check_output(out).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if let Some(dir) = &a.save_sent {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = ClientOptions::new(a.server.clone());
    opts.connect_for = std::time::Duration::from_secs_f64(a.connect_for);
    opts.max_message_bytes = a.max_message_mb << 20;
    opts.max_norm = a.max_norm;
    opts.seed = a.seed;
    opts.save_sent = a.save_sent.clone();
    opts.root_cert = a.root_cert.as_ref().map(|p| std::fs::read(p).with_context(|| format!("reading --root-cert {}", p.display()))).transpose()?;
    opts.tls_domain = a.tls_domain.clone();
    opts.privacy = (a.dp_unit == "client").then_some(a.dp_clip).flatten().map(|clip| UpdatePrivacy { clip, noise_multiplier: a.dp_noise });
    let pool = global.pool();
    match a.task.as_str() {
        "encoder-layers" => encoder_layers(a, global, &pool, &opts),
        "lora" => lora(a, global, &pool, &opts),
        _ => classify(a, global, &pool, &opts),
    }
}

/// Runs `task` against the server, logging unless quiet.
fn join(task: &mut dyn Trainable, opts: &ClientOptions, quiet: bool) -> Result<Summary> {
    if !quiet {
        eprintln!("smelt federated: {}", task.describe());
    }
    Ok(client::run_blocking(task, opts, &mut |line: &str| {
        if !quiet {
            eprintln!("smelt federated: {line}");
        }
    })?)
}

fn fits(s: &Summary) -> u64 {
    s.exchanges.iter().filter(|x| x.kind == "fit" && x.refused.is_none()).count() as u64
}

fn finite(e: f64) -> serde_json::Value {
    if e.is_finite() {
        json!(e)
    } else {
        json!(null)
    }
}

/// The client-level privacy record, when updates were clipped and noised.
fn client_privacy(a: &FederatedClientArgs, opts: &ClientOptions, s: &Summary) -> Option<serde_json::Value> {
    opts.privacy.map(|p| {
        let (eps, _) = privacy::epsilon(a.dp_sample_rate, p.noise_multiplier, fits(s), a.dp_delta);
        json!({"unit": "client", "clip": p.clip, "noise_multiplier": p.noise_multiplier, "delta": a.dp_delta, "sample_rate": a.dp_sample_rate, "updates_sent": fits(s), "epsilon": finite(eps)})
    })
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    smelt_formats::fsutil::write_atomic_io(path, |w| w.write_all(text.as_bytes())).with_context(|| format!("writing {}", path.display()))
}

fn classify(a: &FederatedClientArgs, global: &Global, pool: &ThreadPool, opts: &ClientOptions) -> Result<()> {
    let labels = checked_labels(a)?;
    let model = a.model.as_deref().unwrap_or("all-minilm-l6-v2");
    let enc = load_encoder(model, None, pool, global.quiet)?;
    let train = examples(&a.data, &labels, &enc, pool, global.quiet)?;
    let eval = a.eval_data.as_deref().map(|p| examples(p, &labels, &enc, pool, global.quiet)).transpose()?;
    let example_dp = (a.dp_unit == "example").then_some(a.dp_clip).flatten().map(|clip| DpSgd { clip, noise_multiplier: a.dp_noise });
    let mut task = HeadTask::new(labels, enc.dim(), train, eval, a.l2 as f64)?.with_dp_sgd(example_dp);
    let summary = join(&mut task, opts, global.quiet)?;
    let dp = client_privacy(a, opts, &summary).or_else(|| {
        example_dp.map(|d| {
            let eps = task.epsilon(a.dp_delta).unwrap_or(f64::INFINITY);
            json!({"unit": "example", "clip": d.clip, "noise_multiplier": d.noise_multiplier, "delta": a.dp_delta, "updates_sent": fits(&summary), "epsilon": finite(eps)})
        })
    });
    if let Some(path) = &a.head_out {
        let last_loss = summary.exchanges.iter().rev().find_map(|x| x.loss).unwrap_or(f64::NAN);
        write_json(path, &task.head(model, false, fits(&summary) as usize, last_loss))?;
    }
    print_summary(&summary, dp, a.json)
}

fn encoder_layers(a: &FederatedClientArgs, global: &Global, pool: &ThreadPool, opts: &ClientOptions) -> Result<()> {
    use smelt_compress::classify_tune::EncoderClassifier;
    let labels = checked_labels(a)?;
    let model = a.model.as_deref().unwrap_or("all-minilm-l6-v2");
    let dir = crate::resolve_model(model, global.quiet)?;
    if !dir.is_dir() {
        bail!("--task encoder-layers trains a sentence-transformers directory (safetensors); {} is not one", dir.display());
    }
    let out_dir = a.head_out.as_ref().map(|h| h.with_file_name(format!("{}.encoder", h.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())));
    if let Some(d) = out_dir.as_ref().filter(|d| d.exists()) {
        bail!("{} exists: remove it or write the head elsewhere", d.display());
    }
    let enc = load_encoder(model, None, pool, global.quiet)?;
    let max_len = a.max_length.min(enc.max_len);
    let train = token_examples(&a.data, &labels, &enc, max_len)?;
    let eval = a.eval_data.as_deref().map(|p| token_examples(p, &labels, &enc, max_len)).transpose()?.unwrap_or_default();
    let bert = smelt_models::backward::BertTrain::from_dir(&dir)?;
    let head = match &a.init_head {
        None => smelt_federated::tuned::zero_head(&labels, enc.dim(), a.l2),
        Some(p) => {
            let h = super::classify::read_head(p)?;
            if h.labels != labels || h.dim != enc.dim() {
                bail!("--init-head {}: a head for {} dims and labels {}, but this federation has {} dims and --labels {}", p.display(), h.dim, h.labels.join(","), enc.dim(), labels.join(","));
            }
            h
        }
    };
    let obj = EncoderClassifier::new(bert, &head, train, eval, a.train_layers, pool)?;
    let local = LocalTraining { lr: a.lr.unwrap_or(5e-5), threads: global.n_threads() };
    let mut task = EncoderLayersTask::encoder_layers(obj, a.train_layers, local);
    let summary = join(&mut task, opts, global.quiet)?;
    if let (Some(path), Some(out_dir)) = (&a.head_out, &out_dir) {
        let c = task.inner();
        let mut tuned = c.head(&head);
        tuned.encoder = out_dir.display().to_string();
        tuned.train_examples = c.train.len();
        tuned.iterations = fits(&summary) as usize;
        tuned.final_loss = summary.exchanges.iter().rev().filter(|x| x.kind == "fit").find_map(|x| x.loss).filter(|l| l.is_finite()).unwrap_or(0.0);
        smelt_compress::distill::write_encoder_student(&c.encoder(), &dir, out_dir)?;
        write_json(path, &tuned)?;
    }
    print_summary(&summary, client_privacy(a, opts, &summary), a.json)
}

fn lora(a: &FederatedClientArgs, global: &Global, pool: &ThreadPool, opts: &ClientOptions) -> Result<()> {
    use smelt_compress::finetune::Finetune;
    use smelt_models::backward::{LlamaTrain, LoraSpec};
    let model = a.model.as_deref().unwrap_or("smollm2-135m");
    let spec = LoraSpec { rank: a.lora_rank, alpha: a.lora_alpha.unwrap_or(a.lora_rank as f32), targets: a.lora_targets.clone() };
    spec.check()?;
    let path = crate::resolve_model(model, global.quiet)?;
    if path.is_dir() {
        bail!("{} is a sentence encoder: --task lora trains adapters over a GGUF decoder (use --task encoder-layers for encoders)", path.display());
    }
    let loaded = smelt_models::load(&path, smelt_models::LoadOptions::default()).with_context(|| format!("loading {}", path.display()))?;
    let (base, tok, template) = (&loaded.model, &loaded.tok, &loaded.template);
    if a.ctx > base.cfg.ctx_train {
        bail!("--ctx {}: give 2 to {} tokens (the model's trained context)", a.ctx, base.cfg.ctx_train);
    }
    let (train, mut val) = super::finetune::read_examples(&a.data, tok, template, a.ctx, a.eval_data.is_none())?;
    if let Some(v) = &a.eval_data {
        val = super::finetune::read_examples(v, tok, template, a.ctx, false)?.0;
    }
    // Every client draws the same A matrices; the server's first parameters replace them anyway.
    let mut rng = smelt_train::order::SplitMix64(0x10_4A);
    let adapters = LlamaTrain::lora(base, &spec, &mut || (2.0 * rng.unit() - 1.0) as f32)?;
    let obj = Finetune::new(adapters, train, val, pool)?;
    let mut task = LoraTask::lora(obj, LocalTraining { lr: a.lr.unwrap_or(1e-3), threads: global.n_threads() })?;
    let summary = join(&mut task, opts, global.quiet)?;
    if let Some(out) = &a.adapter_out {
        let adapter = task.inner().model.adapter(spec.alpha)?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        adapter.save(out, name.as_deref()).with_context(|| format!("writing {}", out.display()))?;
    }
    print_summary(&summary, client_privacy(a, opts, &summary), a.json)
}

fn print_summary(s: &Summary, dp: Option<serde_json::Value>, as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&json!({"summary": s, "privacy": dp}))?)?;
        return Ok(());
    }
    let fits: Vec<_> = s.exchanges.iter().filter(|x| x.kind == "fit" && x.refused.is_none()).collect();
    let refused = s.exchanges.iter().filter(|x| x.refused.is_some()).count();
    let (bin, bout): (usize, usize) = s.exchanges.iter().fold((0, 0), |(i, o), x| (i + x.bytes_in, o + x.bytes_out));
    writeln!(out, "{}: {} fits, {} evaluations, {} refused, {} connection(s)", s.ended, fits.len(), s.exchanges.iter().filter(|x| x.kind == "evaluate").count(), refused, s.connections)?;
    if !fits.is_empty() {
        let cpu = fits.iter().map(|x| x.process_cpu_seconds).sum::<f64>() / fits.len() as f64;
        writeln!(out, "per fit: {:.0} bytes in, {:.0} out, {cpu:.3} CPU s", fits.iter().map(|x| x.bytes_in).sum::<usize>() as f64 / fits.len() as f64, fits.iter().map(|x| x.bytes_out).sum::<usize>() as f64 / fits.len() as f64)?;
    }
    writeln!(out, "total: {bin} bytes in, {bout} bytes out")?;
    if let Some(e) = s.exchanges.iter().rev().find(|x| x.kind == "evaluate" && x.refused.is_none()) {
        let acc = e.metrics.get("accuracy").copied().unwrap_or(f64::NAN);
        writeln!(out, "last evaluation (round {}): loss {:.4}, accuracy {acc:.4} on {} examples", e.round, e.loss.unwrap_or(f64::NAN), e.num_examples)?;
    }
    if let Some(d) = dp {
        match d["epsilon"].as_f64() {
            Some(eps) => writeln!(out, "privacy ({}-level): epsilon {eps:.3} at delta {} over {} updates (clip {}, noise multiplier {})", d["unit"].as_str().unwrap_or(""), d["delta"], d["updates_sent"], d["clip"], d["noise_multiplier"])?,
            None => writeln!(out, "privacy: clipped to {} but not noised: no epsilon (add --dp-noise)", d["clip"])?,
        }
    }
    Ok(())
}
