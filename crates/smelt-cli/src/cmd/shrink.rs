//! `smelt shrink`: the main job. Makes compressed variants of a model with what smelt has
//! (round-to-nearest quantization and calibrated mixed precision for decoders; f16 and int8 for
//! encoders), measures each
//! against the original (quality, speed, memory, energy), prints the table with a
//! recommendation and writes the HTML report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use smelt_formats::GgmlType;

use super::eval::{emit, evaluate, parse_spec, Spec};
use smelt_compress::calib::CalibOptions;
use smelt_compress::fit::{analyze, default_types, write_mix, FitSettings, Goal, Source};

use super::fit::StageBars;
use crate::cli::{FitSize, Global, QuantizeArgs, ShrinkArgs};

/// Default number of chunks scored by `shrink` (the built-in text holds 42).
const DEFAULT_CHUNKS: usize = 8;

pub fn run(a: &ShrinkArgs, global: &Global) -> Result<()> {
    let src = parse_spec(&a.model, global.quiet)?;
    let mut opts = a.opts.clone();
    let stem = src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let dir = a.out_dir.clone().unwrap_or_else(|| smelt_assets::Fetcher::from_env().home.join("shrink").join(&stem));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if opts.output.is_empty() {
        opts.output = vec![dir.join("report.html"), dir.join("report.json")];
    }
    super::eval::check_outputs(&opts.output)?;
    let encoder = super::bench_encoder::is_encoder(&src.path);
    let (reference, variants, note) = if encoder {
        let v = |suffix: &str| parse_spec(&format!("{}:{suffix}", src.path.display()), true);
        let mut r = src.clone();
        r.name = format!("{} fp32", src.name);
        let mut f16 = v("f16")?;
        f16.name = "f16".into();
        let mut i8 = v("int8")?;
        i8.name = "int8".into();
        (r, vec![f16, i8], "the original is the model as shipped (fp32); f16 stores the weight matrices as f16; int8 runs them in int8 with per-channel weights, activations quantized per token and SmoothQuant calibration".to_string())
    } else {
        opts.chunks = opts.chunks.or(Some(DEFAULT_CHUNKS));
        let mut r = parse_spec(&format!("{}:f32", src.path.display()), true)?;
        r.name = "original (f32)".into();
        let shipped = smelt_formats::GgufFile::open(&src.path).ok().and_then(|f| f.tensor("blk.0.ffn_up.weight").map(|t| t.ty.name().to_string()));
        let mut variants = vec![Spec { name: format!("{} (as shipped)", shipped.unwrap_or_default()).trim_start().to_string(), ..src.clone() }];
        variants.extend(make_variants(&src, &a.types, &dir, global)?);
        let mut note = format!("the original is {} with its weights expanded to f32 (no higher-precision release of this model can be fetched here); the variants named by a type are round-to-nearest re-quantizations of that file", src.name);
        if !a.no_fit && !a.fit.is_empty() {
            let (calib, calib_name) = calibration_text(a)?;
            let (eval_text, eval_name) = super::eval::text(&opts)?;
            if eval_text == calib {
                anyhow::bail!("the calibration text (--calib) is the evaluation text (--text): calibrated variants would be scored on what they were tuned on; give two different texts");
            }
            variants.extend(make_fit_variants(&src, &a.fit, &calib, &dir, global)?);
            note.push_str(&format!("; the variants named \"fit SIZE\" choose a type per matrix for that size (smelt fit: importance-weighted candidates, per-matrix KLD probes, the output head also by GPTQ), calibrated on {calib_name}, evaluated on {eval_name}"));
        }
        if !a.prune.is_empty() {
            let (calib, calib_name) = calibration_text(a)?;
            if super::eval::text(&opts)?.0 == calib {
                anyhow::bail!("the calibration text (--calib) is the evaluation text (--text): pruned variants would be scored on what they were fitted on; give two different texts");
            }
            variants.extend(make_pruned_variants(&src, &a.prune, &calib, &dir, global)?);
            note.push_str(&format!("; the variants named \"ffn -P%\" have P% of every layer's FFN channels removed (smelt prune --method ffn: OBS choice and refit with a bias, in the shipped types), calibrated on {calib_name}"));
        }
        (r, variants, note)
    };
    let title = format!("smelt shrink: {}", src.name);
    let mut rec = evaluate(&title, &variants, Some(&reference), &opts, global)?;
    rec.notes.push(note);
    rec.notes.push(format!("variants in {}", dir.display()));
    emit(&rec, &opts)
}

/// Writes one GGUF per type into `dir` (a file already there is reused).
fn make_variants(src: &Spec, types: &[GgmlType], dir: &std::path::Path, global: &Global) -> Result<Vec<Spec>> {
    let stem = src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let path: PathBuf = dir.join(format!("{stem}.{}.gguf", ty.name()));
        if path.exists() {
            if !global.quiet {
                eprintln!("[{}/{}] {} already made: {}", i + 1, types.len(), ty, path.display());
            }
        } else {
            if !global.quiet {
                eprintln!("[{}/{}] quantizing to {ty} ...", i + 1, types.len());
            }
            let q = QuantizeArgs { input: src.path.display().to_string(), output: path.clone(), to: ty, embed_type: None, output_type: None, keep: Vec::new(), imatrix: None, calib: None, calib_chunks: None, calib_ctx: 512, gptq: false, act_order: false, damp: 0.01, awq: false, awq_grid: 20, dry_run: false, json: false };
            super::quantize::write(&q, global, false)?;
        }
        out.push(Spec { arg: path.display().to_string(), path, variant: None, name: ty.name().to_string(), lora: None });
    }
    Ok(out)
}

/// The built-in calibration text (a different book from the built-in evaluation text).
pub const BUILTIN_CALIB: &str = include_str!("../../../smelt-compress/data/sense-and-sensibility-1-18.txt");
const BUILTIN_CALIB_NAME: &str = "Sense and Sensibility ch. 1-18 (built in)";

fn calibration_text(a: &ShrinkArgs) -> Result<(String, String)> {
    match &a.calib {
        Some(p) => Ok((super::read_utf8(p)?, p.display().to_string())),
        None => Ok((BUILTIN_CALIB.to_string(), BUILTIN_CALIB_NAME.to_string())),
    }
}

/// One calibrated mixed-precision GGUF per size (one analysis shared by all); a file already
/// there is reused, and when all are there nothing is calibrated.
fn make_fit_variants(src: &Spec, sizes: &[FitSize], calib: &str, dir: &std::path::Path, global: &Global) -> Result<Vec<Spec>> {
    let file = smelt_formats::GgufFile::open(&src.path).with_context(|| format!("reading {}", src.path.display()))?;
    let stem = src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let limits: Vec<u64> = sizes
        .iter()
        .map(|s| match *s {
            FitSize::Bytes(b) => b,
            FitSize::OfSource(f) => (f * file.header.file_len as f64) as u64,
        })
        .collect();
    let path = |limit: u64| dir.join(format!("{stem}.fit-{:.1}MB.gguf", limit as f64 / 1e6));
    let spec = |limit: u64| Spec { arg: path(limit).display().to_string(), path: path(limit), variant: None, name: format!("fit {}", crate::fmt::bytes(limit)), lora: None };
    if limits.iter().all(|&l| path(l).exists()) {
        return Ok(limits.iter().map(|&l| spec(l)).collect());
    }
    let mut m = smelt_models::load(&src.path, smelt_models::LoadOptions::default()).with_context(|| format!("loading {}", src.path.display()))?;
    let settings = FitSettings {
        goal: Goal::MaxBytes(0),
        types: default_types(),
        calib: CalibOptions { ctx: 512, max_chunks: Some(32), process_output: true },
        probe_chunks: 1,
        probe_first: 64,
        front_checks: 0,
        awq: None,
        head_gptq: Some(smelt_compress::gptq::GptqOptions::default()),
    };
    let pool = global.pool();
    if !global.quiet {
        eprintln!("calibrating for {} mixed-precision variants ...", limits.len());
    }
    let mut bars = StageBars::new(global.quiet);
    let src = Source { file: &file, tok: &m.tok, text: calib, imatrix: None };
    let analysis = analyze(&src, &mut m.model, &settings, &pool, &mut |s, d, t, w| bars.update(s, d, t, w)).context("calibrating")?;
    let mut out = Vec::new();
    for &limit in &limits {
        if !path(limit).exists() {
            let mix = analysis.choose(Goal::MaxBytes(limit)).with_context(|| format!("fitting to {}", crate::fmt::bytes(limit)))?;
            write_mix(&file, &analysis, &mix, Some(limit), &path(limit), &pool, &mut |s, d, t, w| bars.update(s, d, t, w)).with_context(|| format!("writing {}", path(limit).display()))?;
            bars.finish(); // one bar per file written
        }
        out.push(spec(limit));
    }
    bars.finish();
    Ok(out)
}

/// One GGUF per fraction of FFN channels removed (a file already there is reused).
fn make_pruned_variants(src: &Spec, fractions: &[f64], calib: &str, dir: &std::path::Path, global: &Global) -> Result<Vec<Spec>> {
    use smelt_compress::prune::model::Source as PruneSource;
    use smelt_compress::prune::width::{prune_width, Allocation, WidthPrune};
    let stem = src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = |f: f64| format!("ffn -{:.0}%", 100.0 * f);
    let path = |f: f64| dir.join(format!("{stem}.ffn-{:.0}.gguf", 100.0 * f));
    let mut out = Vec::new();
    let missing: Vec<f64> = fractions.iter().copied().filter(|&f| !path(f).exists()).collect();
    if !missing.is_empty() {
        let file = smelt_formats::GgufFile::open(&src.path).with_context(|| format!("reading {}", src.path.display()))?;
        let m = smelt_models::load(&src.path, smelt_models::LoadOptions::default()).with_context(|| format!("loading {}", src.path.display()))?;
        let pool = global.pool();
        for (i, &f) in missing.iter().enumerate() {
            if !global.quiet {
                eprintln!("[{}/{}] pruning {} of the FFN channels ...", i + 1, missing.len(), name(f).trim_start_matches("ffn -"));
            }
            let settings = WidthPrune { ffn: f, heads: 0.0, allocation: Allocation::Uniform, calib: CalibOptions { ctx: 512, max_chunks: Some(32), process_output: false }, damp: 0.01, bias: true };
            let mut bars = super::prune::StageBars::new(global.quiet);
            let psrc = PruneSource { file: &file, tok: &m.tok, text: Some(calib) };
            prune_width(&psrc, &m.model, &settings, &path(f), &pool, &mut |d, t, w| bars.step(d, t, w)).with_context(|| format!("writing {}", path(f).display()))?;
            bars.finish();
        }
    }
    for &f in fractions {
        out.push(Spec { arg: path(f).display().to_string(), path: path(f), variant: None, name: name(f), lora: None });
    }
    Ok(out)
}
