//! `smelt eval` and `smelt compare`: quality of one or more models (against a reference when
//! given) in one pass over the data, then each model's speed, memory and energy in a child
//! process of its own, all gathered into one record and rendered.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use smelt_eval::efficiency::{decoder_speed, encoder_speed};
use smelt_eval::energy::{PowerModel, GRID_SOURCE};
use smelt_eval::record::{EnergySetup, Machine, ModelResult, Record};
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{Encoder, Int8Spec, Llama, LoadOptions, Tokenizer};

use super::eval_quality;
use crate::cli::{CompareArgs, EvalArgs, EvalOptions, Global, ReportFormat};

/// The built-in held-in text (see crates/smelt-eval/data/README.md).
pub const BUILTIN_TEXT: &str = include_str!("../../../smelt-eval/data/pride-and-prejudice-1-9.txt");
pub const BUILTIN_TEXT_NAME: &str = "Pride and Prejudice ch. 1-9 (built in)";

/// How a model is converted when loaded.
#[derive(Clone, Debug)]
pub enum Variant {
    Type(GgmlType),
    Int8(Int8Spec),
}

/// A MODEL argument resolved: the path, an optional variant, a display name.
#[derive(Clone, Debug)]
pub struct Spec {
    pub arg: String,
    pub path: PathBuf,
    pub variant: Option<Variant>,
    pub name: String,
    /// A LoRA adapter applied to the decoder.
    pub lora: Option<PathBuf>,
}

/// `PATH`, `NAME`, `PATH:TYPE` or `NAME:int8` (an existing path wins over splitting at `:`).
pub fn parse_spec(arg: &str, quiet: bool) -> Result<Spec> {
    let display = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string());
    if Path::new(arg).exists() {
        return Ok(Spec { arg: arg.into(), path: PathBuf::from(arg), variant: None, name: display(arg), lora: None });
    }
    let (base, variant) = match arg.rsplit_once(':') {
        Some((b, v)) if !b.is_empty() => {
            let variant = if v.eq_ignore_ascii_case("int8") {
                Variant::Int8("all".parse().map_err(|e| anyhow::anyhow!("{e}"))?)
            } else {
                Variant::Type(GgmlType::from_name(v).with_context(|| format!("{arg:?}: unknown variant {v:?} (a type such as f32, f16, q8_0, or int8 for encoders)"))?)
            };
            (b, Some(variant))
        }
        _ => (arg, None),
    };
    let path = crate::resolve_model(base, quiet)?;
    Ok(Spec { arg: arg.into(), path, variant, name: display(arg), lora: None })
}

/// A loaded model.
pub enum Loaded {
    Decoder { model: Box<Llama>, tok: Box<Tokenizer> },
    Encoder(Box<Encoder>),
}

pub fn load(spec: &Spec, pool: &ThreadPool) -> Result<Loaded> {
    let ctx = || format!("loading {}", spec.path.display());
    if super::bench_encoder::is_encoder(&spec.path) {
        let (ty, int8) = match &spec.variant {
            Some(Variant::Type(t)) => (Some(*t), None),
            Some(Variant::Int8(s)) => (None, Some(s)),
            None => (None, None),
        };
        let mut enc = Encoder::load(&spec.path, ty).with_context(ctx)?;
        if let Some(s) = int8 {
            enc.quantize_int8(pool, s, None)?;
        }
        return Ok(Loaded::Encoder(Box::new(enc)));
    }
    let weight_type = match &spec.variant {
        Some(Variant::Type(t)) => Some(*t),
        Some(Variant::Int8(_)) => bail!("{}: the int8 variant is for encoders; for decoders name a type (q8_0, f16 ...)", spec.arg),
        None => None,
    };
    let mut l = smelt_models::load(&spec.path, LoadOptions { weight_type }).with_context(ctx)?;
    if let Some(a) = &spec.lora {
        l.model.apply_lora(&smelt_models::lora::LoraAdapter::open(a)?, 1.0).with_context(|| format!("applying the adapter {}", a.display()))?;
    }
    Ok(Loaded::Decoder { model: Box::new(l.model), tok: Box::new(l.tok) })
}

/// Size, parameters and type of a loaded model.
pub fn describe(spec: &Spec, m: &Loaded) -> ModelResult {
    let file_bytes = if spec.variant.is_some() {
        None
    } else if spec.path.is_dir() {
        std::fs::metadata(spec.path.join("model.safetensors")).ok().map(|m| m.len())
    } else {
        std::fs::metadata(&spec.path).ok().map(|m| m.len())
    };
    let (kind, weight_type, weight_bytes, params) = match m {
        Loaded::Decoder { model, .. } => ("decoder", type_mix(model), model.weight_bytes() as u64, model.n_params()),
        Loaded::Encoder(e) => ("encoder", e.model.weight_type(), e.model.weight_bytes(), e.model.n_params()),
    };
    ModelResult {
        name: spec.name.clone(),
        path: spec.path.display().to_string(),
        kind: kind.into(),
        weight_type,
        file_bytes,
        weight_bytes,
        params,
        bits_per_weight: if params > 0 { 8.0 * weight_bytes as f64 / params as f64 } else { 0.0 },
        zero_fraction: match m {
            Loaded::Decoder { model, .. } => zero_fraction(model),
            Loaded::Encoder(_) => None,
        },
        ..Default::default()
    }
}

/// The fraction of the block matrices' weights that are exactly zero, read row by row.
fn zero_fraction(model: &Llama) -> Option<f64> {
    let (mut n, mut zeros) = (0u64, 0u64);
    let mut row = Vec::new();
    for l in &model.layers {
        for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
            row.resize(w.cols, 0.0);
            for r in 0..w.rows {
                w.row_f32(r, &mut row).ok()?;
                zeros += row.iter().filter(|&&v| v == 0.0).count() as u64;
            }
            n += (w.rows * w.cols) as u64;
        }
    }
    (n > 0).then(|| zeros as f64 / n as f64)
}

/// The weight matrices' types by share of parameters, largest first: `Q5_0+Q4_K` (K-quants
/// fall back to other types on rows whose length is not a multiple of 256).
pub(super) fn type_mix(model: &Llama) -> String {
    let mut by: Vec<(GgmlType, usize)> = Vec::new();
    let mut add = |l: &smelt_models::linear::Linear| match by.iter_mut().find(|(t, _)| *t == l.ty) {
        Some(e) => e.1 += l.rows * l.cols,
        None => by.push((l.ty, l.rows * l.cols)),
    };
    for l in &model.layers {
        [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].into_iter().for_each(&mut add);
    }
    by.sort_by_key(|e| std::cmp::Reverse(e.1));
    by.iter().map(|(t, _)| t.name()).collect::<Vec<_>>().join("+")
}

pub fn power(opts: &EvalOptions) -> PowerModel {
    PowerModel { watts_per_core: opts.watts_per_core, grid_g_per_kwh: opts.grid, ..Default::default() }
}

pub fn pool(global: &Global) -> ThreadPool {
    global.pool()
}

/// The text to score: --text or the built-in one.
pub fn text(opts: &EvalOptions) -> Result<(String, String)> {
    match &opts.text {
        Some(p) => Ok((super::read_utf8(p)?, p.display().to_string())),
        None => Ok((BUILTIN_TEXT.to_string(), BUILTIN_TEXT_NAME.to_string())),
    }
}

/// Speed, memory and energy of `m`, measured in this process (the child's side).
fn measure_here(m: &Loaded, pool: &ThreadPool, opts: &EvalOptions, r: &mut ModelResult) -> Result<()> {
    let (text, _) = text(opts)?;
    match m {
        Loaded::Decoder { model, tok } => {
            let tokens = tok.encode(&text, false);
            if tokens.is_empty() || opts.prompt == 0 {
                bail!("speed needs a non-empty text and --prompt of at least 1 token");
            }
            let (need, holds) = (opts.prompt.saturating_add(opts.gen), model.cfg.ctx_train);
            if need > holds {
                bail!("--prompt {} + --gen {} = {need} tokens, more than the {holds} tokens the model holds; lower --prompt or --gen", opts.prompt, opts.gen);
            }
            let prompts: Vec<Vec<u32>> = (0..opts.requests.max(1)).map(|i| (0..opts.prompt).map(|j| tokens[(i * opts.prompt + j) % tokens.len()]).collect()).collect();
            r.decoder_speed = Some(decoder_speed(model, pool, &prompts, opts.gen, &power(opts))?);
        }
        Loaded::Encoder(e) => {
            let sents = eval_quality::sentences(&text);
            let texts: Vec<&str> = sents.iter().take(256).map(String::as_str).collect();
            r.encoder_speed = Some(encoder_speed(e, pool, &texts, 32, &power(opts))?);
        }
    }
    r.peak_rss = crate::sys::peak_rss();
    Ok(())
}

/// Runs `smelt eval SPEC --no-quality` in a child process and takes its measurements, so that
/// peak RSS and energy are this model's alone.
pub fn measure_in_child(spec: &Spec, opts: &EvalOptions, global: &Global) -> Result<ModelResult> {
    let exe = std::env::current_exe().context("finding the smelt executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["eval", &spec.arg, "--no-quality", "--format", "json", "--quiet"]);
    if let Some(a) = &spec.lora {
        cmd.arg("--lora").arg(a);
    }
    cmd.args(["--requests", &opts.requests.to_string(), "--prompt", &opts.prompt.to_string(), "--gen", &opts.gen.to_string()]);
    cmd.args(["--watts-per-core", &opts.watts_per_core.to_string(), "--grid", &opts.grid.to_string()]);
    if let Some(t) = &opts.text {
        cmd.arg("--text").arg(t);
    }
    if let Some(n) = global.threads {
        cmd.args(["--threads", &n.to_string()]);
    }
    // The child runs quietly: its stderr holds warnings, and its error when it fails, which
    // becomes part of this process's one-line error.
    let out = cmd.output().context("running the speed measurement")?;
    let child_err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why = child_err.lines().rev().find_map(|l| l.strip_prefix("error: ")).map_or_else(|| out.status.to_string(), String::from);
        bail!("measuring the speed of {} failed: {why}", spec.arg);
    }
    eprint!("{child_err}");
    let rec: Record = serde_json::from_slice(&out.stdout).context("reading the speed measurement's record")?;
    rec.models.into_iter().next().context("the speed measurement returned no model")
}

/// Checks before any long work that every output path can be written.
pub fn check_outputs(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        smelt_formats::fsutil::check_output(p).with_context(|| format!("cannot write {}", p.display()))?;
        format_of(p)?;
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if smelt_formats::fsutil::is_stream(p) {
            continue;
        }
        let probe = dir.join(format!(".smelt-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").with_context(|| format!("cannot write {}: its folder {} is not writable", p.display(), dir.display()))?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(())
}

fn format_of(p: &Path) -> Result<ReportFormat> {
    Ok(match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("json") => ReportFormat::Json,
        Some("csv") => ReportFormat::Csv,
        Some("md") | Some("markdown") => ReportFormat::Md,
        Some("html") | Some("htm") => ReportFormat::Html,
        Some("txt") => ReportFormat::Table,
        _ if smelt_formats::fsutil::is_stream(p) => ReportFormat::Json,
        _ => bail!("{}: say the report format with the extension .json, .csv, .md, .html or .txt", p.display()),
    })
}

fn render(rec: &Record, f: ReportFormat) -> Result<String> {
    use smelt_eval::report;
    Ok(match f {
        ReportFormat::Table => report::table(rec),
        ReportFormat::Json => serde_json::to_string_pretty(rec)? + "\n",
        ReportFormat::Csv => report::csv(rec),
        ReportFormat::Md => report::markdown(rec),
        ReportFormat::Html => report::html(rec),
        ReportFormat::None => String::new(),
    })
}

/// Prints the record on stdout and writes every -o file (atomically).
pub fn emit(rec: &Record, opts: &EvalOptions) -> Result<()> {
    use std::io::Write;
    for p in &opts.output {
        let body = render(rec, format_of(p)?)?;
        smelt_formats::fsutil::write_atomic_io(p, |w| w.write_all(body.as_bytes())).with_context(|| format!("writing {}", p.display()))?;
    }
    let s = render(rec, opts.format)?;
    std::io::stdout().lock().write_all(s.as_bytes())?;
    for p in &opts.output {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

pub fn new_record(title: &str, opts: &EvalOptions, threads: usize) -> Record {
    let machine = Machine { cpu: crate::sys::cpu_name(), threads, os: std::env::consts::OS.into(), arch: std::env::consts::ARCH.into() };
    Record::new(title, machine, EnergySetup { watts_per_core: opts.watts_per_core, grid_g_per_kwh: opts.grid, grid_source: GRID_SOURCE.into() })
}

/// Measures `models` (and `reference`) into one record.
pub fn evaluate(title: &str, models: &[Spec], reference: Option<&Spec>, opts: &EvalOptions, global: &Global) -> Result<Record> {
    check_outputs(&opts.output)?;
    let pool = pool(global);
    let mut rec = new_record(title, opts, pool.n_threads());
    let all: Vec<&Spec> = reference.into_iter().chain(models).collect();
    let mut results = Vec::new();
    if opts.no_quality {
        // Speed only, here: this is also the child's side of `measure_in_child`.
        for s in &all {
            let m = load(s, &pool)?;
            let mut r = describe(s, &m);
            if !opts.no_speed {
                measure_here(&m, &pool, opts, &mut r)?;
            }
            results.push(r);
        }
    } else {
        let loaded: Vec<Loaded> = all.iter().map(|s| load(s, &pool)).collect::<Result<_>>()?;
        results = all.iter().zip(&loaded).map(|(s, m)| describe(s, m)).collect();
        eval_quality::quality(&loaded, reference.is_some(), &mut results, &mut rec, opts, &pool, global.quiet)?;
        drop(loaded);
        if !opts.no_speed {
            for (s, r) in all.iter().zip(results.iter_mut()) {
                if !global.quiet {
                    eprintln!("timing {} in its own process ...", s.name);
                }
                let m = measure_in_child(s, opts, global)?;
                (r.decoder_speed, r.encoder_speed, r.peak_rss) = (m.decoder_speed, m.encoder_speed, m.peak_rss);
            }
        }
    }
    if reference.is_some() {
        results[0].reference = true;
    }
    rec.models = results;
    if reference.is_some() {
        rec.recommend(opts.max_loss);
    }
    Ok(rec)
}

pub fn run_eval(a: &EvalArgs, global: &Global) -> Result<()> {
    let mut spec = parse_spec(&a.model, global.quiet)?;
    if let Some(l) = &a.lora {
        spec.name = format!("{} + {}", spec.name, l.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        spec.lora = Some(l.clone());
    }
    let reference = a.against.as_deref().map(|r| parse_spec(r, global.quiet)).transpose()?;
    let title = match &reference {
        Some(r) => format!("smelt eval: {} against {}", spec.name, r.name),
        None => format!("smelt eval: {}", spec.name),
    };
    let rec = evaluate(&title, std::slice::from_ref(&spec), reference.as_ref(), &a.opts, global)?;
    emit(&rec, &a.opts)
}

pub fn run_compare(a: &CompareArgs, global: &Global) -> Result<()> {
    let specs: Vec<Spec> = a.models.iter().map(|m| parse_spec(m, global.quiet)).collect::<Result<_>>()?;
    let reference = a.against.as_deref().map(|r| parse_spec(r, global.quiet)).transpose()?;
    let title = match &reference {
        Some(r) => format!("smelt compare: {} models against {}", specs.len(), r.name),
        None => format!("smelt compare: {} models", specs.len()),
    };
    let rec = evaluate(&title, &specs, reference.as_ref(), &a.opts, global)?;
    emit(&rec, &a.opts)
}
