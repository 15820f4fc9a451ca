//! smelt-serve: an OpenAI-compatible HTTP server for smelt's models.
//!
//! - [`engine`]: the loop that owns the decoder and decodes all active sequences together
//!   (continuous batching); handlers only send it requests and read its events.
//! - [`generate`]: `/v1/chat/completions` and `/v1/completions`, streaming (SSE) or not.
//! - [`embeddings`]: `/v1/embeddings` on a sentence encoder, in its own worker thread.
//! - [`api`]: the OpenAI request and error shapes; [`metrics`]: `/metrics` in Prometheus text.
//! - [`router`]: which model answers (local first; private data never leaves), [`remote`] the
//!   large remote model behind timeouts, retries and a circuit breaker, [`escalate`] the glue;
//!   [`privacy`] the detector of personal and secret data.
//!
//! [`router`] builds the whole service over an [`AppState`]; the model loads after the port
//! is bound (`/health` answers 503 until it is ready), and [`serve`] runs it until SIGTERM or
//! Ctrl-C, then lets in-flight requests finish.

pub mod api;
pub mod embeddings;
pub mod engine;
pub mod escalate;
pub mod generate;
pub mod metrics;
pub mod monitor;
pub mod privacy;
pub mod reload;
pub mod remote;
pub mod route_eval;
pub mod router;
pub mod run;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use smelt_models::{ChatTemplate, Tokenizer};

pub use api::ApiError;
use engine::EngineHandle;
pub use metrics::Metrics;
pub use run::{run, Budget, PrivacyMode, RemoteOptions, ServeError, ServeOptions};

/// A value that can be replaced while readers hold the old one (the decoder, swapped by a hot
/// reload: requests that took the old one finish on it).
pub struct Current<T>(std::sync::RwLock<Option<Arc<T>>>);

impl<T> Default for Current<T> {
    fn default() -> Self {
        Current(std::sync::RwLock::new(None))
    }
}

impl<T> Current<T> {
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `v` in place; returns the one it replaces.
    pub fn set(&self, v: T) -> Option<Arc<T>> {
        self.0.write().unwrap_or_else(|p| p.into_inner()).replace(Arc::new(v))
    }
}

/// A loaded decoder as the handlers see it.
pub struct Decoder {
    pub engine: EngineHandle,
    pub tok: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

/// Limits on what a request may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request body bytes.
    pub max_body: usize,
    /// Longest a generation may run.
    pub timeout: Option<Duration>,
    /// Inputs per embeddings request.
    pub max_inputs: usize,
    /// Time a client has to send a request's headers; a connection that dawdles (slow-loris)
    /// is closed.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers arrived (408 past it).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body: 4 << 20, timeout: Some(Duration::from_secs(600)), max_inputs: 2048, header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(30) }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The id clients name the decoder by (`model` in requests, `/v1/models`).
    pub model_id: String,
    /// The embedding model's id, when the server has one.
    pub embed_id: Option<String>,
    pub decoder: Current<Decoder>,
    /// How to load the decoder again (`POST /admin/reload`, SIGHUP); `None`: reloads refused.
    pub reload: Option<reload::Spec>,
    pub embedder: OnceLock<embeddings::EmbedHandle>,
    /// The hybrid router, when a remote model is configured.
    pub router: Option<router::Router>,
    pub metrics: Arc<Metrics>,
    /// Required as `Authorization: Bearer KEY` on `/v1/*` when set.
    pub api_key: Option<String>,
    pub limits: Limits,
    /// Unix time the server started (`created` of `/v1/models`).
    pub started: u64,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(model_id: String, embed_id: Option<String>, api_key: Option<String>, limits: Limits) -> AppState {
        AppState {
            model_id,
            embed_id,
            decoder: Current::default(),
            reload: None,
            embedder: OnceLock::new(),
            router: None,
            metrics: Arc::new(Metrics::default()),
            api_key,
            limits,
            started: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh response id with the given prefix (`chatcmpl`, `cmpl`).
    pub fn response_id(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}{:06x}", self.started, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether all models it should serve are loaded.
    pub fn ready(&self) -> bool {
        self.decoder.get().is_some() && (self.embed_id.is_none() || self.embedder.get().is_some())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The whole HTTP service.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(generate::chat))
        .route("/completions", post(generate::completions))
        .route("/embeddings", post(embeddings::embeddings))
        .route("/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload::handler).route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize)))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(state.limits.max_body))
        .with_state(state)
}

/// Counts each answered request by route and status.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.uri().path().to_string();
    let known = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics", "/admin/reload"];
    let route = if known.contains(&route.as_str()) { route } else { "other".into() };
    let resp = next.run(req).await;
    state.metrics.count_request(&route, resp.status().as_u16());
    resp
}

/// The bearer key check (constant-time comparison of equal-length keys).
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let same = given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            let e = ApiError { status: StatusCode::UNAUTHORIZED, message: "missing or wrong API key: send it as `Authorization: Bearer KEY`".into(), kind: "invalid_request_error", param: None, code: Some("invalid_api_key"), retry_after: None };
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let slots = state.decoder.get().map_or(0, |d| d.engine.slots);
    let mut text = state.metrics.render(slots);
    if let Some(r) = &state.router {
        metrics::render_remote(&mut text, &r.remote);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut data = vec![json!({"id": state.model_id, "object": "model", "created": state.started, "owned_by": "smelt"})];
    if let Some(e) = &state.embed_id {
        data.push(json!({"id": e, "object": "model", "created": state.started, "owned_by": "smelt"}));
    }
    Json(json!({"object": "list", "data": data}))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}: this server serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health and /metrics", req.method(), req.uri().path()), "not_found")
}

/// Parses a JSON body into `T`, mapping every failure (too large, not UTF-8, bad JSON, wrong
/// types, missing fields) to an OpenAI error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        ApiError { status, message: format!("could not read the request body: {}", e.body_text()), kind: "invalid_request_error", param: None, code: None, retry_after: None }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the request body is not valid JSON for this endpoint: {e}"), None))
}

/// Connections served at once; further clients wait in the kernel's backlog, so a flood of idle
/// connections cannot exhaust the process's file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// Runs the service on `listener` until SIGTERM or Ctrl-C; in-flight requests finish first.
///
/// Each connection is HTTP/1.1 with keep-alive, a header deadline ([`Limits::header_timeout`])
/// and a body deadline ([`Limits::body_timeout`], in [`router`]'s middleware); at most
/// [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let header_timeout = state.limits.header_timeout;
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut signal => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of descriptors or a connection reset before accept: wait a moment, go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        let conn = graceful.watch(b.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Reads the request body within [`Limits::body_timeout`] and the size limit, so that a handler never
/// waits on a client that sends slowly: 408 past the time, 413 past the size.
///
/// Those refusals leave the rest of the body unread, so the connection cannot carry another
/// request: they say `Connection: close`. Without it a keep-alive client (the `openai`
/// package's pool) may send its next request on the connection as the server closes it, and
/// get "server disconnected" instead of an answer.
async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let mut refused = match tokio::time::timeout(state.limits.body_timeout, axum::body::to_bytes(body, state.limits.max_body)).await {
        Ok(Ok(bytes)) => return next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let (status, message) = if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than this server's limit of {} bytes (--max-body)", state.limits.max_body))
            } else {
                (StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"))
            };
            ApiError { status, message, kind: "invalid_request_error", param: None, code: None, retry_after: None }.into_response()
        }
        Err(_) => ApiError { status: StatusCode::REQUEST_TIMEOUT, message: format!("the request body did not arrive within {:.0} s", state.limits.body_timeout.as_secs_f64()), kind: "invalid_request_error", param: None, code: Some("timeout"), retry_after: None }.into_response(),
    };
    refused.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    refused
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
