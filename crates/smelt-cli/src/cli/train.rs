//! Arguments of the training commands (distill, finetune, merge).

use std::path::PathBuf;

use clap::Args;
use smelt_formats::GgmlType;

use super::parse_target;

pub const DISTILL_HELP: &str = "How (sentence encoders): the student starts as the teacher with layers dropped (--keep-layers, or --layers N chosen by the pruning's layer scores on the data) or as any encoder directory of the teacher's width and vocabulary (--student, e.g. from `smelt prune --method width`), or from a BERT config alone (--student config.json: the teacher's embeddings, its layers initialized at random); the teacher's sentence vectors of every training sentence are computed once and kept in memory (1.5 kB a sentence at width 384); the student learns them with AdamW (--lr, linear warm-up over --warmup of the steps, cosine decay to 10%), gradient clipping (--clip) and accumulation (--accumulate), minimizing --cos-weight x (1 - cos) + --mse-weight x MSE of the normalized vectors + --hidden-weight x the MSE of hidden states paired by --layer-map. Every --eval-every steps the validation gap (1 - cos to the teacher on held-out sentences: --val, or every 50th data sentence) is measured; the best student is written. The data order is seeded (--seed): a run is repeatable, and --resume continues from the checkpoint exactly where it stopped.\n\n\
Decoders (a GGUF teacher such as smollm2-135m, run with its weights widened to F32): the student is the teacher with blocks removed (--keep-layers, or --layers N kept by angular distance over the data) or a GGUF file (--student); the text is cut into chunks of --ctx tokens and the student learns the teacher's next-token distributions (--kl-weight x T^2 x KL at --temperature, plus --ce-weight x the cross-entropy on the text); the validation loss is the KL divergence on held-out chunks; the student is written as an F32 GGUF (OUT, with OUT.distill.json and OUT.training.html) that llama.cpp and smelt run; `smelt quantize` makes it small.\n\n\
Data: prose (.txt and others: split into sentences of 4 words or more), one text per line (--lines), or JSON lines (.jsonl: a string or {\"text\": ...} per line). Use text other than the one you evaluate on.\n\n\
Files: the student directory (-o; tokenizer, pooling and modules copied from the source, config.json with the student's shape, F32 model.safetensors) with smelt_distill.json (settings and results); the JSON-lines training log (--log, default OUT.train.jsonl); the checkpoint (--checkpoint, default OUT.ckpt; written every --checkpoint-every steps and on Ctrl-C or SIGTERM, removed when the run finishes unless --keep-checkpoint).\n\n\
Examples:\n  smelt distill --teacher all-minilm-l6-v2 --keep-layers 0,2,4 --data austen/*.txt -o minilm-l3\n  \
smelt distill --layers 3 --data news.txt --lines --epochs 2 -o minilm-l3 --hidden-weight 1\n  \
smelt distill --keep-layers 0,2,4 --data austen/*.txt -o minilm-l3 --resume\n  \
smelt distill --teacher smollm2-135m --layers 22 --data austen/*.txt --ctx 256 --batch 4 -o smollm2-22.gguf";

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a sentence-transformers directory, a GGUF decoder, or a model name.
    #[arg(long, value_name = "MODEL", default_value = "all-minilm-l6-v2")]
    pub teacher: String,
    /// Start from this encoder directory (the teacher's width and vocabulary), e.g. one written
    /// by `smelt prune`, or from a BERT config alone (a config.json, or a directory without
    /// weights: fewer layers, heads or FFN channels; embeddings from the teacher, layers
    /// initialized at random, seeded by --seed); for a decoder, a GGUF file.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["keep_layers", "layers"])]
    pub student: Option<PathBuf>,
    /// Make the student from these teacher layers (0-based, ascending): 0,2,4.
    #[arg(long, value_name = "LIST", value_delimiter = ',', conflicts_with = "layers")]
    pub keep_layers: Vec<usize>,
    /// Make the student from N teacher layers, the others removed by their layer scores
    /// (angular distance over the data's first 512 sentences).
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// The student directory to write (new or empty); for a decoder, the GGUF file.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Training text files (repeatable; see below for the formats).
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Take each non-empty line of the data files as one text (else prose is split into
    /// sentences).
    #[arg(long)]
    pub lines: bool,
    /// Held-out validation texts (same formats); default every 50th data sentence (at most
    /// 1,000), not trained on.
    #[arg(long, value_name = "FILE")]
    pub val: Option<PathBuf>,
    /// Use at most N training sentences (evenly spaced over the data).
    #[arg(long, value_name = "N")]
    pub max_sentences: Option<usize>,
    /// Tokens per sentence, [CLS] and [SEP] included (longer ones are cut).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_length: usize,
    /// Weight of the loss 1 - cos(student vector, teacher vector).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub cos_weight: f32,
    /// Weight of the MSE between the normalized vectors (sentence-transformers' MSELoss).
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub mse_weight: f32,
    /// Weight of the MSE between hidden states paired by --layer-map.
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub hidden_weight: f32,
    /// STUDENT:TEACHER layer pairs for --hidden-weight (0-based), e.g. 0:1,1:3,2:5; default
    /// each student layer to the teacher layer it was made from.
    #[arg(long, value_name = "PAIRS", value_delimiter = ',')]
    pub layer_map: Vec<String>,
    /// Decoders: tokens per training chunk (the text is cut into chunks; every 50th, at most
    /// 8, held out for validation).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub ctx: usize,
    /// Decoders: weight of the KL divergence from the teacher's next-token distribution.
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub kl_weight: f32,
    /// Decoders: the softmax temperature of the KL term (its gradient scaled by T^2).
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub temperature: f32,
    /// Decoders: weight of the cross-entropy on the text's next tokens.
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub ce_weight: f32,
    #[command(flatten)]
    pub train: TrainFlags,
    /// Print a JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The training loop's flags, shared by `smelt distill` and `smelt finetune`.
#[derive(Args, Debug, Clone)]
pub struct TrainFlags {
    /// Passes over the training examples (unless --steps).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub epochs: usize,
    /// Optimizer steps in all (overrides --epochs).
    #[arg(long, visible_alias = "max-steps", value_name = "N")]
    pub steps: Option<u64>,
    /// Stop after M minutes of training (checkpoint written, result written as at the end);
    /// the learning-rate schedule still spans --steps (or --epochs), so give both to end the
    /// decay on time.
    #[arg(long, value_name = "M")]
    pub max_minutes: Option<f64>,
    /// Examples per micro-batch (default: 32 sentences for `distill`, 4 chunks for `finetune`).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub accumulate: usize,
    /// Peak learning rate (default: 1e-4 for `distill`, 1e-3 for `finetune`).
    #[arg(long, value_name = "X")]
    pub lr: Option<f32>,
    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long, value_name = "X", default_value_t = 0.05)]
    pub warmup: f64,
    /// AdamW's decoupled weight decay (on the weight matrices).
    #[arg(long, value_name = "X", default_value_t = 0.01)]
    pub weight_decay: f32,
    /// Clip the gradient to this global norm (0: no clipping).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub clip: f32,
    /// Seed of the data order.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    /// Measure the validation gap every N steps (0: only at the end).
    #[arg(long, value_name = "N", default_value_t = 250)]
    pub eval_every: u64,
    /// Stop after N evaluations without improvement (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub patience: usize,
    /// Write a checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub checkpoint_every: u64,
    /// The checkpoint file (default OUT.ckpt).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint (same settings and data).
    #[arg(long)]
    pub resume: bool,
    /// Keep the checkpoint when the run finishes.
    #[arg(long)]
    pub keep_checkpoint: bool,
    /// Keep only each layer's input during the forward and recompute the rest in the backward:
    /// far less activation memory (SmolLM2, 1,024 tokens a step: 0.87 GB less) for more time
    /// (1.27x the step there). Same gradients.
    #[arg(long)]
    pub recompute: bool,
    /// The JSON-lines training log (default OUT.train.jsonl).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

impl TrainFlags {
    pub fn batch_or(&self, default: usize) -> usize {
        self.batch.unwrap_or(default)
    }
    pub fn lr_or(&self, default: f32) -> f32 {
        self.lr.unwrap_or(default)
    }
}

pub const FINETUNE_HELP: &str = "How: the model's weights stay frozen in their own type (a Q4_1 file stays Q4_1 in memory: QLoRA); every block's chosen matrices (--lora-targets) get an adapter A (r x in), B (out x r), with W x + (alpha / r) B A x in the forward (A uniform in +-1/sqrt(in), B zero: training starts from the model exactly). Only A and B are trained, by the cross-entropy of the next token, with AdamW (--lr, warm-up over --warmup of the steps, cosine decay to 10%), clipping (--clip) and accumulation (--accumulate).\n\n\
Data: text (.txt and others): the token stream is cut into chunks of --ctx tokens, every next token trained; every 50th chunk (at most 8) is held out for validation. Chat (.jsonl, one {\"messages\": [{\"role\": \"system|user|assistant\", \"content\": ...}]} per line): rendered with the model's chat template, only the assistant's answers (and their end-of-turn token) are trained; every 50th conversation is held out. --val FILE gives the held-out data instead.\n\n\
Files: the adapter (-o, llama.cpp's LoRA GGUF: `llama-cli -m MODEL --lora OUT`, `smelt run --lora OUT`, `smelt eval MODEL --lora OUT`, `smelt merge MODEL OUT -o merged.gguf`); OUT.finetune.json (settings, validation loss and perplexity before and after), OUT.training.html (the curve), the JSON-lines log (--log, default OUT.train.jsonl), the checkpoint (--checkpoint, default OUT.ckpt; every --checkpoint-every steps, on Ctrl-C and at --max-minutes; --resume continues exactly).\n\n\
Examples:\n  smelt finetune smollm2-135m --data austen/*.txt -o austen.lora.gguf --max-minutes 30\n  \
smelt finetune model.gguf --data chats.jsonl --lora-rank 8 --lora-targets attn_q,attn_v -o chat.lora.gguf --max-steps 200\n  \
smelt run -m smollm2-135m --lora austen.lora.gguf -p 'It is a truth universally acknowledged'\n  \
smelt finetune all-minilm-l6-v2 --pairs pairs.tsv -o minilm-tuned --epochs 1 --batch 32\n\n\
Sentence encoders (--pairs): every weight of the encoder is trained (AdamW, default lr 2e-5, batch 32) with in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss): each anchor's cosine to its positive, times --scale, must win a softmax over all the batch's positives and hard negatives. Larger batches give more negatives. Every 50th pair (at most 1,000) is held out unless --val; the validation figure is retrieval there (the share of anchors whose nearest held-out positive is their own), before and after. The result is a sentence-transformers directory (OUT/smelt_finetune.json, OUT.training.html).";

pub const MERGE_HELP: &str = "Every adapted matrix becomes W + (alpha / r) B A, computed in f32 from the dequantized W and written in W's own type (round-to-nearest, or importance-weighted with --imatrix), or in --to TYPE; the other tensors are copied. The result is a plain GGUF: no adapter needed at run time, at the cost of one more rounding of the adapted matrices. Into a 4-bit type that rounding undoes most of what the adapter learned (SmolLM2 Q4_1 with a rank-16 Austen adapter: held-out perplexity -16.4% with the adapter, -2.3% merged into Q4_1, -16.4% merged into Q8_0; docs/BENCHMARKS.md): keep the adapter at run time (--lora), or merge --to q8_0 (or f16/f32) and re-quantize that with calibration (`smelt quantize --imatrix`).\n\n\
Examples:\n  smelt merge smollm2-135m austen.lora.gguf -o smollm2-austen-q8_0.gguf --to q8_0\n  \
smelt merge smollm2-135m austen.lora.gguf -o smollm2-austen-f32.gguf --to f32";

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a GGUF decoder or a model name.
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Training data: text files, or chat JSON lines (.jsonl); repeatable.
    #[arg(long, value_name = "FILE", required_unless_present = "pairs", num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Sentence encoders: training pairs, one `anchor<TAB>positive[<TAB>hard negative]` per line
    /// (or JSON lines with "anchor", "positive" and optionally "negative"); the encoder learns
    /// to rank each anchor's positive first among the batch's (in-batch negatives). MODEL is
    /// then a sentence-transformers directory or name, and -o the directory to write.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub pairs: Option<PathBuf>,
    /// Held-out data (same formats); default every 50th chunk, conversation or pair.
    #[arg(long, value_name = "FILE")]
    pub val: Option<PathBuf>,
    /// The adapter file to write (with --pairs: the encoder directory, new or empty).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// With --pairs: the similarity scale (cosines times this are the logits; 20 as
    /// sentence-transformers' MultipleNegativesRankingLoss).
    #[arg(long, value_name = "X", default_value_t = 20.0)]
    pub scale: f32,
    /// With --pairs: tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_length: usize,
    /// Rank r of each adapter.
    #[arg(long, value_name = "R", default_value_t = 16)]
    pub lora_rank: usize,
    /// alpha: the adapters' term is scaled by alpha / r (default: r, a scale of 1).
    #[arg(long, value_name = "X")]
    pub lora_alpha: Option<f32>,
    /// The block matrices that get adapters.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down")]
    pub lora_targets: Vec<String>,
    /// Continue training this adapter (same rank and targets) instead of starting from zero.
    #[arg(long, value_name = "FILE")]
    pub init_adapter: Option<PathBuf>,
    /// Tokens per training chunk (text) or most tokens per conversation (chat).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub ctx: usize,
    #[command(flatten)]
    pub train: TrainFlags,
    /// Print a JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base model the adapter was trained on (GGUF file or name).
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// The LoRA adapter (GGUF).
    #[arg(value_name = "ADAPTER")]
    pub adapter: PathBuf,
    /// The merged GGUF to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Write the adapted matrices in this type (default: each one's own type).
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub to: Option<GgmlType>,
    /// Weight the re-quantization by this importance matrix (llama.cpp's or smelt's).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Scale the adapter's change (1: as trained).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub scale: f32,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub const QAT_HELP: &str = "How: the model is trained against itself. Its weights are kept in f32 (the master weights) and used in every forward and backward as the --to type's exact round trip (the ggml block quantizer the file is written with, then its dequantizer; scales recomputed from the current weights at every step; importance-weighted with --imatrix); the gradient passes straight through the rounding (straight-through estimator) to the master weights. The loss is the KL divergence from the original model's next-token distributions (self-distillation) on chunks of --ctx tokens of --data, with AdamW (--lr, warm-up over --warmup of the steps, cosine decay to 10%, no weight decay), clipping (--clip) and accumulation (--accumulate). Norms stay f32 and are trained too. Every 50th chunk (at most 8) is held out: the validation figure is the quantized model's KL to the original there, before (plain post-training quantization) and after.\n\n\
The written file is a normal GGUF of the --to type (the token embedding in --embed-type, a separate output head in --output-type) holding exactly the quantized weights of the last step; llama.cpp runs it unchanged.\n\n\
Cost: a full training step of the model plus the original's forward (SmolLM2-135M: about 60 tokens/s on 2 threads, 4 GB); --max-minutes bounds the run (give --steps too, so the learning rate decays on time).\n\n\
Files: OUT, OUT.qat.json (settings, validation KL before and after), OUT.training.html (the curve), the JSON-lines log (--log, default OUT.train.jsonl), the checkpoint (--checkpoint, default OUT.ckpt; --resume continues exactly).\n\n\
--like FILE starts from a quantized file of the same model instead (from `smelt fit`, or `smelt quantize --imatrix --awq`): its weights (dequantized) are the first master weights and every tensor keeps its type from FILE, so a mixed-precision file found by `smelt fit` is trained as it is; MODEL stays the original the loss compares with.\n\n\
Sentence encoders (--to int8): the model is trained for smelt's int8 path (`smelt embed --int8`, `MODEL:int8`). Every step measures the calibration maxima of the matrices' inputs with the master weights on the int8 path's calibration sentences, quantizes the --int8 matrices exactly as loading with int8 does (SmoothQuant factors, 7-bit weights per output channel) and quantizes their inputs per row as the int8 kernels do at run time; both roundings pass gradients straight through. The loss is 1 - cos to the original f32 model's sentence vectors on the --data sentences (every 50th, at most 1000, held out: the validation figure is that gap of the int8 model, before and after). Defaults: batch 32, lr 1e-5. The output is a sentence-transformers directory of the master weights (f32): run it with --int8 (the same SPEC) or as OUT:int8 (every matrix) to get the trained int8 model; OUT/smelt_qat.json and OUT/training.html hold the summary and the curve.\n\n\
Examples:\n  smelt qat smollm2-135m --to q4_0 --data austen/*.txt -o smollm2-q4_0-qat.gguf --steps 200 --max-minutes 60\n  \
smelt imatrix smollm2-135m --calib austen/emma.txt -o imatrix.gguf && smelt qat smollm2-135m --to q4_0 --imatrix imatrix.gguf --data austen/*.txt -o q4_0-qat.gguf --steps 100\n  \
smelt fit smollm2-135m --max-size 78MB --calib calib.txt -o fit78.gguf && smelt qat smollm2-135m --like fit78.gguf --data austen/*.txt -o fit78-qat.gguf --steps 150\n  \
smelt qat all-minilm-l6-v2 --to int8 --data sentences.txt -o minilm-int8-qat --steps 300 && smelt embed -m minilm-int8-qat --int8 < texts.txt";

/// What `smelt qat` trains for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QatTarget {
    /// A ggml type of a GGUF decoder.
    Ggml(GgmlType),
    /// The int8 path of a sentence encoder.
    Int8,
}

fn parse_qat_target(s: &str) -> Result<QatTarget, String> {
    if s.eq_ignore_ascii_case("int8") {
        return Ok(QatTarget::Int8);
    }
    parse_target(s).map(QatTarget::Ggml).map_err(|e| format!("{e}; or int8 for a sentence encoder"))
}

#[derive(Args, Debug)]
pub struct QatArgs {
    /// The model to quantize: a GGUF decoder, a sentence-encoder directory or a model name (its
    /// weights are the original the quantized model learns to match).
    #[arg(value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Target: a ggml type for a decoder (as `smelt quantize --to`), or `int8` for a sentence
    /// encoder (smelt's int8 path, as `smelt embed --int8` runs it).
    #[arg(long = "to", value_name = "TYPE", value_parser = parse_qat_target, required_unless_present = "like")]
    pub to: Option<QatTarget>,
    /// Decoders: start from FILE, a quantized GGUF of MODEL (from `smelt fit`, `smelt quantize
    /// --imatrix --awq` ...): training starts from its weights and every tensor keeps its type in
    /// FILE (a mixed-precision plan stays as it is); MODEL stays the original to match.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to", "embed_type", "output_type"])]
    pub like: Option<PathBuf>,
    /// --to int8: which matrices run in int8 (as `smelt embed --int8 SPEC`; default all).
    #[arg(long, value_name = "SPEC", default_value = "all")]
    pub int8: smelt_models::Int8Spec,
    /// Type for the token embedding (also the output head of tied models); default --to.
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub embed_type: Option<GgmlType>,
    /// Type for a separate output head (output.weight); default --to.
    #[arg(long, value_name = "TYPE", value_parser = parse_target)]
    pub output_type: Option<GgmlType>,
    /// Importance matrix (from `smelt imatrix` or llama-imatrix): the block search of every
    /// matrix it has an entry for minimizes the importance-weighted error, in training and in
    /// the written file.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// The quantized GGUF to write (a decoder), or the directory (an encoder).
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    /// Training text files (repeatable): prose (split into sentences for an encoder), or JSON
    /// lines with a "text" field. Use text other than the one you evaluate on.
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Tokens per training chunk (decoders).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub ctx: usize,
    /// Weight of the cross-entropy on the text's next tokens, added to the KL term.
    #[arg(long, value_name = "W", default_value_t = 0.0)]
    pub ce_weight: f32,
    #[command(flatten)]
    pub train: TrainFlags,
    /// Print a JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}
