//! `POST /v1/embeddings`: sentence vectors from an encoder (all-MiniLM-L6-v2 and friends),
//! computed in a worker thread that owns the encoder and its thread pool; requests wait in a
//! bounded queue (429 past it).

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use smelt_kernels::pool::ThreadPool;
use smelt_models::{EmbedOptions, Encoder};
use tokio::sync::oneshot;

use crate::api::{ApiError, EmbedInput, EmbeddingRequest};
use crate::{parse_body, AppState};

/// Vectors and token count of one request, or the encoder's error.
type Answer = Result<(Vec<Vec<f32>>, usize), String>;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Answer>,
}

/// The handlers' side of the embedding worker.
pub struct EmbedHandle {
    tx: SyncSender<Job>,
}

/// Starts the worker; it ends when the handle is dropped.
pub fn start(enc: Encoder, pool: ThreadPool, queue: usize) -> std::io::Result<EmbedHandle> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
    std::thread::Builder::new()
        .name("smelt-embed".into())
        .spawn(move || {
            let opts = EmbedOptions::default();
            for job in rx {
                if job.reply.is_closed() {
                    continue;
                }
                let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                let tokens: usize = texts.iter().map(|t| (enc.tok.encode_words(t).len() + 2).min(enc.max_len)).sum();
                let r = enc.embed(&pool, &texts, &opts).map(|v| (v, tokens)).map_err(|e| e.to_string());
                let _ = job.reply.send(r);
            }
        })?;
    Ok(EmbedHandle { tx })
}

pub async fn embeddings(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let req: EmbeddingRequest = parse_body(body)?;
    let Some(id) = &state.embed_id else {
        return Err(ApiError::not_found("this server has no embedding model: start it with --embed ENCODER (e.g. all-minilm-l6-v2)", "model_not_found"));
    };
    if &req.model != id {
        return Err(ApiError::not_found(format!("the model `{}` does not exist on this server; its embedding model is `{id}`", req.model), "model_not_found"));
    }
    if let Some(d) = req.dimensions {
        return Err(ApiError::invalid(format!("dimensions = {d}: this model's vectors cannot be shortened (it was not trained with Matryoshka loss); leave the field out"), Some("dimensions")));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => return Err(ApiError::invalid(format!("encoding_format must be \"float\" or \"base64\", got {f:?}"), Some("encoding_format"))),
    };
    let texts = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
        EmbedInput::Tokens(_) | EmbedInput::TokenLists(_) => return Err(ApiError::invalid("input: token ids are not accepted here (they would be another tokenizer's); send text", Some("input"))),
    };
    if texts.is_empty() || texts.len() > state.limits.max_inputs {
        return Err(ApiError::invalid(format!("input: 1 to {} texts per request, got {}", state.limits.max_inputs, texts.len()), Some("input")));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!("input[{i}] is empty"), Some("input")));
    }
    let worker = state.embedder.get().ok_or_else(ApiError::loading)?;
    let (reply, rx) = oneshot::channel();
    let n = texts.len();
    match worker.tx.try_send(Job { texts, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            state.metrics.rejected_busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::busy(1));
        }
        Err(TrySendError::Disconnected(_)) => return Err(ApiError::internal("the embedding worker has stopped")),
    }
    let (vectors, tokens) = rx.await.map_err(|_| ApiError::internal("the embedding worker dropped the request"))?.map_err(|e| ApiError::invalid(e, Some("input")))?;
    state.metrics.embedded_inputs.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { json!(encode_base64(v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})))
}

/// One text's embedding, for the router's complexity signal (the same worker and queue as
/// `/v1/embeddings`).
pub async fn embed_one(state: &AppState, text: String) -> Result<Vec<f32>, ApiError> {
    let worker = state.embedder.get().ok_or_else(ApiError::loading)?;
    let (reply, rx) = oneshot::channel();
    match worker.tx.try_send(Job { texts: vec![text], reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return Err(ApiError::busy(1)),
        Err(TrySendError::Disconnected(_)) => return Err(ApiError::internal("the embedding worker has stopped")),
    }
    let (mut vectors, _) = rx.await.map_err(|_| ApiError::internal("the embedding worker dropped the request"))?.map_err(|e| ApiError::invalid(e, None))?;
    vectors.pop().ok_or_else(|| ApiError::internal("the embedding worker returned no vector"))
}

/// OpenAI's base64 form: the vector's little-endian float32 bytes.
pub fn encode_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
