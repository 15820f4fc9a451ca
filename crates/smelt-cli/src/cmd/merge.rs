//! `smelt merge MODEL ADAPTER -o OUT`: a LoRA adapter merged into its base GGUF
//! (`smelt_compress::merge`).

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;
use smelt_compress::imatrix::Imatrix;
use smelt_compress::merge::merge_adapter;
use smelt_formats::GgufFile;
use smelt_models::lora::LoraAdapter;

use crate::cli::{Global, MergeArgs};
use crate::progress::Progress;

pub fn run(args: &MergeArgs, g: &Global) -> Result<()> {
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let input = crate::resolve_model(&args.model, g.quiet)?;
    let file = GgufFile::open(&input).with_context(|| format!("reading {}", input.display()))?;
    let adapter = LoraAdapter::open(&args.adapter).with_context(|| format!("reading the adapter {}", args.adapter.display()))?;
    let imatrix = args.imatrix.as_deref().map(|p| Imatrix::read(p).with_context(|| format!("reading the importance matrix {}", p.display()))).transpose()?;
    let total: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let mut bar = Progress::new("merge", total, true, g.quiet);
    let summary = merge_adapter(&file, &adapter, args.scale, args.to, imatrix.as_ref(), &args.output, &g.pool(), &mut |p| bar.inc(p.t.n_bytes, &p.t.name))?;
    bar.finish();
    let types: serde_json::Map<String, serde_json::Value> = summary.types.iter().map(|(t, s)| (t.name().to_string(), json!({"tensors": s.tensors, "bytes": s.bytes, "relative_rms_change": s.relative_rms()}))).collect();
    let out = json!({"model": input.display().to_string(), "adapter": args.adapter.display().to_string(), "merged_matrices": adapter.pairs.len(), "scale": args.scale, "imatrix": args.imatrix.as_ref().map(|p| p.display().to_string()), "weighted_tensors": summary.weighted, "types": types, "bytes": summary.file_bytes, "output": args.output.display().to_string()});
    let mut o = std::io::stdout().lock();
    if args.json {
        writeln!(o, "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        writeln!(o, "merged     {} adapted matrices of {} into {}", adapter.pairs.len(), args.adapter.display(), input.display())?;
        for (t, s) in &summary.types {
            writeln!(o, "  {:<8} {:>4} tensors, relative RMS change {:.4}", t.name(), s.tensors, s.relative_rms())?;
        }
        writeln!(o, "wrote      {} ({:.1} MB)", args.output.display(), summary.file_bytes as f64 / 1e6)?;
    }
    Ok(())
}
