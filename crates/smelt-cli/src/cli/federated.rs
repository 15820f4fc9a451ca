//! Arguments of `smelt federated`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub const FEDERATED_HELP: &str = "Examples:
  smelt federated client --server 10.0.0.5:8080 --data local.jsonl --labels business,sport,tech
  smelt federated client --server 127.0.0.1:8080 --data local.jsonl --labels neg,pos \\
      --dp-clip 1 --dp-noise 1.1 --save-sent sent/ --head-out head.json --json
  smelt federated client --server 127.0.0.1:8080 --task encoder-layers --train-layers 1 \\
      --data local.jsonl --labels neg,pos --head-out head.json     # also writes head.json.encoder/
  smelt federated client --server 127.0.0.1:8080 --task lora --data notes.txt \\
      --lora-rank 8 --adapter-out adapter.gguf                      # SmolLM2 by default

The client joins a Flower server (flwr 1.x, the `flwr.server.start_server` gRPC stream) and
answers its instructions; only the trained tensors leave this machine:
  classify        a classification head on frozen sentence embeddings (`smelt classify`'s
                  logistic regression); the head travels (labels x dims + labels floats)
  encoder-layers  the encoder's last --train-layers layers and a head (from --init-head, e.g.
                  the head a classify federation brought home, else zeros), trained together
                  by AdamW; those layers and the head travel
  lora            LoRA adapters over a frozen GGUF decoder, trained on local text (.txt) or chat
                  (.jsonl, the answers trained) by the next-token loss; only the adapters travel
The server's fit config may set `local_epochs`, `batch_size`, `lr` and `proximal_mu` (FedProx);
other keys are logged and ignored. Every client of a federation must use the same model, task
and settings, and for classification the same --labels in the same order.";

#[derive(Args, Debug)]
pub struct FederatedArgs {
    #[command(subcommand)]
    pub command: FederatedCommand,
}

#[derive(Subcommand, Debug)]
pub enum FederatedCommand {
    /// Join a Flower server and train on local data: only model updates leave this machine.
    #[command(after_help = FEDERATED_HELP)]
    Client(FederatedClientArgs),
    /// Run a federation on this machine: a real Flower server and N smelt clients on loopback,
    /// the data split among them, against centralized and local-only training.
    #[command(after_help = SIMULATE_HELP)]
    Simulate(FederatedSimulateArgs),
}

pub const SIMULATE_HELP: &str = "Examples:
  smelt federated simulate --data bbc/train.jsonl --test bbc/test.jsonl -o fed.html
  smelt federated simulate --data train.jsonl --clients 10 --rounds 20 --split dirichlet:0.1 --strategy fedprox
  smelt federated simulate --data train.jsonl --malicious 2:label-flip --strategy fedmedian --json
  smelt federated simulate --data train.jsonl --dp-clip 1 --dp-epsilon 8      # DP-SGD in each client

Every client evaluates the server's model on the whole test split each round, so the federated
curve is the global model's test accuracy. Centralized and local-only training use the same
model, batch size, step and epochs (rounds x local epochs). The Flower server runs from --python,
$SMELT_FLOWER_PYTHON, or a venv smelt makes once under $SMELT_HOME/flwr-venv (flwr 1.41.0).";

#[derive(Args, Debug)]
pub struct FederatedSimulateArgs {
    /// Training data: JSON lines with "text" and "label", split among the clients.
    #[arg(long, value_name = "DATA.jsonl")]
    pub data: PathBuf,
    /// Test data (same form); default: a seeded --test-share of --data held out.
    #[arg(long, value_name = "FILE")]
    pub test: Option<PathBuf>,
    /// Share of --data held out for testing when --test is not given.
    #[arg(long, value_name = "SHARE", default_value_t = 0.2)]
    pub test_share: f64,
    /// Sentence encoder.
    #[arg(long, short, value_name = "ENCODER", default_value = "all-minilm-l6-v2")]
    pub model: String,
    /// Clients in the federation (all train every round).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub clients: usize,
    /// Federated rounds.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rounds: usize,
    /// How the data is dealt: `iid`, or `dirichlet:ALPHA` (non-IID by label; smaller is more skewed).
    #[arg(long, value_name = "HOW", default_value = "dirichlet:0.5")]
    pub split: smelt_federated::simulate::Split,
    /// Epochs over its data each client trains per round.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub local_epochs: usize,
    /// Examples per gradient step.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub batch_size: usize,
    /// Step size (default: the head's safe step, 1 / smoothness).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// L2 penalty of the head.
    #[arg(long, value_name = "X", default_value_t = 1e-3)]
    pub l2: f32,
    /// Flower's aggregation: fedavg, fedprox, fedmedian, trimmed (FedTrimmedAvg), krum.
    #[arg(long, value_name = "NAME", default_value = "fedavg", value_parser = ["fedavg", "fedprox", "fedmedian", "trimmed", "krum"])]
    pub strategy: String,
    /// FedProx's mu (with --strategy fedprox).
    #[arg(long, value_name = "MU", default_value_t = 0.01)]
    pub proximal_mu: f64,
    /// With --strategy krum: average this many best-scored updates (Multi-Krum; 0: plain Krum
    /// keeps one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub krum_keep: usize,
    /// Bucketing for the robust strategies (Karimireddy, He and Jaggi 2022): the server
    /// shuffles each round's updates and averages them in groups of this many before the
    /// strategy aggregates the group means; lowers the spread that non-IID clients give
    /// FedMedian and Krum (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bucket: usize,
    /// Attackers among the clients: N:label-flip or N:scale:FACTOR.
    #[arg(long, value_name = "N:ATTACK")]
    pub malicious: Option<String>,
    /// What privacy protects: `example` (DP-SGD: each local example's gradient clipped to
    /// --dp-clip and noised, every step) or `client` (the whole update clipped and noised before
    /// it is sent).
    #[arg(long, value_name = "UNIT", default_value = "example", value_parser = ["example", "client"])]
    pub dp_unit: String,
    /// Differential privacy: the clipping norm (see --dp-unit).
    #[arg(long, value_name = "C")]
    pub dp_clip: Option<f64>,
    /// Noise multiplier (noise standard deviation over --dp-clip).
    #[arg(long, value_name = "SIGMA", requires = "dp_clip", conflicts_with = "dp_epsilon")]
    pub dp_noise: Option<f64>,
    /// Instead of --dp-noise: the smallest noise that keeps each client (or each example) within
    /// this epsilon over the whole run.
    #[arg(long, value_name = "EPSILON", requires = "dp_clip")]
    pub dp_epsilon: Option<f64>,
    /// The delta of (epsilon, delta).
    #[arg(long, value_name = "DELTA", default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// Python with flwr 1.41 for the server.
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
    /// Seed of the split, the example order and the noise.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Write the report: .json, or .html with the curves.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FederatedClientArgs {
    /// The Flower server's HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// What to train: `classify` (a head on frozen sentence embeddings), `encoder-layers` (the
    /// encoder's last layers and a head) or `lora` (adapters over a decoder).
    #[arg(long, value_name = "TASK", default_value = "classify", value_parser = ["classify", "encoder-layers", "lora"])]
    pub task: String,
    /// The model: a sentence encoder (default all-minilm-l6-v2) or, for lora, a GGUF decoder
    /// (default smollm2-135m).
    #[arg(long, short, value_name = "MODEL")]
    pub model: Option<String>,
    /// Local training data: JSON lines with "text" and "label"; for lora plain text (.txt) or
    /// chat JSON lines (.jsonl).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Local evaluation data (same form); default: the training data (lora: every 50th chunk
    /// of it, held out).
    #[arg(long, value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Every label of the federation, comma-separated, in the order all clients share
    /// (classify and encoder-layers).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// encoder-layers: how many of the encoder's last layers train (0: the head alone).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub train_layers: usize,
    /// encoder-layers: start the head from this `smelt classify` head file (for example one
    /// brought home by a `--task classify` federation on the same labels) instead of zeros.
    #[arg(long, value_name = "HEAD.json")]
    pub init_head: Option<PathBuf>,
    /// encoder-layers: tokens per text, [CLS] and [SEP] included (longer texts are cut).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_length: usize,
    /// encoder-layers and lora: AdamW's learning rate when the server's fit config sends no
    /// `lr` (default 5e-5 for encoder-layers, 1e-3 for lora).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// lora: rank r of each adapter.
    #[arg(long, value_name = "R", default_value_t = 8)]
    pub lora_rank: usize,
    /// lora: alpha (the adapters' term is scaled by alpha / r; default r).
    #[arg(long, value_name = "X")]
    pub lora_alpha: Option<f32>,
    /// lora: the block matrices that get adapters.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "attn_q,attn_v")]
    pub lora_targets: Vec<String>,
    /// lora: tokens per training chunk (text) or most tokens per conversation (chat).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub ctx: usize,
    /// lora: write the adapter as last set by the server or trained here (llama.cpp's adapter
    /// GGUF: `smelt run --lora`, `llama-cli --lora`).
    #[arg(long, value_name = "FILE")]
    pub adapter_out: Option<PathBuf>,
    /// L2 penalty of the head.
    #[arg(long, value_name = "X", default_value_t = 1e-3)]
    pub l2: f32,
    /// Seconds to keep trying to reach the server (at the start and after a dropped stream).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub connect_for: f64,
    /// Connect with TLS, trusting this root certificate (PEM; the CA of the server's certificate,
    /// Flower's `root_certificates`).
    #[arg(long, value_name = "CA.pem")]
    pub root_cert: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "root_cert")]
    pub tls_domain: Option<String>,
    /// Largest message accepted from the server, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_message_mb: usize,
    /// Refuse server parameters whose L2 norm is above this.
    #[arg(long, value_name = "X", default_value_t = 1e6)]
    pub max_norm: f64,
    /// Seed of the local example order and the privacy noise.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// What privacy protects: `example` (DP-SGD: each local example's gradient clipped to
    /// --dp-clip and noised, every step) or `client` (the whole update clipped and noised before
    /// it is sent).
    #[arg(long, value_name = "UNIT", default_value = "example", value_parser = ["example", "client"])]
    pub dp_unit: String,
    /// Differential privacy: the clipping norm (of each example's gradient, or of the update;
    /// see --dp-unit).
    #[arg(long, value_name = "C")]
    pub dp_clip: Option<f64>,
    /// Gaussian noise: standard deviation this times --dp-clip.
    #[arg(long, value_name = "SIGMA", requires = "dp_clip", default_value_t = 0.0)]
    pub dp_noise: f64,
    /// The delta of the (epsilon, delta) reported for the updates sent.
    #[arg(long, value_name = "DELTA", default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// With --dp-unit client: the share of rounds this client is sampled in (the server's
    /// fraction_fit), for the privacy accountant.
    #[arg(long, value_name = "Q", default_value_t = 1.0)]
    pub dp_sample_rate: f64,
    /// Save every parameter set sent to the server here (fit-ROUND-TENSOR.npy), to audit what left.
    #[arg(long, value_name = "DIR")]
    pub save_sent: Option<PathBuf>,
    /// Write the head as last set by the server or trained here (a `smelt classify` head file;
    /// with encoder-layers the encoder goes to FILE.encoder/ beside it).
    #[arg(long, value_name = "FILE")]
    pub head_out: Option<PathBuf>,
    /// Print the run's summary as JSON (every exchange: round, examples, loss, metrics, bytes, CPU time).
    #[arg(long)]
    pub json: bool,
}
