//! Hot model reload (`POST /admin/reload`, or SIGHUP): the new file is loaded beside the running
//! model and must pass a self-check (a short greedy answer with finite logits) before new
//! requests switch to it; requests already running finish on the old model, whose engine ends
//! when its last request is done. A file that fails to load or to pass the check changes
//! nothing (the old model keeps serving) and the answer says why.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{LoadOptions, Message, SamplerConfig};

use crate::engine::{self, EngineConfig, Event, GenRequest};
use crate::{ApiError, AppState, Decoder, Metrics, ServeError};

/// How the decoder is loaded (kept for reloads).
pub struct Spec {
    /// The model now served (a reload may name another).
    pub model: Mutex<String>,
    pub as_type: Option<GgmlType>,
    pub context: Option<usize>,
    pub slots: usize,
    pub queue: usize,
    pub threads: usize,
    /// Set when the server stops (every engine drains and ends).
    pub stop: Arc<AtomicBool>,
    /// A reload is running (a second one is refused meanwhile).
    busy: AtomicBool,
}

impl Spec {
    pub fn new(model: String, as_type: Option<GgmlType>, context: Option<usize>, slots: usize, queue: usize, threads: usize, stop: Arc<AtomicBool>) -> Spec {
        Spec { model: Mutex::new(model), as_type, context, slots, queue, threads, stop, busy: AtomicBool::new(false) }
    }
}

/// Loads `model` and starts its engine.
pub fn load_decoder(spec: &Spec, model: &str, metrics: Arc<Metrics>) -> Result<(PathBuf, Decoder), ServeError> {
    let (path, loaded) = smelt_models::open(model, LoadOptions { weight_type: spec.as_type }, &mut |_| {}).map_err(|source| ServeError::Load { what: model.to_string(), source: Box::new(source) })?;
    let context = spec.context.unwrap_or(loaded.model.cfg.ctx_train.min(4096));
    let cfg = EngineConfig { slots: spec.slots, context, queue: spec.queue };
    let tok = Arc::new(loaded.tok);
    let (engine, _thread) = engine::start(loaded.model, tok.clone(), ThreadPool::new(spec.threads), &cfg, metrics, spec.stop.clone())?;
    Ok((path, Decoder { engine, tok, template: loaded.template }))
}

/// A short greedy answer to a fixed message: it must end without an error (a weight that gives
/// NaN or infinity fails the forward pass) within a minute.
pub fn self_check(dec: &Decoder, metrics: &Metrics) -> Result<(), String> {
    let msgs = [Message { role: "user".into(), content: "Say hello.".into() }];
    let text = dec.template.render(&msgs, true).unwrap_or_else(|_| "Hello".into());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let req = GenRequest {
        prompt: dec.tok.encode(&text, true),
        max_tokens: 4,
        stop: Vec::new(),
        sampler: SamplerConfig::greedy(),
        logprobs: None,
        ignore_eos: false,
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        events: tx,
        enqueued: Instant::now(),
        gate: None,
        note: Default::default(),
    };
    dec.engine.submit(req, metrics).map_err(|e| format!("the new engine refused the check: {e:?}"))?;
    loop {
        match rx.blocking_recv() {
            Some(Event::Done { completion_tokens, .. }) => return if completion_tokens > 0 { Ok(()) } else { Err("the model ended its answer before any token".into()) },
            Some(Event::Error(e)) => return Err(e),
            Some(_) => {}
            None => return Err("the new engine stopped during the check".into()),
        }
    }
}

/// Loads `model` (default: the one served), checks it and switches new requests to it.
/// Blocking (call it off the async workers).
pub fn reload(state: &AppState, model: Option<String>) -> Result<Value, String> {
    let spec = state.reload.as_ref().ok_or("this server was started without reload support")?;
    if spec.busy.swap(true, Ordering::AcqRel) {
        return Err("a reload is already running".into());
    }
    let result = (|| {
        let name = model.unwrap_or_else(|| spec.model.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let t = Instant::now();
        let (path, dec) = load_decoder(spec, &name, state.metrics.clone()).map_err(|e| e.to_string())?;
        self_check(&dec, &state.metrics).map_err(|e| format!("{}: the self-check failed ({e}); the previous model keeps serving", path.display()))?;
        let context = dec.engine.context;
        // In-flight requests hold the old decoder; its engine ends once they are done.
        drop(state.decoder.set(dec));
        *spec.model.lock().unwrap_or_else(|p| p.into_inner()) = name;
        Ok(json!({"status": "reloaded", "model": path.display().to_string(), "context": context, "seconds": t.elapsed().as_secs_f64()}))
    })();
    spec.busy.store(false, Ordering::Release);
    state.metrics.count_reload(result.is_ok());
    result
}

/// `POST /admin/reload` with an optional body `{"model": PATH_OR_NAME}`.
pub async fn handler(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let bytes = body.map_err(|e| ApiError::invalid(format!("could not read the request body: {}", e.body_text()), None))?;
    let model = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = crate::parse_body(Ok(bytes))?;
        match &v["model"] {
            Value::Null => None,
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => return Err(ApiError::invalid("model: a file path or a catalog name", Some("model"))),
        }
    };
    let st = state.clone();
    let r = tokio::task::spawn_blocking(move || reload(&st, model)).await.map_err(|e| ApiError::internal(format!("the reload task failed: {e}")))?;
    r.map(Json).map_err(|e| ApiError { status: axum::http::StatusCode::CONFLICT, message: e, kind: "invalid_request_error", param: None, code: Some("reload_failed"), retry_after: None })
}
