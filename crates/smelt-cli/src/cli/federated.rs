//! Arguments of `smelt federated`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub const FEDERATED_HELP: &str = "Examples:
  smelt federated client --server 10.0.0.5:8080 --data local.jsonl --labels business,sport,tech
  smelt federated client --server 127.0.0.1:8080 --data local.jsonl --labels neg,pos \\
      --dp-clip 1 --dp-noise 1.1 --save-sent sent/ --head-out head.json --json

The client joins a Flower server (flwr 1.x, the `flwr.server.start_server` gRPC stream) and
answers its instructions: it trains a classification head on the embeddings of its local data
(`smelt classify`'s logistic regression) and sends back only the head's parameters. The server's
fit config may set `local_epochs`, `batch_size`, `lr` and `proximal_mu` (FedProx); other keys are
logged and ignored. Every client of a federation must be given the same --labels, in the same order.";

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
}

#[derive(Args, Debug)]
pub struct FederatedClientArgs {
    /// The Flower server's HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// What to train: `classify` (a classification head on frozen sentence embeddings).
    #[arg(long, value_name = "TASK", default_value = "classify", value_parser = ["classify"])]
    pub task: String,
    /// Sentence encoder that embeds the local texts.
    #[arg(long, short, value_name = "ENCODER", default_value = "all-minilm-l6-v2")]
    pub model: String,
    /// Local training data: JSON lines with "text" and "label".
    #[arg(long, value_name = "LOCAL.jsonl")]
    pub data: PathBuf,
    /// Local evaluation data (same form); default: the training data.
    #[arg(long, value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Every label of the federation, comma-separated, in the order all clients share.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', required = true)]
    pub labels: Vec<String>,
    /// L2 penalty of the head.
    #[arg(long, value_name = "X", default_value_t = 1e-3)]
    pub l2: f32,
    /// Seconds to keep trying to reach the server (at the start and after a dropped stream).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub connect_for: f64,
    /// Largest message accepted from the server, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_message_mb: usize,
    /// Refuse server parameters whose L2 norm is above this.
    #[arg(long, value_name = "X", default_value_t = 1e6)]
    pub max_norm: f64,
    /// Seed of the local example order and the privacy noise.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Client-level privacy: clip each update (local parameters minus the server's) to this L2
    /// norm before it is sent.
    #[arg(long, value_name = "C")]
    pub dp_clip: Option<f64>,
    /// Gaussian noise added to the clipped update: standard deviation this times --dp-clip.
    #[arg(long, value_name = "SIGMA", requires = "dp_clip", default_value_t = 0.0)]
    pub dp_noise: f64,
    /// The delta of the (epsilon, delta) reported for the updates sent.
    #[arg(long, value_name = "DELTA", default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// The share of rounds this client is sampled in (the server's fraction_fit), for the
    /// privacy accountant.
    #[arg(long, value_name = "Q", default_value_t = 1.0)]
    pub dp_sample_rate: f64,
    /// Save every parameter set sent to the server here (fit-ROUND-TENSOR.npy), to audit what left.
    #[arg(long, value_name = "DIR")]
    pub save_sent: Option<PathBuf>,
    /// Write the head as last set by the server or trained here (a `smelt classify` head file).
    #[arg(long, value_name = "FILE")]
    pub head_out: Option<PathBuf>,
    /// Print the run's summary as JSON (every exchange: round, examples, loss, metrics, bytes, CPU time).
    #[arg(long)]
    pub json: bool,
}
