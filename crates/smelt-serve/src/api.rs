//! The OpenAI API's request and error shapes, field for field (unknown fields are ignored, as
//! OpenAI does), with the checks that turn a request into engine settings. Responses are built
//! with `serde_json::json!` in the handlers, next to the code that fills them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds to wait, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param, code: None, retry_after: None }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn busy(retry_after: u64) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is busy: every slot is generating and the queue is full; retry after the time in Retry-After".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("server_busy"),
            retry_after: Some(retry_after),
        }
    }

    pub fn loading() -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the model is still loading".into(), kind: "server_error", param: None, code: Some("loading"), retry_after: Some(1) }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None, retry_after: None }
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into(), kind: "invalid_request_error", param: None, code: Some(code), retry_after: None }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", s.into());
        }
        r
    }
}

/// `stop`: a string or up to 4 strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Result<Vec<String>, ApiError> {
        let v = match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        };
        if v.len() > 4 {
            return Err(ApiError::invalid(format!("stop: at most 4 sequences, got {}", v.len()), Some("stop")));
        }
        if v.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid("stop: an empty string would stop before the first token", Some("stop")));
        }
        Ok(v)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields common to chat and completions (OpenAI's, plus llama.cpp's `top_k`,
/// `min_p` and `repeat_penalty`, which llama-server clients send).
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<i64>,
    /// llama.cpp's extension: keep generating past end-of-generation tokens (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    pub n: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// A chat message's content: a string, or parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` of a completion: a string, or one string in an array, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<i64>,
    /// Legacy completions: how many alternatives to report per token (0-5).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `input` of an embeddings request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbedInput,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u64>,
}

/// The largest `max_tokens` accepted (the context bounds it anyway; this bounds the number).
pub const MAX_TOKENS_LIMIT: i64 = 1 << 20;

/// Checks `max_tokens` (1 up to [`MAX_TOKENS_LIMIT`]); `None` when absent.
pub fn max_tokens(v: Option<i64>, param: &'static str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (1..=MAX_TOKENS_LIMIT).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(format!("{param} must be between 1 and {MAX_TOKENS_LIMIT}, got {n}"), Some(param))),
    }
}

/// The sampler for a request: OpenAI's defaults (temperature 1, top_p 1, no top-k, no min-p),
/// its ranges (temperature 0-2), a seed from the request or a fresh one.
pub fn sampler(s: &Sampling) -> Result<smelt_models::SamplerConfig, ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(format!("n = {n}: this server returns one choice per request (n = 1)"), Some("n")));
        }
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(format!("temperature must be between 0 and 2, got {temperature}"), Some("temperature")));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(ApiError::invalid(format!("top_p must be between 0 and 1, got {top_p}"), Some("top_p")));
    }
    let seed = match s.seed {
        Some(v) => v as u64,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5EED),
    };
    let cfg = smelt_models::SamplerConfig {
        temperature: temperature as f32,
        top_k: s.top_k.unwrap_or(0).min(1 << 20) as usize,
        top_p: top_p as f32,
        min_p: s.min_p.unwrap_or(0.0) as f32,
        repeat_penalty: s.repeat_penalty.unwrap_or(1.0) as f32,
        repeat_last_n: 64,
        seed,
    };
    cfg.validate().map_err(|e| ApiError::invalid(e.to_string(), None))?;
    Ok(cfg)
}
