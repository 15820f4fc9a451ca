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
429 with Retry-After. SIGTERM or Ctrl-C stops accepting requests and lets running ones finish.";

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
    /// A large remote model (any OpenAI-compatible server, http://HOST:PORT/v1) the router
    /// escalates to: prompts longer than the local context, or `x-smelt-route: remote`.
    /// Private data never goes there; when it fails, the local model answers.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// The model name to ask the remote for.
    #[arg(long, value_name = "NAME", requires = "remote")]
    pub remote_model: Option<String>,
    /// The environment variable holding the remote's API key.
    #[arg(long, value_name = "VAR", requires = "remote")]
    pub remote_key_env: Option<String>,
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
    /// Longest one remote exchange may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub remote_timeout: f64,
}
