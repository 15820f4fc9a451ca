//! `smelt fit MODEL --max-size 78MB --calib TEXT -o OUT.gguf`: arguments into
//! `smelt_compress::fit::FitSettings`, progress per stage, and the summary, plan and front
//! printed or written.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::calib::CalibOptions;
use smelt_compress::awq::AwqOptions;
use smelt_compress::fit::{default_types, fit, FitAwq, FitReport, FitSettings, Goal, Source, Stage};
use smelt_compress::gptq::GptqOptions;
use smelt_compress::imatrix::Imatrix;
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::LoadOptions;

use crate::cli::{FitArgs, Global};
use crate::fmt::bytes;
use crate::progress::Progress;

fn stage_label(s: Stage) -> &'static str {
    match s {
        Stage::Calibrate => "calibrate",
        Stage::Awq => "awq search",
        Stage::Candidates => "candidates",
        Stage::Reference => "reference",
        Stage::Probe => "sensitivity",
        Stage::Check => "check",
        Stage::Write => "write",
    }
}

/// One progress bar per stage of a fit (a new one when the stage changes).
pub struct StageBars {
    bar: Option<(Stage, Progress)>,
    quiet: bool,
}

impl StageBars {
    pub fn new(quiet: bool) -> StageBars {
        StageBars { bar: None, quiet }
    }

    pub fn update(&mut self, stage: Stage, done: usize, total: usize, what: &str) {
        if self.bar.as_ref().is_none_or(|(s, _)| *s != stage) {
            self.finish();
            self.bar = Some((stage, Progress::new(stage_label(stage), total as u64, stage == Stage::Write, self.quiet)));
        }
        if let Some((_, b)) = self.bar.as_mut() {
            let n = (done as u64).saturating_sub(b.done());
            b.inc(n, what);
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish();
        }
    }
}

pub fn run(args: &FitArgs, global: &Global) -> Result<()> {
    smelt_formats::fsutil::check_output(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if let Some(r) = &args.report {
        smelt_formats::fsutil::check_output(r)
            .with_context(|| format!("cannot write {}", r.display()))?;
    }
    let text = super::read_utf8(&args.calib)?;
    let imatrix = args.imatrix.as_deref().map(Imatrix::read).transpose()?;
    let input = crate::resolve_model(&args.model, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let mut m = smelt_models::load(&input, LoadOptions::default())
        .with_context(|| format!("loading {}", input.display()))?;
    let goal = match (args.max_size, args.max_bpw, args.min_quality) {
        (Some(b), _, _) => Goal::MaxBytes(b),
        (_, Some(x), _) => Goal::MaxBpw(x),
        (_, _, Some(k)) => Goal::MaxKld(k),
        _ => anyhow::bail!("give --max-size, --max-bpw or --min-quality"),
    };
    let settings = FitSettings {
        goal,
        types: if args.types.is_empty() {
            default_types()
        } else {
            args.types.clone()
        },
        calib: CalibOptions {
            ctx: args.calib_ctx,
            max_chunks: Some(args.calib_chunks),
            process_output: true,
        },
        probe_chunks: args.probe_chunks,
        probe_first: (args.calib_ctx / 8).min(64),
        front_checks: args.front_checks,
        awq: args.awq.then_some(FitAwq { ty: args.awq_type, opts: AwqOptions { grid: args.awq_grid, weighted: true } }),
        head_gptq: (!args.no_head_gptq).then(GptqOptions::default),
    };
    let pool = global.pool();
    let start = Instant::now();
    let mut bars = StageBars::new(global.quiet);
    let src = Source { file: &file, tok: &m.tok, text: &text, imatrix: imatrix.as_ref() };
    let report = fit(&src, &mut m.model, &settings, &args.output, &pool, &mut |stage, done, total, what| bars.update(stage, done, total, what))
        .with_context(|| format!("fitting {}", input.display()))?;
    bars.finish();
    let secs = start.elapsed().as_secs_f64();
    let doc = document(
        &report,
        args,
        &input.display().to_string(),
        secs,
        pool.n_threads(),
    );
    if let Some(path) = &args.report {
        let body = if path.extension().is_some_and(|e| e == "json") {
            serde_json::to_string_pretty(&doc)? + "\n"
        } else {
            markdown(&report, &doc)
        };
        smelt_formats::fsutil::write_atomic_io(path, |w| w.write_all(body.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &report, args, secs, pool.n_threads())?;
    }
    out.flush()?;
    Ok(())
}

/// Parameters and bytes per chosen type.
fn by_type(r: &FitReport) -> BTreeMap<GgmlType, (usize, u64, u64)> {
    let mut by: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    for (c, &k) in r.choices.iter().zip(&r.chosen.choice) {
        let e = by.entry(c.candidates[k].ty).or_default();
        e.0 += 1;
        e.1 += (c.rows * c.cols) as u64;
        e.2 += c.candidates[k].bytes;
    }
    by
}

fn print_summary(
    out: &mut impl Write,
    r: &FitReport,
    args: &FitArgs,
    secs: f64,
    threads: usize,
) -> Result<()> {
    let fb = r.summary.file_bytes;
    writeln!(
        out,
        "wrote      {} ({}, {:.3} bits per weight)",
        args.output.display(),
        bytes(fb),
        8.0 * fb as f64 / r.params.max(1) as f64
    )?;
    writeln!(out, "KLD        predicted {:.5}, measured {:.5} (mean nats per token on {} held calibration tokens)", r.chosen.loss, r.measured_kld, r.probe_tokens)?;
    if let Some(a) = r.scaling.as_ref().map(|s| s.summary()) {
        let how = args.awq_type.map_or("their chosen types".to_string(), |t| t.to_string());
        writeln!(out, "awq        {} of {} matrix groups scaled for {how} (mean alpha {:.2}); their output error on the calibration text {:.3}x that without scaling", a.scaled, a.groups, a.mean_alpha, a.error_ratio)?;
    }
    if let Some((without, with)) = r.awq_check {
        let kept = if with < without { "the scaled mix written" } else { "the unscaled mix written" };
        writeln!(out, "awq        measured KLD {without:.5} unscaled, {with:.5} scaled: {kept}")?;
    }
    writeln!(
        out,
        "\n{:<8} {:>8} {:>12} {:>12}",
        "type", "matrices", "parameters", "size"
    )?;
    for (ty, (n, p, b)) in by_type(r) {
        let kept = r
            .choices
            .iter()
            .zip(&r.chosen.choice)
            .filter(|(c, &k)| c.candidates[k].ty == ty && c.candidates[k].kept)
            .count();
        let note = if kept > 0 {
            format!("  ({kept} kept as they were)")
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:<8} {:>8} {:>11.1}M {:>12}{note}",
            ty.name(),
            n,
            p as f64 / 1e6,
            bytes(b)
        )?;
    }
    for (c, &k) in r.choices.iter().zip(&r.chosen.choice).filter(|(c, &k)| c.candidates[k].gptq) {
        writeln!(out, "gptq     {} as {} by GPTQ (the head's input Hessian; measured alone: KLD {:.5})", c.name, c.candidates[k].ty, c.candidates[k].loss)?;
    }
    writeln!(out, "\nfront (file size -> KLD; measured where checked):")?;
    for p in r.front.iter().filter(|p| p.measured_kld.is_some()) {
        writeln!(
            out,
            "  {:>10}  predicted {:.5}  measured {:.5}",
            bytes(p.file_bytes),
            p.predicted_kld,
            p.measured_kld.unwrap_or(0.0)
        )?;
    }
    writeln!(out, "time       {secs:.0} s on {threads} threads")?;
    Ok(())
}

/// The machine-readable report: settings, the chosen plan, the front.
fn document(
    r: &FitReport,
    args: &FitArgs,
    input: &str,
    secs: f64,
    threads: usize,
) -> serde_json::Value {
    let plan: Vec<_> = r
        .choices
        .iter()
        .zip(&r.chosen.choice)
        .map(|(c, &k)| {
            let ch = &c.candidates[k];
            json!({
                "name": c.name, "from": c.source.name(), "to": ch.ty.name(), "kept": ch.kept, "gptq": ch.gptq, "bytes": ch.bytes,
                "predicted_kld": ch.loss,
                "probe": c.probe.map(|(ty, kld)| json!({"type": ty.name(), "kld": kld})),
                "every_candidate_measured": c.probe_all,
                "candidates": c.candidates.iter().map(|x| json!({"type": x.ty.name(), "bytes": x.bytes, "weighted_error": x.werr, "predicted_kld": x.loss, "kept": x.kept, "gptq": x.gptq})).collect::<Vec<_>>(),
            })
        })
        .collect();
    // The front thinned to about 60 points (every upgrade is a point), measured ones kept.
    let step = (r.front.len() / 60).max(1);
    let front: Vec<_> = r.front.iter().enumerate().filter(|(i, p)| i % step == 0 || p.measured_kld.is_some() || *i == r.front.len() - 1).map(|(_, p)| json!({"file_bytes": p.file_bytes, "predicted_kld": p.predicted_kld, "measured_kld": p.measured_kld})).collect();
    json!({
        "input": input,
        "output": args.output.display().to_string(),
        "calibration": args.calib.display().to_string(),
        "imatrix": args.imatrix.as_ref().map(|p| p.display().to_string()),
        "imatrix_chunks": r.imatrix_chunks,
        "awq": r.scaling.as_ref().map(|s| { let a = s.summary(); json!({"type": args.awq_type.map(|t| t.name()), "groups": a.groups, "scaled": a.scaled, "mean_alpha": a.mean_alpha, "calibration_error_ratio": a.error_ratio}) }),
        "awq_check": r.awq_check.map(|(without, with)| json!({"measured_kld_unscaled": without, "measured_kld_scaled": with, "scaled_written": with < without})),
        "probe_tokens": r.probe_tokens,
        "goal": {"max_size": args.max_size, "max_bpw": args.max_bpw, "min_quality": args.min_quality},
        "file_bytes": r.summary.file_bytes,
        "bits_per_weight": 8.0 * r.summary.file_bytes as f64 / r.params.max(1) as f64,
        "predicted_kld": r.chosen.loss,
        "measured_kld": r.measured_kld,
        "types": by_type(r).into_iter().map(|(ty, (n, p, b))| json!({"type": ty.name(), "matrices": n, "parameters": p, "bytes": b})).collect::<Vec<_>>(),
        "seconds": secs,
        "threads": threads,
        "plan": plan,
        "front": front,
    })
}

fn markdown(r: &FitReport, doc: &serde_json::Value) -> String {
    let mut s = String::from("# smelt fit\n\n");
    s.push_str(&format!(
        "- input: `{}`\n- output: `{}` ({}, {:.3} bits per weight)\n",
        doc["input"].as_str().unwrap_or(""),
        doc["output"].as_str().unwrap_or(""),
        bytes(r.summary.file_bytes),
        doc["bits_per_weight"].as_f64().unwrap_or(0.0)
    ));
    s.push_str(&format!(
        "- calibration: `{}`; KLD measured on {} held tokens\n",
        doc["calibration"].as_str().unwrap_or(""),
        r.probe_tokens
    ));
    s.push_str(&format!(
        "- mean KLD: predicted {:.5}, measured {:.5}\n\n",
        r.chosen.loss, r.measured_kld
    ));
    s.push_str("## Front (size against KLD)\n\n| file size | predicted KLD | measured KLD |\n|---|---|---|\n");
    for p in doc["front"].as_array().into_iter().flatten() {
        let m = p["measured_kld"]
            .as_f64()
            .map_or(String::new(), |v| format!("{v:.5}"));
        s.push_str(&format!(
            "| {} | {:.5} | {m} |\n",
            bytes(p["file_bytes"].as_u64().unwrap_or(0)),
            p["predicted_kld"].as_f64().unwrap_or(0.0)
        ));
    }
    s.push_str("\n## Plan\n\n| tensor | from | to | size | predicted KLD | probe (type: KLD) |\n|---|---|---|---|---|---|\n");
    for (c, &k) in r.choices.iter().zip(&r.chosen.choice) {
        let ch = &c.candidates[k];
        let probe = c
            .probe
            .map_or(String::new(), |(ty, kld)| format!("{ty}: {kld:.5}"));
        let to = match (ch.kept, ch.gptq) {
            (true, _) => format!("{} (kept)", ch.ty),
            (false, true) => format!("{} (GPTQ)", ch.ty),
            (false, false) => ch.ty.to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {to} | {} | {:.6} | {probe} |\n",
            c.name,
            c.source,
            bytes(ch.bytes),
            ch.loss
        ));
    }
    s
}
