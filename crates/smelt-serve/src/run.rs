//! Starting a server: bind the port first (so that `/health` can say "loading"), load the
//! models in a background thread, start the engine, serve until SIGTERM or Ctrl-C.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{Encoder, ModelError};

use crate::privacy::Detector;
use crate::remote::{Remote, RemoteConfig};
pub use crate::router::{Budget, PrivacyMode};
use crate::router::{Complexity, Router};
use smelt_models::classify::Head;
use crate::reload::{load_decoder, Spec};
use crate::{embeddings, AppState, Limits};

/// Everything `smelt serve` is asked for.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port (the address is logged).
    pub port: u16,
    /// Decoder: a path or a catalog name.
    pub model: String,
    /// The id clients use for the decoder (default: the catalog name or the file's name).
    pub alias: Option<String>,
    /// Sentence encoder for `/v1/embeddings`: a path or a catalog name.
    pub embed: Option<String>,
    /// Convert the decoder's weights to this type at load.
    pub as_type: Option<GgmlType>,
    pub slots: usize,
    /// Tokens per slot (default: the model's trained context, at most 4096).
    pub context: Option<usize>,
    pub queue: usize,
    pub threads: usize,
    pub api_key: Option<String>,
    pub limits: Limits,
    /// The remote model and the router's settings (`None`: everything is answered locally).
    pub remote: Option<RemoteOptions>,
    /// Append one JSON line per generation request here (`smelt monitor` reads it).
    pub request_log: Option<std::path::PathBuf>,
    /// Prompts in the drift windows (0: no drift tracking; needs `embed`).
    pub drift_window: usize,
    /// Local answers under this mean log-probability count as low-confidence.
    pub low_logprob: f32,
}

/// `--remote` and the router's settings.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub url: String,
    pub model: String,
    pub key: Option<String>,
    /// A PEM file of the certificates an `https://` remote's must chain to (default: the
    /// system's trusted roots).
    pub ca: Option<std::path::PathBuf>,
    pub privacy: PrivacyMode,
    /// `(name, regex)` patterns added to the privacy detector.
    pub patterns: Vec<(String, String)>,
    pub budget: Budget,
    /// Longest a remote exchange may take.
    pub timeout: std::time::Duration,
    /// The complexity signal: a classifier head file and its `p(remote)` threshold.
    pub complexity: Option<(std::path::PathBuf, f32)>,
    /// The confidence gate (`None`: off).
    pub confidence: Option<crate::engine::Gate>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("loading {what}: {source}")]
    Load { what: String, source: Box<ModelError> },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// The id of a model argument: its catalog name, or the file's (directory's) name.
pub fn model_id(arg: &str) -> String {
    let p = std::path::Path::new(arg);
    if p.exists() {
        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| arg.to_string())
    } else {
        arg.to_string()
    }
}

/// Runs the server until SIGTERM or Ctrl-C; `log` receives one line per event (the address it
/// listens on, models loaded).
pub fn run(mut opts: ServeOptions, log: Arc<dyn Fn(&str) + Send + Sync>) -> Result<(), ServeError> {
    let router = opts.remote.as_ref().map(router).transpose()?;
    if let Some(cx) = router.as_ref().and_then(|r| r.complexity.as_ref()) {
        // The complexity head needs the encoder it was trained on.
        opts.embed.get_or_insert_with(|| cx.head.encoder.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().thread_name("smelt-http").build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
        let local = listener.local_addr()?;
        let mut state = AppState::new(opts.alias.clone().unwrap_or_else(|| model_id(&opts.model)), opts.embed.as_deref().map(model_id), opts.api_key.clone(), opts.limits.clone());
        if let (Some(r), Some(router)) = (&opts.remote, router) {
            log(&format!("escalating to {} (model {}) when a request needs it; private data stays local ({:?})", r.url, r.model, r.privacy));
            if let Some(g) = router.confidence {
                log(&format!("confidence gate: the first {} tokens are drafted locally; mean log-probability under {} or a top-1 probability under {} escalates", g.tokens, g.min_mean_logprob, g.min_top1));
            }
            if let Some(cx) = &router.complexity {
                log(&format!("complexity signal: p(remote) >= {} escalates (head trained on {})", cx.threshold, cx.head.encoder));
            }
            state.router = Some(router);
        }
        if opts.drift_window > 0 && opts.embed.is_none() {
            return Err(ServeError::Config("--drift-window needs an encoder for the prompts' embeddings: add --embed all-minilm-l6-v2".into()));
        }
        let watch = crate::monitor::Watch::new(opts.low_logprob, opts.drift_window, opts.request_log.as_deref()).map_err(|e| ServeError::Config(format!("cannot open the request log: {e}")))?;
        state.metrics = Arc::new(crate::Metrics::with_watch(watch));
        let stop = Arc::new(AtomicBool::new(false));
        state.reload = Some(Spec::new(opts.model.clone(), opts.as_type, opts.context, opts.slots, opts.queue, opts.threads, stop.clone()));
        let state = Arc::new(state);
        log(&format!("listening on http://{local} (OpenAI API under /v1; /health says 503 until the model is loaded)"));
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
        let loader_state = state.clone();
        let loader_log = log.clone();
        std::thread::Builder::new().name("smelt-load".into()).spawn(move || {
            if let Err(e) = load(&opts, &loader_state, &*loader_log) {
                let _ = failed_tx.send(e);
            }
        })?;
        reload_on_sighup(state.clone(), log.clone());
        let server = crate::serve(listener, state.clone());
        let result = tokio::select! {
            r = server => r.map_err(ServeError::from),
            Ok(e) = failed_rx => Err(e),
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        log("stopped");
        result
    })
}

/// SIGHUP reloads the served model (as `POST /admin/reload` with no body does).
fn reload_on_sighup(state: Arc<AppState>, log: Arc<dyn Fn(&str) + Send + Sync>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            let (st, log) = (state.clone(), log.clone());
            let _ = tokio::task::spawn_blocking(move || match crate::reload::reload(&st, None) {
                Ok(v) => log(&format!("SIGHUP: reloaded {}", v["model"].as_str().unwrap_or("?"))),
                Err(e) => log(&format!("SIGHUP: reload failed, the previous model keeps serving: {e}")),
            })
            .await;
        }
    });
    #[cfg(not(unix))]
    let _ = (state, log);
}

/// The router for `--remote`.
pub fn router(r: &RemoteOptions) -> Result<Router, ServeError> {
    let mut cfg = RemoteConfig::parse_with_ca(&r.url, &r.model, r.key.clone(), r.ca.as_deref()).map_err(ServeError::Config)?;
    cfg.total_timeout = r.timeout;
    cfg.first_byte_timeout = cfg.first_byte_timeout.min(r.timeout);
    let detector = Detector::with_patterns(&r.patterns).map_err(|e| ServeError::Config(e.to_string()))?;
    let complexity = match &r.complexity {
        None => None,
        Some((path, threshold)) => Some(Complexity::new(read_head(path)?, *threshold).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?),
    };
    Ok(Router::new(Remote::new(cfg), detector, r.privacy, r.budget).with_signals(complexity, r.confidence))
}

/// A classifier head file, checked.
pub fn read_head(path: &std::path::Path) -> Result<Head, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
    let head: Head = serde_json::from_str(&text).map_err(|e| ServeError::Config(format!("{} is not a smelt classifier head: {e}", path.display())))?;
    head.validate().map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
    Ok(head)
}

fn load(opts: &ServeOptions, state: &AppState, log: &(dyn Fn(&str) + Send + Sync)) -> Result<(), ServeError> {
    let t = std::time::Instant::now();
    let spec = state.reload.as_ref().ok_or_else(|| ServeError::Config("no load settings".into()))?;
    let (path, dec) = load_decoder(spec, &opts.model, state.metrics.clone())?;
    log(&format!("loaded {} in {:.1} s: {} slots of {} tokens, queue {}", path.display(), t.elapsed().as_secs_f64(), dec.engine.slots, dec.engine.context, opts.queue));
    state.decoder.set(dec);
    if let Some(name) = &opts.embed {
        let path = smelt_assets::resolve_model(name, &mut |_| {}).map_err(|e| ServeError::Load { what: name.clone(), source: Box::new(e.into()) })?;
        let enc = Encoder::load(&path, None).map_err(|source| ServeError::Load { what: name.clone(), source: Box::new(source) })?;
        log(&format!("loaded the encoder {} (dimension {})", path.display(), enc.dim()));
        if let Some(cx) = state.router.as_ref().and_then(|r| r.complexity.as_ref()) {
            if cx.head.dim != enc.dim() {
                return Err(ServeError::Config(format!("the complexity head expects {}-dimensional embeddings (from {}); the encoder {name} gives {}", cx.head.dim, cx.head.encoder, enc.dim())));
            }
        }
        let _ = state.embedder.set(embeddings::start(enc, ThreadPool::new(opts.threads), opts.queue.max(1))?);
    }
    Ok(())
}
