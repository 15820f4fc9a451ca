//! `smelt federated client`: a Flower client training a classification head on local data.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_federated::client::{self, ClientOptions, Summary};
use smelt_federated::head::{Examples, HeadTask};
use smelt_federated::privacy::{self, UpdatePrivacy};

use super::classify::{embed, load_encoder, read_labelled};
use crate::cli::{FederatedArgs, FederatedClientArgs, FederatedCommand, Global};

pub fn run(a: &FederatedArgs, global: &Global) -> Result<()> {
    match &a.command {
        FederatedCommand::Client(c) => client(c, global),
    }
}

/// Embeds a labelled file, mapping its labels onto the federation's.
fn examples(path: &std::path::Path, labels: &[String], enc: &smelt_models::Encoder, pool: &smelt_kernels::pool::ThreadPool, quiet: bool) -> Result<Examples> {
    let data = read_labelled(path)?;
    if data.is_empty() {
        bail!("{} holds no examples: a client needs local data to train on", path.display());
    }
    let mut y = Vec::with_capacity(data.len());
    for (i, e) in data.iter().enumerate() {
        match labels.iter().position(|l| *l == e.label) {
            Some(k) => y.push(k),
            None => bail!("{} line {}: label {:?} is not one of --labels ({})", path.display(), i + 1, e.label, labels.join(",")),
        }
    }
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    Ok(Examples { x: embed(enc, pool, &texts, quiet)?, y })
}

fn client(a: &FederatedClientArgs, global: &Global) -> Result<()> {
    let mut labels = a.labels.clone();
    labels.iter_mut().for_each(|l| *l = l.trim().to_string());
    if labels.iter().any(String::is_empty) || labels.len() < 2 {
        bail!("--labels needs at least two non-empty labels, comma-separated");
    }
    if let Some(dup) = labels.iter().enumerate().find(|(i, l)| labels[..*i].contains(l)) {
        bail!("--labels names {:?} twice", dup.1);
    }
    for out in [&a.head_out].into_iter().flatten() {
        smelt_formats::fsutil::check_output(out).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if let Some(dir) = &a.save_sent {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let pool = global.pool();
    let enc = load_encoder(&a.model, None, &pool, global.quiet)?;
    let train = examples(&a.data, &labels, &enc, &pool, global.quiet)?;
    let eval = a.eval_data.as_deref().map(|p| examples(p, &labels, &enc, &pool, global.quiet)).transpose()?;
    let mut task = HeadTask::new(labels, enc.dim(), train, eval, a.l2 as f64)?;

    let mut opts = ClientOptions::new(a.server.clone());
    opts.connect_for = std::time::Duration::from_secs_f64(a.connect_for);
    opts.max_message_bytes = a.max_message_mb << 20;
    opts.max_norm = a.max_norm;
    opts.seed = a.seed;
    opts.save_sent = a.save_sent.clone();
    opts.privacy = a.dp_clip.map(|clip| UpdatePrivacy { clip, noise_multiplier: a.dp_noise });
    let quiet = global.quiet;
    if !quiet {
        eprintln!("smelt federated: {}", smelt_federated::trainable::Trainable::describe(&task));
    }
    let summary = client::run_blocking(&mut task, &opts, &mut |line: &str| {
        if !quiet {
            eprintln!("smelt federated: {line}");
        }
    })?;
    let fits = summary.exchanges.iter().filter(|x| x.kind == "fit" && x.refused.is_none()).count() as u64;
    let dp = opts.privacy.map(|p| {
        let (eps, order) = privacy::epsilon(a.dp_sample_rate, p.noise_multiplier, fits, a.dp_delta);
        json!({"clip": p.clip, "noise_multiplier": p.noise_multiplier, "delta": a.dp_delta, "sample_rate": a.dp_sample_rate, "updates_sent": fits, "epsilon": if eps.is_finite() { json!(eps) } else { json!(null) }, "rdp_order": order})
    });
    if let Some(path) = &a.head_out {
        let last_loss = summary.exchanges.iter().rev().find_map(|x| x.loss).unwrap_or(f64::NAN);
        let head = task.head(&a.model, false, fits as usize, last_loss);
        let text = serde_json::to_string_pretty(&head)?;
        smelt_formats::fsutil::write_atomic_io(path, |w| w.write_all(text.as_bytes())).with_context(|| format!("writing {}", path.display()))?;
    }
    print_summary(&summary, dp, a.json)
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
        let cpu = fits.iter().map(|x| x.cpu_seconds).sum::<f64>() / fits.len() as f64;
        writeln!(out, "per fit: {:.0} bytes in, {:.0} out, {cpu:.3} CPU s", fits.iter().map(|x| x.bytes_in).sum::<usize>() as f64 / fits.len() as f64, fits.iter().map(|x| x.bytes_out).sum::<usize>() as f64 / fits.len() as f64)?;
    }
    writeln!(out, "total: {bin} bytes in, {bout} bytes out")?;
    if let Some(e) = s.exchanges.iter().rev().find(|x| x.kind == "evaluate" && x.refused.is_none()) {
        let acc = e.metrics.get("accuracy").copied().unwrap_or(f64::NAN);
        writeln!(out, "last evaluation (round {}): loss {:.4}, accuracy {acc:.4} on {} examples", e.round, e.loss.unwrap_or(f64::NAN), e.num_examples)?;
    }
    if let Some(d) = dp {
        match d["epsilon"].as_f64() {
            Some(eps) => writeln!(out, "privacy: epsilon {eps:.3} at delta {} over {} updates (clip {}, noise multiplier {})", d["delta"], d["updates_sent"], d["clip"], d["noise_multiplier"])?,
            None => writeln!(out, "privacy: updates clipped to {} but not noised: no epsilon (add --dp-noise)", d["clip"])?,
        }
    }
    Ok(())
}
