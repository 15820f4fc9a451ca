//! Options of the compression commands: quantize, imatrix, fit (and the sizes they parse).

use std::path::PathBuf;

use clap::Args;
use smelt_formats::GgmlType;

use super::parse_target;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF file or model name.
    #[arg(value_name = "IN")]
    pub input: String,
    /// Output GGUF path. Written to a temporary file and renamed into place when complete, so an
    /// existing file is replaced only by a finished one.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// Target type for weight matrices (see the table below; case-insensitive).
    #[arg(long = "to", value_name = "TYPE", value_parser = parse_target)]
    pub to: GgmlType,
    /// Type for the token embedding (token_embd.weight; also the output head of tied models).
    /// Default: the --to type.
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub embed_type: Option<GgmlType>,
    /// Type for a separate output head (output.weight). Default: the --to type.
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub output_type: Option<GgmlType>,
    /// Keep tensors whose name matches this glob (`*` matches any run) in their current type.
    /// Repeatable, e.g. --keep 'blk.0.*' --keep '*.attn_v.weight'.
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
    /// Importance matrix (from `smelt imatrix` or llama-imatrix, GGUF or .dat): every matrix it
    /// has an entry for is quantized minimizing the importance-weighted error.
    #[arg(long, value_name = "FILE", conflicts_with = "calib")]
    pub imatrix: Option<PathBuf>,
    /// Calibration text: importance vectors are gathered on it (as `smelt imatrix` does) and
    /// weight every block's search; with --gptq, the inputs' Hessians too. Use a text other
    /// than the one you evaluate on.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration: chunks of --calib-ctx tokens to run (default: all the text holds).
    #[arg(long, value_name = "N")]
    pub calib_chunks: Option<usize>,
    /// Calibration: tokens per chunk.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub calib_ctx: usize,
    /// Quantize every block matrix and the output head (the tied embedding included) with GPTQ
    /// (error feedback through the inverse Hessian of its inputs; needs --calib). Memory: the
    /// Hessians, 8 cols^2 bytes per input (0.8 GB for SmolLM2-135M).
    #[arg(long, requires = "calib")]
    pub gptq: bool,
    /// GPTQ: columns by descending Hessian diagonal (block scales decided first).
    #[arg(long, requires = "gptq")]
    pub act_order: bool,
    /// GPTQ: dampening, a fraction of the Hessian's mean diagonal added to it.
    #[arg(long, value_name = "X", default_value_t = 0.01, requires = "gptq")]
    pub damp: f64,
    /// AWQ: scale each matrix group's input channels by their calibration RMS to the power
    /// alpha (searched per group on a grid, minimizing the group's output error on --calib) and
    /// fold the inverse scales into the norms, V and up, so the file stays a plain GGUF. Needs
    /// --calib; memory as --gptq (the Hessians give the output error).
    #[arg(long, requires = "calib")]
    pub awq: bool,
    /// AWQ: points of the alpha grid (alpha = 0, 1/N, ..., (N-1)/N).
    #[arg(long, value_name = "N", default_value_t = 20, requires = "awq")]
    pub awq_grid: usize,
    /// Print the per-tensor plan and exit without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON summary (the plan, sizes and weight error) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImatrixFormat {
    Gguf,
    Dat,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// The model (a GGUF decoder or a name).
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Calibration text (UTF-8).
    #[arg(long, value_name = "FILE")]
    pub calib: PathBuf,
    /// The imatrix file to write (temporary file renamed into place when complete).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Tokens per chunk (llama-imatrix's -c).
    #[arg(short = 'c', long, value_name = "N", default_value_t = 512)]
    pub ctx: usize,
    /// Run at most N chunks (default: all the text holds).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Also gather the output head's input (llama-imatrix's --process-output).
    #[arg(long)]
    pub process_output: bool,
    /// File form (default: dat for a .dat name, else gguf).
    #[arg(long, value_enum)]
    pub output_format: Option<ImatrixFormat>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("goal").required(true).args(["max_size", "max_bpw", "min_quality"]))]
pub struct FitArgs {
    /// The model (a GGUF decoder or a name).
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// The GGUF file to write (temporary file renamed into place when complete).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Largest file size, e.g. 78MB (10^6 bytes), 75MiB, 80000000.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub max_size: Option<u64>,
    /// Largest size in bits per weight over the whole file (its bytes x 8 / its parameters).
    #[arg(long, value_name = "X")]
    pub max_bpw: Option<f64>,
    /// Instead of a size: the smallest file whose predicted mean KL divergence from the
    /// original (nats per token) is at most this.
    #[arg(long, value_name = "X")]
    pub min_quality: Option<f64>,
    /// Calibration text (UTF-8): importance vectors and the sensitivity probes.
    #[arg(long, value_name = "FILE")]
    pub calib: PathBuf,
    /// Importance matrix to use instead of gathering one (llama-imatrix's or smelt's; an entry
    /// for the output head, from --process-output, weighs the tied embedding). The calibration
    /// text is still run once for the output head's Hessian unless --no-head-gptq.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Calibration: at most N chunks for the importance vectors.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub calib_chunks: usize,
    /// Calibration: tokens per chunk.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub calib_ctx: usize,
    /// Chunks at the end of the text on which each matrix's KLD is measured (one forward pass
    /// per chunk per matrix: the longest step).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub probe_chunks: usize,
    /// Points of the front whose KLD is measured for the report.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub front_checks: usize,
    /// Candidate types, comma-separated (default: every block type smelt writes).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_target)]
    pub types: Vec<GgmlType>,
    /// AWQ after the mix: the groups of matrices the chosen mix re-quantizes all (and the matrix
    /// their scale folds into) get per-channel input scales searched for their chosen types
    /// (as `smelt quantize --awq`), their candidates are made again from the scaled matrices and
    /// probed, the mix is chosen again, and the scaled mix is written only if its measured KLD
    /// on the probe chunks is lower. Memory: the Hessians of every layer's inputs (0.8 GB for
    /// SmolLM2-135M).
    #[arg(long)]
    pub awq: bool,
    /// AWQ first instead: every group scaled for this one type before any choice (its
    /// matrices then cannot be kept as they are).
    #[arg(long, value_name = "TYPE", value_parser = parse_target, requires = "awq")]
    pub awq_type: Option<GgmlType>,
    /// AWQ: points of the alpha grid (alpha = 0, 1/N, ..., (N-1)/N).
    #[arg(long, value_name = "N", default_value_t = 20, requires = "awq")]
    pub awq_grid: usize,
    /// Do not make GPTQ candidates for the output head (the tied embedding). By default the
    /// Hessian of the head's input is gathered on the calibration text and the head gets a
    /// GPTQ candidate per type beside its weighted ones; each is measured alone and the mix
    /// takes whichever loses less.
    #[arg(long)]
    pub no_head_gptq: bool,
    /// Write the plan (tensor -> type, predicted loss), the front and the measurements: JSON
    /// for a .json name, else Markdown.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A size in bytes: a number with an optional unit (B, kB, MB, GB in powers of 1000; KiB, MiB,
/// GiB in powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit {u:?}: use B, kB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 78MB)"))?;
    let bytes = v * scale;
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?}: a size from 1 B to 1000 TB"));
    }
    Ok(bytes as u64)
}

/// `smelt prune`'s methods (see `smelt_compress::prune`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMethod {
    /// Least |w| go (no calibration).
    Magnitude,
    /// Least |w| x the input column's RMS go, per output row (Sun et al. 2023).
    Wanda,
    /// Masks by w^2 / [H^-1]_jj^2 with the pruned weights' error pushed onto the row's later
    /// columns (Frantar and Alistarh 2023).
    Sparsegpt,
    /// Whole layers (structured), chosen by --layer-score.
    Layers,
    /// The vocabulary: only the tokens --corpus uses (with specials, the byte-level alphabet
    /// and what BPE needs to build them) are kept, with their embedding and head rows.
    Vocab,
    /// FFN channels (structured): --sparsity of them go, chosen and compensated by OBS on
    /// ffn_down (Hessian of its input), the others refitted.
    Ffn,
    /// Attention head groups (structured; one key/value head with its query heads): --sparsity
    /// of them go, chosen and compensated by OBS on attn_output. Every layer keeps one.
    Heads,
    /// FFN channels and head groups together: --ffn X --heads Y.
    Width,
}

/// How structured width pruning spreads the removals over the layers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocationArg {
    /// The same fraction from every layer.
    Uniform,
    /// The cheapest removals of the whole model (OBS cost over the layer's output energy).
    Global,
}

/// How `--method layers` chooses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerScoreArg {
    /// The consecutive block whose output is closest in angle to its input (Gromov et al. 2024).
    Angular,
    /// The layers of least block influence, 1 - cos(input, output) (ShortGPT).
    Influence,
}

/// Which entries compete under --sparsity.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneScope {
    Row,
    Matrix,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("amount").required(true).multiple(true).args(["sparsity", "pattern", "layers", "corpus", "ffn", "heads"]))]
pub struct PruneArgs {
    /// The model (a GGUF decoder, a sentence-transformers directory for --method
    /// ffn|heads|width|layers, or a name).
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// The GGUF file to write (temporary file renamed into place when complete); for an encoder
    /// a new directory.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// What is removed, and how it is chosen.
    #[arg(long, value_enum)]
    pub method: PruneMethod,
    /// Fraction of each matrix's weights to remove, in [0, 1) (--method layers: of the block
    /// parameters, rounded to whole layers).
    #[arg(long, value_name = "X")]
    pub sparsity: Option<f64>,
    /// --method layers (on an encoder also width): how many layers to remove.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// --method layers: how they are chosen.
    #[arg(long, value_enum, default_value = "angular")]
    pub layer_score: LayerScoreArg,
    /// --method width: fraction of the FFN channels to remove, in [0, 1).
    #[arg(long, value_name = "X")]
    pub ffn: Option<f64>,
    /// --method width: fraction of the attention head groups to remove, in [0, 1).
    #[arg(long, value_name = "X")]
    pub heads: Option<f64>,
    /// --method ffn|heads|width: how the removals are spread over the layers (uniform measured
    /// better on SmolLM2: docs/BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "uniform")]
    pub allocation: AllocationArg,
    /// --method ffn|heads|width: refit without a bias (by default ffn_down and attn_output get
    /// one standing in for the removed inputs' mean; llama.cpp reads it).
    #[arg(long)]
    pub no_bias: bool,
    /// --method vocab: the texts whose tokens are kept (UTF-8; repeatable).
    #[arg(long, value_name = "FILE")]
    pub corpus: Vec<PathBuf>,
    /// N:M semi-structured sparsity instead: N kept of every M consecutive weights of a row
    /// (2:4, 4:8).
    #[arg(long, value_name = "N:M", value_parser = parse_nm, conflicts_with = "sparsity")]
    pub pattern: Option<(usize, usize)>,
    /// Which weights compete under --sparsity: each output row, or the whole matrix (for
    /// sparsegpt: each block of 128 columns over all rows). Default: the method's paper's (row
    /// for wanda, matrix for magnitude and sparsegpt).
    #[arg(long, value_enum)]
    pub scope: Option<PruneScope>,
    /// Calibration text (UTF-8; needed by wanda and sparsegpt). Use a text other than the one
    /// you evaluate on.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration: at most N chunks of --calib-ctx tokens.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub calib_chunks: usize,
    /// Calibration: tokens per chunk.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub calib_ctx: usize,
    /// Gather each layer's inputs with the layers before it already pruned (as the papers'
    /// code does): one calibration pass per layer.
    #[arg(long)]
    pub sequential: bool,
    /// Outlier-weighted layer sparsities (OWL, Yin et al. 2023): layers whose Wanda scores
    /// |w| x ||x|| have more outliers (above --owl-threshold x their mean) are pruned less,
    /// within --sparsity +- --owl-lambda, averaging --sparsity. Needs --calib; unstructured only.
    #[arg(long)]
    pub owl: bool,
    /// OWL: an outlier scores more than this many times its layer's mean (the paper's M;
    /// used with --owl).
    #[arg(long, value_name = "M", default_value_t = 5.0)]
    pub owl_threshold: f64,
    /// OWL: layer sparsities lie within --sparsity +- this.
    #[arg(long, value_name = "X", default_value_t = 0.08)]
    pub owl_lambda: f64,
    /// SparseGPT: dampening, a fraction of the Hessian's mean diagonal added to it.
    #[arg(long, value_name = "X", default_value_t = 0.01)]
    pub damp: f64,
    /// Write the pruned matrices in this type (importance-weighted when calibrated) instead of
    /// F32. Zeros stay exact in types without a block minimum (Q8_0, Q4_0, Q5_0, IQ4_NL). After
    /// --pattern 2:4, Q4_0_S24 / Q8_0_S24 store only the kept values (3.5 / 5.5 bits per weight,
    /// the same values as Q4_0 / Q8_0; files only smelt runs).
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub then_quantize: Option<GgmlType>,
    /// Print a JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `N:M` with `0 < N < M`.
fn parse_nm(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?} is not an N:M pattern such as 2:4 (N kept of every M, 0 < N < M)");
    let (n, m) = s.split_once(':').ok_or_else(bad)?;
    let (n, m): (usize, usize) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
    if n == 0 || n >= m || m > 1024 {
        return Err(bad());
    }
    Ok((n, m))
}
