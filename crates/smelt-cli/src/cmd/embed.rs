//! `smelt embed`: texts in, sentence embeddings out (JSON lines or .npy), in throughput mode
//! (everything read, sorted and packed into batches) or streaming mode (each line embedded as it
//! arrives).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_formats::npy::{read_npy, write_npy, NpyArray, NpyData};
use smelt_kernels::pool::ThreadPool;
use smelt_models::embed_quant::{self, Precision};
use smelt_models::{EmbedOptions, Encoder, Window};

use crate::cli::{EmbedArgs, EmbedFormat, EmbedInput, EmbedPrecision, Global};
use crate::progress::Progress;

pub use smelt_formats::texts::TextItem as Item;

/// Texts per call of the encoder in throughput mode (sorting and progress granularity).
const CHUNK: usize = 2048;

fn precision(p: EmbedPrecision) -> Precision {
    match p {
        EmbedPrecision::Float32 => Precision::Float32,
        EmbedPrecision::Int8 => Precision::Int8,
        EmbedPrecision::Uint8 => Precision::Uint8,
        EmbedPrecision::Binary => Precision::Binary,
        EmbedPrecision::Ubinary => Precision::Ubinary,
    }
}

pub fn read_all(path: Option<&Path>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match path {
        None => {
            std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
        }
        Some(p) => bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    }
    Ok(bytes)
}

/// The texts of an input (`name` says where they came from, in errors).
pub fn parse_all(bytes: &[u8], jsonl: bool, name: &str) -> Result<Vec<Item>> {
    smelt_formats::texts::parse_lines(bytes, jsonl).with_context(|| format!("reading {name}"))
}

/// How an input is named in messages.
pub fn input_name(path: Option<&Path>) -> String {
    path.map_or("standard input".into(), |p| p.display().to_string())
}

/// The int8/uint8 ranges: from --ranges, from --calibration texts, or from `fallback` rows.
fn ranges(args: &EmbedArgs, enc: &Encoder, pool: &ThreadPool, opts: &EmbedOptions, fallback: Option<&[Vec<f32>]>, quiet: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let dim = enc.dim();
    if let Some(p) = &args.ranges {
        let a = read_npy(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?).with_context(|| format!("reading {}", p.display()))?;
        if a.shape != [2, dim] {
            bail!("{}: ranges must have shape [2, {dim}] (minima, maxima), found {:?}", p.display(), a.shape);
        }
        let v = a.data.to_f32();
        let (lo, hi) = (v[..dim].to_vec(), v[dim..].to_vec());
        if let Some(j) = (0..dim).find(|&j| !(lo[j].is_finite() && hi[j].is_finite() && lo[j] <= hi[j])) {
            bail!("{}: dimension {j} has the range [{}, {}]; every minimum and maximum must be finite, the minimum no larger", p.display(), lo[j], hi[j]);
        }
        return Ok((lo, hi));
    }
    let rows: Vec<Vec<f32>> = if let Some(p) = &args.calibration {
        let items = parse_all(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?, false, &p.display().to_string())?;
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        enc.embed(pool, &texts, opts)?
    } else {
        let rows = fallback.context("--precision int8/uint8 in streaming mode needs --ranges or --calibration")?;
        if !quiet {
            eprintln!("warning: int8/uint8 ranges computed from the input itself; pass --calibration or --ranges so that every run shares them");
        }
        rows.to_vec()
    };
    if rows.is_empty() {
        bail!("no calibration embeddings: the calibration input is empty");
    }
    Ok(embed_quant::ranges(rows.iter().map(Vec::as_slice), dim))
}

/// Writes the embeddings as JSON lines (numbered from `first`) or .npy.
#[allow(clippy::too_many_arguments)]
fn write_output(w: &mut dyn Write, items: &[Item], rows: &[Vec<f32>], p: Precision, lohi: &(Vec<f32>, Vec<f32>), format: EmbedFormat, dim: usize, first: usize) -> std::io::Result<()> {
    let width = p.width(dim);
    let mut q = vec![0u8; width];
    match format {
        EmbedFormat::Jsonl => {
            for (i, (item, row)) in (first..).zip(items.iter().zip(rows)) {
                let emb = match p {
                    Precision::Float32 => json!(row),
                    Precision::Int8 | Precision::Binary => {
                        embed_quant::quantize(row, p, &lohi.0, &lohi.1, &mut q);
                        json!(q.iter().map(|&b| b as i8).collect::<Vec<_>>())
                    }
                    _ => {
                        embed_quant::quantize(row, p, &lohi.0, &lohi.1, &mut q);
                        json!(q)
                    }
                };
                let rec = match &item.id {
                    Some(id) => json!({"index": i, "id": id, "embedding": emb}),
                    None => json!({"index": i, "embedding": emb}),
                };
                serde_json::to_writer(&mut *w, &rec)?;
                w.write_all(b"\n")?;
            }
        }
        EmbedFormat::Npy => {
            let shape = vec![rows.len(), width];
            let data = match p {
                Precision::Float32 => NpyData::F32(rows.concat()),
                _ => {
                    let mut all = Vec::with_capacity(rows.len() * width);
                    for row in rows {
                        embed_quant::quantize(row, p, &lohi.0, &lohi.1, &mut q);
                        all.extend_from_slice(&q);
                    }
                    if matches!(p, Precision::Int8 | Precision::Binary) {
                        NpyData::I8(all.into_iter().map(|b| b as i8).collect())
                    } else {
                        NpyData::U8(all)
                    }
                }
            };
            write_npy(w, &NpyArray { shape, data })?;
        }
    }
    Ok(())
}

fn to_path_or_stdout(output: Option<&PathBuf>, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    match output {
        Some(p) => smelt_formats::fsutil::write_atomic_io(p, |w| write(w)).with_context(|| format!("writing {}", p.display())),
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            write(&mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

pub fn run(args: &EmbedArgs, global: &Global) -> Result<()> {
    let input = args.input.as_deref().filter(|p| p.as_os_str() != "-");
    let jsonl = match args.input_kind {
        Some(k) => k == EmbedInput::Jsonl,
        None => input.is_some_and(|p| p.extension().is_some_and(|e| e == "jsonl")),
    };
    let format = args.format.unwrap_or(if args.output.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "npy")) { EmbedFormat::Npy } else { EmbedFormat::Jsonl });
    if format == EmbedFormat::Npy && args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("--format npy writes binary data: give -o FILE.npy or redirect stdout");
    }
    if args.batch_size == 0 || args.batch_tokens == 0 {
        bail!("--batch-size and --batch-tokens must be at least 1");
    }
    for p in args.output.iter().chain(&args.save_ranges) {
        smelt_formats::fsutil::check_output(p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let path = crate::resolve_model(&args.model, global.quiet)?;
    let mut enc = Encoder::load(&path, args.as_type).with_context(|| format!("loading {}", path.display()))?;
    if let Some(spec) = &args.int8 {
        enc.quantize_int8(&global.pool(), spec, None)?;
    }
    if let Some(m) = args.max_length {
        enc.set_max_len(m)?;
    }
    let window = args.window.map(|size| Window::new(size, args.stride, enc.max_len)).transpose()?;
    let normalize = if args.normalize { Some(true) } else if args.no_normalize { Some(false) } else { None };
    let opts = EmbedOptions { batch_size: args.batch_size, batch_tokens: args.batch_tokens, window, normalize };
    let pool = global.pool();
    let p = precision(args.precision);
    let dim = enc.dim();

    let stream = args.stream || (input.is_none() && std::io::stdin().is_terminal());
    if stream {
        if format == EmbedFormat::Npy {
            bail!("--stream writes JSON lines; .npy needs the whole input first");
        }
        let lohi = if p.needs_ranges() { ranges(args, &enc, &pool, &opts, None, global.quiet)? } else { Default::default() };
        let reader: Box<dyn BufRead> = match input {
            Some(f) => Box::new(std::io::BufReader::new(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?)),
            None => Box::new(std::io::stdin().lock()),
        };
        let mut out = std::io::stdout().lock();
        for (n, line) in reader.split(b'\n').enumerate() {
            let item = smelt_formats::texts::parse_line(&line.with_context(|| format!("reading {}", input_name(input)))?, n + 1, jsonl).with_context(|| format!("reading {}", input_name(input)))?;
            let row = enc.embed(&pool, &[item.text.as_str()], &opts)?;
            write_output(&mut out, std::slice::from_ref(&item), &row, p, &lohi, EmbedFormat::Jsonl, dim, n)?;
            out.flush()?;
        }
        return Ok(());
    }

    let items = parse_all(&read_all(input)?, jsonl, &input_name(input))?;
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(items.len());
    let mut bar = Progress::new("embedding", items.len() as u64, false, global.quiet);
    let t0 = std::time::Instant::now();
    for chunk in items.chunks(CHUNK) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
        rows.extend(enc.embed(&pool, &texts, &opts)?);
        bar.inc(chunk.len() as u64, "");
    }
    bar.finish();
    if !global.quiet && items.len() >= CHUNK {
        let s = t0.elapsed().as_secs_f64();
        eprintln!("embedded {} texts in {s:.1} s ({:.0} texts/s)", items.len(), items.len() as f64 / s);
    }
    let lohi = if p.needs_ranges() { ranges(args, &enc, &pool, &opts, Some(&rows), global.quiet)? } else { Default::default() };
    if let Some(save) = &args.save_ranges {
        if !p.needs_ranges() {
            bail!("--save-ranges applies to --precision int8 or uint8");
        }
        let data = NpyData::F32(lohi.0.iter().chain(&lohi.1).copied().collect());
        smelt_formats::fsutil::write_atomic_io(save, |w| write_npy(w, &NpyArray { shape: vec![2, dim], data })).with_context(|| format!("writing {}", save.display()))?;
    }
    to_path_or_stdout(args.output.as_ref(), |w| write_output(w, &items, &rows, p, &lohi, format, dim, 0))
}
