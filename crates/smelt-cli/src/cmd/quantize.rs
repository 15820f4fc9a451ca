//! `smelt quantize IN OUT --to TYPE`: round-to-nearest re-quantization of a GGUF model.
//!
//! Every tensor is dequantized with the reference dequantizer and quantized with the reference
//! quantizer of its target type, rows split across threads; the file is streamed to a
//! temporary path and renamed into place when complete. The summary reports, per target type,
//! the relative RMS error of the written weights against the input weights.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_formats::fsutil::write_atomic;
use smelt_formats::gguf::{GgufValue, GgufWriter, TensorSpec};
use smelt_formats::quant::{dequantize, quantize};
use smelt_formats::{GgmlType, GgufError, GgufFile, TensorInfo};
use smelt_kernels::pool::{Disjoint, ThreadPool};

use crate::cli::{Global, QuantizeArgs};
use crate::fmt::bytes;
use crate::progress::Progress;

/// What happens to one tensor.
struct Plan<'a> {
    t: &'a TensorInfo,
    target: GgmlType,
    note: Option<String>,
}

/// llama.cpp's fallback (`tensor_type_fallback`, as of the llama.cpp in PEERS.md) when a
/// matrix's rows are not a whole number of the target's blocks.
fn fallback(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// llama.cpp's `general.file_type` for a file made mostly of `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 14,
        GgmlType::Q5_K => 16,
        GgmlType::Q6_K => 18,
        GgmlType::IQ4_NL => 25,
        GgmlType::BF16 => 32,
        _ => 1024,
    }
}

fn plan<'a>(file: &'a GgufFile, args: &QuantizeArgs) -> Result<Vec<Plan<'a>>> {
    let mut plans = Vec::new();
    for t in file.tensors() {
        if let Some(p) = args.keep.iter().find(|p| glob(p, &t.name)) {
            plans.push(Plan { t, target: t.ty, note: Some(format!("kept (--keep {p})")) });
            continue;
        }
        if t.dims.len() < 2 {
            plans.push(Plan { t, target: t.ty, note: None });
            continue;
        }
        let wanted = match t.name.as_str() {
            "token_embd.weight" => args.embed_type.unwrap_or(args.to),
            "output.weight" => args.output_type.unwrap_or(args.to),
            _ => args.to,
        };
        if wanted == t.ty {
            plans.push(Plan { t, target: t.ty, note: None });
            continue;
        }
        if !t.ty.can_dequantize() {
            bail!("tensor {} is {}, which smelt cannot read back to re-quantize; keep it with --keep '{}'", t.name, t.ty, t.name);
        }
        let mut target = wanted;
        let mut note = None;
        while t.row_len() % target.block_elems() as u64 != 0 {
            let next = fallback(target);
            note = Some(format!("rows of {} are not a multiple of {}'s {}; using {next}", t.row_len(), target, target.block_elems()));
            target = next;
        }
        plans.push(Plan { t, target, note });
    }
    Ok(plans)
}

/// A writer that counts what passes through it (the output may be a pipe or a device, whose
/// size cannot be asked afterwards).
struct Counted<'a, W: std::io::Write> {
    inner: W,
    bytes: &'a mut u64,
}

impl<W: std::io::Write> std::io::Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Squared error and energy of the written weights, per target type.
#[derive(Default, Clone, Copy)]
struct ErrStat {
    err2: f64,
    x2: f64,
    params: u64,
    bytes: u64,
    tensors: u64,
}

/// Re-quantizes one tensor's rows in parallel; returns the bytes and (err2, x2).
fn convert(pool: &ThreadPool, t: &TensorInfo, data: &[u8], target: GgmlType) -> Result<(Vec<u8>, f64, f64)> {
    let cols = t.row_len() as usize;
    let rows = t.n_rows() as usize;
    let src_row = t.ty.bytes_for(cols as u64).context("source row size")? as usize;
    let dst_row = target.bytes_for(cols as u64).context("target row size")? as usize;
    let mut out = vec![0u8; rows * dst_row];
    let sink = Disjoint::new(&mut out);
    let acc = Mutex::new((0.0f64, 0.0f64, None::<String>));
    let chunk = rows.div_ceil(pool.n_threads() * 8).max(1);
    pool.for_chunks(rows, chunk, &|r| {
        let n = r.len() * cols;
        let (mut x, mut back) = (vec![0f32; n], vec![0f32; n]);
        // SAFETY: row chunks are disjoint.
        let o = unsafe { sink.slice(r.start * dst_row..r.end * dst_row) };
        let res = dequantize(t.ty, &data[r.start * src_row..r.end * src_row], &mut x)
            .and_then(|()| quantize(target, &x, o))
            .and_then(|()| dequantize(target, o, &mut back));
        let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(()) => {
                for (p, q) in x.iter().zip(&back) {
                    a.0 += ((p - q) as f64).powi(2);
                    a.1 += (*p as f64).powi(2);
                }
            }
            Err(e) => a.2 = Some(e.to_string()),
        }
    });
    let (err2, x2, failure) = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = failure {
        bail!("tensor {}: {e}", t.name);
    }
    // A NaN or infinity anywhere in the input makes the sum of squares non-finite.
    if !x2.is_finite() {
        bail!("tensor {} holds NaN or infinite values: the input file is corrupt", t.name);
    }
    Ok((out, err2, x2))
}

pub fn run(args: &QuantizeArgs, global: &Global) -> Result<()> {
    write(args, global, true)
}

/// Writes the re-quantized file; prints the summary when `report` is set.
pub fn write(args: &QuantizeArgs, global: &Global, report: bool) -> Result<()> {
    let input = crate::resolve_model(&args.input, global.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let plans = plan(&file, args)?;
    if args.dry_run {
        return print_plan(&plans, args.json);
    }
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    if let (Ok(a), Ok(b)) = (args.output.canonicalize(), input.canonicalize()) {
        if a == b {
            bail!("OUT is the input file {}; write to another path", input.display());
        }
    }
    let start = Instant::now();
    let pool = global.pool();
    let mut meta = file.header.metadata.clone();
    meta.set("general.file_type", GgufValue::U32(file_type(args.to)));
    meta.set("general.quantized_by", GgufValue::String(format!("smelt {}", env!("CARGO_PKG_VERSION"))));
    let specs: Vec<TensorSpec> = plans.iter().map(|p| TensorSpec { name: p.t.name.clone(), dims: p.t.dims.clone(), ty: p.target }).collect();
    let total: u64 = plans.iter().map(|p| p.t.n_bytes).sum();
    let mut progress = Progress::new("quantize", total, true, global.quiet);
    let mut stats: BTreeMap<GgmlType, ErrStat> = BTreeMap::new();
    let mut out_bytes = 0u64;
    write_atomic(
        &args.output,
        |w| -> Result<()> {
            let mut gw = GgufWriter::new(Counted { inner: &mut *w, bytes: &mut out_bytes }, file.header.version, &meta, specs)?;
            for p in &plans {
                let data = file.tensor_data(p.t);
                let s = stats.entry(p.target).or_default();
                s.params += p.t.n_elements;
                s.tensors += 1;
                if p.target == p.t.ty {
                    if p.t.ty.is_float() && !smelt_kernels::math::all_finite(&file.tensor_f32(p.t)?) {
                        bail!("tensor {} holds NaN or infinite values: the input file is corrupt", p.t.name);
                    }
                    gw.write_tensor(data)?;
                    s.bytes += data.len() as u64;
                } else {
                    let (bytes, err2, x2) = convert(&pool, p.t, data, p.target)?;
                    gw.write_tensor(&bytes)?;
                    (s.err2, s.x2, s.bytes) = (s.err2 + err2, s.x2 + x2, s.bytes + bytes.len() as u64);
                }
                progress.inc(p.t.n_bytes, &format!("{} -> {}", p.t.name, p.target));
            }
            gw.finish()?;
            Ok(())
        },
        |path, source| anyhow::Error::new(GgufError::Write { path, source }),
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    progress.finish();
    if !report {
        return Ok(());
    }
    summary(&file, &plans, &stats, &input, args, out_bytes, start.elapsed().as_secs_f64(), pool.n_threads())
}

fn print_plan(plans: &[Plan], json_out: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json_out {
        let v: Vec<_> = plans.iter().map(|p| json!({"name": p.t.name, "from": p.t.ty.name(), "to": p.target.name(), "dims": p.t.dims, "note": p.note})).collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        let w = plans.iter().map(|p| p.t.name.len()).max().unwrap_or(4);
        for p in plans {
            writeln!(out, "{:<w$}  {:<6} -> {:<6} {}", p.t.name, p.t.ty.name(), p.target.name(), p.note.as_deref().unwrap_or(""))?;
        }
    }
    out.flush()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summary(file: &GgufFile, plans: &[Plan], stats: &BTreeMap<GgmlType, ErrStat>, input: &std::path::Path, args: &QuantizeArgs, out_bytes: u64, secs: f64, threads: usize) -> Result<()> {
    let params = file.header.n_params();
    let in_bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let written: u64 = stats.values().map(|s| s.bytes).sum();
    let (err2, x2) = stats.values().fold((0.0, 0.0), |a, s| (a.0 + s.err2, a.1 + s.x2));
    let rel = |e: f64, x: f64| if x > 0.0 { (e / x).sqrt() } else { 0.0 };
    let fallbacks: Vec<&Plan> = plans.iter().filter(|p| p.note.as_deref().is_some_and(|n| n.starts_with("rows"))).collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let v = json!({
            "input": input.display().to_string(),
            "output": args.output.display().to_string(),
            "target": args.to.name(),
            "parameters": params,
            "input_tensor_bytes": in_bytes,
            "output_tensor_bytes": written,
            "output_file_bytes": out_bytes,
            "input_bits_per_weight": 8.0 * in_bytes as f64 / params as f64,
            "output_bits_per_weight": 8.0 * written as f64 / params as f64,
            "weight_relative_rms_error": rel(err2, x2),
            "seconds": secs,
            "threads": threads,
            "types": stats.iter().map(|(ty, s)| json!({
                "type": ty.name(), "tensors": s.tensors, "parameters": s.params, "bytes": s.bytes,
                "weight_relative_rms_error": rel(s.err2, s.x2),
            })).collect::<Vec<_>>(),
            "fallbacks": fallbacks.iter().map(|p| json!({"name": p.t.name, "to": p.target.name(), "why": p.note})).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "wrote      {} ({})", args.output.display(), bytes(out_bytes))?;
        writeln!(out, "from       {} ({})", input.display(), bytes(file.header.file_len))?;
        writeln!(out, "size       {:.3} -> {:.3} bits per weight ({} -> {} of tensor data)", 8.0 * in_bytes as f64 / params as f64, 8.0 * written as f64 / params as f64, bytes(in_bytes), bytes(written))?;
        writeln!(out, "\n{:<8} {:>8} {:>12} {:>10}  weight error (relative RMS vs input)", "type", "tensors", "size", "bits/w")?;
        for (ty, s) in stats {
            let e = if s.x2 > 0.0 { format!("{:.4}", rel(s.err2, s.x2)) } else { "unchanged".into() };
            writeln!(out, "{:<8} {:>8} {:>12} {:>10.3}  {}", ty.name(), s.tensors, bytes(s.bytes), 8.0 * s.bytes as f64 / s.params.max(1) as f64, e)?;
        }
        writeln!(out, "overall weight error {:.4}", rel(err2, x2))?;
        if !fallbacks.is_empty() {
            let mut why: BTreeMap<String, usize> = BTreeMap::new();
            for p in &fallbacks {
                *why.entry(p.note.clone().unwrap_or_default()).or_default() += 1;
            }
            for (w, n) in why {
                writeln!(out, "fallback   {n} tensors: {w}")?;
            }
        }
        writeln!(out, "time       {secs:.1} s on {threads} threads")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("blk.0.*", "blk.0.attn_q.weight"));
        assert!(!glob("blk.0.*", "blk.10.attn_q.weight"));
        assert!(glob("*.attn_v.weight", "blk.3.attn_v.weight"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("token_embd.weight", "token_embd.weight"));
    }

    #[test]
    fn fallbacks_end_in_a_type_that_fits_any_row() {
        for ty in GgmlType::weight_targets() {
            let mut t = ty;
            for _ in 0..4 {
                t = fallback(t);
            }
            assert_eq!(t.block_elems(), 1, "{ty} falls back to {t}");
        }
    }
}
