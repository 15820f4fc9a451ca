//! `smelt prune MODEL -o OUT --method wanda --sparsity 0.5 --calib TEXT`: arguments into
//! `smelt_compress::prune::model::DecoderPrune`, progress per stage, and the summary printed.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::calib::CalibOptions;
use smelt_compress::prune::layers::{remove_layers, LayerRemoval, LayerReport, LayerScore};
use smelt_compress::prune::model::{prune_decoder, DecoderPrune, PruneReport, PruneStage, Source};
use smelt_compress::prune::vocab::{choose_vocab, write_trimmed};
use smelt_compress::prune::width::{prune_width, Allocation, WidthPrune, WidthReport};
use smelt_compress::prune::owl::Owl;
use smelt_compress::prune::{Method, Pattern, PruneOptions, Scope};
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::LoadOptions;

use crate::cli::{AllocationArg, Global, LayerScoreArg, PruneArgs, PruneMethod, PruneScope};
use crate::fmt::bytes;
use crate::progress::Progress;

fn options(args: &PruneArgs, method: Method) -> PruneOptions {
    let pattern = match (args.pattern, args.sparsity) {
        (Some((n, m)), _) => Pattern::NM { n, m },
        (None, p) => Pattern::Unstructured(p.unwrap_or(0.0)),
    };
    let mut opts = PruneOptions::new(method, pattern);
    opts.damp = args.damp;
    if let Some(s) = args.scope {
        opts.scope = match s {
            PruneScope::Row => Scope::Row,
            PruneScope::Matrix => Scope::Matrix,
        };
    }
    opts
}

fn check_output(args: &PruneArgs) -> Result<()> {
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))
}

pub fn run(args: &PruneArgs, global: &Global) -> Result<()> {
    if matches!(args.method, PruneMethod::Ffn | PruneMethod::Heads | PruneMethod::Width | PruneMethod::Layers) {
        let input = crate::resolve_model(&args.model, global.quiet)?;
        if input.is_dir() && input.join("config.json").exists() && !input.join("model.safetensors").exists() {
            anyhow::bail!("{} has no model.safetensors: structured pruning reads the safetensors weights", input.display());
        }
        if input.is_dir() && matches!(smelt_formats::hf_config::load_config(&input.join("config.json")), Ok(smelt_formats::hf_config::HfConfig::Bert(_))) {
            return super::prune_encoder::run(args, global, &input);
        }
    }
    // An encoder's output is a directory (checked where the kind of model is known).
    if !matches!(args.method, PruneMethod::Ffn | PruneMethod::Heads | PruneMethod::Width) {
        check_output(args)?;
    }
    let method = match args.method {
        PruneMethod::Magnitude => Method::Magnitude,
        PruneMethod::Wanda => Method::Wanda,
        PruneMethod::Sparsegpt => Method::SparseGpt,
        PruneMethod::Layers => return run_layers(args, global),
        PruneMethod::Vocab => return run_vocab(args, global),
        PruneMethod::Ffn | PruneMethod::Heads | PruneMethod::Width => return run_width(args, global),
    };
    if !args.corpus.is_empty() {
        anyhow::bail!("--corpus goes with --method vocab; give --sparsity or --pattern for --method {}", method.name());
    }
    if args.layers.is_some() {
        anyhow::bail!("--layers goes with --method layers; give --sparsity or --pattern for --method {}", method.name());
    }
    if args.ffn.is_some() || args.heads.is_some() {
        anyhow::bail!("--ffn and --heads go with --method width; give --sparsity or --pattern for --method {}", method.name());
    }
    let opts = options(args, method);
    smelt_compress::prune::check_pattern(opts.pattern)?;
    let needs = opts.method.needs_norms() || opts.method.needs_hessian() || args.owl;
    let text = match (&args.calib, needs) {
        (Some(p), true) => Some(super::read_utf8(p)?),
        (None, true) => anyhow::bail!("--method {}{} needs a calibration text: give --calib FILE", opts.method.name(), if args.owl { " --owl" } else { "" }),
        (_, false) => None,
    };
    let input = crate::resolve_model(&args.model, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let mut m = smelt_models::load(&input, LoadOptions::default()).with_context(|| format!("loading {}", input.display()))?;
    let settings = DecoderPrune {
        opts,
        calib: CalibOptions { ctx: args.calib_ctx, max_chunks: Some(args.calib_chunks), process_output: false },
        sequential: args.sequential,
        owl: args.owl.then_some(Owl { threshold: args.owl_threshold, lambda: args.owl_lambda }),
        write_type: args.then_quantize.unwrap_or(GgmlType::F32),
    };
    let pool = global.pool();
    let start = Instant::now();
    let mut bar: Option<(PruneStage, Progress)> = None;
    let src = Source { file: &file, tok: &m.tok, text: text.as_deref() };
    let report = prune_decoder(&src, &mut m.model, &settings, &args.output, &pool, &mut |stage, done, total, what| {
        if bar.as_ref().is_none_or(|(s, _)| *s != stage) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            let label = match stage {
                PruneStage::Calibrate => "calibrate",
                PruneStage::Prune => "prune",
                PruneStage::Write => "write",
            };
            bar = Some((stage, Progress::new(label, total as u64, stage == PruneStage::Write, global.quiet)));
        }
        if let Some((_, b)) = bar.as_mut() {
            let n = (done as u64).saturating_sub(b.done());
            b.inc(n, what);
        }
    })
    .with_context(|| format!("pruning {}", input.display()))?;
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &document(&report, args, &settings, &input.display().to_string(), secs, pool.n_threads()))?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &report, args, &settings, secs, pool.n_threads())?;
    }
    out.flush()?;
    Ok(())
}

fn pattern_text(p: Pattern) -> String {
    match p {
        Pattern::Unstructured(s) => format!("unstructured {s}"),
        Pattern::NM { n, m } => format!("{n}:{m}"),
    }
}

fn print_summary(out: &mut impl Write, r: &PruneReport, args: &PruneArgs, s: &DecoderPrune, secs: f64, threads: usize) -> Result<()> {
    let (n, z) = r.totals();
    writeln!(out, "wrote      {} ({})", args.output.display(), bytes(r.summary.file_bytes))?;
    let scope = match (s.opts.pattern, s.opts.scope) {
        (Pattern::NM { .. }, _) => "",
        (_, Scope::Row) => ", per row",
        (_, Scope::Matrix) => ", per matrix",
    };
    writeln!(out, "pruned     {} matrices by {} ({}{scope}): {} of {} weights are zero ({:.2}%)", r.matrices.len(), s.opts.method.name(), pattern_text(s.opts.pattern), z, n, 100.0 * z as f64 / n.max(1) as f64)?;
    if r.passes > 0 {
        let how = if s.sequential { "sequential: one pass per layer" } else { "one pass" };
        writeln!(out, "calibrate  {} chunks of {} tokens ({how}, {} passes)", r.chunks, s.calib.ctx, r.passes)?;
    }
    if let (Some(owl), Some(lo), Some(hi)) = (s.owl, r.layer_sparsity.iter().copied().reduce(f64::min), r.layer_sparsity.iter().copied().reduce(f64::max)) {
        writeln!(out, "OWL        layer sparsity {lo:.3} to {hi:.3} (outliers above {} x the layer's mean score, lambda {})", owl.threshold, owl.lambda)?;
    }
    let written = if s.write_type == GgmlType::F32 { "F32 (exact)".to_string() } else { s.write_type.to_string() };
    writeln!(out, "written as {written}; other tensors as they were")?;
    let err: f64 = r.summary.types.get(&s.write_type).map_or(0.0, |e| e.relative_rms());
    writeln!(out, "weight error {err:.4} (relative RMS of the pruned matrices against the input)")?;
    writeln!(out, "time       {secs:.1} s on {threads} threads")?;
    Ok(())
}

fn document(r: &PruneReport, args: &PruneArgs, s: &DecoderPrune, input: &str, secs: f64, threads: usize) -> serde_json::Value {
    let (n, z) = r.totals();
    json!({
        "input": input,
        "output": args.output.display().to_string(),
        "method": s.opts.method.name(),
        "pattern": pattern_text(s.opts.pattern),
        "scope": match s.opts.scope { Scope::Row => "row", Scope::Matrix => "matrix" },
        "sparsity": s.opts.pattern.sparsity(),
        "calibration": args.calib.as_ref().map(|p| p.display().to_string()),
        "calibration_chunks": r.chunks,
        "passes": r.passes,
        "sequential": s.sequential,
        "owl": s.owl.map(|o| json!({"threshold": o.threshold, "lambda": o.lambda, "layer_sparsity": r.layer_sparsity})),
        "written_as": s.write_type.name(),
        "file_bytes": r.summary.file_bytes,
        "pruned_weights": n,
        "zero_weights": z,
        "zero_fraction": z as f64 / n.max(1) as f64,
        "weight_error": r.summary.types.get(&s.write_type).map(|e| e.relative_rms()),
        "matrices": r.matrices.iter().map(|m| json!({"name": m.name, "rows": m.rows, "cols": m.cols, "zeros": m.zeros})).collect::<Vec<_>>(),
        "seconds": secs,
        "threads": threads,
    })
}

/// `--method layers`: score, remove, write; print the scores and what went.
fn run_layers(args: &PruneArgs, global: &Global) -> Result<()> {
    if args.pattern.is_some() || args.then_quantize.is_some() || args.sequential || args.owl || args.scope.is_some() {
        anyhow::bail!("--method layers takes --layers N or --sparsity X (and --layer-score), not --pattern, --scope, --sequential, --owl or --then-quantize");
    }
    let Some(calib) = &args.calib else { anyhow::bail!("--method layers needs a calibration text to score the layers: give --calib FILE") };
    let text = super::read_utf8(calib)?;
    let input = crate::resolve_model(&args.model, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let m = smelt_models::load(&input, LoadOptions::default()).with_context(|| format!("loading {}", input.display()))?;
    let total = m.model.layers.len();
    let n = match (args.layers, args.sparsity) {
        (Some(n), _) => n,
        (None, Some(p)) => (p * total as f64).round() as usize,
        (None, None) => anyhow::bail!("give --layers N or --sparsity X"),
    };
    if n == 0 || n >= total {
        anyhow::bail!("cannot remove {n} of the model's {total} layers: remove at least one and keep at least one");
    }
    let how = match args.layer_score {
        LayerScoreArg::Angular => LayerScore::Angular,
        LayerScoreArg::Influence => LayerScore::Influence,
    };
    let pool = global.pool();
    let start = Instant::now();
    let opts = CalibOptions { ctx: args.calib_ctx, max_chunks: Some(args.calib_chunks), process_output: false };
    let mut bar: Option<Progress> = None;
    let src = Source { file: &file, tok: &m.tok, text: Some(&text) };
    let r = remove_layers(&src, &m.model, LayerRemoval { n, how, calib: opts }, &args.output, &pool, &mut |done, total| {
        let b = bar.get_or_insert_with(|| Progress::new("score layers", total as u64, false, global.quiet));
        b.inc(1, &format!("chunk {done}/{total}"));
    })
    .with_context(|| format!("pruning {}", input.display()))?;
    if let Some(b) = bar {
        b.finish();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &layers_document(&r, args, &input.display().to_string(), secs, pool.n_threads()))?;
        writeln!(out)?;
    } else {
        print_layers(&mut out, &r, args, secs, pool.n_threads())?;
    }
    out.flush()?;
    Ok(())
}

fn print_layers(out: &mut impl Write, r: &LayerReport, args: &PruneArgs, secs: f64, threads: usize) -> Result<()> {
    writeln!(out, "wrote      {} ({})", args.output.display(), bytes(r.file_bytes))?;
    writeln!(out, "removed    {} of {} layers: {:?} ({:.1}% of the block parameters)", r.removed.len(), r.layers_before, r.removed, 100.0 * r.removed_params as f64 / r.block_params.max(1) as f64)?;
    writeln!(out, "scored on  {} chunks of {} tokens ({} positions)\n", r.scores.chunks, args.calib_ctx, r.scores.tokens)?;
    writeln!(out, "{:>5}  {:>9}  {:>16}", "layer", "influence", format!("angular ({} from)", r.scores.block))?;
    for (l, bi) in r.scores.influence.iter().enumerate() {
        let ang = r.scores.angular.get(l).map_or(String::new(), |a| format!("{a:.4}"));
        let mark = if r.removed.contains(&l) { "  removed" } else { "" };
        writeln!(out, "{l:>5}  {bi:>9.4}  {ang:>16}{mark}")?;
    }
    writeln!(out, "\ntime       {secs:.1} s on {threads} threads")?;
    Ok(())
}

fn layers_document(r: &LayerReport, args: &PruneArgs, input: &str, secs: f64, threads: usize) -> serde_json::Value {
    json!({
        "input": input,
        "output": args.output.display().to_string(),
        "method": "layers",
        "layer_score": match args.layer_score { LayerScoreArg::Angular => "angular", LayerScoreArg::Influence => "influence" },
        "calibration": args.calib.as_ref().map(|p| p.display().to_string()),
        "calibration_chunks": r.scores.chunks,
        "layers_before": r.layers_before,
        "removed": r.removed,
        "block_parameters": r.block_params,
        "removed_parameters": r.removed_params,
        "influence": r.scores.influence,
        "angular": r.scores.angular,
        "file_bytes": r.file_bytes,
        "seconds": secs,
        "threads": threads,
    })
}

/// `--method vocab`: the corpus's tokens kept, the file written; print what went.
fn run_vocab(args: &PruneArgs, global: &Global) -> Result<()> {
    if args.corpus.is_empty() {
        anyhow::bail!("--method vocab needs the texts whose tokens to keep: give --corpus FILE (repeatable)");
    }
    if args.sparsity.is_some() || args.pattern.is_some() || args.layers.is_some() || args.then_quantize.is_some() || args.calib.is_some() || args.owl {
        anyhow::bail!("--method vocab takes --corpus FILE..., not --sparsity, --pattern, --layers, --calib, --owl or --then-quantize");
    }
    let texts: Vec<String> = args.corpus.iter().map(|p| super::read_utf8(p)).collect::<Result<_>>()?;
    let input = crate::resolve_model(&args.model, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let tok = smelt_models::Tokenizer::from_gguf(&file.header).with_context(|| format!("reading the tokenizer of {}", input.display()))?;
    let start = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let v = choose_vocab(&file, &tok, &refs).with_context(|| format!("trimming {}", input.display()))?;
    let bytes_out = write_trimmed(&file, &v.kept, &args.output).with_context(|| format!("writing {}", args.output.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let table_bytes = |n: usize| -> u64 { file.tensors().iter().filter(|t| t.name == "token_embd.weight" || t.name == "output.weight").map(|t| t.n_bytes / v.vocab_before as u64 * n as u64).sum() };
    let doc = json!({
        "input": input.display().to_string(),
        "output": args.output.display().to_string(),
        "method": "vocab",
        "corpus": args.corpus.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "corpus_tokens": v.corpus_tokens,
        "vocab_before": v.vocab_before,
        "vocab_after": v.kept.len(),
        "used_by_corpus": v.used,
        "added_for_merges": v.closure,
        "table_bytes_before": table_bytes(v.vocab_before),
        "table_bytes_after": table_bytes(v.kept.len()),
        "file_bytes_before": file.header.file_len,
        "file_bytes": bytes_out,
        "kept_ids": v.kept,
        "seconds": secs,
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(out, "wrote      {} ({}, was {})", args.output.display(), bytes(bytes_out), bytes(file.header.file_len))?;
        writeln!(out, "vocabulary {} -> {} tokens: {} used by the corpus ({} tokens), the rest specials, the byte-level alphabet and {} that BPE needs to build them", v.vocab_before, v.kept.len(), v.used, v.corpus_tokens, v.closure)?;
        writeln!(out, "tables     embedding and head {} -> {}", bytes(table_bytes(v.vocab_before)), bytes(table_bytes(v.kept.len())))?;
        writeln!(out, "time       {secs:.1} s")?;
    }
    out.flush()?;
    Ok(())
}

/// `--method ffn|heads|width`: structured width pruning; print each layer's widths.
fn run_width(args: &PruneArgs, global: &Global) -> Result<()> {
    if args.pattern.is_some() || args.then_quantize.is_some() || args.sequential || args.owl || args.scope.is_some() || args.layers.is_some() || !args.corpus.is_empty() {
        anyhow::bail!("--method {} takes --sparsity (ffn, heads) or --ffn/--heads (width), --allocation and --calib; not --pattern, --scope, --sequential, --owl, --layers, --corpus or --then-quantize (the file keeps the source's types; quantize it afterwards)", method_name(args.method));
    }
    let (ffn, heads) = match (args.method, args.sparsity, args.ffn, args.heads) {
        (PruneMethod::Ffn, Some(p), None, None) => (p, 0.0),
        (PruneMethod::Heads, Some(p), None, None) => (0.0, p),
        (PruneMethod::Width, None, f, h) if f.is_some() || h.is_some() => (f.unwrap_or(0.0), h.unwrap_or(0.0)),
        (PruneMethod::Width, ..) => anyhow::bail!("--method width takes --ffn X and/or --heads Y (fractions removed)"),
        (m, ..) => anyhow::bail!("--method {} takes --sparsity X (the fraction removed), not --ffn/--heads", method_name(m)),
    };
    check_fractions(ffn, heads)?;
    if ffn == 0.0 && heads == 0.0 {
        anyhow::bail!("nothing to remove: give a fraction above 0");
    }
    let Some(calib) = &args.calib else { anyhow::bail!("--method {} needs a calibration text to choose and refit: give --calib FILE", method_name(args.method)) };
    let text = super::read_utf8(calib)?;
    let input = crate::resolve_model(&args.model, global.quiet)?;
    check_output(args)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let m = smelt_models::load(&input, LoadOptions::default()).with_context(|| format!("loading {}", input.display()))?;
    let settings = WidthPrune {
        ffn,
        heads,
        allocation: match args.allocation {
            AllocationArg::Global => Allocation::Global,
            AllocationArg::Uniform => Allocation::Uniform,
        },
        calib: CalibOptions { ctx: args.calib_ctx, max_chunks: Some(args.calib_chunks), process_output: false },
        damp: args.damp,
        bias: !args.no_bias,
    };
    let pool = global.pool();
    let start = Instant::now();
    let mut bars = StageBars::new(global.quiet);
    let src = Source { file: &file, tok: &m.tok, text: Some(&text) };
    let r = prune_width(&src, &m.model, &settings, &args.output, &pool, &mut |done, total, what| bars.step(done, total, what)).with_context(|| format!("pruning {}", input.display()))?;
    bars.finish();
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &width_document(&r, args, &settings, &input.display().to_string(), secs, pool.n_threads()))?;
        writeln!(out)?;
    } else {
        print_width(&mut out, &r, args, secs, pool.n_threads())?;
    }
    out.flush()?;
    Ok(())
}

pub(super) fn method_name(m: PruneMethod) -> &'static str {
    match m {
        PruneMethod::Magnitude => "magnitude",
        PruneMethod::Wanda => "wanda",
        PruneMethod::Sparsegpt => "sparsegpt",
        PruneMethod::Layers => "layers",
        PruneMethod::Vocab => "vocab",
        PruneMethod::Ffn => "ffn",
        PruneMethod::Heads => "heads",
        PruneMethod::Width => "width",
    }
}

fn print_width(out: &mut impl Write, r: &WidthReport, args: &PruneArgs, secs: f64, threads: usize) -> Result<()> {
    let (before, after) = r.block_params;
    writeln!(out, "wrote      {} ({})", args.output.display(), bytes(r.file_bytes))?;
    writeln!(out, "blocks     {after} of {before} parameters kept ({:.1}% removed)", 100.0 * (1.0 - after as f64 / before.max(1) as f64))?;
    writeln!(out, "calibrate  {} chunks of {} tokens\n", r.chunks, args.calib_ctx)?;
    writeln!(out, "{:>5}  {:>11}  {:>11}", "layer", "heads (kv)", "ffn")?;
    for (l, k) in r.layers.iter().enumerate() {
        let heads = format!("{} ({})", k.after.n_heads, k.after.n_kv_heads);
        writeln!(out, "{l:>5}  {heads:>11}  {:>11}", k.after.ffn_dim)?;
    }
    let first = r.layers.first().map(|k| k.before);
    if let Some(b) = first {
        writeln!(out, "(before: {} ({}) heads, {} channels per layer)", b.n_heads, b.n_kv_heads, b.ffn_dim)?;
    }
    writeln!(out, "\ntime       {secs:.1} s on {threads} threads")?;
    Ok(())
}

fn width_document(r: &WidthReport, args: &PruneArgs, s: &WidthPrune, input: &str, secs: f64, threads: usize) -> serde_json::Value {
    let shape = |x: &smelt_models::llama::LayerShape| json!({"heads": x.n_heads, "kv_heads": x.n_kv_heads, "ffn": x.ffn_dim});
    json!({
        "input": input,
        "output": args.output.display().to_string(),
        "method": method_name(args.method),
        "ffn_fraction": s.ffn,
        "head_fraction": s.heads,
        "allocation": match s.allocation { Allocation::Global => "global", Allocation::Uniform => "uniform" },
        "bias": s.bias,
        "calibration": args.calib.as_ref().map(|p| p.display().to_string()),
        "calibration_chunks": r.chunks,
        "block_parameters": r.block_params.0,
        "kept_block_parameters": r.block_params.1,
        "layers": r.layers.iter().map(|k| json!({"before": shape(&k.before), "after": shape(&k.after)})).collect::<Vec<_>>(),
        "file_bytes": r.file_bytes,
        "seconds": secs,
        "threads": threads,
    })
}

/// One progress bar per named stage of a long job (`step(done, total, stage)`; a new stage name
/// finishes the previous bar).
pub struct StageBars {
    bar: Option<(String, Progress)>,
    quiet: bool,
}

impl StageBars {
    pub fn new(quiet: bool) -> StageBars {
        StageBars { bar: None, quiet }
    }

    pub fn step(&mut self, done: usize, total: usize, what: &str) {
        if self.bar.as_ref().is_none_or(|(w, _)| w != what) {
            self.finish();
            self.bar = Some((what.to_string(), Progress::new(what, total as u64, false, self.quiet)));
        }
        if let Some((_, b)) = self.bar.as_mut() {
            let n = (done as u64 + 1).saturating_sub(b.done());
            b.inc(n, "");
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish();
        }
    }
}

/// The FFN and head fractions of the width methods (decoders and encoders) lie in [0, 1).
pub(super) fn check_fractions(ffn: f64, heads: f64) -> Result<()> {
    for (what, v) in [("--sparsity/--ffn", ffn), ("--sparsity/--heads", heads)] {
        if !(0.0..1.0).contains(&v) {
            anyhow::bail!("{what} {v} is outside [0, 1): give the fraction to remove, e.g. 0.25");
        }
    }
    Ok(())
}
