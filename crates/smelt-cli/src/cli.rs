//! Command-line definitions. Options are declared once here; help is generated, and choices
//! (quantization types, models) come from their tables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use smelt_formats::GgmlType;

mod compress;
mod federated;
mod serve;
mod train;
pub use compress::*;
pub use federated::*;
pub use serve::*;
pub use train::*;

#[derive(Parser, Debug)]
#[command(
    name = "smelt",
    version,
    about = "Make small models smaller and faster, prove what they kept, run them anywhere.",
    long_about = "smelt takes a real model, compresses it (calibrated quantization, pruning, distillation, \
                  quantization-aware training), measures what it kept, runs it on a plain CPU and \
                  serves it.\n\n\
                  MODEL arguments accept a file or directory, or a model name from `smelt models` \
                  (fetched into $SMELT_HOME, default ~/.cache/smelt, on first use).",
    after_help = "Examples:\n  smelt inspect smollm2-135m\n  smelt quantize smollm2-135m small.gguf --to q4_k\n  smelt inspect small.gguf --json | jq .summary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Threads for parallel work (default: SMELT_THREADS, else every CPU this process may use).
    #[arg(short = 't', long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// No progress bars or log lines; errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    /// Threads to run with; [`crate::resolve_threads`] has settled the number before any command
    /// runs.
    pub fn n_threads(&self) -> usize {
        self.threads.unwrap_or(1)
    }

    /// A pool of [`Global::n_threads`] threads.
    pub fn pool(&self) -> smelt_kernels::pool::ThreadPool {
        smelt_kernels::pool::ThreadPool::new(self.n_threads())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a model file: architecture, parameters, every tensor's type, shape and size, bits
    /// per weight overall and per type, and the metadata.
    #[command(after_help = "Reads GGUF files, safetensors files, and HF model directories (config.json + \
                            model.safetensors). Only the header is read: tensor data stays on disk.")]
    Inspect(InspectArgs),
    /// Re-quantize a GGUF model to another type, writing GGUF: round-to-nearest, or calibrated
    /// (importance-weighted with --imatrix or --calib; GPTQ with --gptq).
    #[command(after_long_help = quantize_help(), after_help = "Run with --help for the list of types.")]
    Quantize(QuantizeArgs),
    /// Compute an importance matrix (the mean square input of every weight matrix's columns)
    /// over a calibration text, as llama-imatrix does, for `smelt quantize --imatrix` or
    /// `llama-quantize --imatrix`.
    #[command(after_help = IMATRIX_HELP)]
    Imatrix(ImatrixArgs),
    /// Choose a type per tensor to fit a size (or a quality) and write the mixed-precision GGUF:
    /// every matrix's candidate types are measured on a calibration text, then the mix with the
    /// least predicted loss under the budget is written, with its plan and the size/KLD front.
    #[command(after_help = FIT_HELP)]
    Fit(FitArgs),
    /// Prune a model: a decoder's block matrices (unstructured or N:M, by magnitude, Wanda or
    /// SparseGPT), FFN channels and head groups, whole layers or its vocabulary (a GGUF); a
    /// sentence encoder's FFN channels (a smaller BERT directory). Calibrated on a text.
    #[command(after_help = PRUNE_HELP)]
    Prune(PruneArgs),
    /// Distill a teacher into a smaller student on unlabelled text: a sentence encoder with
    /// fewer layers learns the teacher's sentence vectors, a decoder with fewer blocks its
    /// next-token distributions (AdamW, checkpoints, --resume).
    #[command(after_help = DISTILL_HELP)]
    Distill(DistillArgs),
    /// Fine-tune a decoder on your text or chat data with LoRA adapters over its frozen
    /// weights (kept in their own, quantized, type: QLoRA); writes an adapter llama.cpp loads.
    #[command(after_help = FINETUNE_HELP)]
    Finetune(FinetuneArgs),
    /// Quantization-aware training: the model trained with its weights rounded to --to in every
    /// forward (straight-through gradients) to match the original's next-token distributions;
    /// writes a plain GGUF of that type, closer to the original than post-training quantization.
    /// Sentence encoders: --to int8 trains for smelt's int8 path (weights and inputs).
    #[command(after_help = QAT_HELP)]
    Qat(QatArgs),
    /// Merge a LoRA adapter into its base model's weights and write the GGUF (re-quantized to
    /// each tensor's type, or --to TYPE).
    #[command(after_help = MERGE_HELP)]
    Merge(MergeArgs),
    /// Download a model by name into $SMELT_HOME (checks its sha256; does nothing if cached).
    Pull(PullArgs),
    /// List the models smelt can fetch by name, and whether they are cached.
    Models(ModelsArgs),
    /// Generate text from a prompt, streaming it as it comes.
    #[command(after_help = "Examples:\n  smelt run -p 'Write a haiku about rust'\n  smelt run -m model.gguf --raw -p 'The capital of France is' -n 16 --temp 0\n  echo 'Summarise: ...' | smelt run -f - --json")]
    Run(RunArgs),
    /// Chat with a model: one message per line on stdin (a terminal or a pipe); /reset starts
    /// over, /exit (or end of input) quits.
    Chat(ChatArgs),
    /// Serve a model over the OpenAI API (chat completions, completions, embeddings, models),
    /// decoding many requests together; /health and Prometheus /metrics beside it.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Measure the hybrid router on a labelled task: label prompts for its complexity
    /// classifier, and draw each signal's cost-quality curve (quality against requests escalated).
    #[command(after_help = ROUTE_HELP)]
    Route(RouteArgs),
    /// Report a served model's traffic over its request log, window by window: escalations,
    /// low-confidence answers, latency and embedding drift.
    #[command(after_help = MONITOR_HELP)]
    Monitor(MonitorArgs),
    /// Sentence embeddings from an encoder (all-MiniLM-L6-v2 by default): one text per input
    /// line, one vector per output line (JSON) or one row of a .npy matrix.
    #[command(after_help = EMBED_HELP)]
    Embed(EmbedArgs),
    /// Classify texts with a linear head on frozen sentence embeddings: train it (logistic
    /// regression with L2), predict, evaluate (accuracy, precision, recall, F1).
    #[command(after_help = CLASSIFY_HELP)]
    Classify(ClassifyArgs),
    /// Federated learning with a Flower server: train on local data, send only model updates.
    Federated(FederatedArgs),
    /// Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench; for an
    /// encoder, sentences/s and tokens/s at batch 1 and 32 (tokenization included).
    #[command(after_help = "Examples:\n  smelt bench -m smollm2-135m\n  smelt bench -m model.gguf -p 512 -n 128 -r 5 --format json\n  smelt bench -m smollm2-135m --as q4_0 -t 1\n  smelt bench -m all-minilm-l6-v2 --texts sentences.txt --batch 1,32 -o bench.csv")]
    Bench(BenchArgs),
    /// Measure a model: quality (perplexity, or fidelity/STS/retrieval for encoders), against a
    /// reference too (KL divergence, top-1 agreement), speed, memory, energy and carbon.
    #[command(after_help = EVAL_HELP)]
    Eval(EvalArgs),
    /// Measure several models side by side against one reference, in one report.
    #[command(after_help = COMPARE_HELP)]
    Compare(CompareArgs),
    /// The main job: make compressed variants of a model, measure each against the original, and
    /// recommend the smallest one that keeps its quality (table + HTML report).
    #[command(after_help = SHRINK_HELP)]
    Shrink(ShrinkArgs),
}

const EVAL_HELP: &str = "Decoders are scored as llama-perplexity scores them: the text is cut into chunks of --ctx tokens, each run from an empty context, and only the second half of each chunk is scored, so perplexities are comparable with llama.cpp's. With --against, the KL divergence of every scored token to the reference's distribution is computed online (no logits file): mean, median, p90, p99, p99.9, max; the share of tokens whose most likely next token is the reference's; the mean and RMS change of the correct token's probability.\n\n\
Encoders (all-MiniLM-L6-v2 and other BERT-family models): cosine of each embedding to the reference's (mean, min, low percentiles), STS Spearman (--sts), retrieval overlap@10, and classification with a head trained on the reference and kept fixed, and one refit (--classify).\n\n\
Speed is measured in a separate process that loads only the model, so peak RSS is its own: decoders run --requests prompts of --prompt tokens and generate --gen tokens each (TTFT, per-token latency p50/p95/p99, prefill and decode tokens/s); encoders embed each text alone and then in batches of 32. Energy comes from RAPL counters when readable, else it is estimated from CPU time and labelled \"estimated\"; carbon uses --grid gCO2e/kWh.\n\n\
MODEL may name a variant: `all-minilm-l6-v2:int8`, `all-minilm-l6-v2:f16`, `smollm2-135m:f32` (the weights converted when loaded).\n\n\
Examples:\n  smelt eval smollm2-q4_k.gguf --against smollm2-135m:f32\n  \
smelt eval smollm2-135m --text wiki.valid.tokens --ctx 512 -o ppl.json\n  \
smelt eval all-minilm-l6-v2:int8 --against all-minilm-l6-v2 --sts sts-dev.csv -o report.html";

const IMATRIX_HELP: &str = "The text is tokenized once and cut into chunks of --ctx tokens (the last partial chunk is dropped); each chunk runs from an empty context and every token's input to every weight matrix is added in. The file is llama.cpp's: GGUF (the default, as llama-imatrix writes it) or the legacy .dat (--output-format dat, or a .dat name); either tool reads either tool's files. Q, K and V share one input, as do gate and up: their entries are equal.\n\n\
Use a calibration text different from the text you evaluate on.\n\n\
Examples:\n  smelt imatrix smollm2-135m --calib calib.txt -o smollm2.imatrix.gguf\n  \
smelt imatrix model.gguf --calib calib.txt --ctx 512 --chunks 100 --process-output -o imatrix.dat";

const FIT_HELP: &str = "How: the importance of every matrix's input columns is gathered on the calibration text (or read from --imatrix); every matrix is quantized, importance-weighted, to each candidate type that is smaller than its own (keeping it as it is, at no loss, is always a candidate, so a Q4_1 file can keep its most sensitive matrices exactly); each matrix's smallest candidate is swapped into the model alone and the KL divergence of the next-token distribution from the original's is measured on the last --probe-chunks chunks of the text (not used for the importance); that measured KLD scales the importance-weighted error of the matrix's other candidates. The output head (the tied embedding) also gets a GPTQ candidate per type, made with the Hessian of its input, and each of its candidates is measured alone (GPTQ's error does not compare with weighted rounding's). The mix minimizing the sum of predicted KLDs under the budget is chosen (convex-hull knapsack), measured as a whole, and written; --report adds the plan and the Pareto front of size against KLD (predicted, and measured at --front-checks points).\n\n\
Sizes are in bytes of the whole file: 80MB = 80,000,000 (also kB, GB, MiB, GiB, or a plain number). Use a calibration text different from the text you evaluate on.\n\n\
Examples:\n  smelt fit smollm2-135m --max-size 78MB --calib calib.txt -o smollm2-78mb.gguf\n  \
smelt fit model.gguf --max-bpw 4.5 --calib calib.txt -o out.gguf --report fit.md\n  \
smelt fit model.gguf --min-quality 0.05 --calib calib.txt -o out.gguf --json";

const PRUNE_HELP: &str = "Methods: magnitude (the entries of least |w| go; no calibration), wanda (least |w| x the RMS of the entry's input column over --calib, compared within each output row; Sun et al. 2023), sparsegpt (masks chosen per block of 128 columns by w^2 / [H^-1]_jj^2, the pruned entries' error pushed onto the row's later columns through the inverse Hessian of the inputs; Frantar and Alistarh 2023). Every Q, K, V, output, gate, up and down matrix is pruned; the embedding and the head are not. --sparsity P removes floor(P n) of each compared set (a row, or the whole matrix: --scope); --pattern N:M keeps N of every M consecutive weights of a row (2:4, 4:8). --owl gives each layer its own unstructured sparsity around --sparsity, lower where its Wanda scores have more outliers (Yin et al. 2023). --sequential calibrates each layer on the pruned layers before it.\n\nStructured: layers (--layers N whole layers removed, scored on --calib by angular distance or block influence; the rest renumbered) and vocab (only the tokens the --corpus files use are kept, with the specials, the byte-level alphabet and the merges BPE needs; the corpus tokenizes as before and every kept token's logit is unchanged): these files are smaller and faster as they are. ffn, heads and width remove FFN channels (rows of gate/up, columns of down) and head groups (a key/value head with its query heads), chosen greedily by the OBS cost on the matrix that reads them (ffn_down, attn_output; Hessian of its input over --calib) and compensated by refitting that matrix and a bias; --allocation uniform takes the same share from every layer (a plain llama GGUF), global the cheapest anywhere (layers then differ: written as llama.cpp's deci with per-layer arrays, which llama.cpp and smelt run). On a sentence encoder, --method ffn, heads (removed heads listed in HF's pruned_heads), layers (by --layer-score over the calibration sentences) or width --ffn X --heads Y --layers N writes a smaller BERT directory.\n\nA pruned file is a plain GGUF that llama.cpp runs; unstructured zeros make it no smaller or faster by themselves (F32 matrices by default, to measure the pruning alone; --then-quantize TYPE writes them quantized, importance-weighted, in one run).\n\nExamples:\n  smelt prune smollm2-135m -o wanda50.gguf --method wanda --sparsity 0.5 --calib calib.txt\n  \
smelt prune smollm2-135m -o sgpt24.gguf --method sparsegpt --pattern 2:4 --calib calib.txt --then-quantize q8_0\n  \
smelt prune model.gguf -o mag.gguf --method magnitude --sparsity 0.3 --json\n  \
smelt prune smollm2-135m -o short.gguf --method layers --layers 6 --calib calib.txt\n  \
smelt prune smollm2-135m -o en.gguf --method vocab --corpus a.txt --corpus b.txt\n  \
smelt prune smollm2-135m -o ffn30.gguf --method ffn --sparsity 0.3 --calib calib.txt\n  \
smelt prune smollm2-135m -o narrow.gguf --method width --ffn 0.3 --heads 0.34 --calib calib.txt\n  \
smelt prune all-minilm-l6-v2 -o minilm-ffn60 --method ffn --sparsity 0.6 --calib calib.txt\n  \
smelt prune all-minilm-l6-v2 -o minilm-l5 --method width --ffn 0.6 --layers 1 --layer-score influence --calib calib.txt";

const COMPARE_HELP: &str = "Quality is computed in one pass over the text (the reference once per chunk); each model's speed and memory in its own process. The report holds every model; -o writes JSON, CSV, Markdown or HTML by extension (repeatable).\n\n\
Examples:\n  smelt compare q8.gguf q4_k.gguf q2_k.gguf --against smollm2-135m:f32 -o cmp.html\n  \
smelt compare all-minilm-l6-v2:f16 all-minilm-l6-v2:int8 --against all-minilm-l6-v2 --sts sts-dev.csv";

const SHRINK_HELP: &str = "For a decoder (default SmolLM2-135M-Instruct): the original is its weights expanded to f32 (SmolLM2 ships only as Q4_1, so that is the best original there is); each --types variant is written by round-to-nearest quantization into --out-dir (reused when already there), scored against the original on --text (built in: Pride and Prejudice, chapters 1-9), timed, and the smallest variant within --max-loss percent of the original's perplexity is recommended.\n\n\
For an encoder (all-minilm-l6-v2): fp32 vs f16 vs int8 (per-channel weights, SmoothQuant calibration), fidelity, retrieval, STS with --sts, speed.\n\n\
Examples:\n  smelt shrink\n  smelt shrink smollm2-135m --types q8_0,q4_k,q2_k --chunks 4 -o report.html\n  \
smelt shrink all-minilm-l6-v2 --sts sts-dev.csv";

/// What every measuring command shares.
#[derive(Args, Debug, Clone)]
pub struct EvalOptions {
    /// Text to score decoders on (and, for encoders, sentences to embed); default: built-in
    /// Pride and Prejudice chapters 1-9.
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per perplexity chunk (llama-perplexity's -c).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub ctx: usize,
    /// Score at most N chunks (default: all the text holds).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Write one decoder's logits at the scored positions to FILE in llama-perplexity's
    /// --kl-divergence-base format (with the tokens), so that `llama-perplexity -m MODEL
    /// --kl-divergence-base FILE --kl-divergence` compares llama.cpp's run with smelt's (KLD,
    /// same top p). About 50 KB per scored token on a 49k vocabulary.
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// STS Benchmark file (tab-separated, score in column 5, sentences in 6 and 7) for encoders.
    #[arg(long, value_name = "FILE")]
    pub sts: Option<PathBuf>,
    /// Classification task directory with train.jsonl and test.jsonl ({"text", "label"}); repeatable.
    #[arg(long, value_name = "DIR")]
    pub classify: Vec<PathBuf>,
    /// Skip quality; measure speed, memory and energy only.
    #[arg(long)]
    pub no_quality: bool,
    /// Skip speed, memory and energy.
    #[arg(long)]
    pub no_speed: bool,
    /// Decoder speed: requests to time.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub requests: usize,
    /// Decoder speed: prompt tokens per request.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub prompt: usize,
    /// Decoder speed: tokens generated per request.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub gen: usize,
    /// Power per busy core for the energy estimate (used when RAPL counters are not readable).
    #[arg(long, value_name = "W", default_value_t = smelt_eval::energy::DEFAULT_WATTS_PER_CORE)]
    pub watts_per_core: f64,
    /// Grid carbon intensity, gCO2e per kWh (default: world average 2023, Ember).
    #[arg(long, value_name = "G", default_value_t = smelt_eval::energy::DEFAULT_GRID_G_PER_KWH)]
    pub grid: f64,
    /// Recommend the smallest model whose quality loss is at most this many percent.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    pub max_loss: f64,
    /// Write the report to FILE; the format follows the extension: .json .csv .md .html
    /// (repeatable).
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<PathBuf>,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
    Md,
    Html,
    None,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model: a file, directory or name, optionally with `:TYPE` or `:int8`.
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Reference model to compare with (same tokenizer).
    #[arg(long, value_name = "MODEL")]
    pub against: Option<String>,
    /// Apply this LoRA adapter to MODEL (not to the reference): measure a fine-tuned model.
    #[arg(long, value_name = "FILE")]
    pub lora: Option<PathBuf>,
    #[command(flatten)]
    pub opts: EvalOptions,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Models to compare (files, directories or names, optionally with `:TYPE` or `:int8`).
    #[arg(value_name = "MODEL", required = true)]
    pub models: Vec<String>,
    /// Reference model; listed first in the report.
    #[arg(long, value_name = "MODEL")]
    pub against: Option<String>,
    #[command(flatten)]
    pub opts: EvalOptions,
}

#[derive(Args, Debug)]
pub struct ShrinkArgs {
    /// The model to shrink: a GGUF decoder or a BERT-family encoder.
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Decoder variants to make (comma list of quantization types).
    #[arg(long, value_name = "TYPES", value_delimiter = ',', default_value = "q8_0,q6_k,q5_k,q4_k,q4_0,q3_k,q2_k", value_parser = parse_target)]
    pub types: Vec<GgmlType>,
    /// Where variant files go (default: $SMELT_HOME/shrink/MODEL).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Decoders: calibrated mixed-precision variants, one per size (as `smelt fit` makes them):
    /// sizes like 84MB, or percentages of the model's file like 80%.
    #[arg(long = "fit", value_name = "SIZES", value_delimiter = ',', default_value = "85%,80%,75%", value_parser = parse_fit_size)]
    pub fit: Vec<FitSize>,
    /// Decoders: no calibrated variants (round-to-nearest ones only).
    #[arg(long)]
    pub no_fit: bool,
    /// Decoders: calibration text for the calibrated variants (default: chapters 1-18 of Sense
    /// and Sensibility, built in; never the evaluation text).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Decoders: also pruned variants, one per fraction of FFN channels removed (comma list,
    /// e.g. 0.2,0.3; as `smelt prune --method ffn` makes them, calibrated on --calib).
    #[arg(long, value_name = "FRACTIONS", value_delimiter = ',', value_parser = parse_prune_fraction)]
    pub prune: Vec<f64>,
    #[command(flatten)]
    pub opts: EvalOptions,
}

/// A fraction for `shrink --prune`, in (0, 1).
fn parse_prune_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("{s:?}: a fraction of FFN channels to remove, above 0 and below 1 (e.g. 0.3)")),
    }
}

/// A size for `shrink --fit`: bytes, or a fraction of the model's file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FitSize {
    Bytes(u64),
    OfSource(f64),
}

fn parse_fit_size(s: &str) -> Result<FitSize, String> {
    match s.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 100.0 => Ok(FitSize::OfSource(v / 100.0)),
            _ => Err(format!("{s:?}: a percentage above 0 and at most 100")),
        },
        None => parse_size(s).map(FitSize::Bytes),
    }
}

const EMBED_HELP: &str = "Input: plain text, one text per line (empty lines are texts too), or JSON lines \
(--input jsonl, or a .jsonl file): each line a JSON string or an object with \"text\" (and an \
optional \"id\", echoed back).\n\n\
Output: JSON lines {\"index\", [\"id\",] \"embedding\"} in input order, or a .npy matrix \
[texts, dim] (--format npy, or -o FILE.npy); files are written to a temporary name and renamed \
when complete.\n\n\
Texts longer than the model's limit (max_seq_length, 256 for all-MiniLM-L6-v2) are truncated, \
as sentence-transformers does; --window splits them into overlapping windows instead and \
averages the window embeddings (weighted by tokens) before normalizing.\n\n\
--precision int8/uint8 quantizes each dimension over the range seen in calibration embeddings \
(--calibration texts, or --ranges from a previous --save-ranges; without either, the input \
itself, with a warning), binary/ubinary keep the sign bits: the same bytes as \
sentence-transformers' quantize_embeddings.\n\n\
Examples:\n  smelt embed docs.txt -o docs.npy\n  echo 'A man is playing a guitar.' | smelt embed\n  \
smelt embed -m paraphrase-minilm-l3-v2 --input jsonl corpus.jsonl > vectors.jsonl\n  \
smelt embed book.txt --window 256 --stride 192 -o book.npy\n  \
smelt embed docs.txt --precision int8 --calibration sample.txt --save-ranges ranges.npy -o docs-int8.npy";

const CLASSIFY_HELP: &str = "Data: JSON lines, one object per text: {\"text\": ..., \"label\": ...} (and an \
optional \"id\", echoed back); `predict` also takes plain text, one text per line. \
scripts/fetch-classification-data writes two ready tasks (BBC News topics, movie-review sentiment) \
with the train/test split kept in data/splits.\n\n\
The head file is JSON (format smelt-classifier-head, version 1): labels, weights, bias, the \
encoder it was trained on and the training settings.\n\n\
Examples:\n  smelt classify train train.jsonl -o topics.head.json\n  \
smelt classify eval --head topics.head.json test.jsonl\n  \
echo 'Shares fell sharply after the profit warning.' | smelt classify predict --head topics.head.json";

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(subcommand)]
    pub command: ClassifyCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClassifyCommand {
    /// Embed labelled texts and fit a head; write it to -o.
    Train(ClassifyTrainArgs),
    /// Label texts: one JSON line per text with the label and every label's probability.
    Predict(ClassifyPredictArgs),
    /// Accuracy, per-label precision/recall/F1, macro averages and the confusion matrix.
    Eval(ClassifyEvalArgs),
}

#[derive(Args, Debug)]
pub struct ClassifyTrainArgs {
    /// Labelled JSON lines ({"text", "label"}); `-` reads stdin.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// The head file to write (JSON; written to a temporary name and renamed when complete).
    #[arg(short, long, value_name = "HEAD")]
    pub output: PathBuf,
    /// Encoder: a name from `smelt models`, a model directory or an .onnx file.
    #[arg(short, long, value_name = "MODEL", default_value = "all-minilm-l6-v2")]
    pub model: String,
    /// L2 penalty on the weights (larger: simpler head, less overfitting).
    #[arg(long, value_name = "X", default_value_t = 1e-3)]
    pub l2: f32,
    /// Most gradient steps (training stops earlier once the gradient is below 1e-5).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_iter: usize,
    /// Embed with the int8 path (see `smelt embed --help`); predict/eval then use it too.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "all")]
    pub int8: Option<smelt_models::Int8Spec>,
    /// Then fine-tune the encoder's last layers together with the head (AdamW; the head starts
    /// from the frozen-embedding one): writes the fine-tuned encoder as HEAD.encoder/ (a
    /// sentence-transformers directory) and the head pointing to it.
    #[arg(long, conflicts_with = "int8")]
    pub finetune: bool,
    /// --finetune: how many of the last layers are trained (0: the head alone).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub train_layers: usize,
    /// --finetune: passes over the training examples.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub epochs: usize,
    /// --finetune: peak learning rate (warm-up over 10% of the steps, cosine decay to 10%).
    #[arg(long, value_name = "X", default_value_t = 5e-5)]
    pub lr: f32,
    /// --finetune: texts per step.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub batch: usize,
    /// --finetune: tokens per text, [CLS] and [SEP] included (longer texts are cut).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_length: usize,
    /// --finetune: seed of the data order and of the held-out examples.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ClassifyPredictArgs {
    /// The head file from `smelt classify train`.
    #[arg(long, value_name = "HEAD")]
    pub head: PathBuf,
    /// Texts: plain lines, or JSON lines with "text" (a .jsonl file, or --input jsonl); `-` or
    /// nothing reads stdin.
    #[arg(value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[arg(long = "input", value_enum, value_name = "KIND")]
    pub input_kind: Option<EmbedInput>,
    /// Encoder to use instead of the one the head names.
    #[arg(short, long, value_name = "MODEL")]
    pub model: Option<String>,
}

#[derive(Args, Debug)]
pub struct ClassifyEvalArgs {
    /// The head file from `smelt classify train`.
    #[arg(long, value_name = "HEAD")]
    pub head: PathBuf,
    /// Labelled JSON lines ({"text", "label"}).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// Encoder to use instead of the one the head names.
    #[arg(short, long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Print the metrics as one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedInput {
    Lines,
    Jsonl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedFormat {
    Jsonl,
    Npy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedPrecision {
    Float32,
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Encoder: a sentence-transformers / HF directory, an ONNX export, or a name.
    #[arg(short, long, value_name = "MODEL", default_value = "all-minilm-l6-v2")]
    pub model: String,
    /// Input file; `-` or nothing reads stdin.
    #[arg(value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// How to read the input (default: jsonl for *.jsonl files, else lines).
    #[arg(long = "input", value_enum, value_name = "KIND")]
    pub input_kind: Option<EmbedInput>,
    /// Output file (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format (default: npy for *.npy outputs, else jsonl).
    #[arg(long, value_enum)]
    pub format: Option<EmbedFormat>,
    /// Texts per batch (sorted by length, packed without padding).
    #[arg(short, long, value_name = "N", default_value_t = 32)]
    pub batch_size: usize,
    /// Most tokens per batch.
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Embed each line as soon as it is read (one at a time, lowest latency); the default when
    /// stdin is a terminal.
    #[arg(long)]
    pub stream: bool,
    /// Tokens per text including [CLS] and [SEP] (default: the model's max_seq_length; at most
    /// its position table).
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// Split long texts into windows of N tokens instead of truncating (at most the model's
    /// max length).
    #[arg(long, value_name = "N")]
    pub window: Option<usize>,
    /// Tokens between window starts (default: 3/4 of --window; at most --window minus 2, so no
    /// text is skipped).
    #[arg(long, value_name = "N", requires = "window")]
    pub stride: Option<usize>,
    /// L2-normalize the embeddings (default: as the model's modules.json says).
    #[arg(long, overrides_with = "no_normalize")]
    pub normalize: bool,
    #[arg(long, overrides_with = "normalize", hide = true)]
    pub no_normalize: bool,
    /// Embedding precision.
    #[arg(long, value_enum, default_value_t = EmbedPrecision::Float32)]
    pub precision: EmbedPrecision,
    /// Texts (one per line) whose embeddings calibrate int8/uint8 ranges.
    #[arg(long, value_name = "FILE", conflicts_with = "ranges")]
    pub calibration: Option<PathBuf>,
    /// Calibration ranges: a float32 .npy [2, dim] of per-dimension minima and maxima.
    #[arg(long, value_name = "FILE.npy")]
    pub ranges: Option<PathBuf>,
    /// Save the int8/uint8 ranges used, for the next run's --ranges.
    #[arg(long, value_name = "FILE.npy")]
    pub save_ranges: Option<PathBuf>,
    /// Convert the weight matrices to this type in memory.
    #[arg(long = "as", value_name = "TYPE", value_parser = parse_target)]
    pub as_type: Option<GgmlType>,
    /// Run the selected weight matrices in int8 (per-channel weights, activations quantized per
    /// token at run time): `--int8` alone takes every matrix of every layer; SPEC is a comma list
    /// applied in order, e.g. `all,-down` or `all,-5` or `qkv,o` (kinds: qkv, o, up, down;
    /// layers: N or A-B, as `2.up`; `-` excludes).
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "all")]
    pub int8: Option<smelt_models::Int8Spec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model file or name.
    #[arg(short, long, value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Prompt lengths to measure (tokens processed in one batch); 0 skips.
    #[arg(short, long, value_name = "N", value_delimiter = ',', default_value = "512")]
    pub prompt: Vec<usize>,
    /// Generation lengths to measure (tokens generated one by one); 0 skips.
    #[arg(short = 'n', long = "gen", value_name = "N", value_delimiter = ',', default_value = "128")]
    pub gen: Vec<usize>,
    /// Repetitions per test (after one warm-up).
    #[arg(short, long, value_name = "N", default_value_t = 5)]
    pub repetitions: usize,
    /// Decoders: tokens already in the context before each test (processed first, not timed),
    /// as llama-bench's `-d`: `tg128 @ d512` decodes with 512 earlier tokens to attend to, as a
    /// server does after a prompt.
    #[arg(short = 'd', long, value_name = "N", default_value_t = 0)]
    pub depth: usize,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = BenchFormat::Table)]
    pub format: BenchFormat,
    /// Also write the results to FILE; the format follows the extension: .json, .csv, .md or
    /// .txt (a table).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Convert every weight matrix to this type in memory before measuring.
    #[arg(long = "as", value_name = "TYPE", value_parser = parse_target)]
    pub as_type: Option<GgmlType>,
    /// Run the selected weight matrices in int8 (per-channel weights, activations quantized per
    /// token at run time): `--int8` alone takes every matrix of every layer; SPEC is a comma list
    /// applied in order, e.g. `all,-down` or `all,-5` or `qkv,o` (kinds: qkv, o, up, down;
    /// layers: N or A-B, as `2.up`; `-` excludes).
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "all")]
    pub int8: Option<smelt_models::Int8Spec>,
    /// Encoders: texts to embed, one per line (default: 512 generated sentences of 8-60 words).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Encoders: batch sizes to measure (1 is the low-latency mode: one text per call).
    #[arg(long = "batch", value_name = "N", value_delimiter = ',', default_value = "1,32")]
    pub batches: Vec<usize>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file, directory or name.
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Summary only: no tensor list and no metadata list.
    #[arg(short, long)]
    pub summary: bool,
    /// In JSON, print metadata arrays in full (by default the first 16 elements and the length).
    #[arg(long)]
    pub full_arrays: bool,
}


#[derive(Args, Debug)]
pub struct PullArgs {
    /// Model names (see `smelt models`).
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_target(s: &str) -> Result<GgmlType, String> {
    let ty = GgmlType::from_name(s).ok_or_else(|| format!("unknown type {s:?}; choose one of: {}", targets().join(", ")))?;
    if !GgmlType::weight_targets().any(|t| t == ty) {
        return Err(format!("{ty} cannot be produced by smelt; choose one of: {}", targets().join(", ")));
    }
    Ok(ty)
}

fn targets() -> Vec<&'static str> {
    GgmlType::weight_targets().map(|t| t.name()).collect()
}

/// The table of target types for `smelt quantize --help`.
pub fn quantize_help() -> String {
    let mut s = String::from(
        "Types (bits per weight include the block scales):\n\n  TYPE     BITS/W  BLOCK  DESCRIPTION\n",
    );
    let mut types: Vec<GgmlType> = GgmlType::weight_targets().collect();
    types.sort_by(|a, b| a.bits_per_weight().total_cmp(&b.bits_per_weight()));
    for ty in types {
        let i = ty.info();
        s.push_str(&format!("  {:<8} {:>6.3}  {:>5}  {}\n", i.name, i.bits_per_weight(), i.block_elems, i.summary));
    }
    s.push_str(
        "\nRules: 1-D tensors (norms, biases) keep their type. A matrix whose rows are not a whole \
         number of blocks of the target falls back as llama.cpp does (Q2_K/Q3_K -> Q4_0, \
         Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16); `--as TYPE` at load time follows \
         the same rule. Tensors already of the target type are copied unchanged. The summary reports each type's weight error (relative RMS \
         against the input).\n\nExamples:\n  smelt quantize smollm2-135m smollm2-q4_k.gguf --to q4_k\n  \
         smelt quantize model.gguf model-q8.gguf --to q8_0 --embed-type q8_0 --keep 'blk.0.*'\n  \
         smelt quantize smollm2-135m q4_0.gguf --to q4_0 --imatrix imatrix.gguf\n  \
         smelt quantize smollm2-135m q4_0-gptq.gguf --to q4_0 --calib calib.txt --calib-chunks 64 --gptq",
    );
    s
}

/// Model and sampling options shared by `run` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct LmArgs {
    /// Model file or name.
    #[arg(short, long, value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long = "temp", value_name = "T", default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the K most likely tokens (0: all).
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Sample from the most likely tokens covering probability P (1: all).
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely (0: none).
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise repeating the last --repeat-last-n tokens (1: off).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the repeat penalty looks back over (0: none).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (same seed, same text). Default: a fresh one, printed with --json.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Context size in tokens (prompt plus answer; default: the model's, at most 4096).
    #[arg(short = 'c', long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Run the weights converted to this type in memory.
    #[arg(long = "as", value_name = "TYPE", value_parser = parse_target)]
    pub as_type: Option<GgmlType>,
    /// Apply a LoRA adapter (llama.cpp's GGUF form, e.g. from `smelt finetune`) at run time;
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    pub lora: Vec<PathBuf>,
    /// Scale the adapters' effect (llama.cpp's --lora-scaled; 0 turns them off; used with --lora).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub lora_scale: f32,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub lm: LmArgs,
    /// The prompt.
    #[arg(short, long, value_name = "TEXT", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for stdin).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Continue the text as is; by default the prompt becomes a user message in the model's
    /// chat template (when it has one).
    #[arg(long)]
    pub raw: bool,
    /// A system message (with the chat template).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Print one JSON object (text, tokens, stop reason, timings) at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub lm: LmArgs,
    /// A system message.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
}
