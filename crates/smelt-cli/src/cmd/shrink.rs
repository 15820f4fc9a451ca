//! `smelt shrink`: the main job. Makes compressed variants of a model with what smelt has
//! (round-to-nearest quantization for decoders; f16 and int8 for encoders), measures each
//! against the original (quality, speed, memory, energy), prints the table with a
//! recommendation and writes the HTML report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use smelt_formats::GgmlType;

use super::eval::{emit, evaluate, parse_spec, Spec};
use crate::cli::{Global, QuantizeArgs, ShrinkArgs};

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
        (r, variants, format!("the original is {} with its weights expanded to f32 (no higher-precision release of this model can be fetched here); each variant is a round-to-nearest re-quantization of that file", src.name))
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
            let q = QuantizeArgs { input: src.path.display().to_string(), output: path.clone(), to: ty, embed_type: None, output_type: None, keep: Vec::new(), imatrix: None, calib: None, calib_chunks: None, calib_ctx: 512, gptq: false, act_order: false, damp: 0.01, dry_run: false, json: false };
            super::quantize::write(&q, global, false)?;
        }
        out.push(Spec { arg: path.display().to_string(), path, variant: None, name: ty.name().to_string() });
    }
    Ok(out)
}
