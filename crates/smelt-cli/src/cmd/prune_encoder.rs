//! `smelt prune ENCODER -o DIR --method ffn|heads|width|layers --calib TEXT`: structured pruning
//! of a sentence encoder (`smelt_compress::prune::encoder`); a new sentence-transformers
//! directory written, what was kept printed.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::prune::encoder::{prune_encoder, EncoderPrune, EncoderReport};
use smelt_compress::prune::layers::LayerScore;

use smelt_formats::texts::sentences;

use super::prune::{check_fractions, method_name, StageBars};
use crate::cli::{AllocationArg, Global, LayerScoreArg, PruneArgs, PruneMethod};
use crate::fmt::bytes;

/// The settings from the arguments: what each method takes, and refusals of the rest.
fn settings(args: &PruneArgs, n_layers: usize) -> Result<EncoderPrune> {
    if args.pattern.is_some() || args.then_quantize.is_some() || args.sequential || args.owl || args.scope.is_some() || !args.corpus.is_empty() || args.allocation != AllocationArg::Uniform {
        anyhow::bail!("on an encoder --method {} takes --sparsity (ffn, heads, layers), --ffn/--heads (width) or --layers, and --calib; not --pattern, --scope, --sequential, --owl, --corpus, --allocation or --then-quantize (every layer loses the same share, so that the result stays a standard BERT)", method_name(args.method));
    }
    let (mut ffn, mut heads, mut layers) = (0.0, 0.0, 0);
    match (args.method, args.sparsity, args.ffn, args.heads, args.layers) {
        (PruneMethod::Ffn, Some(p), None, None, None) => ffn = p,
        (PruneMethod::Heads, Some(p), None, None, None) => heads = p,
        (PruneMethod::Width, None, f, h, l) if f.is_some() || h.is_some() => (ffn, heads, layers) = (f.unwrap_or(0.0), h.unwrap_or(0.0), l.unwrap_or(0)),
        (PruneMethod::Layers, None, None, None, Some(n)) => layers = n,
        (PruneMethod::Layers, Some(p), None, None, None) => layers = (p * n_layers as f64).round() as usize,
        (PruneMethod::Width, ..) => anyhow::bail!("--method width takes --ffn X and/or --heads Y (fractions removed), and on an encoder --layers N too"),
        (PruneMethod::Layers, ..) => anyhow::bail!("--method layers takes --layers N or --sparsity X"),
        (m, ..) => anyhow::bail!("--method {} takes --sparsity X (the fraction removed), not --ffn/--heads/--layers", method_name(m)),
    }
    check_fractions(ffn, heads)?;
    if (args.method == PruneMethod::Layers && layers == 0) || layers >= n_layers {
        anyhow::bail!("cannot remove {layers} of the encoder's {n_layers} layers: remove at least one and keep at least one");
    }
    if ffn == 0.0 && heads == 0.0 && layers == 0 {
        anyhow::bail!("nothing to remove: give a fraction above 0");
    }
    let layer_score = match args.layer_score {
        LayerScoreArg::Angular => LayerScore::Angular,
        LayerScoreArg::Influence => LayerScore::Influence,
    };
    Ok(EncoderPrune { ffn, heads, layers, layer_score, damp: args.damp, bias: !args.no_bias, batch: 32 })
}

/// Prunes the sentence encoder in `input` into the directory `args.output`.
pub fn run(args: &PruneArgs, global: &Global, input: &Path) -> Result<()> {
    let enc = smelt_models::Encoder::load(input, None).with_context(|| format!("loading {}", input.display()))?;
    let settings = settings(args, enc.model.layers.len())?;
    let Some(calib) = &args.calib else { anyhow::bail!("--method {} needs a calibration text to choose and refit: give --calib FILE", method_name(args.method)) };
    let text = super::read_utf8(calib)?;
    let sents = sentences(&text, args.calib_chunks.saturating_mul(32));
    if sents.is_empty() {
        anyhow::bail!("{} holds no sentences of 4 words or more to calibrate on", calib.display());
    }
    let refs: Vec<&str> = sents.iter().map(String::as_str).collect();
    let pool = global.pool();
    let start = Instant::now();
    let mut bars = StageBars::new(global.quiet);
    let r = prune_encoder(input, &enc, &refs, &settings, &args.output, &pool, &mut |done, total, what| bars.step(done, total, what)).with_context(|| format!("pruning {}", input.display()))?;
    bars.finish();
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &document(&r, args, &settings, input, secs, pool.n_threads()))?;
        writeln!(out)?;
    } else {
        writeln!(out, "wrote      {}/ (model.safetensors {})", args.output.display(), bytes(r.bytes))?;
        if !r.removed_layers.is_empty() {
            writeln!(out, "layers     {} of {} removed: {:?}", r.removed_layers.len(), r.heads_before.len(), r.removed_layers)?;
        }
        writeln!(out, "heads      {:?} per layer (were {:?})", r.heads_after, r.heads_before)?;
        writeln!(out, "ffn        {} of {} channels kept in every layer", r.ffn_after, r.ffn_before)?;
        writeln!(out, "parameters {} of {} kept ({:.1}% removed)", r.params.1, r.params.0, 100.0 * (1.0 - r.params.1 as f64 / r.params.0.max(1) as f64))?;
        writeln!(out, "calibrate  {} sentences ({} tokens)", r.sentences, r.tokens)?;
        if let Some(s) = &r.scores {
            writeln!(out, "scores     influence {:?}", s.influence.iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>())?;
            writeln!(out, "           angular ({} from) {:?}", s.block, s.angular.iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>())?;
        }
        writeln!(out, "time       {secs:.1} s on {} threads", pool.n_threads())?;
    }
    out.flush()?;
    Ok(())
}

fn document(r: &EncoderReport, args: &PruneArgs, s: &EncoderPrune, input: &Path, secs: f64, threads: usize) -> serde_json::Value {
    json!({
        "input": input.display().to_string(),
        "output": args.output.display().to_string(),
        "method": method_name(args.method),
        "kind": "encoder",
        "ffn_fraction": s.ffn,
        "head_fraction": s.heads,
        "bias": s.bias,
        "ffn_before": r.ffn_before,
        "ffn_after": r.ffn_after,
        "heads_before": r.heads_before,
        "heads_after": r.heads_after,
        "removed_layers": r.removed_layers,
        "layer_score": (s.layers > 0).then_some(match s.layer_score { LayerScore::Angular => "angular", LayerScore::Influence => "influence" }),
        "influence": r.scores.as_ref().map(|s| &s.influence),
        "angular": r.scores.as_ref().map(|s| &s.angular),
        "parameters": r.params.0,
        "kept_parameters": r.params.1,
        "calibration": args.calib.as_ref().map(|p| p.display().to_string()),
        "calibration_sentences": r.sentences,
        "calibration_tokens": r.tokens,
        "weights_bytes": r.bytes,
        "seconds": secs,
        "threads": threads,
    })
}
