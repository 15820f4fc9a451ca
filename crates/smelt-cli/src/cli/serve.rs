//! Arguments of `smelt serve`.

use clap::Args;
use smelt_formats::GgmlType;

use super::parse_target;

pub const SERVE_HELP: &str = "Examples:
  smelt serve                                   # SmolLM2 on http://127.0.0.1:8080/v1
  smelt serve -m model.gguf --embed all-minilm-l6-v2 --port 8000 --parallel 8
  curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
    -d '{\"model\":\"smollm2-135m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'

Any OpenAI client works with base_url http://HOST:PORT/v1 and the model id from GET /v1/models
(the catalog name, the file's name, or --alias). Requests are decoded together, --parallel at a
time (continuous batching); up to --queue more wait for a slot, and past that the server answers
429 with Retry-After. SIGTERM or Ctrl-C stops accepting requests and lets running ones finish.

POST /admin/reload (optionally {\"model\": PATH}) or SIGHUP loads a model beside the running one
and switches to it once it passes a self-check; running requests finish on the old one, and a
file that fails changes nothing. With --remote, the router escalates what the local model cannot
do; measure its signals on your own task with `smelt route eval`, watch the traffic with
--request-log and `smelt monitor`.";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Decoder to serve: a GGUF file, an HF directory or a catalog name.
    #[arg(short, long, value_name = "MODEL", default_value = "smollm2-135m")]
    pub model: String,
    /// Sentence encoder for /v1/embeddings (e.g. all-minilm-l6-v2).
    #[arg(long, value_name = "ENCODER")]
    pub embed: Option<String>,
    /// The model id clients send (default: the catalog name or the file's name).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: usize,
    /// Requests decoded together (slots, each with its own KV cache).
    #[arg(long, short = 'P', value_name = "N", default_value_t = 8)]
    pub parallel: usize,
    /// Requests that may wait for a slot; past it, 429.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queue: usize,
    /// Tokens per slot, prompt and answer together (default: the model's, at most 4096).
    #[arg(short = 'c', long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Longest a request may generate, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub timeout: f64,
    /// Largest request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Require `Authorization: Bearer KEY` on /v1 (default: the SMELT_API_KEY variable, if set).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Run the weights converted to this type in memory.
    #[arg(long = "as", value_name = "TYPE", value_parser = parse_target)]
    pub as_type: Option<GgmlType>,
    /// A large remote model (any OpenAI-compatible server, http://HOST:PORT/v1 or
    /// https://HOST/v1, its certificate checked against the system's roots) the router
    /// escalates to: prompts longer than the local context, drafts the local model is unsure of
    /// (--confidence-*), prompts its classifier finds hard (--complexity), or `x-smelt-route:
    /// remote`. Private data never goes there; when it fails, the local model answers.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// The model name to ask the remote for.
    #[arg(long, value_name = "NAME", requires = "remote")]
    pub remote_model: Option<String>,
    /// The environment variable holding the remote's API key.
    #[arg(long, value_name = "VAR", requires = "remote")]
    pub remote_key_env: Option<String>,
    /// Trust only the certificates in this PEM file for an https:// remote (a private
    /// gateway's own authority) instead of the system's roots.
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub remote_ca: Option<std::path::PathBuf>,
    /// Private data (emails, phone and card numbers, IBANs, national ids, keys and tokens,
    /// addresses): `pin` keeps such requests local, `redact` replaces the data by placeholders
    /// before escalating.
    #[arg(long, value_name = "MODE", default_value = "pin", value_parser = ["pin", "redact"])]
    pub privacy: String,
    /// An extra private-data pattern, NAME=REGEX (repeatable).
    #[arg(long = "private-pattern", value_name = "NAME=REGEX")]
    pub private_patterns: Vec<String>,
    /// At most this many requests to the remote per minute (past it, local answers).
    #[arg(long, value_name = "N", requires = "remote")]
    pub remote_rpm: Option<u64>,
    /// At most this many remote tokens per day (past it, local answers).
    #[arg(long, value_name = "N", requires = "remote")]
    pub remote_tokens_per_day: Option<u64>,
    /// Append one JSON line per generation request (time, route and reason, tokens, duration,
    /// the answer's confidence, the prompt's embedding with --drift-window) for `smelt monitor`.
    #[arg(long, value_name = "FILE")]
    pub request_log: Option<std::path::PathBuf>,
    /// Track drift: the first N prompts' mean embedding against the last N prompts' (needs
    /// --embed; reported as smelt_drift_embedding_distance). 0: off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub drift_window: usize,
    /// Longest one remote exchange may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub remote_timeout: f64,
    /// The complexity signal: a classifier head (from `smelt classify train` on `smelt route
    /// label` output) on the prompt's embedding; p(remote) at or above --complexity-threshold
    /// escalates. Loads the head's encoder unless --embed names one.
    #[arg(long, value_name = "HEAD.json", requires = "remote")]
    pub complexity: Option<std::path::PathBuf>,
    /// p(remote) at or above which the complexity signal escalates.
    #[arg(long, value_name = "P", default_value_t = 0.5)]
    pub complexity_threshold: f32,
    /// The confidence gate: tokens the local model drafts before deciding (0: off). The draft is
    /// held back; an unsure one is dropped and the request escalates.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub confidence_tokens: usize,
    /// Escalate when the draft's mean log-probability is below this (the default escalated
    /// half of the requests of the measured task: docs/BENCHMARKS.md).
    #[arg(long, value_name = "X", default_value_t = -1.8)]
    pub confidence_logprob: f32,
    /// Escalate when any drafted token's top-1 probability is below this.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub confidence_top1: f32,
}

pub const ROUTE_HELP: &str = "Examples:
  scripts/make-cloze-task data/cloze                      # a labelled task (train and test)
  smelt serve -m small.gguf --embed all-minilm-l6-v2 --port 8080 &
  smelt serve -m big.gguf --port 8081 &
  smelt route label data/cloze/train.jsonl --local http://127.0.0.1:8080/v1 \\
    --remote http://127.0.0.1:8081/v1 -o router-train.jsonl --records train.records.jsonl
  smelt classify train router-train.jsonl -o complexity.head.json
  smelt route eval --from train.records.jsonl             # choose thresholds on the train split
  smelt route eval data/cloze/test.jsonl --local http://127.0.0.1:8080/v1 \\
    --remote http://127.0.0.1:8081/v1 --complexity complexity.head.json --plot curve.svg

Task files are JSON lines {\"prompt\": ..., \"answer\": ...} (completions) or {\"messages\": [...],
\"answer\": ...} (chat); an answer is right when the output's first words are the answer's (case
and punctuation aside). Both servers are asked greedily, as users would ask them. `eval` prints
each signal's cost-quality curve (quality against the share of requests escalated), the oracle,
the operating point each signal needs to reach --target of always-remote quality, and the
routing that `smelt serve`'s thresholds give (set them with the same flags as serve).";

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub command: RouteCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum RouteCommand {
    /// Ask both servers every item; write the complexity classifier's training set (`remote`
    /// where the local answer is wrong and the remote's right, else `local`) for `smelt classify train`.
    Label(RouteLabelArgs),
    /// Cost-quality curves of the router's signals, alone and combined, and the operating point
    /// of the given thresholds.
    Eval(RouteEvalArgs),
}

#[derive(Args, Debug)]
pub struct RouteAsk {
    /// The task: JSON lines with "prompt" (or "messages") and "answer".
    #[arg(value_name = "TASK.jsonl", required_unless_present = "from")]
    pub data: Option<std::path::PathBuf>,
    /// The local server (a `smelt serve`, with --embed for the complexity signal).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080/v1")]
    pub local: String,
    /// The remote server (any OpenAI-compatible one).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// A complexity head: also score each item's p(remote) (its encoder must be the local
    /// server's --embed).
    #[arg(long, value_name = "HEAD.json")]
    pub complexity: Option<std::path::PathBuf>,
    /// Tokens each answer may have.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_tokens: usize,
    /// Tokens the confidence statistics cover (serve's --confidence-tokens).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub confidence_tokens: usize,
    /// Requests in flight at once.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Write every item's record (answers, grades, signals) here, JSON lines.
    #[arg(long, value_name = "FILE")]
    pub records: Option<std::path::PathBuf>,
    /// Read the records written by --records instead of asking the servers.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "remote"])]
    pub from: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct RouteLabelArgs {
    #[command(flatten)]
    pub ask: RouteAsk,
    /// The training set to write (JSON lines {"text", "label"}).
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct RouteEvalArgs {
    #[command(flatten)]
    pub ask: RouteAsk,
    /// The quality to reach, as a share of always-remote quality.
    #[arg(long, value_name = "X", default_value_t = 0.95)]
    pub target: f64,
    /// The operating point to report: serve's --confidence-logprob.
    #[arg(long, value_name = "X", default_value_t = -1.8)]
    pub confidence_logprob: f32,
    /// The operating point to report: serve's --confidence-top1.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub confidence_top1: f32,
    /// The operating point to report: serve's --complexity-threshold (with a head).
    #[arg(long, value_name = "P", default_value_t = 0.5)]
    pub complexity_threshold: f32,
    /// Write the curves as an SVG chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// The whole report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub const MONITOR_HELP: &str = "Examples:
  smelt serve --embed all-minilm-l6-v2 --drift-window 200 --request-log requests.jsonl
  smelt monitor requests.jsonl --window 200
  smelt monitor requests.jsonl --json | jq '.[] | select(.drift > 0.1)'

Each window of N requests: its time span, the share escalated to the remote, the share of local
answers whose first tokens' mean log-probability is under --low-confidence (a rising share: the
model meets traffic it is unsure of), prompt length, latency p50/p99, and the embedding drift
against the first window (1 - cosine of the windows' mean prompt embeddings; 0 is the same mix
of topics). Windows past --drift-alert or with the low-confidence share up by more than 10
points on the first window are flagged.";

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// A request log written by `smelt serve --request-log`.
    #[arg(value_name = "LOG.jsonl")]
    pub log: std::path::PathBuf,
    /// Requests per window.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub window: usize,
    /// Local answers under this mean log-probability count as low-confidence.
    #[arg(long, value_name = "X", default_value_t = -1.8)]
    pub low_confidence: f32,
    /// Flag windows whose embedding drift passes this.
    #[arg(long, value_name = "X", default_value_t = 0.1)]
    pub drift_alert: f64,
    /// The windows as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
