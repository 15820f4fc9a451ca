//! `smelt federated simulate`: a real Flower server (Python, `scripts/flower_server.py`) and N
//! smelt clients on loopback, each with its own slice of the data, against the same model trained
//! centrally and by each client alone.
//!
//! The data is split across clients IID (a seeded shuffle dealt round-robin) or non-IID by
//! label: for each label `c`, proportions `p_c ~ Dirichlet(alpha, ..., alpha)` over the clients
//! decide how many of its examples each client gets (Hsu et al. 2019); small `alpha` gives each
//! client few labels. Every client evaluates on the whole test split, so the server's
//! distributed accuracy is the global model's test accuracy.
//!
//! Baselines with the same model, batch size, step and number of epochs (`rounds x
//! local_epochs`): **centralized** (all training data in one place) and **local-only** (each
//! client alone; the mean over clients is reported). Attackers (`malicious`) flip their labels
//! (`c -> C - 1 - c`) or scale their update (`w0 + s (w - w0)`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use smelt_train::order::SplitMix64;

use crate::client::{self, ClientOptions, Summary};
use crate::config::FitConfig;
use crate::head::{DpSgd, Examples, HeadTask};
use crate::npy::Tensor;
use crate::privacy::{self, UpdatePrivacy};
use crate::trainable::{Outcome, Trainable};
use crate::FedError;

/// The Flower server script, written next to the run when it starts.
pub const SERVER_SCRIPT: &str = include_str!("../../../scripts/flower_server.py");
/// The Flower release the server runs.
pub const FLWR: &str = "flwr==1.41.0";

/// How the training data is dealt to clients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Split {
    Iid,
    Dirichlet(f64),
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Split, String> {
        match s.split_once(':') {
            None if s == "iid" => Ok(Split::Iid),
            Some(("dirichlet", a)) => match a.parse::<f64>() {
                Ok(a) if a.is_finite() && a > 0.0 && a <= 1e6 => Ok(Split::Dirichlet(a)),
                _ => Err(format!("dirichlet:ALPHA needs a number in (0, 1e6], not {a:?}")),
            },
            _ => Err(format!("{s:?}: use iid or dirichlet:ALPHA (e.g. dirichlet:0.5)")),
        }
    }
}

/// What attacking clients do.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Attack {
    /// Train on labels `C - 1 - c`.
    LabelFlip,
    /// Send `w0 + s (w - w0)`.
    Scale(f64),
}

impl std::str::FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Attack, String> {
        match s.split_once(':') {
            None if s == "label-flip" => Ok(Attack::LabelFlip),
            Some(("scale", f)) => f.parse::<f64>().ok().filter(|f| f.is_finite() && f.abs() <= 1e6).map(Attack::Scale).ok_or_else(|| format!("scale:FACTOR needs a finite number, not {f:?}")),
            _ => Err(format!("{s:?}: use label-flip or scale:FACTOR")),
        }
    }
}

/// How much DP-SGD noise: a multiplier, or the smallest one that keeps each client within an
/// epsilon over the whole run (each client's own, from its sampling rate and steps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Noise {
    Multiplier(f64),
    Epsilon(f64),
}

/// A simulation's settings.
#[derive(Clone, Debug, Serialize)]
pub struct SimOptions {
    pub clients: usize,
    pub rounds: usize,
    pub local_epochs: usize,
    pub batch_size: usize,
    /// Step size (default: the head's safe step).
    pub lr: Option<f64>,
    pub l2: f64,
    pub split: Split,
    pub seed: u64,
    /// Flower strategy: fedavg, fedprox, fedmedian, trimmed, krum.
    pub strategy: String,
    pub proximal_mu: f64,
    /// Multi-Krum: how many best-scored updates Krum averages (0: plain Krum keeps one).
    pub krum_keep: usize,
    /// Bucketing (Karimireddy, He and Jaggi 2022): the server averages the shuffled updates in
    /// groups of this many before the robust strategy sees them (0 or 1: off).
    pub bucket: usize,
    /// The first `n` clients attack.
    pub malicious: Option<(usize, Attack)>,
    /// Client-level privacy: each update clipped and noised before it leaves.
    pub privacy: Option<UpdatePrivacy>,
    /// Example-level privacy: DP-SGD in every client's local training.
    pub dp_sgd: Option<(f64, Noise)>,
    pub delta: f64,
    /// Python with flwr.
    #[serde(skip)]
    pub python: PathBuf,
    /// Where the server script and its record go.
    #[serde(skip)]
    pub work_dir: PathBuf,
}

/// One round of the three curves (test split).
#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub federated_accuracy: Option<f64>,
    pub federated_loss: Option<f64>,
    pub centralized_accuracy: f64,
    pub centralized_loss: f64,
    pub local_only_accuracy: f64,
    pub local_only_loss: f64,
    /// Mean over clients of the bytes a fit moved (instruction in + answer out).
    pub fit_bytes_per_client: f64,
    /// Mean over clients of a fit's CPU seconds.
    pub fit_cpu_seconds_per_client: f64,
}

/// What a simulation measured.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub settings: SimOptions,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub test_examples: usize,
    /// Examples per label for each client.
    pub client_label_counts: Vec<Vec<usize>>,
    pub rounds: Vec<RoundRow>,
    /// Each client's test accuracy when trained alone for the whole run.
    pub local_only_final: Vec<f64>,
    /// The largest epsilon (at `settings.delta`) of any client over the run, when privacy is on:
    /// client-level for update privacy, example-level for DP-SGD.
    pub epsilon: Option<f64>,
    /// Each client's DP-SGD noise multiplier.
    pub noise_multipliers: Vec<f64>,
    /// Fits the server counted as failures, over the run.
    pub failures: usize,
    pub server_seconds: f64,
}

impl SimReport {
    pub fn last(&self) -> Option<&RoundRow> {
        self.rounds.last()
    }
}

/// A Gamma(shape, 1) draw (Marsaglia & Tsang 2000; `shape < 1` through `Gamma(shape + 1) U^(1/shape)`).
fn gamma(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.unit();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.unit();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Deals example indices (labels `y` over `classes`) to `clients`; every client gets at least
/// `min_size` examples (a Dirichlet draw that leaves one with fewer is redrawn, up to 1000 times).
pub fn split(y: &[usize], classes: usize, clients: usize, how: Split, seed: u64, min_size: usize) -> Result<Vec<Vec<usize>>, FedError> {
    if clients == 0 || y.len() < clients * min_size.max(1) {
        return Err(FedError::Data(format!("{} examples cannot give {clients} clients {} each", y.len(), min_size.max(1))));
    }
    let mut rng = SplitMix64(seed ^ 0x5EED_5911_7000_0001);
    let mut order: Vec<usize> = (0..y.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let alpha = match how {
        Split::Iid => {
            let mut parts = vec![Vec::new(); clients];
            for (k, &i) in order.iter().enumerate() {
                parts[k % clients].push(i);
            }
            return Ok(parts);
        }
        Split::Dirichlet(a) => a,
    };
    for _ in 0..1000 {
        let mut parts = vec![Vec::new(); clients];
        for c in 0..classes {
            let members: Vec<usize> = order.iter().copied().filter(|&i| y[i] == c).collect();
            let g: Vec<f64> = (0..clients).map(|_| gamma(&mut rng, alpha)).collect();
            let total: f64 = g.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            // Cumulative proportions -> cut points in this label's examples.
            let mut acc = 0.0;
            let mut start = 0;
            for (k, gk) in g.iter().enumerate() {
                acc += gk / total;
                let end = if k + 1 == clients { members.len() } else { ((acc * members.len() as f64).round() as usize).min(members.len()) };
                parts[k].extend_from_slice(&members[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            return Ok(parts);
        }
    }
    Err(FedError::Data(format!("no Dirichlet({alpha}) split in 1000 draws gives each of {clients} clients {min_size} examples: use fewer clients or a larger alpha")))
}

fn subset(e: &Examples, idx: &[usize]) -> Examples {
    Examples { x: idx.iter().map(|&i| e.x[i].clone()).collect(), y: idx.iter().map(|&i| e.y[i]).collect() }
}

/// What a simulated client's thread returns: its run, and its DP-SGD epsilon and noise.
struct ClientEnd {
    summary: Summary,
    epsilon: Option<f64>,
    sigma: f64,
}

/// A client that scales its update by `factor` before sending it.
struct Scaled {
    inner: HeadTask,
    factor: f64,
    start: Vec<Tensor>,
}

impl Trainable for Scaled {
    fn describe(&self) -> String {
        format!("{} (attacker: update x{})", self.inner.describe(), self.factor)
    }
    fn shapes(&self) -> Vec<Vec<usize>> {
        self.inner.shapes()
    }
    fn get(&self) -> Vec<Tensor> {
        let mut p = self.inner.get();
        for (t, s) in p.iter_mut().zip(&self.start) {
            for (w, w0) in t.data.iter_mut().zip(&s.data) {
                *w = (*w0 as f64 + self.factor * (*w - w0) as f64) as f32;
            }
        }
        p
    }
    fn set(&mut self, params: &[Tensor]) {
        self.start = params.to_vec();
        self.inner.set(params);
    }
    fn fit(&mut self, cfg: &FitConfig, seed: u64) -> Result<Outcome, FedError> {
        self.inner.fit(cfg, seed)
    }
    fn epsilon(&self, delta: f64) -> Option<f64> {
        self.inner.epsilon(delta)
    }
    fn evaluate(&self) -> Result<Outcome, FedError> {
        self.inner.evaluate()
    }
}

/// Accuracy and loss curves of one model trained alone on `train` for `rounds` x `epochs`
/// epochs, evaluated on `test` after each round's epochs.
fn alone(labels: &[String], dim: usize, train: Examples, test: &Examples, opts: &SimOptions, seed: u64) -> Result<Vec<(f64, f64)>, FedError> {
    let mut t = HeadTask::new(labels.to_vec(), dim, train, None, opts.l2)?;
    let cfg = FitConfig { epochs: opts.local_epochs, batch_size: opts.batch_size, lr: opts.lr, proximal_mu: 0.0, round: None };
    (0..opts.rounds)
        .map(|r| {
            t.fit(&cfg, seed.wrapping_add(r as u64 * 0x9E37_79B9))?;
            let (loss, acc) = t.score(test);
            Ok((acc, loss))
        })
        .collect()
}

/// Python with flwr: `explicit`, else `$SMELT_FLOWER_PYTHON`, else `home/flwr-venv` (created
/// with `python3 -m venv` and `pip install flwr==1.41.0` when missing).
pub fn flower_python(explicit: Option<&Path>, home: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf, FedError> {
    let has_flwr = |py: &Path| Command::new(py).args(["-c", "import flwr, numpy"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if let Some(p) = explicit.map(Path::to_path_buf).or_else(|| std::env::var_os("SMELT_FLOWER_PYTHON").map(PathBuf::from)) {
        return if has_flwr(&p) { Ok(p) } else { Err(FedError::Settings(format!("{} cannot import flwr: install {FLWR} there, or leave --python out to let smelt make a venv", p.display()))) };
    }
    let venv = home.join("flwr-venv");
    let py = venv.join("bin/python");
    if has_flwr(&py) {
        return Ok(py);
    }
    log(&format!("installing {FLWR} into {} (once)", venv.display()));
    let run = |cmd: &mut Command, what: &str| -> Result<(), FedError> {
        let o = cmd.output().map_err(|e| FedError::Settings(format!("{what}: {e}")))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(FedError::Settings(format!("{what} failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""))))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    run(Command::new(&py).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", FLWR]), "pip install flwr")?;
    Ok(py)
}

/// Runs the simulation: the baselines, then the server and the clients. `log` gets progress lines.
pub fn simulate(labels: &[String], train: &Examples, test: &Examples, opts: &SimOptions, log: &mut (dyn FnMut(&str) + Send)) -> Result<SimReport, FedError> {
    let dim = train.x.first().map_or(0, Vec::len);
    let classes = labels.len();
    if opts.rounds == 0 || opts.local_epochs == 0 || opts.batch_size == 0 {
        return Err(FedError::Settings("rounds, local epochs and batch size must be at least 1".into()));
    }
    if test.x.is_empty() {
        return Err(FedError::Data("the test split holds no examples".into()));
    }
    let parts = split(&train.y, classes, opts.clients, opts.split, opts.seed, 2)?;
    let attackers = opts.malicious.map_or(0, |(n, _)| n.min(opts.clients));
    let client_label_counts: Vec<Vec<usize>> = parts.iter().map(|p| (0..classes).map(|c| p.iter().filter(|&&i| train.y[i] == c).count()).collect()).collect();

    log("centralized baseline");
    let central = alone(labels, dim, train.clone(), test, opts, opts.seed)?;
    log("local-only baselines");
    let mut local: Vec<Vec<(f64, f64)>> = Vec::with_capacity(opts.clients);
    for (k, p) in parts.iter().enumerate() {
        local.push(alone(labels, dim, subset(train, p), test, opts, opts.seed.wrapping_add(k as u64 + 1))?);
    }

    // The server.
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| FedError::Io { path: opts.work_dir.display().to_string(), source: e })?;
    let script = opts.work_dir.join("flower_server.py");
    let record = opts.work_dir.join("server-record.json");
    std::fs::write(&script, SERVER_SCRIPT).map_err(|e| FedError::Io { path: script.display().to_string(), source: e })?;
    std::fs::remove_file(&record).ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| FedError::Settings(format!("no free port on 127.0.0.1: {e}")))?.port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&opts.python);
    cmd.arg(&script).args(["--address", &addr, "--clients", &opts.clients.to_string(), "--rounds", &opts.rounds.to_string()]);
    cmd.args(["--local-epochs", &opts.local_epochs.to_string(), "--batch-size", &opts.batch_size.to_string(), "--strategy", &opts.strategy]);
    cmd.args(["--proximal-mu", &opts.proximal_mu.to_string(), "--malicious", &attackers.to_string(), "--krum-keep", &opts.krum_keep.to_string(), "--bucket", &opts.bucket.to_string()]);
    if let Some(lr) = opts.lr {
        cmd.args(["--extra-config", &format!("{{\"lr\": {lr}}}")]);
    }
    cmd.arg("--out").arg(&record).stdout(Stdio::null()).stderr(Stdio::piped());
    log(&format!("Flower server ({}) on {addr}, {} clients, {} rounds", opts.strategy, opts.clients, opts.rounds));
    let started = Instant::now();
    let mut server = cmd.spawn().map_err(|e| FedError::Settings(format!("starting {}: {e}", opts.python.display())))?;
    let stderr = server.stderr.take();
    let server_log = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            std::io::Read::read_to_string(&mut e, &mut s).ok();
        }
        s
    });

    // The clients, each on its own thread and runtime, over loopback.
    let handles: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut data = subset(train, p);
            let attack = if k < attackers { opts.malicious.map(|m| m.1) } else { None };
            if attack == Some(Attack::LabelFlip) {
                data.y.iter_mut().for_each(|c| *c = classes - 1 - *c);
            }
            let task = HeadTask::new(labels.to_vec(), dim, data, Some(test.clone()), opts.l2).and_then(|t| {
                let Some((clip, noise)) = opts.dp_sgd else { return Ok(t) };
                let q = t.sampling_rate(opts.batch_size);
                let steps = (opts.rounds * opts.local_epochs * ((1.0 / q).round() as usize).max(1)) as u64;
                let sigma = match noise {
                    Noise::Multiplier(s) => s,
                    Noise::Epsilon(e) => privacy::noise_for(q, steps, opts.delta, e).ok_or_else(|| FedError::Settings(format!("no noise multiplier up to 1000 keeps epsilon {e} over {steps} steps")))?,
                };
                Ok(t.with_dp_sgd(Some(DpSgd { clip, noise_multiplier: sigma })))
            });
            let mut copts = ClientOptions::new(addr.clone());
            copts.seed = opts.seed.wrapping_add(1000 + k as u64);
            copts.privacy = opts.privacy;
            copts.connect_for = Duration::from_secs(120);
            let delta = opts.delta;
            std::thread::spawn(move || -> Result<ClientEnd, FedError> {
                let mut quiet = |_: &str| {};
                let mut task = task?;
                let sigma = task.dp_sgd().map_or(0.0, |d| d.noise_multiplier);
                let summary = match attack {
                    Some(Attack::Scale(factor)) => {
                        let mut s = Scaled { inner: task, factor, start: Vec::new() };
                        let r = client::run_blocking(&mut s, &copts, &mut quiet);
                        task = s.inner;
                        r
                    }
                    _ => client::run_blocking(&mut task, &copts, &mut quiet),
                }?;
                Ok(ClientEnd { summary, epsilon: task.epsilon(delta), sigma })
            })
        })
        .collect();
    let summaries: Vec<Result<ClientEnd, FedError>> = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(FedError::Stream("a client thread panicked".into())))).collect();
    let status = server.wait().map_err(|e| FedError::Settings(format!("waiting for the server: {e}")))?;
    let server_err = server_log.join().unwrap_or_default();
    if !status.success() {
        return Err(FedError::Settings(format!("the Flower server failed ({status}): {}", server_err.lines().rev().take(5).collect::<Vec<_>>().join(" | "))));
    }
    let done: Vec<ClientEnd> = summaries.into_iter().collect::<Result<_, _>>()?;
    let sgd_epsilon = done.iter().filter_map(|d| d.epsilon).fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))));
    let noise_multipliers: Vec<f64> = done.iter().map(|d| d.sigma).collect();
    let summaries: Vec<Summary> = done.into_iter().map(|d| d.summary).collect();
    let server_seconds = started.elapsed().as_secs_f64();
    let rec: serde_json::Value = std::fs::read_to_string(&record).ok().and_then(|t| serde_json::from_str(&t).ok()).ok_or_else(|| FedError::Settings(format!("the server wrote no record at {}", record.display())))?;

    let series = |key: &str| -> Vec<Option<f64>> {
        let mut v = vec![None; opts.rounds];
        let pts = if key == "loss" { &rec["history"]["losses_distributed"] } else { &rec["history"]["metrics_distributed"][key] };
        for p in pts.as_array().into_iter().flatten() {
            if let (Some(r), Some(x)) = (p[0].as_u64(), p[1].as_f64()) {
                if (1..=opts.rounds as u64).contains(&r) {
                    v[r as usize - 1] = Some(x);
                }
            }
        }
        v
    };
    let (fed_acc, fed_loss) = (series("accuracy"), series("loss"));
    let failures = rec["rounds"].as_array().map_or(0, |rs| rs.iter().map(|r| r["failures"].as_u64().unwrap_or(0) as usize).sum());
    let per_round = |r: usize, f: &dyn Fn(&client::Exchange) -> f64| -> f64 {
        let xs: Vec<f64> = summaries.iter().filter_map(|s| s.exchanges.iter().filter(|x| x.kind == "fit").nth(r).map(f)).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    };
    let rounds = (0..opts.rounds)
        .map(|r| RoundRow {
            round: r + 1,
            federated_accuracy: fed_acc[r],
            federated_loss: fed_loss[r],
            centralized_accuracy: central[r].0,
            centralized_loss: central[r].1,
            local_only_accuracy: local.iter().map(|c| c[r].0).sum::<f64>() / local.len() as f64,
            local_only_loss: local.iter().map(|c| c[r].1).sum::<f64>() / local.len() as f64,
            fit_bytes_per_client: per_round(r, &|x| (x.bytes_in + x.bytes_out) as f64),
            fit_cpu_seconds_per_client: per_round(r, &|x| x.cpu_seconds),
        })
        .collect();
    let epsilon = opts.privacy.map(|p| privacy::epsilon(1.0, p.noise_multiplier, opts.rounds as u64, opts.delta).0).or(sgd_epsilon);
    Ok(SimReport {
        settings: opts.clone(),
        labels: labels.to_vec(),
        train_examples: train.x.len(),
        test_examples: test.x.len(),
        client_label_counts,
        rounds,
        local_only_final: local.iter().map(|c| c[opts.rounds - 1].0).collect(),
        epsilon,
        noise_multipliers: if opts.dp_sgd.is_some() { noise_multipliers } else { Vec::new() },
        failures,
        server_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_every_example_once() {
        let y: Vec<usize> = (0..500).map(|i| (i * 7) % 5).collect();
        for how in [Split::Iid, Split::Dirichlet(0.5), Split::Dirichlet(100.0)] {
            let parts = split(&y, 5, 10, how, 3, 2).unwrap();
            let mut all: Vec<usize> = parts.concat();
            all.sort();
            assert_eq!(all, (0..500).collect::<Vec<_>>(), "{how:?}");
            assert!(parts.iter().all(|p| p.len() >= 2));
        }
    }

    /// Small alpha concentrates each client on few labels; a large one approaches IID.
    #[test]
    fn dirichlet_alpha_sets_how_skewed_clients_are() {
        let y: Vec<usize> = (0..2000).map(|i| i % 5).collect();
        let skew = |alpha: f64| {
            let parts = split(&y, 5, 10, Split::Dirichlet(alpha), 11, 2).unwrap();
            // Mean share of a client's largest label.
            parts.iter().map(|p| (0..5).map(|c| p.iter().filter(|&&i| y[i] == c).count()).max().unwrap() as f64 / p.len() as f64).sum::<f64>() / 10.0
        };
        let (low, high) = (skew(0.1), skew(1000.0));
        assert!(low > 0.6 && high < 0.3, "alpha 0.1: {low}, alpha 1000: {high}");
    }

    /// The Gamma sampler's mean and variance (both `shape`) for shapes below and above 1.
    #[test]
    fn gamma_draws_have_the_right_moments() {
        let mut rng = SplitMix64(5);
        for shape in [0.3, 1.0, 4.5] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| gamma(&mut rng, shape)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((mean - shape).abs() < 0.02 * shape.max(1.0) && (var - shape).abs() < 0.05 * shape.max(1.0), "shape {shape}: mean {mean}, var {var}");
        }
    }

    #[test]
    fn split_and_attack_names_parse() {
        assert_eq!("dirichlet:0.5".parse::<Split>(), Ok(Split::Dirichlet(0.5)));
        assert_eq!("iid".parse::<Split>(), Ok(Split::Iid));
        assert!("dirichlet:-1".parse::<Split>().is_err() && "zipf".parse::<Split>().is_err());
        assert_eq!("scale:10".parse::<Attack>(), Ok(Attack::Scale(10.0)));
        assert_eq!("label-flip".parse::<Attack>(), Ok(Attack::LabelFlip));
        assert!("scale:inf".parse::<Attack>().is_err());
    }
}
