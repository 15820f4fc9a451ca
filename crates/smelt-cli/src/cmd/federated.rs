//! `smelt federated`: `client` (in `federated_client.rs`) joins a Flower server;
//! `simulate` runs a whole federation on loopback.

use std::io::Write;

use anyhow::{bail, Context, Result};
use smelt_federated::head::Examples;
use smelt_federated::privacy::{self, UpdatePrivacy};

use super::classify::{embed, labels_of, load_encoder, read_labelled};
use crate::cli::{FederatedArgs, FederatedCommand, FederatedSimulateArgs, Global};

pub fn run(a: &FederatedArgs, global: &Global) -> Result<()> {
    match &a.command {
        FederatedCommand::Client(c) => super::federated_client::client(c, global),
        FederatedCommand::Simulate(s) => simulate(s, global),
    }
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
        bucket: a.bucket,
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
