//! `smelt federated client`: a Flower client training a classification head on local data;
//! `smelt federated simulate`: a whole federation on loopback.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_federated::client::{self, ClientOptions, Summary};
use smelt_federated::head::{DpSgd, Examples, HeadTask};
use smelt_federated::privacy::{self, UpdatePrivacy};

use super::classify::{embed, labels_of, load_encoder, read_labelled};
use crate::cli::{FederatedArgs, FederatedClientArgs, FederatedCommand, FederatedSimulateArgs, Global};

pub fn run(a: &FederatedArgs, global: &Global) -> Result<()> {
    match &a.command {
        FederatedCommand::Client(c) => client(c, global),
        FederatedCommand::Simulate(s) => simulate(s, global),
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
    let example_dp = (a.dp_unit == "example").then_some(a.dp_clip).flatten().map(|clip| DpSgd { clip, noise_multiplier: a.dp_noise });
    let mut task = HeadTask::new(labels, enc.dim(), train, eval, a.l2 as f64)?.with_dp_sgd(example_dp);

    let mut opts = ClientOptions::new(a.server.clone());
    opts.connect_for = std::time::Duration::from_secs_f64(a.connect_for);
    opts.max_message_bytes = a.max_message_mb << 20;
    opts.max_norm = a.max_norm;
    opts.seed = a.seed;
    opts.save_sent = a.save_sent.clone();
    opts.root_cert = a.root_cert.as_ref().map(|p| std::fs::read(p).with_context(|| format!("reading --root-cert {}", p.display()))).transpose()?;
    opts.tls_domain = a.tls_domain.clone();
    opts.privacy = (a.dp_unit == "client").then_some(a.dp_clip).flatten().map(|clip| UpdatePrivacy { clip, noise_multiplier: a.dp_noise });
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
    let finite = |e: f64| if e.is_finite() { json!(e) } else { json!(null) };
    let dp = match (opts.privacy, example_dp) {
        (Some(p), _) => {
            let (eps, _) = privacy::epsilon(a.dp_sample_rate, p.noise_multiplier, fits, a.dp_delta);
            Some(json!({"unit": "client", "clip": p.clip, "noise_multiplier": p.noise_multiplier, "delta": a.dp_delta, "sample_rate": a.dp_sample_rate, "updates_sent": fits, "epsilon": finite(eps)}))
        }
        (None, Some(d)) => {
            let eps = smelt_federated::trainable::Trainable::epsilon(&task, a.dp_delta).unwrap_or(f64::INFINITY);
            Some(json!({"unit": "example", "clip": d.clip, "noise_multiplier": d.noise_multiplier, "delta": a.dp_delta, "updates_sent": fits, "epsilon": finite(eps)}))
        }
        (None, None) => None,
    };
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
            Some(eps) => writeln!(out, "privacy ({}-level): epsilon {eps:.3} at delta {} over {} updates (clip {}, noise multiplier {})", d["unit"].as_str().unwrap_or(""), d["delta"], d["updates_sent"], d["clip"], d["noise_multiplier"])?,
            None => writeln!(out, "privacy: clipped to {} but not noised: no epsilon (add --dp-noise)", d["clip"])?,
        }
    }
    Ok(())
}

fn simulate(a: &FederatedSimulateArgs, global: &Global) -> Result<()> {
    use smelt_federated::simulate::{self, Attack, Noise, SimOptions};
    for out in [&a.output].into_iter().flatten() {
        smelt_formats::fsutil::check_output(out).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let malicious = match &a.malicious {
        None => None,
        Some(m) => {
            let (n, attack) = m.split_once(':').with_context(|| format!("--malicious {m:?}: use N:label-flip or N:scale:FACTOR"))?;
            let n: usize = n.parse().with_context(|| format!("--malicious {m:?}: {n:?} is not a client count"))?;
            let attack: Attack = attack.parse().map_err(anyhow::Error::msg)?;
            if n >= a.clients {
                bail!("--malicious {n}: at least one of the {} clients must be honest", a.clients);
            }
            Some((n, attack))
        }
    };
    let mut data = read_labelled(&a.data)?;
    let test = match &a.test {
        Some(p) => read_labelled(p)?,
        None => {
            // A seeded shuffle, the last share held out.
            let mut rng = smelt_train::order::SplitMix64(a.seed ^ 0x7E57);
            for i in (1..data.len()).rev() {
                data.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let keep = data.len() - ((data.len() as f64 * a.test_share).round() as usize).max(1).min(data.len().saturating_sub(1));
            data.split_off(keep)
        }
    };
    let labels = labels_of(&data);
    if labels.len() < 2 {
        bail!("{}: a classifier needs at least two labels", a.data.display());
    }
    if let Some(e) = test.iter().find(|e| !labels.contains(&e.label)) {
        bail!("the test data has the label {:?}, which no training example has", e.label);
    }
    let pool = global.pool();
    let enc = load_encoder(&a.model, None, &pool, global.quiet)?;
    let embed_set = |set: &[smelt_formats::texts::Labelled]| -> Result<Examples> {
        let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
        Ok(Examples { x: embed(&enc, &pool, &texts, global.quiet)?, y: set.iter().map(|e| labels.iter().position(|l| *l == e.label).unwrap_or(0)).collect() })
    };
    let (train, test) = (embed_set(&data)?, embed_set(&test)?);
    let mut log = |line: &str| {
        if !global.quiet {
            eprintln!("smelt federated: {line}");
        }
    };
    let python = simulate::flower_python(a.python.as_deref(), &smelt_assets::smelt_home(), &mut log)?;
    let client_level = a.dp_unit == "client";
    let noise = match (a.dp_noise, a.dp_epsilon) {
        (Some(s), _) => Noise::Multiplier(s),
        (None, Some(eps)) if client_level => Noise::Multiplier(privacy::noise_for(1.0, a.rounds as u64, a.dp_delta, eps).with_context(|| format!("no noise multiplier up to 1000 reaches epsilon {eps} over {} rounds", a.rounds))?),
        (None, Some(eps)) => Noise::Epsilon(eps),
        (None, None) => Noise::Multiplier(0.0),
    };
    let work_dir = std::env::temp_dir().join(format!("smelt-federated-{}", std::process::id()));
    let opts = SimOptions {
        clients: a.clients,
        rounds: a.rounds,
        local_epochs: a.local_epochs,
        batch_size: a.batch_size,
        lr: a.lr.map(f64::from),
        l2: a.l2 as f64,
        split: a.split,
        seed: a.seed,
        strategy: a.strategy.clone(),
        proximal_mu: if a.strategy == "fedprox" { a.proximal_mu } else { 0.0 },
        krum_keep: a.krum_keep,
        malicious,
        privacy: a.dp_clip.filter(|_| client_level).map(|clip| UpdatePrivacy { clip, noise_multiplier: if let Noise::Multiplier(s) = noise { s } else { 0.0 } }),
        dp_sgd: a.dp_clip.filter(|_| !client_level).map(|clip| (clip, noise)),
        delta: a.dp_delta,
        python,
        work_dir: work_dir.clone(),
    };
    let t0 = std::time::Instant::now();
    let report = simulate::simulate(&labels, &train, &test, &opts, &mut log);
    std::fs::remove_dir_all(&work_dir).ok();
    let report = report?;
    log(&format!("done in {:.1} s", t0.elapsed().as_secs_f64()));
    let value = serde_json::to_value(&report)?;
    if let Some(path) = &a.output {
        let text = if path.extension().is_some_and(|e| e == "html") { simulation_html(&report) } else { serde_json::to_string_pretty(&value)? };
        smelt_formats::fsutil::write_atomic_io(path, |w| w.write_all(text.as_bytes())).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(out, "round  federated  centralized  local-only   bytes/client  CPU s/client")?;
    for r in &report.rounds {
        let f = r.federated_accuracy.map_or("-".to_string(), |x| format!("{x:.4}"));
        writeln!(out, "{:>5}  {f:>9}  {:>11.4}  {:>10.4}  {:>13.0}  {:>12.4}", r.round, r.centralized_accuracy, r.local_only_accuracy, r.fit_bytes_per_client, r.fit_cpu_seconds_per_client)?;
    }
    if let Some(last) = report.last() {
        let fed = last.federated_accuracy.unwrap_or(f64::NAN);
        writeln!(out, "test accuracy after {} rounds: federated {fed:.4}, centralized {:.4} ({:+.1} points), local-only mean {:.4} ({:+.1} points)", last.round, last.centralized_accuracy, 100.0 * (fed - last.centralized_accuracy), last.local_only_accuracy, 100.0 * (fed - last.local_only_accuracy))?;
    }
    if let (Some(eps), Some(p)) = (report.epsilon, &opts.privacy) {
        writeln!(out, "privacy (client-level): each update clipped to {} with noise multiplier {:.3}: epsilon {eps:.2} at delta {} over {} rounds", p.clip, p.noise_multiplier, opts.delta, opts.rounds)?;
    }
    if let (Some(eps), Some((clip, _))) = (report.epsilon, opts.dp_sgd) {
        let (lo, hi) = report.noise_multipliers.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &s| (l.min(s), h.max(s)));
        writeln!(out, "privacy (example-level, DP-SGD): gradients clipped to {clip}, noise multipliers {lo:.3}-{hi:.3}: epsilon at most {eps:.2} at delta {} over the run", opts.delta)?;
    }
    if report.failures > 0 {
        writeln!(out, "the server counted {} failed fits", report.failures)?;
    }
    Ok(())
}

fn simulation_html(r: &smelt_federated::simulate::SimReport) -> String {
    use smelt_eval::report::{curves_html, Plot};
    let s = &r.settings;
    let mut rows = vec![
        ("clients".to_string(), s.clients.to_string()),
        ("rounds x local epochs".to_string(), format!("{} x {}", s.rounds, s.local_epochs)),
        ("split".to_string(), format!("{:?}", s.split)),
        ("strategy".to_string(), s.strategy.clone()),
        ("examples".to_string(), format!("{} train, {} test, labels {}", r.train_examples, r.test_examples, r.labels.join(", "))),
    ];
    if let Some((n, a)) = s.malicious {
        rows.push(("attackers".to_string(), format!("{n} ({a:?})")));
    }
    if let (Some(p), Some(eps)) = (s.privacy, r.epsilon) {
        rows.push(("privacy (client-level)".to_string(), format!("clip {}, noise {:.3}, epsilon {eps:.2} at delta {}", p.clip, p.noise_multiplier, s.delta)));
    }
    if let (Some((clip, _)), Some(eps)) = (s.dp_sgd, r.epsilon) {
        rows.push(("privacy (example-level DP-SGD)".to_string(), format!("clip {clip}, epsilon at most {eps:.2} at delta {}", s.delta)));
    }
    if let Some(l) = r.last() {
        rows.push(("final test accuracy".to_string(), format!("federated {:.4}, centralized {:.4}, local-only mean {:.4}", l.federated_accuracy.unwrap_or(f64::NAN), l.centralized_accuracy, l.local_only_accuracy)));
        rows.push(("per client per round".to_string(), format!("{:.0} bytes, {:.4} CPU s", l.fit_bytes_per_client, l.fit_cpu_seconds_per_client)));
    }
    let curve = |f: &dyn Fn(&smelt_federated::simulate::RoundRow) -> Option<f64>| r.rounds.iter().filter_map(|x| f(x).map(|v| (x.round as f64, v))).collect::<Vec<_>>();
    let acc = vec![
        ("federated".to_string(), curve(&|x| x.federated_accuracy)),
        ("centralized".to_string(), curve(&|x| Some(x.centralized_accuracy))),
        ("local-only (mean)".to_string(), curve(&|x| Some(x.local_only_accuracy))),
    ];
    let loss = vec![
        ("federated".to_string(), curve(&|x| x.federated_loss)),
        ("centralized".to_string(), curve(&|x| Some(x.centralized_loss))),
        ("local-only (mean)".to_string(), curve(&|x| Some(x.local_only_loss))),
    ];
    curves_html(
        "Federated simulation",
        &rows,
        &[Plot { title: "Test accuracy", x_label: "round", y_label: "accuracy", series: acc, log_y: false }, Plot { title: "Test loss", x_label: "round", y_label: "loss", series: loss, log_y: true }],
    )
}
