//! `smelt inspect`: one record per model file, printed as tables or as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use smelt_formats::gguf::GgufValue;
use smelt_formats::safetensors::SafetensorsFile;
use smelt_formats::GgufFile;

use crate::cli::InspectArgs;
use crate::fmt::{bytes, count};

/// One tensor as reported.
struct Tensor {
    name: String,
    ty: String,
    bits: f64,
    shape: Vec<u64>,
    params: u64,
    bytes: u64,
}

/// Everything `inspect` reports about a file.
struct Report {
    path: PathBuf,
    format: String,
    file_bytes: u64,
    architecture: Option<String>,
    name: Option<String>,
    tensors: Vec<Tensor>,
    /// (key, type name, rendered value, JSON value)
    metadata: Vec<(String, String, String, Value)>,
    /// Tensor types only smelt reads (the 2:4 sparse ones): llama.cpp cannot load the file.
    smelt_only: Vec<String>,
}

impl Report {
    fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.params).sum()
    }

    fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    fn bits_per_weight(&self) -> f64 {
        8.0 * self.tensor_bytes() as f64 / self.params().max(1) as f64
    }

    /// Per type: (tensors, params, bytes), in order of total bytes.
    fn by_type(&self) -> Vec<(String, u64, u64, u64)> {
        let mut m: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for t in &self.tensors {
            let e = m.entry(t.ty.clone()).or_default();
            *e = (e.0 + 1, e.1 + t.params, e.2 + t.bytes);
        }
        let mut v: Vec<_> = m.into_iter().map(|(k, (n, p, b))| (k, n, p, b)).collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.3));
        v
    }
}

const ARRAY_HEAD: usize = 16;

fn gguf_report(path: &Path, full_arrays: bool) -> Result<Report> {
    let f = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let h = &f.header;
    let tensors = h
        .tensors
        .iter()
        .map(|t| Tensor { name: t.name.clone(), ty: t.ty.name().into(), bits: t.ty.bits_per_weight(), shape: t.dims.clone(), params: t.n_elements, bytes: t.n_bytes })
        .collect();
    let metadata = h
        .metadata
        .iter()
        .map(|(k, v)| {
            let ty = match v {
                GgufValue::Array(a) => format!("ARRAY[{}]", smelt_formats::gguf::value::type_name(a.elem_type_id())),
                _ => v.type_name().to_string(),
            };
            let json = match v {
                GgufValue::Array(a) if !full_arrays && a.len() > ARRAY_HEAD => {
                    let head: Vec<Value> = match a.to_json() {
                        Value::Array(items) => items.into_iter().take(ARRAY_HEAD).collect(),
                        _ => vec![],
                    };
                    json!({"len": a.len(), "head": head})
                }
                _ => v.to_json(),
            };
            (k.to_string(), ty, v.render(60), json)
        })
        .collect();
    let mut smelt_only: Vec<String> = h.tensors.iter().filter(|t| t.ty.is_smelt_only()).map(|t| t.ty.name().to_string()).collect();
    smelt_only.sort();
    smelt_only.dedup();
    Ok(Report {
        smelt_only,
        path: path.into(),
        format: format!("GGUF v{}, alignment {}", h.version, h.alignment),
        file_bytes: h.file_len,
        architecture: h.architecture().map(String::from),
        name: h.get("general.name").and_then(|v| v.as_str()).map(String::from),
        tensors,
        metadata,
    })
}

fn safetensors_report(path: &Path) -> Result<Report> {
    let (file, config) = if path.is_dir() { (path.join("model.safetensors"), Some(path.join("config.json"))) } else { (path.to_path_buf(), None) };
    let st = SafetensorsFile::open(&file).with_context(|| format!("reading {}", file.display()))?;
    let tensors = st
        .tensors()
        .iter()
        .map(|t| {
            let bits = t.dtype.bitsize() as f64;
            Tensor {
                name: t.name.clone(),
                ty: format!("{:?}", t.dtype),
                bits,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                params: t.n_elements() as u64,
                bytes: (t.end - t.start) as u64,
            }
        })
        .collect();
    let mut metadata: Vec<(String, String, String, Value)> =
        st.metadata.iter().map(|(k, v)| (format!("__metadata__.{k}"), "STRING".into(), format!("{v:?}"), json!(v))).collect();
    let mut architecture = None;
    if let Some(cfg) = config.filter(|c| c.exists()) {
        let text = std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
        architecture = v.get("model_type").and_then(|m| m.as_str()).map(String::from);
        if let Value::Object(map) = v {
            for (k, val) in map {
                let rendered = val.to_string();
                let rendered = if rendered.len() > 60 { format!("{}...", &rendered[..rendered.char_indices().nth(57).map_or(rendered.len(), |c| c.0)]) } else { rendered };
                metadata.push((format!("config.{k}"), "JSON".into(), rendered, val));
            }
        }
    }
    Ok(Report {
        smelt_only: Vec::new(),
        file_bytes: std::fs::metadata(&file)?.len(),
        path: file,
        format: "safetensors".into(),
        architecture,
        name: None,
        tensors,
        metadata,
    })
}

fn onnx_report(path: &Path) -> Result<Report> {
    let f = smelt_formats::onnx::OnnxFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let tensors = f
        .initializers
        .iter()
        .map(|t| {
            let (ty, bits) = smelt_formats::onnx::data_type_name(t.data_type);
            Tensor { name: t.name.clone(), ty: ty.into(), bits: bits as f64, shape: t.dims.iter().map(|&d| d.max(0) as u64).collect(), params: t.n_elements().unwrap_or(0), bytes: t.stored_bytes() as u64 }
        })
        .collect();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &f.nodes {
        *ops.entry(n.op_type.as_str()).or_default() += 1;
    }
    let metadata = ops.iter().map(|(op, n)| (format!("graph.ops.{op}"), "COUNT".into(), n.to_string(), json!(n))).collect();
    let architecture = f.initializers.iter().any(|t| t.name.ends_with("embeddings.word_embeddings.weight")).then(|| "bert".to_string());
    Ok(Report {
        smelt_only: Vec::new(),
        file_bytes: std::fs::metadata(path)?.len(),
        path: path.into(),
        format: format!("ONNX, {} nodes", f.nodes.len()),
        architecture,
        name: None,
        tensors,
        metadata,
    })
}

/// Formats `inspect` reads, for the message when a file is none of them.
const FORMATS: &str = "GGUF files, safetensors files, HF model directories (config.json + model.safetensors) and ONNX files";

/// Which reader a path needs: by what the path is (a directory), its extension, then its first
/// bytes.
fn report(path: &Path, full_arrays: bool) -> Result<Report> {
    if path.is_dir() {
        if path.join("model.safetensors").exists() {
            return safetensors_report(path);
        }
        let onnx = std::fs::read_dir(path)?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "onnx"));
        return match onnx {
            Some(p) => onnx_report(&p),
            None => anyhow::bail!("{} is a directory without model.safetensors or an .onnx file; smelt inspect reads {FORMATS}", path.display()),
        };
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => return safetensors_report(path),
        Some("onnx") => return onnx_report(path),
        Some("gguf") => return gguf_report(path, full_arrays),
        _ => {}
    }
    let mut head = [0u8; 9];
    let n = std::io::Read::read(&mut std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?, &mut head)?;
    if head[..n.min(4)] == b"GGUF"[..n.min(4)] && n >= 4 {
        gguf_report(path, full_arrays)
    } else if n == 9 && head[8] == b'{' {
        safetensors_report(path)
    } else {
        onnx_report(path).map_err(|e| anyhow::anyhow!("{} is not a model file smelt reads ({e}); smelt inspect reads {FORMATS}", path.display()))
    }
}

fn to_json(r: &Report) -> Value {
    json!({
        "file": r.path.display().to_string(),
        "format": r.format,
        "file_bytes": r.file_bytes,
        "shape_order": if r.format.starts_with("GGUF") { "ggml: innermost (row length) first" } else { "row-major: outermost first" },
        "architecture": r.architecture,
        "name": r.name,
        "smelt_only_types": r.smelt_only,
        "summary": {
            "parameters": r.params(),
            "tensors": r.tensors.len(),
            "tensor_bytes": r.tensor_bytes(),
            "bits_per_weight": r.bits_per_weight(),
        },
        "types": r.by_type().iter().map(|(ty, n, p, b)| json!({
            "type": ty, "tensors": n, "parameters": p, "bytes": b, "bits_per_weight": 8.0 * *b as f64 / (*p).max(1) as f64,
        })).collect::<Vec<_>>(),
        "metadata": r.metadata.iter().map(|(k, ty, _, v)| (k.clone(), json!({"type": ty, "value": v}))).collect::<serde_json::Map<_, _>>(),
        "tensors": r.tensors.iter().map(|t| json!({
            "name": t.name, "type": t.ty, "shape": t.shape, "parameters": t.params, "bytes": t.bytes, "bits_per_weight": t.bits,
        })).collect::<Vec<_>>(),
    })
}

fn print_human(r: &Report, summary: bool, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "file          {}", r.path.display())?;
    writeln!(out, "format        {}, {}", r.format, bytes(r.file_bytes))?;
    let arch = r.architecture.as_deref().unwrap_or("unknown");
    match &r.name {
        Some(n) => writeln!(out, "architecture  {arch} ({n:?})")?,
        None => writeln!(out, "architecture  {arch}")?,
    }
    writeln!(out, "parameters    {} in {} tensors", count(r.params()), r.tensors.len())?;
    writeln!(out, "size          {} of tensor data, {:.3} bits per weight", bytes(r.tensor_bytes()), r.bits_per_weight())?;
    if !r.smelt_only.is_empty() {
        writeln!(out, "smelt only    {} (2:4 sparse) is smelt's own type: llama.cpp and the gguf package cannot read this file; `smelt quantize FILE OUT --to Q4_0` makes a dense one", r.smelt_only.join(", "))?;
    }
    writeln!(out)?;
    writeln!(out, "{:<10} {:>8} {:>12} {:>10} {:>8}", "type", "tensors", "parameters", "size", "bits/w")?;
    for (ty, n, p, b) in r.by_type() {
        writeln!(out, "{:<10} {:>8} {:>12} {:>10} {:>8.3}", ty, n, count(p), bytes(b), 8.0 * b as f64 / p.max(1) as f64)?;
    }
    if summary {
        return Ok(());
    }
    writeln!(out, "\nmetadata ({} keys)", r.metadata.len())?;
    let kw = r.metadata.iter().map(|m| m.0.len()).max().unwrap_or(0).min(48);
    for (k, ty, rendered, _) in &r.metadata {
        writeln!(out, "  {k:<kw$}  {ty:<14} {rendered}")?;
    }
    writeln!(out, "\ntensors ({})", r.tensors.len())?;
    let nw = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0).min(48);
    writeln!(out, "  {:<nw$}  {:<6} {:<18} {:>10} {:>10}", "name", "type", "shape", "parameters", "size")?;
    for t in &r.tensors {
        writeln!(out, "  {:<nw$}  {:<6} {:<18} {:>10} {:>10}", t.name, t.ty, format!("{:?}", t.shape), count(t.params), bytes(t.bytes))?;
    }
    Ok(())
}

pub fn run(args: &InspectArgs, quiet: bool) -> Result<()> {
    let path = crate::resolve_model(&args.model, quiet)?;
    let report = report(&path, args.full_arrays)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &to_json(&report))?;
        writeln!(out)?;
    } else {
        print_human(&report, args.summary, &mut out)?;
    }
    out.flush()?;
    Ok(())
}
